"""Box2Mask (with click and prior-mask channels): one 2D slice + prompt maps -> object mask logits."""

from __future__ import annotations

from ml.config import Box2MaskConfig
from ml.networks.blocks import PlainUNet


class Box2Mask(PlainUNet):
    """A plain 6-stage 2D U-Net (PropSAM's Box2SegNet layout) whose input stacks the prompt as channels.

    Input ``(N, 5, S, S)`` with ``S = config.input_size``: windowed image in [-1, 1], box rectangle,
    positive clicks, negative clicks, prior mask (see ``Box2MaskConfig``).
    Output: list of logits, finest first; ``[0]`` is ``(N, 1, S, S)``, ``[i]`` is ``(N, 1, S/2**i, S/2**i)``
    (only ``[0]`` when ``all_heads=False``).
    """

    config: Box2MaskConfig

    def __init__(self, config: Box2MaskConfig) -> None:
        super().__init__(config)
