"""PropMask: carry a guide slice's mask to several adjacent slices with guide->adjacent cross-attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ml.config import PropMaskConfig
from ml.networks.blocks import Decoder, Encoder


class GuideAttention(nn.Module):
    """Single-head cross-attention: Q = adjacent image features, K = guide image features, V = guide-mask
    features; the result is added to the adjacent features (no norm, no positional encoding, as in PAM).

    ``adjacent (B, K, C, H, W)``, ``guide (B, C, H, W)``, ``guide_mask (B, C, H, W)`` ->
    ``(B, K, C, H, W)``. Adjacent slices never attend to each other, so all ``K * H * W`` adjacent tokens
    of a task can share one attention call against the guide's ``H * W`` tokens.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Linear(channels, channels, bias=False)
        self.key = nn.Linear(channels, channels, bias=False)
        self.value = nn.Linear(channels, channels, bias=False)
        self.out = nn.Linear(channels, channels)

    def forward(self, adjacent: torch.Tensor, guide: torch.Tensor, guide_mask: torch.Tensor) -> torch.Tensor:
        batch, count, channels, height, width = adjacent.shape
        queries = self.query(adjacent.permute(0, 1, 3, 4, 2).reshape(batch, count * height * width, channels))
        keys = self.key(guide.flatten(2).transpose(1, 2))
        values = self.value(guide_mask.flatten(2).transpose(1, 2))
        # As one head of a (B, 1, L, C) batch: PyTorch's fused CPU attention kernel takes 4D inputs only (3D
        # ones fall back to the unfused path: 106 against 115 ms for the shipped PropMask, 8 targets).
        attended = F.scaled_dot_product_attention(queries[:, None], keys[:, None], values[:, None])[:, 0]
        attended = self.out(attended)
        attended = attended.reshape(batch, count, height, width, channels).permute(0, 1, 4, 2, 3)
        return adjacent + attended


@dataclass
class PropMaskOutput:
    """``masks``: logits per deep-supervision level, finest first; ``masks[i]`` is
    ``(B, K, S / 2**i, S / 2**i)``. ``present``: ``(B, K)`` logits "the object is on this slice"
    (None when the config has no present head)."""

    masks: list[torch.Tensor]
    present: torch.Tensor | None


class PropMask(nn.Module):
    """Shared image encoder (guide + adjacent slices), separate mask encoder (guide mask), cross-attention at
    the ``attention_stages`` coarsest scales, U-Net decoder with skips, optional object-present head.

    Inputs: ``guide (B, 1, S, S)`` windowed to [-1, 1], ``guide_mask (B, 1, S, S)`` 0/1,
    ``adjacent (B, K, S, S)`` windowed to [-1, 1] with ``S = config.input_size`` and any ``K >= 1``.
    """

    def __init__(self, config: PropMaskConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        self.image_encoder = Encoder(1, widths)
        self.mask_encoder = Encoder(1, widths)
        first_attended = config.n_stages - config.attention_stages
        self.first_attended_stage = first_attended
        self.attention = nn.ModuleList(
            GuideAttention(widths[stage]) for stage in range(first_attended, config.n_stages)
        )
        self.decoder = Decoder(widths, config.deep_supervision_heads)
        # The present head. "decoder": pooled finest decoder features (which already outline the mask) +
        # max/mean of the mask logits + pooled bottleneck; the bottleneck alone (the first design) is
        # instance-normalised at 3x3 px and barely beat a constant guess.
        present_inputs = 2 * widths[-1] + (2 * widths[0] + 2 if config.present_features == "decoder" else 0)
        self.present = (
            nn.Sequential(nn.Linear(present_inputs, widths[-1]), nn.LeakyReLU(0.01), nn.Linear(widths[-1], 1))
            if config.present_head
            else None
        )

    def forward(
        self, guide: torch.Tensor, guide_mask: torch.Tensor, adjacent: torch.Tensor, all_heads: bool = True
    ) -> PropMaskOutput:
        size = self.config.input_size
        if guide.ndim != 4 or guide.shape[1:] != (1, size, size):
            raise ValueError(f"guide must be (B, 1, {size}, {size}), got {tuple(guide.shape)}")
        if guide_mask.shape != guide.shape:
            raise ValueError(
                f"guide_mask must match guide {tuple(guide.shape)}, got {tuple(guide_mask.shape)}"
            )
        if adjacent.ndim != 4 or adjacent.shape[0] != guide.shape[0] or adjacent.shape[2:] != (size, size):
            raise ValueError(f"adjacent must be (B, K, {size}, {size}), got {tuple(adjacent.shape)}")
        batch, count = adjacent.shape[:2]
        # One encoder pass over guides and adjacent slices together (shared weights).
        images = torch.cat([guide, adjacent.reshape(batch * count, 1, size, size)], dim=0)
        image_features = self.image_encoder(images)
        mask_features = self.mask_encoder(guide_mask)
        skips: list[torch.Tensor] = []
        for stage, features in enumerate(image_features):
            guide_features, adjacent_features = features[:batch], features[batch:]
            if stage >= self.first_attended_stage:
                attention = self.attention[stage - self.first_attended_stage]
                shaped = adjacent_features.reshape(batch, count, *adjacent_features.shape[1:])
                adjacent_features = attention(shaped, guide_features, mask_features[stage]).flatten(0, 1)
            skips.append(adjacent_features)
        logits, finest = self.decoder.decode(skips, all_heads=all_heads)
        masks = [level.reshape(batch, count, *level.shape[2:]) for level in logits]
        present = None
        if self.present is not None:
            bottleneck = skips[-1]
            pooled = [bottleneck.mean(dim=(2, 3)), bottleneck.amax(dim=(2, 3))]
            if self.config.present_features == "decoder":
                mask_logits = logits[0].flatten(1)
                pooled += [
                    finest.mean(dim=(2, 3)),
                    finest.amax(dim=(2, 3)),
                    mask_logits.amax(dim=1, keepdim=True),
                    torch.sigmoid(mask_logits).mean(dim=1, keepdim=True),
                ]
            present = self.present(torch.cat(pooled, dim=1)).reshape(batch, count)
        return PropMaskOutput(masks=masks, present=present)
