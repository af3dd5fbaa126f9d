"""PropSAM-style 2D networks (own code after the PropSAM/PAM paper): Box2Mask and PropMask."""

from ml.networks.box2mask import Box2Mask
from ml.networks.propmask import PropMask, PropMaskOutput

__all__ = ["Box2Mask", "PropMask", "PropMaskOutput"]
