"""Box2Mask (with click and prior-mask channels): one 2D slice + prompt maps -> object mask logits."""

from __future__ import annotations

import torch
from torch import nn

from ml.config import Box2MaskConfig
from ml.networks.blocks import Decoder, Encoder


class Box2Mask(nn.Module):
    """A plain 6-stage 2D U-Net (PropSAM's Box2SegNet layout) whose input stacks the prompt as channels.

    Input ``(N, 5, S, S)`` with ``S = config.input_size``: windowed image in [-1, 1], box rectangle,
    positive clicks, negative clicks, prior mask (see ``Box2MaskConfig``).
    Output: list of logits, finest first; ``[0]`` is ``(N, 1, S, S)``, ``[i]`` is ``(N, 1, S/2**i, S/2**i)``
    (only ``[0]`` when ``all_heads=False``).
    """

    def __init__(self, config: Box2MaskConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.in_channels, config.widths)
        self.decoder = Decoder(config.widths, config.deep_supervision_heads)

    def forward(self, inputs: torch.Tensor, all_heads: bool = True) -> list[torch.Tensor]:
        if inputs.ndim != 4 or inputs.shape[1] != self.config.in_channels:
            raise ValueError(
                f"Box2Mask expects (N, {self.config.in_channels}, S, S), got {tuple(inputs.shape)}"
            )
        return self.decoder(self.encoder(inputs), all_heads=all_heads)
