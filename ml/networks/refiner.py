"""Slice refiner: one slice's image neighbourhood + the propagated masks around it -> that slice's mask."""

from __future__ import annotations

from ml.config import RefinerConfig
from ml.networks.blocks import PlainUNet


class SliceRefiner(PlainUNet):
    """A plain 2D U-Net over a slice's 3D neighbourhood, stacked as channels.

    Input ``(N, C, S, S)`` with ``C = config.in_channels``, ``S = config.input_size``: windowed images of
    slices ``z - image_context .. z + image_context``, then propagated masks of ``z - mask_context ..
    z + mask_context`` (see ``RefinerConfig``). Output: list of logits, finest first; ``[0]`` is
    ``(N, 1, S, S)`` (only ``[0]`` when ``all_heads=False``).
    """

    config: RefinerConfig

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__(config)
