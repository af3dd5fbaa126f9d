"""Cropping, windowing and resizing shared by training and inference, so both see identical inputs.

Geometry: a ``CropBox`` is a square ``side x side`` window of a slice whose top-left corner is
``(y0, x0)`` in full-slice voxel coordinates; it may reach outside the slice (the outside is filled:
images with the window's low end, i.e. -1 after normalisation; masks with 0). Network inputs are the crop
resized to ``S x S`` (``S`` = the config's ``input_size``) with bilinear interpolation
(``align_corners=False``, antialiased when shrinking).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ml.config import MIN_CROP_SIDE
from ml.predictor import Window

CLICK_SIGMA_PX = 2.5
"""Click maps are Gaussians of this standard deviation in network pixels (peak 1)."""


@dataclass(frozen=True)
class CropBox:
    """Square crop ``[y0, y0 + side) x [x0, x0 + side)`` in full-slice coordinates (may exceed the slice)."""

    y0: int
    x0: int
    side: int

    def to_network(self, y: float, x: float, size: int) -> tuple[float, float]:
        """Full-slice voxel centre ``(y, x)`` -> continuous network pixel coordinates (pixel centres)."""
        scale = size / self.side
        return (y - self.y0 + 0.5) * scale - 0.5, (x - self.x0 + 0.5) * scale - 0.5

    def region(self, shape: tuple[int, int]) -> np.ndarray:
        """bool ``(Y, X)`` of a slice of ``shape``: True on the pixels this crop covers."""
        region = np.zeros(shape, dtype=bool)
        region[
            max(self.y0, 0) : max(self.y0 + self.side, 0), max(self.x0, 0) : max(self.x0 + self.side, 0)
        ] = True
        return region


def box_of_mask(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight inclusive box ``(y0, x0, y1, x1)`` of a non-empty bool ``(Y, X)`` mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("cannot take the box of an empty mask")
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def square_crop(
    box: tuple[int, int, int, int],
    scale: float,
    min_side: int = MIN_CROP_SIDE,
    shift: tuple[float, float] = (0.0, 0.0),
) -> CropBox:
    """Square crop of side ``max(scale * max(h, w), min_side)`` centred on an inclusive box.

    Args:
        box: inclusive ``(y0, x0, y1, x1)``.
        scale: crop side relative to the box's longer edge (1.5 at inference, 1-2 in training).
        min_side: smallest side in voxels.
        shift: move the centre by this fraction of the side (training jitter; 0 at inference).
    """
    y0, x0, y1, x1 = box
    if y1 < y0 or x1 < x0:
        raise ValueError(f"box {box} is empty")
    height, width = y1 - y0 + 1, x1 - x0 + 1
    side = max(round(scale * max(height, width)), int(min_side))
    centre_y = (y0 + y1 + 1) / 2 + shift[0] * side
    centre_x = (x0 + x1 + 1) / 2 + shift[1] * side
    return CropBox(int(np.floor(centre_y - side / 2)), int(np.floor(centre_x - side / 2)), side)


def extract(slices: np.ndarray, crop: CropBox, fill: float) -> np.ndarray:
    """Cut ``crop`` out of ``(K, Y, X)`` slices -> ``(K, side, side)`` (same dtype), filling the outside."""
    count, height, width = slices.shape
    out = np.full((count, crop.side, crop.side), fill, dtype=slices.dtype)
    src_y0, src_x0 = max(crop.y0, 0), max(crop.x0, 0)
    src_y1, src_x1 = min(crop.y0 + crop.side, height), min(crop.x0 + crop.side, width)
    if src_y1 > src_y0 and src_x1 > src_x0:
        out[:, src_y0 - crop.y0 : src_y1 - crop.y0, src_x0 - crop.x0 : src_x1 - crop.x0] = slices[
            :, src_y0:src_y1, src_x0:src_x1
        ]
    return out


def resize(batch: torch.Tensor, size: int) -> torch.Tensor:
    """``(K, H, W)`` float -> ``(K, size, size)`` bilinear (antialiased when shrinking)."""
    if batch.shape[-2:] == (size, size):
        return batch
    shrinking = batch.shape[-1] > size
    return F.interpolate(
        batch[:, None], size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking
    )[:, 0]


def images_to_network(slices: np.ndarray, crop: CropBox, window: Window, size: int) -> torch.Tensor:
    """Raw ``(K, Y, X)`` intensities -> cropped, windowed, resized ``(K, size, size)`` float32 in [-1, 1]."""
    cut = extract(np.asarray(slices, dtype=np.float32), crop, fill=window.low)
    windowed = torch.from_numpy(window.apply(cut))
    return resize(windowed, size) * 2.0 - 1.0


def masks_to_network(masks: np.ndarray, crop: CropBox, size: int) -> torch.Tensor:
    """Bool ``(K, Y, X)`` -> cropped, resized ``(K, size, size)`` float32 0/1 (bilinear, then > 0.5)."""
    cut = extract(np.asarray(masks, dtype=np.float32), crop, fill=0.0)
    return (resize(torch.from_numpy(cut), size) > 0.5).float()


def paste_back(probabilities: torch.Tensor, crop: CropBox, shape: tuple[int, int]) -> np.ndarray:
    """Network-size ``(K, S, S)`` probabilities -> full-slice float32 ``(K, Y, X)`` (0 outside the crop)."""
    height, width = shape
    count = probabilities.shape[0]
    out = np.zeros((count, height, width), dtype=np.float32)
    dst_y0, dst_x0 = max(crop.y0, 0), max(crop.x0, 0)
    dst_y1, dst_x1 = min(crop.y0 + crop.side, height), min(crop.x0 + crop.side, width)
    if dst_y1 <= dst_y0 or dst_x1 <= dst_x0:
        return out
    resized = F.interpolate(
        probabilities[:, None].float(), size=(crop.side, crop.side), mode="bilinear", align_corners=False
    )[:, 0]
    out[:, dst_y0:dst_y1, dst_x0:dst_x1] = resized[
        :, dst_y0 - crop.y0 : dst_y1 - crop.y0, dst_x0 - crop.x0 : dst_x1 - crop.x0
    ].numpy()
    return out


def box_channel(box: tuple[int, int, int, int] | None, crop: CropBox, size: int) -> torch.Tensor:
    """``(size, size)`` float32: 1 on network pixels whose centres fall inside the inclusive box, else 0."""
    channel = torch.zeros(size, size)
    if box is None:
        return channel
    top, left = crop.to_network(box[0] - 0.5, box[1] - 0.5, size)
    bottom, right = crop.to_network(box[2] + 0.5, box[3] + 0.5, size)
    coords = torch.arange(size, dtype=torch.float32)
    rows = (coords >= top) & (coords <= bottom)
    cols = (coords >= left) & (coords <= right)
    channel[rows[:, None] & cols[None, :]] = 1.0
    return channel


def click_channel(points: Sequence[tuple[float, float]], crop: CropBox, size: int) -> torch.Tensor:
    """``(size, size)`` float32: max of Gaussians (peak 1, ``CLICK_SIGMA_PX``) at full-slice ``(y, x)`` clicks."""
    channel = torch.zeros(size, size)
    if not points:
        return channel
    coords = torch.arange(size, dtype=torch.float32)
    for y, x in points:
        net_y, net_x = crop.to_network(y, x, size)
        gauss_y = torch.exp(-((coords - net_y) ** 2) / (2 * CLICK_SIGMA_PX**2))
        gauss_x = torch.exp(-((coords - net_x) ** 2) / (2 * CLICK_SIGMA_PX**2))
        channel = torch.maximum(channel, gauss_y[:, None] * gauss_x[None, :])
    return channel


def box2mask_window(image: np.ndarray, region: tuple[int, int, int, int] | CropBox) -> Window:
    """Box2Mask's own window when no foreground is known yet: 0.5-99.5 percentiles inside the box (or crop).

    Args:
        image: raw ``(Y, X)`` intensities.
        region: inclusive box ``(y0, x0, y1, x1)`` or a ``CropBox`` (clipped to the slice).
    """
    if isinstance(region, CropBox):
        y0, x0, y1, x1 = region.y0, region.x0, region.y0 + region.side - 1, region.x0 + region.side - 1
    else:
        y0, x0, y1, x1 = region
    height, width = image.shape
    y0, x0 = max(y0, 0), max(x0, 0)
    y1, x1 = min(y1, height - 1), min(x1, width - 1)
    values = np.asarray(image[y0 : y1 + 1, x0 : x1 + 1], dtype=np.float32).ravel()
    values = values[np.isfinite(values)]
    if values.size < 4:
        values = np.asarray(image, dtype=np.float32).ravel()
    low, high = np.percentile(values, [0.5, 99.5])
    return Window(float(low), float(max(high, low + 1e-3)))


def box2mask_inputs(
    image: np.ndarray,
    crop: CropBox,
    window: Window,
    size: int,
    *,
    box: tuple[int, int, int, int] | None,
    positive: Sequence[tuple[float, float]] = (),
    negative: Sequence[tuple[float, float]] = (),
    prior: np.ndarray | None = None,
) -> torch.Tensor:
    """The ``(5, size, size)`` Box2Mask input: image, box, positive clicks, negative clicks, prior mask.

    Args:
        image: raw ``(Y, X)`` intensities of the slice.
        box: inclusive ``(y0, x0, y1, x1)`` or None (click-only prompt).
        positive, negative: click centres ``(y, x)`` in full-slice voxels.
        prior: bool ``(Y, X)`` mask to correct, or None.
    """
    image_channel = images_to_network(image[None], crop, window, size)[0]
    prior_channel = (
        masks_to_network(prior[None], crop, size)[0] if prior is not None else torch.zeros(size, size)
    )
    return torch.stack(
        [
            image_channel,
            box_channel(box, crop, size),
            click_channel(positive, crop, size),
            click_channel(negative, crop, size),
            prior_channel,
        ]
    )
