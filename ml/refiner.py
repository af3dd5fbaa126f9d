"""Slice refinement: re-draw every slice of a finished propagation from its 3D neighbourhood.

The propagation loop predicts each slice from one or two guide slices only, so its errors drift: a slice
inherits its guide's mistakes and never sees the slices beyond it. Once both directions are done, the
``SliceRefiner`` looks at each slice again with its image neighbours and the propagated masks on both sides
(``RefinerConfig``: images ``z - 1 .. z + 1``, masks ``z - 2 .. z + 2``) and draws that slice anew; it is
trained on the shipped loop's own outputs against the true labels (``python -m ml.train_refiner``).

Axis contract: volumes and masks are ``(Z, Y, X)``; a slice's crop is the square ``CROP_SCALE`` x the box of
the propagated masks on slices ``z - mask_context .. z + mask_context``, resized to ``input_size`` like every
other network input (``ml/preprocess.py``). The intensity window is the 0.5-99.5 percentiles of the
volume under the propagated mask (``refiner_window``).

Expensive per-volume work (the window, the slices to visit) is done once; the network runs in batches of
slices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ml.config import CROP_SCALE, RefinerConfig
from ml.networks import SliceRefiner
from ml.predictor import Window, window_from_mask
from ml.preprocess import CropBox, box_of_mask, images_to_network, masks_to_network, paste_back, square_crop

REFINER_BATCH = 16
"""Slices per network call at inference."""


@dataclass(frozen=True)
class RefinerInput:
    """One slice's network input ``(C, S, S)`` and the crop it was cut from."""

    z: int
    inputs: torch.Tensor
    crop: CropBox


def refiner_window(volume: np.ndarray, mask: np.ndarray) -> Window:
    """The window of the whole propagated object (its voxels' 0.5-99.5 intensity percentiles)."""
    return window_from_mask(volume, mask)


def slices_to_refine(mask: np.ndarray, config: RefinerConfig) -> np.ndarray:
    """Slice indices within ``mask_context`` of a non-empty slice of bool ``(Z, Y, X)`` ``mask``."""
    filled = mask.any(axis=(1, 2))
    if not filled.any():
        return np.zeros(0, dtype=int)
    context = config.mask_context
    # "full" and a slice rather than mode="same": "same" returns the kernel's length when the volume has
    # fewer slices than the kernel (2 * context + 1), which indexed slices past a short volume's end.
    reach = np.convolve(filled.astype(int), np.ones(2 * context + 1, dtype=int), mode="full")
    return np.flatnonzero(reach[context : context + filled.size] > 0)


def _neighbour_indices(z: int, context: int) -> list[int]:
    return [z + offset for offset in range(-context, context + 1)]


def refiner_input(
    volume: np.ndarray,
    mask: np.ndarray,
    z: int,
    window: Window,
    config: RefinerConfig,
    *,
    crop_scale: float = CROP_SCALE,
    shift: tuple[float, float] = (0.0, 0.0),
) -> RefinerInput:
    """The network input for slice ``z`` (training jitters ``crop_scale`` and ``shift``).

    Args:
        volume: raw intensities ``(Z, Y, X)``.
        mask: bool ``(Z, Y, X)``, the propagated object; must be non-empty within ``mask_context`` of ``z``.
        z: the slice to re-draw.

    Returns:
        ``RefinerInput`` whose ``inputs`` is float32 ``(config.in_channels, S, S)``: images of
        ``z - image_context .. z + image_context`` (the volume's end slices repeat past its ends), then masks
        of ``z - mask_context .. z + mask_context`` (empty past the ends).
    """
    depth = volume.shape[0]
    low, high = max(z - config.mask_context, 0), min(z + config.mask_context, depth - 1)
    union = mask[low : high + 1].any(axis=0)
    crop = square_crop(box_of_mask(union), crop_scale, shift=shift)
    size = config.input_size
    image_slices = [min(max(index, 0), depth - 1) for index in _neighbour_indices(z, config.image_context)]
    images = images_to_network(np.asarray(volume[image_slices], dtype=np.float32), crop, window, size)
    mask_slices = np.zeros((2 * config.mask_context + 1, *mask.shape[1:]), dtype=bool)
    for row, index in enumerate(_neighbour_indices(z, config.mask_context)):
        if 0 <= index < depth:
            mask_slices[row] = mask[index]
    masks = masks_to_network(mask_slices, crop, size)
    return RefinerInput(z, torch.cat([images, masks]), crop)


def refine_probabilities(
    refiner: SliceRefiner,
    volume: np.ndarray,
    mask: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    slices: Sequence[int] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[int, np.ndarray]:
    """float32 ``(Y, X)`` object probabilities for every slice the refiner visits.

    Args:
        volume: raw intensities ``(Z, Y, X)``.
        mask: bool ``(Z, Y, X)``, the propagated object (not modified).
        slices: which slices to re-draw (default ``slices_to_refine``); slices with no propagated mask
            within ``mask_context`` are skipped.
        should_stop: polled before every batch of ``REFINER_BATCH`` slices; once it fires, only the slices
            already re-drawn are returned (a cancel waits for one batch, not the whole object).
    """
    config = refiner.config
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return {}
    window = refiner_window(volume, mask)
    candidates = set(slices_to_refine(mask, config).tolist())
    wanted = [int(z) for z in (slices if slices is not None else sorted(candidates)) if int(z) in candidates]
    shape = mask.shape[1:]
    out: dict[int, np.ndarray] = {}
    for start in range(0, len(wanted), REFINER_BATCH):
        if should_stop is not None and should_stop():
            break
        batch = [
            refiner_input(volume, mask, z, window, config) for z in wanted[start : start + REFINER_BATCH]
        ]
        stacked = torch.stack([item.inputs for item in batch]).to(device)
        with torch.inference_mode():
            probabilities = torch.sigmoid(refiner(stacked, all_heads=False)[0][:, 0]).cpu()
        for item, probability in zip(batch, probabilities, strict=True):
            out[item.z] = paste_back(probability[None], item.crop, shape)[0]
    return out


def refine_mask(
    refiner: SliceRefiner,
    volume: np.ndarray,
    mask: np.ndarray,
    *,
    keep: Sequence[int] = (),
    device: torch.device | str = "cpu",
    threshold: float = 0.5,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """The refined bool ``(Z, Y, X)`` mask; slices in ``keep`` (e.g. a user-drawn prompt slice) stay as they are.

    ``should_stop``: see ``refine_probabilities``; slices not reached before it fired stay as they are."""
    mask = np.asarray(mask, dtype=bool)
    refined = mask.copy()
    kept = {int(z) for z in keep}
    probabilities = refine_probabilities(refiner, volume, mask, device=device, should_stop=should_stop)
    for z, probability in probabilities.items():
        if z not in kept:
            refined[z] = probability >= threshold
    return refined
