"""PropSAM-style 2D networks (own code after the PropSAM/PAM paper): Box2Mask, PropMask, and the slice
refiner that re-draws a finished propagation slice by slice."""

from ml.networks.box2mask import Box2Mask
from ml.networks.propmask import PropMask, PropMaskOutput
from ml.networks.refiner import SliceRefiner

__all__ = ["Box2Mask", "PropMask", "PropMaskOutput", "SliceRefiner"]
