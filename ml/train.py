"""Train Box2Mask (+ clicks) and PropMask together: ``python -m ml.train``.

PropSAM task sampling (reference/propsam_method.md 1.6, issue 4):

* PropMask task: one object, a guide slice (often near the object's ends), ``adjacent_slices`` targets within
  20 mm (biased towards the guide and, near the ends, outwards so that many targets are empty: they teach
  the object-present head where to stop), a square crop 1-2x the guide box with a jittered centre, the
  window from the guide foreground's 0.5-99.5 percentiles (jittered), one random flip/rot90/rotation/scale for
  the whole task, intensity augmentation (inverted contrast in 20 % of tasks), and a corrupted guide mask for
  half of the tasks (eroded, dilated, boundary noise, or the mask of a neighbouring slice: what the model's
  own drifting prediction looks like).
* Rollout tasks (``--rollout``, half of the tasks by default): the guide mask is the network's own
  prediction of the guide slice from a true (sometimes corrupted) mask 1-8 slices behind it, made with the
  current weights just before the step. At inference every chunk is guided by the previous chunk's output;
  the corrupted guides above only imitate that drift, these are it.
* Box2Mask sample: an object slice with a box jittered like a user draws it (50%), a click-only prompt
  (17%), or a correction (33%: a corrupted prior mask, clicks at the centres of its largest error regions,
  a box half of the time). A third of the corrupted priors are swollen (holes and bays filled, or a leak
  into touching tissue), so a negative click inside the old mask must remove only the wrong part.

Loss: batch soft Dice + BCE at every deep-supervision level (weights halving per level), plus BCE on the
object-present logits. Progress, losses and validation Dice go to ``<run>/log.jsonl`` and stdout.
Validation: every ``--val-minutes``, objects of fixed validation cases are segmented in 3D from a box and
from a mask prompt on their largest slice with the ``LearnedPredictor`` and a simple outward loop; the
mean box-prompt Dice over data sets picks ``best.pt``. ``last.pt`` is written every ``--checkpoint-minutes``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ml.checkpoint import load_training_state, load_weights, save_training_state
from ml.config import MIN_CROP_SIDE, PRESETS, slices_per_side
from ml.data import (
    DEFAULT_DATA_DIR,
    ObjectVolume,
    list_cases,
    object_volume,
    pseudo_labelled_case,
    read_case,
    synthetic_case,
)
from ml.learned import LearnedPredictor
from ml.networks import Box2Mask, PropMask, PropMaskOutput
from ml.predictor import window_from_mask
from ml.preprocess import (
    CropBox,
    box2mask_inputs,
    box2mask_window,
    box_of_mask,
    images_to_network,
    masks_to_network,
    square_crop,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SPLITS_FILE = pathlib.Path(__file__).resolve().parent / "splits.json"
TRAIN_DATASETS = ("Dataset001_Hippocampus", "Dataset002_LeftAtrium")
MIN_GUIDE_AREA = 3
LOW_RESOLUTION_CHANCE = 0.3  # share of tasks and samples shown as if scanned 1.5-4x coarser in-plane
MAX_ROLLOUT_HOP = 8
"""Furthest (in slices) a rollout task's source slice lies behind its guide (see ``PropBatch``)."""
CHAIN_HOP = 4
"""Longest hop (in slices) of a chained rollout: the shipped loop re-guides every half chunk (<= 4 slices)."""
# Box2Mask prompt mix: box prompts, click-only prompts, and corrections of a wrong prior mask (see
# corrupt_prior); ``--box2mask-corrections`` changes the last share, the other two keep their ratio.
CORRECTION_SHARE = 0.33
BOX_SHARE_OF_FIRST_PROMPTS = 0.5 / 0.67


# ---------------------------------------------------------------------------------------------------------
# Task sampling


@dataclass
class PropBatch:
    """``guide``/``guide_mask`` ``(B, 1, S, S)``, ``adjacent``/``target`` ``(B, K, S, S)``, ``present (B, K)``.

    Rollout tasks (``rollout (B,)`` True) carry a source slice ``source``/``source_mask`` ``(B, 1, S, S)``
    1-``MAX_ROLLOUT_HOP`` slices behind the guide (away from the targets) in the same crop: before the
    training step, the network's own prediction of the guide slice from that source replaces the true guide
    mask (``apply_rollout_guides``), so the model learns from guides that drifted the way its own do at
    inference, where every chunk is guided by the previous chunk's output. Other tasks carry zeros there.

    Chained rollouts (a sampler with ``max_hops`` H > 1): ``source`` is ``(B, H, S, S)``, the slices of a
    chain farthest first, ``hops (B,)`` how many of them a task uses (0 for plain tasks), each 1-``CHAIN_HOP``
    slices from the next; ``source_mask`` is the true mask of the farthest. The network walks the chain
    towards the guide on its own predictions, so the guide carries the drift of several re-guidings (a mask
    that shrinks a little at every step, as on thin curved bones), not of one.
    """

    guide: torch.Tensor
    guide_mask: torch.Tensor
    adjacent: torch.Tensor
    target: torch.Tensor
    present: torch.Tensor
    source: torch.Tensor
    source_mask: torch.Tensor
    rollout: torch.Tensor
    hops: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.hops is None:
            self.hops = self.rollout.long()


class TaskSampler:
    """Draws PropMask tasks and Box2Mask samples from weighted pools of ``ObjectVolume``s."""

    def __init__(
        self,
        pools: dict[str, list[ObjectVolume]],
        weights: dict[str, float],
        seed: int,
        rollout_chance: float = 0.0,
        correction_share: float = CORRECTION_SHARE,
        max_hops: int = 1,
    ) -> None:
        """``rollout_chance``: share of PropMask tasks whose guide mask the network predicts itself.
        ``correction_share``: share of Box2Mask samples that correct a wrong prior mask.
        ``max_hops``: a rollout task walks a chain of 1..``max_hops`` predictions (uniform) to its guide."""
        if not 0.0 <= rollout_chance <= 1.0:
            raise ValueError(f"rollout_chance must be in [0, 1], got {rollout_chance}")
        if max_hops < 1:
            raise ValueError(f"max_hops must be >= 1, got {max_hops}")
        self.max_hops = max_hops
        if not 0.0 <= correction_share <= 1.0:
            raise ValueError(f"correction_share must be in [0, 1], got {correction_share}")
        self.rollout_chance = rollout_chance
        self.correction_share = correction_share
        self.pools = {name: [v for v in pool if v.objects] for name, pool in pools.items()}
        self.pools = {name: pool for name, pool in self.pools.items() if pool}
        if not self.pools:
            raise ValueError("no training volumes with objects")
        self.names = sorted(self.pools)
        total = sum(weights.get(name, 1.0) for name in self.names)
        self.probabilities = [weights.get(name, 1.0) / total for name in self.names]
        self.rng = np.random.default_rng(seed)

    def _pick_object(self) -> tuple[ObjectVolume, Any]:
        pool = self.pools[self.names[self.rng.choice(len(self.names), p=self.probabilities)]]
        volume = pool[self.rng.integers(len(pool))]
        return volume, volume.objects[self.rng.integers(len(volume.objects))]

    def _object_slice(self, volume: ObjectVolume, obj: Any, z: int) -> np.ndarray:
        return volume.object_map[z] == obj.object_id

    # ----------------------------------------------------------------- PropMask

    def propmask_batch(self, tasks: int, adjacent: int, size: int) -> PropBatch:
        parts = [self._propmask_task(adjacent, size) for _ in range(tasks)]
        guide, guide_mask, images, targets, source, source_mask = (
            torch.stack([part[i] for part in parts]) for i in range(6)
        )
        return PropBatch(
            guide[:, None],
            guide_mask[:, None],
            images,
            targets,
            (targets.flatten(2).amax(2) > 0).float(),
            source,
            source_mask[:, None],
            torch.tensor([part[6] > 0 for part in parts]),
            torch.tensor([part[6] for part in parts], dtype=torch.long),
        )

    def _rollout_source(self, obj: Any, guide_z: int, direction: int, longest: int) -> int | None:
        """A slice of the object 1-``longest`` slices behind ``guide_z`` (against ``direction``)."""
        hop = int(self.rng.integers(1, longest + 1))
        for distance in range(hop, 0, -1):
            z = guide_z - direction * distance
            if obj.z_first <= z <= obj.z_last and obj.areas[z - obj.z_first] >= MIN_GUIDE_AREA:
                return z
        return None

    def _rollout_chain(self, obj: Any, guide_z: int, direction: int) -> list[int]:
        """Slices behind ``guide_z``, farthest first, that a rollout walks to reach the guide: one hop of
        1-``MAX_ROLLOUT_HOP`` slices, or 2..``max_hops`` hops of 1-``CHAIN_HOP`` (fewer where the object
        ends); empty when nothing of the object lies behind the guide."""
        # One hop draws nothing extra, so the default recipe keeps the random stream of earlier runs.
        hops = int(self.rng.integers(1, self.max_hops + 1)) if self.max_hops > 1 else 1
        chain: list[int] = []
        nearer = guide_z
        for _ in range(hops):
            z = self._rollout_source(obj, nearer, direction, MAX_ROLLOUT_HOP if hops == 1 else CHAIN_HOP)
            if z is None:
                break
            chain.insert(0, z)
            nearer = z
        return chain

    def _propmask_task(self, count: int, size: int) -> tuple[torch.Tensor, ...]:
        rng = self.rng
        volume, obj = self._pick_object()
        image, spacing = volume.case.image, volume.case.spacing
        depth = image.shape[0]
        valid = np.flatnonzero(obj.areas >= MIN_GUIDE_AREA) + obj.z_first
        if valid.size == 0:
            valid = np.flatnonzero(obj.areas > 0) + obj.z_first
        near_end = rng.random() < 0.5
        if near_end:
            edge = min(3, valid.size)
            guide_z = int(rng.choice(valid[:edge]) if rng.random() < 0.5 else rng.choice(valid[-edge:]))
            outward = -1 if guide_z - obj.z_first < obj.z_last - guide_z else 1
            direction = outward if rng.random() < 0.75 else -outward
        else:
            guide_z = int(rng.choice(valid))
            direction = 1 if rng.random() < 0.5 else -1
        reach = slices_per_side(spacing[0])
        offsets = []
        for _ in range(count):
            step = (
                int(rng.integers(1, reach + 1))
                if rng.random() < 0.5
                else int(rng.integers(1, min(reach, 4) + 1))
            )
            sign = direction if rng.random() < 0.85 else -direction
            z = guide_z + sign * step
            if not 0 <= z < depth:
                z = guide_z - sign * step
            offsets.append(int(np.clip(z, 0, depth - 1)))
        guide_truth = self._object_slice(volume, obj, guide_z)
        guide_used = guide_truth
        chain = self._rollout_chain(obj, guide_z, direction) if rng.random() < self.rollout_chance else []
        corruption = rng.random()
        if corruption < 0.2:  # a neighbour's true mask on this image: like a guide that drifted one step
            neighbour = guide_z + int(rng.choice([-2, -1, 1, 2]))
            if (
                obj.z_first <= neighbour <= obj.z_last
                and obj.areas[neighbour - obj.z_first] >= MIN_GUIDE_AREA
            ):
                guide_used = self._object_slice(volume, obj, neighbour)
        scale = float(rng.uniform(1.0, 2.0))
        crop = square_crop(box_of_mask(guide_used), scale, shift=tuple(rng.uniform(-0.12, 0.12, size=2)))
        window = window_from_mask(image[guide_z], guide_used)
        width = window.high - window.low
        window = type(window)(
            window.low + rng.normal(0, 0.05) * width, window.high + rng.normal(0, 0.05) * width
        )
        # The chain's slices (rollout tasks) ride last in the stack so that they get the same augmentation.
        stack_z = [guide_z, *offsets, *chain]
        images = images_to_network(image[stack_z], crop, window, size)
        guide_net = masks_to_network(guide_used[None], crop, size)
        targets = masks_to_network(volume.object_map[offsets] == obj.object_id, crop, size)
        extra = []
        if chain:
            extra = [masks_to_network(self._object_slice(volume, obj, chain[0])[None], crop, size)]
            if rng.random() < 0.5:  # the source itself may have drifted already
                extra[0] = corrupt_masks(extra[0], rng)
        elif 0.2 <= corruption < 0.55:
            guide_net = corrupt_masks(guide_net, rng)
        factor = low_resolution_factor(rng)
        if factor is not None:
            images, guide_net = coarsen(images, factor), coarsen(guide_net, factor, binary=True)
            extra = [coarsen(mask, factor, binary=True) for mask in extra]
        images, masks = augment_geometry(images, torch.cat([guide_net, targets, *extra]), rng)
        images = augment_intensity(images, rng)
        hops = len(chain)
        if hops and masks[-1].sum() == 0:
            # The source's object fell outside the guide's crop, so it cannot guide a prediction.
            images, masks, hops = images[:-hops], masks[:-1], 0
        sources = torch.zeros((self.max_hops, *images.shape[1:]), dtype=images.dtype)
        if hops == 0:
            return images[0], masks[0], images[1:], masks[1:], sources, torch.zeros_like(images[0]), 0
        sources[:hops] = images[-hops:]
        return images[0], masks[0], images[1:-hops], masks[1:-1], sources, masks[-1], hops

    # ----------------------------------------------------------------- Box2Mask

    def box2mask_batch(self, samples: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs (N, 5, S, S), target (N, 1, S, S))``."""
        parts = [self._box2mask_sample(size) for _ in range(samples)]
        return torch.stack([part[0] for part in parts]), torch.stack([part[1] for part in parts])

    def _wrong_mask_sample(self, size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A slice just past the object's end carrying a leaked mask (the end slice's mask, dilated) and
        1-2 negative clicks on it; the answer is an empty mask (what a correction of a leak must give)."""
        rng = self.rng
        volume, obj = self._pick_object()
        depth = volume.case.image.shape[0]
        outward = int(rng.integers(1, 5))
        if rng.random() < 0.5:
            z, source = obj.z_first - outward, obj.z_first
        else:
            z, source = obj.z_last + outward, obj.z_last
        if not 0 <= z < depth:
            return None
        prior = self._object_slice(volume, obj, source)
        if rng.random() < 0.5:
            prior = ndimage.binary_dilation(prior, iterations=int(rng.integers(1, 4)))
        negative = [interior_point(prior, rng) for _ in range(int(rng.integers(1, 3)))]
        extent = box_of_mask(prior)
        crop = square_crop(extent, float(rng.uniform(1.2, 1.9)), shift=tuple(rng.normal(0, 0.03, size=2)))
        image = volume.case.image[z]
        inputs = box2mask_inputs(
            image, crop, box2mask_window(image, extent), size, box=None, negative=negative, prior=prior
        )
        target = masks_to_network(self._object_slice(volume, obj, z)[None], crop, size)
        inputs, target = augment_geometry(inputs, target, rng, rotate=False)
        inputs[:1] = augment_intensity(inputs[:1], rng)
        return inputs, target

    def _box2mask_sample(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng
        if rng.random() < 0.08:
            wrong = self._wrong_mask_sample(size)
            if wrong is not None:
                return wrong
        volume, obj = self._pick_object()
        valid = np.flatnonzero(obj.areas >= MIN_GUIDE_AREA) + obj.z_first
        if valid.size == 0:
            valid = np.flatnonzero(obj.areas > 0) + obj.z_first
        z = int(rng.choice(valid))
        image = volume.case.image[z]
        truth = self._object_slice(volume, obj, z)
        height, width = truth.shape
        box = jitter_box(box_of_mask(truth), truth.shape, rng)
        mode = rng.random()
        positive: list[tuple[float, float]] = []
        negative: list[tuple[float, float]] = []
        prior = None
        first_prompts = 1.0 - self.correction_share
        if mode < first_prompts * BOX_SHARE_OF_FIRST_PROMPTS:
            crop = square_crop(box, float(rng.uniform(1.2, 1.9)), shift=tuple(rng.normal(0, 0.03, size=2)))
            window = box2mask_window(image, box)
            prompt_box: tuple[int, int, int, int] | None = box
        elif mode < first_prompts:
            positive.append(interior_point(truth, rng))
            if rng.random() < 0.3:
                positive.append(interior_point(truth, rng, deep=False))
            y0, x0, y1, x1 = box_of_mask(truth)
            side = max(round(max(y1 - y0 + 1, x1 - x0 + 1) * rng.uniform(1.3, 4.0)), MIN_CROP_SIDE)
            jitter = rng.normal(0, 0.1, size=2) * side
            crop = CropBox(
                int(positive[0][0] + jitter[0]) - side // 2, int(positive[0][1] + jitter[1]) - side // 2, side
            )
            window = box2mask_window(image, crop)
            prompt_box = None
        else:
            prior = corrupt_prior(truth, volume, obj, z, rng)
            for _ in range(int(rng.integers(1, 4))):
                click = error_click(truth, prior, positive, negative)
                if click is None:
                    break
                (positive if click[2] else negative).append((click[0], click[1]))
            prompt_box = box if rng.random() < 0.5 else None
            corners = [box_of_mask(prior)] if prior.any() else []
            if prompt_box is not None:
                corners.append(prompt_box)
            corners.extend((int(y), int(x), int(y), int(x)) for y, x in positive + negative)
            if not corners:
                corners.append(box)
            array = np.array(corners)
            extent = (
                int(array[:, 0].min()),
                int(array[:, 1].min()),
                int(array[:, 2].max()),
                int(array[:, 3].max()),
            )
            crop = square_crop(extent, float(rng.uniform(1.2, 1.9)), shift=tuple(rng.normal(0, 0.03, size=2)))
            window = box2mask_window(image, prompt_box if prompt_box is not None else extent)
            if not prior.any():
                prior = None
        inputs = box2mask_inputs(
            image, crop, window, size, box=prompt_box, positive=positive, negative=negative, prior=prior
        )
        target = masks_to_network(truth[None], crop, size)
        del height, width
        factor = low_resolution_factor(rng)
        if factor is not None:
            inputs[:1] = coarsen(inputs[:1], factor)
            inputs[4:5] = coarsen(inputs[4:5], factor, binary=True)  # the prior mask
        stacked, target = augment_geometry(inputs, target, rng, rotate=False)
        stacked[:1] = augment_intensity(stacked[:1], rng)
        return stacked, target


def jitter_box(
    box: tuple[int, int, int, int], shape: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A box as a user would draw it: each edge moved by ~5% of the extent (slightly outward on average)."""
    y0, x0, y1, x1 = box
    extent_y, extent_x = y1 - y0 + 1, x1 - x0 + 1
    moves = rng.normal(0.03, 0.05, size=4) * np.array(
        [extent_y, extent_x, extent_y, extent_x]
    ) + rng.integers(-1, 2, size=4)
    y0 = int(np.clip(round(y0 - moves[0]), 0, shape[0] - 1))
    x0 = int(np.clip(round(x0 - moves[1]), 0, shape[1] - 1))
    y1 = int(np.clip(round(y1 + moves[2]), y0, shape[0] - 1))
    x1 = int(np.clip(round(x1 + moves[3]), x0, shape[1] - 1))
    return y0, x0, y1, x1


def interior_point(mask: np.ndarray, rng: np.random.Generator, deep: bool = True) -> tuple[float, float]:
    """A random foreground point; with ``deep`` drawn from the inner half (by distance to the edge)."""
    if deep:
        distance = ndimage.distance_transform_edt(mask)
        candidates = np.argwhere(distance >= 0.5 * distance.max())
    else:
        candidates = np.argwhere(mask)
    y, x = candidates[rng.integers(len(candidates))]
    return float(y), float(x)


def error_click(
    truth: np.ndarray, prior: np.ndarray, positive: list, negative: list
) -> tuple[float, float, bool] | None:
    """The click a careful user makes: centre of the largest error region (positive if missed)."""
    error = truth ^ prior
    for y, x in positive + negative:  # regions already clicked are considered handled
        error[max(int(y) - 2, 0) : int(y) + 3, max(int(x) - 2, 0) : int(x) + 3] = False
    if not error.any():
        return None
    regions, _ = ndimage.label(error)
    sizes = np.bincount(regions.ravel())[1:]
    largest = regions == (int(np.argmax(sizes)) + 1)
    distance = ndimage.distance_transform_edt(largest)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(y), float(x), bool(truth[y, x])


def corrupt_prior(
    truth: np.ndarray, volume: ObjectVolume, obj: Any, z: int, rng: np.random.Generator
) -> np.ndarray:
    """A plausible wrong mask to correct: neighbour slice's mask, eroded/dilated, shifted, with a blob, or
    swollen (``filled_prior`` / ``leaked_prior``, 35 %; eroded/dilated when the object has neither a bay to
    fill nor a leak to take)."""
    choice = rng.random()
    if choice >= 0.65:
        # A prediction that swallowed more than the object: the correction is a negative click inside the
        # old mask while the object is still there (the case session 8 found Box2Mask emptying).
        makers = [
            lambda: filled_prior(truth, rng),
            lambda: leaked_prior(truth, volume.case.image[z], volume.object_map[z], obj.object_id, rng),
        ]
        for make in makers if choice < 0.82 else makers[::-1]:
            swollen = make()
            if swollen is not None:
                return swollen
        return dilated_or_eroded(truth, rng)
    if choice < 0.2:
        neighbour = z + int(rng.choice([-3, -2, -1, 1, 2, 3]))
        if obj.z_first <= neighbour <= obj.z_last:
            return volume.object_map[neighbour] == obj.object_id
    if choice < 0.37:
        return dilated_or_eroded(truth, rng)
    if choice < 0.5:
        return np.roll(truth, tuple(rng.integers(-4, 5, size=2)), axis=(0, 1))
    prior = truth.copy()
    y, x = interior_point(truth, rng, deep=False)
    radius = max(2, int(np.sqrt(truth.sum()) * rng.uniform(0.15, 0.4)))
    yy, xx = np.ogrid[: truth.shape[0], : truth.shape[1]]
    blob = (yy - y - rng.integers(-radius, radius + 1)) ** 2 + (
        xx - x - rng.integers(-radius, radius + 1)
    ) ** 2 <= radius**2
    prior[blob] = rng.random() < 0.5
    return prior


def dilated_or_eroded(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``truth (Y, X)`` dilated or eroded by 1-3 px (even odds)."""
    iterations = int(rng.integers(1, 4))
    if rng.random() < 0.5:
        return ndimage.binary_dilation(truth, iterations=iterations)
    return ndimage.binary_erosion(truth, iterations=iterations)


def disk(radius: int) -> np.ndarray:
    """A filled disk ``(2r+1, 2r+1)`` of True, the structuring element of a round closing."""
    yy, xx = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return yy**2 + xx**2 <= radius**2


def filled_prior(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """``truth (Y, X)`` with its holes and bays filled (a closing by a 3-9 px disk): what a mask that swallowed
    a kidney's sinus or the bay of a crescent looks like. None when that adds under 8 % of the area."""
    radius = int(rng.integers(3, 10))
    padded = np.pad(truth, radius + 1)
    closed = ndimage.binary_closing(padded, structure=disk(radius))[
        radius + 1 : -radius - 1, radius + 1 : -radius - 1
    ]
    filled = ndimage.binary_fill_holes(closed | truth)
    if filled.sum() - truth.sum() < max(4, 0.08 * truth.sum()):
        return None
    return filled


def leaked_prior(
    truth: np.ndarray,
    image: np.ndarray,
    object_map: np.ndarray,
    object_id: int,
    rng: np.random.Generator,
) -> np.ndarray | None:
    """``truth (Y, X)`` plus a one-sided leak into touching tissue, as both engines leak: part of a neighbouring
    labelled object when one touches it, else the nearby pixels whose intensity looks like the object's.
    None when no leak of at least 8 % of the object's area is found."""
    reach = int(rng.integers(3, 13))
    ring = ndimage.binary_dilation(truth, iterations=reach) & ~truth
    centre_y, centre_x = np.argwhere(truth).mean(axis=0)
    yy, xx = np.mgrid[: truth.shape[0], : truth.shape[1]]
    angle = np.arctan2(yy - centre_y, xx - centre_x) - rng.uniform(-np.pi, np.pi)
    side = np.cos(angle) > 0.5  # within +-60 degrees of a random direction
    others = ring & side & (object_map > 0) & (object_map != object_id)
    if rng.random() < 0.5 and others.sum() >= 0.08 * truth.sum():
        leak = others
    else:
        low, high = np.percentile(image[truth], [10, 90])
        leak = ring & side & (image >= low) & (image <= high)
    regions, _ = ndimage.label(leak | truth)
    touching = np.unique(regions[truth])
    leak &= np.isin(regions, touching[touching > 0])
    if leak.sum() < max(4, 0.08 * truth.sum()):
        return None
    return truth | leak


def corrupt_masks(masks: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Network-space guide-mask corruption ``(N, S, S)`` 0/1: erosion, dilation or smooth boundary noise."""
    choice = rng.random()
    radius = int(rng.integers(1, 4))
    kernel = 2 * radius + 1
    if choice < 0.3:
        corrupted = F.max_pool2d(masks[:, None], kernel, stride=1, padding=radius)[:, 0]
    elif choice < 0.6:
        corrupted = -F.max_pool2d(-masks[:, None], kernel, stride=1, padding=radius)[:, 0]
    else:
        size = masks.shape[-1]
        noise = torch.from_numpy(rng.standard_normal((masks.shape[0], 1, 6, 6)).astype(np.float32))
        noise = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        soft = F.avg_pool2d(masks[:, None], 7, stride=1, padding=3)[:, 0]
        corrupted = ((soft + float(rng.uniform(0.1, 0.35)) * noise) > 0.5).float()
    return corrupted if corrupted.sum() > 0 else masks


def low_resolution_factor(rng: np.random.Generator) -> float | None:
    """For ``LOW_RESOLUTION_CHANCE`` of tasks, how much coarser in-plane to show them (1.5-4x); else None."""
    return float(rng.uniform(1.5, 4.0)) if rng.random() < LOW_RESOLUTION_CHANCE else None


def coarsen(batch: torch.Tensor, factor: float, *, binary: bool = False) -> torch.Tensor:
    """``(C, S, S)`` network images (or, ``binary``, 0/1 masks) as a scan ``factor`` x coarser in-plane gives them.

    A small object on a coarse grid (TotalSegmentator's 3 mm, a thick-slab CT) reaches the network as a
    crop of few pixels blown up bilinearly; this reproduces that blur and blockiness. Masks are re-drawn on
    the coarse grid and resized like ``masks_to_network`` (a mask that vanishes there is kept as it was).
    """
    size = batch.shape[-1]
    coarse = max(8, round(size / factor))
    small = F.interpolate(batch[None], size=(coarse, coarse), mode="area")
    if binary:
        small = (small > 0.5).float()
        if not small.any():
            return batch
    blown_up = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)[0]
    return (blown_up > 0.5).float() if binary else blown_up


def augment_geometry(
    images: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator, rotate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same flips, rot90 and (optionally) small rotation/scale for all ``(C, S, S)`` images and masks."""
    if rng.random() < 0.5:
        images, masks = images.flip(-1), masks.flip(-1)
    if rng.random() < 0.5:
        images, masks = images.flip(-2), masks.flip(-2)
    turns = int(rng.integers(0, 4))
    if turns:
        images, masks = torch.rot90(images, turns, (-2, -1)), torch.rot90(masks, turns, (-2, -1))
    if rotate and rng.random() < 0.5:
        angle = math.radians(float(rng.uniform(-30, 30)))
        scale = float(rng.uniform(0.85, 1.15))
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        theta = torch.tensor([[[cos, -sin, 0.0], [sin, cos, 0.0]]], dtype=torch.float32)
        grid = F.affine_grid(theta, [1, 1, *images.shape[-2:]], align_corners=False)
        images = F.grid_sample(images[None] + 1.0, grid, mode="bilinear", align_corners=False)[0] - 1.0
        masks = (F.grid_sample(masks[None], grid, mode="bilinear", align_corners=False)[0] > 0.5).float()
    return images.contiguous(), masks.contiguous()


INVERT_PROBABILITY = 0.2
"""Share of tasks whose windowed images are inverted (dark <-> bright). The real training objects are brighter
than their surroundings (hippocampus, LGE atrium); inverted, they teach that the guide mask, not the polarity,
says what the object is (lungs and fluid in CT, T1 versus T2 MR)."""


def augment_intensity(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Inversion, gamma, contrast/brightness and noise on ``(C, S, S)`` images in [-1, 1] (the same for every
    channel but the noise, so a task's guide and adjacent slices keep one contrast)."""
    unit = (images + 1.0) / 2.0
    if rng.random() < INVERT_PROBABILITY:
        unit = 1.0 - unit
    if rng.random() < 0.3:
        unit = unit.clamp(0, 1) ** float(np.exp(rng.normal(0, 0.25)))
    if rng.random() < 0.5:
        unit = (unit - 0.5) * float(rng.uniform(0.75, 1.25)) + 0.5 + float(rng.uniform(-0.1, 0.1))
    if rng.random() < 0.3:
        unit = unit + float(rng.uniform(0.0, 0.06)) * torch.randn_like(unit)
    return (unit * 2.0 - 1.0).clamp(-1.5, 1.5)


@torch.no_grad()
def apply_rollout_guides(propmask: PropMask, batch: PropBatch, device: torch.device) -> int:
    """Replace the guide masks of rollout tasks by the network's own thresholded prediction of the guide
    slice, walked from the task's source slice along its chain (see ``PropBatch``); a walk whose prediction
    comes back empty or judged object-free at any step keeps the true guide. Returns how many guides were
    replaced."""
    indices = torch.nonzero(batch.rollout).flatten()
    if indices.numel() == 0:
        return 0
    assert batch.hops is not None
    hops = batch.hops[indices].clamp(min=1)  # (R,)
    walked = batch.source_mask[indices].clone()  # (R, 1, S, S): the mask reached so far on each chain
    alive = torch.ones(indices.numel(), dtype=torch.bool)
    for step in range(int(hops.max())):
        active = torch.nonzero(alive & (hops > step)).flatten()
        if active.numel() == 0:
            break
        tasks = indices[active]
        reaches_guide = (hops[active] == step + 1)[:, None, None, None]
        following = batch.source[tasks, min(step + 1, batch.source.shape[1] - 1)][:, None]
        target_image = torch.where(reaches_guide, batch.guide[tasks], following)
        output = propmask(
            batch.source[tasks, step][:, None].to(device),
            walked[active].to(device),
            target_image.to(device),
            all_heads=False,
        )
        predicted = torch.sigmoid(output.masks[0]) >= 0.5  # (n, 1, S, S)
        if output.present is not None:
            predicted &= (torch.sigmoid(output.present) >= 0.5)[:, :, None, None]
        predicted = predicted.float().cpu()
        walked[active] = predicted
        alive[active[predicted.flatten(1).sum(1) == 0]] = False
    batch.guide_mask[indices[alive]] = walked[alive]
    return int(alive.sum())


# ---------------------------------------------------------------------------------------------------------
# Distillation: a cheaper PropMask (a smaller input) learns from the shipped one on the same tasks


def resized_batch(batch: PropBatch, size: int) -> PropBatch:
    """``batch`` shown at ``size`` px: images and targets area-averaged (targets stay soft, as the true
    fraction of each coarse pixel), guide and source masks area-averaged and cut at one half (the network
    is given 0/1 guides at inference); ``present`` and ``rollout`` as they are."""

    def area(images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images, size=(size, size), mode="area")

    return PropBatch(
        guide=area(batch.guide),
        guide_mask=(area(batch.guide_mask) >= 0.5).float(),
        adjacent=area(batch.adjacent),
        target=area(batch.target),
        present=batch.present,
        source=area(batch.source),
        source_mask=(area(batch.source_mask) >= 0.5).float(),
        rollout=batch.rollout,
        hops=batch.hops,
    )


@dataclass
class TeacherAnswer:
    """The teacher's probabilities for a student's batch: ``masks (B, K, s, s)`` at the student's size
    ``s``, ``present (B, K)`` (None when the teacher has no present head)."""

    masks: torch.Tensor
    present: torch.Tensor | None


@torch.no_grad()
def teacher_answer(
    teacher: PropMask, seen_by_teacher: PropBatch, student_batch: PropBatch, device: torch.device
) -> TeacherAnswer:
    """Run ``teacher`` on the tasks at its own size. A rollout task's guide is the one the student was given
    (its own prediction, enlarged), so both answer the same question."""
    size = teacher.config.input_size
    enlarged = F.interpolate(student_batch.guide_mask, size=(size, size), mode="nearest")
    guide_mask = torch.where(student_batch.rollout[:, None, None, None], enlarged, seen_by_teacher.guide_mask)
    output = teacher(
        seen_by_teacher.guide.to(device),
        guide_mask.to(device),
        seen_by_teacher.adjacent.to(device),
        all_heads=False,
    )
    masks = F.interpolate(torch.sigmoid(output.masks[0]), size=student_batch.target.shape[-2:], mode="area")
    present = torch.sigmoid(output.present) if output.present is not None else None
    return TeacherAnswer(masks=masks, present=present)


def bernoulli_kl(student_logits: torch.Tensor, teacher_probabilities: torch.Tensor) -> torch.Tensor:
    """Mean over elements of KL(teacher || student) between per-element Bernoulli distributions: zero
    exactly when the student gives the teacher's probabilities (a soft-target cross-entropy is not)."""
    p = teacher_probabilities
    teacher_negative_entropy = torch.special.xlogy(p, p) + torch.special.xlogy(1.0 - p, 1.0 - p)
    cross = p * F.logsigmoid(student_logits) + (1.0 - p) * F.logsigmoid(-student_logits)
    return (teacher_negative_entropy - cross).mean()


def distillation_loss(output: PropMaskOutput, answer: TeacherAnswer) -> torch.Tensor:
    """KL to the teacher's finest mask, plus half the KL to its object-present call (as in the main loss)."""
    loss = bernoulli_kl(output.masks[0], answer.masks)
    if output.present is not None and answer.present is not None:
        loss = loss + 0.5 * bernoulli_kl(output.present, answer.present)
    return loss


# ---------------------------------------------------------------------------------------------------------
# Loss


def propmask_step(
    propmask: PropMask,
    optimizer: torch.optim.Optimizer,
    sampler: TaskSampler,
    device: torch.device,
    tasks: int = 8,
    teacher: PropMask | None = None,
    distill_weight: float = 1.0,
    slice_dice_weight: float = 0.0,
) -> dict[str, float]:
    """One PropMask optimisation step on ``tasks`` tasks (a share of them rollout-guided); its losses.

    ``slice_dice_weight`` x ``slice_dice_loss`` of the finest output is added to the mask loss (0: not
    computed).

    With a ``teacher`` (a frozen PropMask at an input size >= the student's), the tasks are drawn at the
    teacher's size, shown to the student area-downsampled (``resized_batch``), and ``distill_weight`` x
    ``distillation_loss`` is added to the loss against the true masks."""
    config = propmask.config
    if teacher is None:
        seen_by_teacher = None
        batch = sampler.propmask_batch(tasks, config.adjacent_slices, config.input_size)
    else:
        seen_by_teacher = sampler.propmask_batch(tasks, config.adjacent_slices, teacher.config.input_size)
        batch = resized_batch(seen_by_teacher, config.input_size)
    rollout_guides = apply_rollout_guides(propmask, batch, device)
    output = propmask(batch.guide.to(device), batch.guide_mask.to(device), batch.adjacent.to(device))
    target = batch.target.to(device)
    mask_loss = segmentation_loss(output.masks, target)
    if slice_dice_weight > 0.0:
        mask_loss = mask_loss + slice_dice_weight * slice_dice_loss(output.masks[0], target)
    present_loss = (
        F.binary_cross_entropy_with_logits(output.present, batch.present.to(device))
        if output.present is not None
        else torch.zeros(())
    )
    loss = mask_loss + 0.5 * present_loss
    losses = {"prop": mask_loss.item(), "present": present_loss.item(), "rollout": float(rollout_guides)}
    if teacher is not None and seen_by_teacher is not None:
        distill = distillation_loss(output, teacher_answer(teacher, seen_by_teacher, batch, device))
        loss = loss + distill_weight * distill
        losses["distill"] = distill.item()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(propmask.parameters(), 12.0)
    optimizer.step()
    return losses


def segmentation_loss(logits: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Batch soft Dice + BCE at every deep-supervision level (weights 1, 1/2, 1/4, ... normalised).

    ``logits[i]`` is ``(N, C, S / 2**i, S / 2**i)``; ``target`` is 0/1 ``(N, C, S, S)``.
    """
    weights = [0.5**level for level in range(len(logits))]
    total = torch.zeros((), device=target.device)
    for weight, level_logits in zip(weights, logits, strict=True):
        level_target = (
            target
            if level_logits.shape[-1] == target.shape[-1]
            else F.interpolate(target, size=level_logits.shape[-2:], mode="area")
        )
        probabilities = torch.sigmoid(level_logits)
        intersection = (probabilities * level_target).sum()
        dice = 1.0 - (2.0 * intersection + 1.0) / (probabilities.sum() + level_target.sum() + 1.0)
        bce = F.binary_cross_entropy_with_logits(level_logits, level_target)
        total = total + weight * (dice + bce)
    return total / sum(weights)


def slice_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean soft Dice loss over the target slices that hold the object, each slice on its own.

    ``logits``/``target`` ``(N, C, S, S)``. The batch Dice of ``segmentation_loss`` weighs a slice by its
    area, so the few pixels of an object's last slices barely count and the network learns to give up on
    them early; here every non-empty slice counts alike. 0 when no target slice holds the object.
    """
    probabilities = torch.sigmoid(logits).flatten(2)
    truth = target.flatten(2)
    filled = truth.sum(dim=2) > 0
    if not bool(filled.any()):
        return torch.zeros((), device=logits.device)
    intersection = (probabilities * truth).sum(dim=2)
    per_slice = 1.0 - (2.0 * intersection + 1.0) / (probabilities.sum(dim=2) + truth.sum(dim=2) + 1.0)
    return per_slice[filled].mean()


# ---------------------------------------------------------------------------------------------------------
# Validation: 3D segmentation of whole objects with the predictor and a simple outward loop


def dice(a: np.ndarray, b: np.ndarray) -> float:
    denominator = int(a.sum()) + int(b.sum())
    return 1.0 if denominator == 0 else 2.0 * int((a & b).sum()) / denominator


def segment_object(
    predictor: LearnedPredictor,
    image: np.ndarray,
    spacing: tuple[float, float, float],
    z: int,
    prompt: np.ndarray,
) -> np.ndarray:
    """Propagate a 2D mask on slice ``z`` through the volume (PropSAM windows, stop at an empty boundary).

    A compact loop for training-time validation only; the product loop is ``ml/propagation.py``.
    """
    result = np.zeros(image.shape, dtype=bool)
    result[z] = prompt
    if not prompt.any():
        return result
    window = window_from_mask(image[z], prompt)
    reach = slices_per_side(spacing[0])
    for direction in (1, -1):
        guide_z, guide_mask = z, prompt
        while True:
            indices = [
                guide_z + direction * step
                for step in range(1, reach + 1)
                if 0 <= guide_z + direction * step < image.shape[0]
            ]
            if not indices:
                break
            masks = (
                predictor.propagate(image[guide_z], guide_mask, image[indices], window, spacing[1:]) >= 0.5
            )
            ended = False
            for index, mask in zip(indices, masks, strict=True):
                if not mask.any():
                    ended = True
                    break
                result[index] = mask
                guide_z, guide_mask = index, mask
            if ended or guide_z != indices[-1]:
                break
    return result


def load_validation_objects(
    data_dir: pathlib.Path, per_dataset: dict[str, int]
) -> list[tuple[str, ObjectVolume]]:
    splits = json.loads(SPLITS_FILE.read_text())["datasets"]
    volumes = []
    for name, count in per_dataset.items():
        if not (data_dir / name).is_dir():
            continue
        for case_id in splits[name]["val"][:count]:
            volumes.append((name, object_volume(read_case(data_dir / name, case_id))))
    return volumes


def validate(predictor: LearnedPredictor, volumes: list[tuple[str, ObjectVolume]]) -> dict[str, float]:
    """Mean 3D Dice per data set for box and mask prompts on each object's largest slice."""
    scores: dict[str, list[float]] = {}
    for dataset, volume in volumes:
        image, spacing = volume.case.image, volume.case.spacing
        for obj in volume.objects:
            truth = volume.object_map == obj.object_id
            z = obj.largest_slice
            box = tuple(int(v) for v in obj.boxes[z - obj.z_first])
            mask_prompt = segment_object(predictor, image, spacing, z, truth[z])
            box_mask = predictor.prompt_mask(image[z], spacing[1:], box=box)
            box_prompt = segment_object(predictor, image, spacing, z, box_mask)
            scores.setdefault(f"{dataset}/mask", []).append(dice(mask_prompt, truth))
            scores.setdefault(f"{dataset}/box", []).append(dice(box_prompt, truth))
            scores.setdefault(f"{dataset}/box2d", []).append(dice(box_mask, truth[z]))
    summary = {key: float(np.mean(values)) for key, values in scores.items()}
    box_means = [value for key, value in summary.items() if key.endswith("/box")]
    summary["score"] = float(np.mean(box_means)) if box_means else 0.0
    return summary


# ---------------------------------------------------------------------------------------------------------
# Main loop


def build_pools(
    data_dir: pathlib.Path,
    datasets: list[str],
    synthetic: int,
    seed: int,
    log: Any,
    pseudo_sources: list[str] | None = None,
    pseudo_volumes: int = 0,
    rib_like_tubes: float = 0.0,
) -> dict[str, list[ObjectVolume]]:
    """Object pools by name: each real data set's training cases, ``"synthetic"`` and ``"pseudo"``.

    ``rib_like_tubes``: share of the generated tubes drawn close to the axial plane (``ml.data.synthetic_case``).

    ``pseudo_volumes`` pseudo-labelled volumes (``ml.data.pseudo_labelled_case``) are drawn evenly from the
    images of ``pseudo_sources``: a data set's training cases where ``ml/splits.json`` lists some, else all
    of its cases (then its images are no longer unseen by the networks, though its labels are never read).
    """
    splits = json.loads(SPLITS_FILE.read_text())["datasets"]
    pools: dict[str, list[ObjectVolume]] = {}
    for name in datasets:
        directory = data_dir / name
        if not directory.is_dir():
            raise FileNotFoundError(f"data set {directory} not found")
        # A data set outside the committed split is trained on in full.
        case_ids = splits[name]["train"] if name in splits else list_cases(directory)
        started = time.time()
        pools[name] = [object_volume(read_case(directory, case_id)) for case_id in case_ids]
        log(
            f"loaded {name}: {len(case_ids)} train cases, {sum(len(v.objects) for v in pools[name])} objects in {time.time() - started:.0f}s"
        )
    if synthetic:
        rng = np.random.default_rng(seed + 1)
        pools["synthetic"] = [
            object_volume(synthetic_case(rng, f"synthetic_{i}", rib_like_tubes)) for i in range(synthetic)
        ]
        log(f"generated {synthetic} synthetic volumes")
    if pseudo_volumes and pseudo_sources:
        rng = np.random.default_rng(seed + 2)
        started = time.time()
        pool: list[ObjectVolume] = []
        for position, name in enumerate(pseudo_sources):
            directory = data_dir / name
            if not directory.is_dir():
                raise FileNotFoundError(f"pseudo-label source {directory} not found")
            case_ids = splits.get(name, {}).get("train")
            if not case_ids:
                case_ids = list_cases(directory)
                log(f"pseudo-label source {name}: no training split, using all {len(case_ids)} images")
            # Volumes are shared out evenly; a small source is cut up more than once (new classes each time).
            count = pseudo_volumes // len(pseudo_sources) + (position < pseudo_volumes % len(pseudo_sources))
            order = rng.permutation(len(case_ids))
            for draw in range(count):
                case = read_case(directory, case_ids[order[draw % len(case_ids)]])
                pool.append(object_volume(pseudo_labelled_case(case, rng)))
        pools["pseudo"] = pool
        log(
            f"pseudo-labelled {len(pool)} volumes of {', '.join(pseudo_sources)}: "
            f"{sum(len(v.objects) for v in pool)} objects in {time.time() - started:.0f}s"
        )
    return pools


def learning_rate(
    base: float,
    step: int,
    elapsed: float,
    budget: float,
    warm_from: int = 0,
    anneal_fraction: float = 0.3,
) -> float:
    """Linear warm-up over 200 steps from ``warm_from``, constant, then cosine down to 5% over the last
    ``anneal_fraction`` of the budget (1.0: the whole invocation is one anneal, for a final sitting)."""
    warm = min(1.0, (step - warm_from + 1) / 200)
    fraction = elapsed / budget if budget > 0 else 0.0
    anneal_start = 1.0 - anneal_fraction
    if fraction <= anneal_start:
        return base * warm
    progress = min(1.0, (fraction - anneal_start) / anneal_fraction)
    return base * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def upgrade_present_head(
    propmask: PropMask, present_features: str, optimizers_state: dict[str, Any]
) -> tuple[PropMask, dict[str, Any]]:
    """A PropMask whose present head reads ``present_features``: every other weight is kept and the head is
    freshly initialised. The PropMask optimizer keeps its moments for all other parameters (the head's
    parameters keep their positions in the parameter list, only their entries are dropped)."""
    upgraded = PropMask(dataclasses.replace(propmask.config, present_features=present_features))
    kept = {key: value for key, value in propmask.state_dict().items() if not key.startswith("present.")}
    missing, unexpected = upgraded.load_state_dict(kept, strict=False)
    if unexpected or any(not key.startswith("present.") for key in missing):
        raise ValueError(f"cannot upgrade the present head: missing {missing}, unexpected {unexpected}")
    names = [name for name, _ in propmask.named_parameters()]
    if names != [name for name, _ in upgraded.named_parameters()]:
        raise ValueError("parameter order changed; cannot carry the optimizer state over")
    head_indices = {index for index, name in enumerate(names) if name.startswith("present.")}
    optimizer_state = dict(optimizers_state["propmask"])
    optimizer_state["state"] = {
        index: value for index, value in optimizer_state["state"].items() if index not in head_indices
    }
    return upgraded, {**optimizers_state, "propmask": optimizer_state}


def task_weights(
    datasets: list[str], overrides: list[str], synthetic_weight: float, pseudo_weight: float = 0.0
) -> dict[str, float]:
    """Share of tasks per pool: ``synthetic_weight`` generated, ``pseudo_weight`` pseudo-labelled, the rest
    split over ``datasets`` by their relative weights.

    Args:
        overrides: ``["NAME=W", ...]``; data sets not named keep relative weight 1.

    Raises:
        ValueError: a malformed entry, an unknown data set, a weight that is not positive, or generated and
            pseudo-labelled shares that leave nothing (or less than nothing) to the data sets.
    """
    if synthetic_weight < 0 or pseudo_weight < 0 or synthetic_weight + pseudo_weight >= 1.0:
        raise ValueError(
            f"--synthetic-weight {synthetic_weight} and --pseudo-weight {pseudo_weight} must be >= 0 "
            "and leave a share for the data sets (sum < 1)"
        )
    relative = dict.fromkeys(datasets, 1.0)
    for entry in overrides:
        name, separator, value = entry.partition("=")
        if not separator or name not in relative:
            raise ValueError(f"--dataset-weight {entry!r}: expected NAME=W with NAME one of {datasets}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"--dataset-weight {entry!r}: {value!r} is not a number") from None
        if not weight > 0:
            raise ValueError(f"--dataset-weight {entry!r}: the weight must be positive")
        relative[name] = weight
    total = sum(relative.values())
    real_share = 1.0 - synthetic_weight - pseudo_weight
    weights = {name: real_share * weight / total for name, weight in relative.items()}
    weights["synthetic"] = synthetic_weight
    if pseudo_weight:
        weights["pseudo"] = pseudo_weight
    return weights


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ml.train", description="Train Box2Mask + PropMask (PropSAM-style)."
    )
    parser.add_argument(
        "--data-dir", type=pathlib.Path, default=DEFAULT_DATA_DIR, help="folder holding nnU-Net raw data sets"
    )
    parser.add_argument(
        "--datasets",
        nargs="*",
        default=list(TRAIN_DATASETS),
        help="data set folder names (train split from ml/splits.json)",
    )
    parser.add_argument(
        "--synthetic", type=int, default=100, help="number of generated volumes in the pool (0 = off)"
    )
    parser.add_argument(
        "--synthetic-weight", type=float, default=0.3, help="share of tasks drawn from generated volumes"
    )
    parser.add_argument(
        "--pseudo-sources",
        nargs="*",
        default=[],
        metavar="NAME",
        help="data sets whose images (never their labels) are cut into pseudo-labelled objects",
    )
    parser.add_argument(
        "--pseudo-volumes", type=int, default=60, help="number of pseudo-labelled volumes in the pool"
    )
    parser.add_argument(
        "--pseudo-weight",
        type=float,
        default=0.25,
        help="share of tasks drawn from pseudo-labelled volumes (only with --pseudo-sources)",
    )
    parser.add_argument(
        "--dataset-weight",
        action="append",
        default=[],
        metavar="NAME=W",
        help="relative share of a real data set among the non-generated tasks (default: equal shares)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fast")
    parser.add_argument("--minutes", type=float, default=60.0, help="training time budget of this invocation")
    parser.add_argument(
        "--run",
        type=pathlib.Path,
        default=REPO_ROOT / "ml" / "runs" / "default",
        help="run folder (checkpoints, log)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from <run>/last.pt")
    parser.add_argument(
        "--init-weights",
        type=pathlib.Path,
        default=None,
        help="start a new run from these networks (e.g. ml/weights/proplabel_learned.pt), fresh optimizer",
    )
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=8, help="PropMask tasks per step")
    parser.add_argument("--box-samples", type=int, default=16, help="Box2Mask samples per Box2Mask step")
    parser.add_argument("--box-every", type=int, default=2, help="a Box2Mask step every N steps")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--networks",
        choices=("both", "box2mask", "propmask"),
        default=None,
        help="which networks train; box2mask = a Box2Mask step every step, PropMask left as it is; "
        "propmask = PropMask only, Box2Mask left as it is (default: both for a new run, the checkpoint's "
        "choice for --resume)",
    )
    parser.add_argument(
        "--propmask-input-size",
        type=int,
        default=None,
        help="PropMask input side in px for a new run (e.g. 64: about half the work per propagated slice); "
        "the convolution and attention weights do not depend on it, so --init-weights carries over",
    )
    parser.add_argument(
        "--box2mask-corrections",
        type=float,
        default=CORRECTION_SHARE,
        help="share of Box2Mask samples that correct a wrong mask (1.0 trains a corrections network)",
    )
    parser.add_argument(
        "--anneal-fraction",
        type=float,
        default=0.3,
        help="share of --minutes, at the end, over which the learning rate is cosine-annealed to 5%%",
    )
    parser.add_argument(
        "--present-features",
        choices=("decoder", "bottleneck"),
        default="decoder",
        help="object-present head input; resuming a checkpoint with the other kind re-initialises that head",
    )
    parser.add_argument(
        "--rollout",
        type=float,
        default=0.5,
        help="share of PropMask tasks guided by the network's own prediction of the guide slice",
    )
    parser.add_argument(
        "--rollout-hops",
        type=int,
        default=1,
        help="a rollout walks 1..N predictions (uniform) to its guide, each hop of 1-4 slices when N > 1",
    )
    parser.add_argument(
        "--rib-like-tubes",
        type=float,
        default=0.0,
        help="share of generated tubes lying close to the axial plane (1.5-4 mm drift per mm of z, like ribs)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--val-minutes", type=float, default=12.0)
    parser.add_argument(
        "--val-cases",
        type=int,
        nargs=2,
        default=(8, 3),
        metavar=("HIPPO", "LA"),
        help="validation cases used during training",
    )
    parser.add_argument(
        "--teacher",
        type=pathlib.Path,
        default=None,
        help="distil PropMask from this weights file's or training state's PropMask (frozen; its input size "
        "must be >= the student's): tasks are drawn at the teacher's size and shown to the student "
        "downsampled",
    )
    parser.add_argument(
        "--distill-weight",
        type=float,
        default=None,
        help="weight of the distillation term, with --teacher only (default 1; a per-pixel mean KL, so "
        "small next to Dice + BCE)",
    )
    parser.add_argument(
        "--slice-dice-weight",
        type=float,
        default=0.0,
        help="weight of a per-slice Dice term on PropMask's non-empty target slices (0 = off): every slice "
        "counts alike, so an object's small last slices are not given up early",
    )
    parser.add_argument(
        "--max-steps", type=int, default=0, help="stop after this many steps (0 = only the time budget)"
    )
    args = parser.parse_args(argv)
    # Bad settings end here, with the usage line, before any data set is loaded.
    if not 0.0 < args.anneal_fraction <= 1.0:
        parser.error(f"--anneal-fraction must be in (0, 1], got {args.anneal_fraction}")
    if not 0.0 <= args.rib_like_tubes <= 1.0:
        parser.error(f"--rib-like-tubes must be in [0, 1], got {args.rib_like_tubes}")
    if not 0.0 <= args.box2mask_corrections <= 1.0:
        parser.error(f"--box2mask-corrections must be in [0, 1], got {args.box2mask_corrections}")
    if args.propmask_input_size is not None and args.resume:
        parser.error("--propmask-input-size applies to a new run; a resumed run keeps its checkpoint's size")
    if args.teacher is not None and args.networks == "box2mask":
        parser.error("--teacher distils PropMask; --networks box2mask trains no PropMask")
    if args.distill_weight is not None and args.teacher is None:
        parser.error("--distill-weight weighs what a --teacher says; give a --teacher too")
    if args.teacher is not None and args.distill_weight is None:
        args.distill_weight = 1.0
    if args.distill_weight is not None and args.distill_weight <= 0.0:
        parser.error(f"--distill-weight must be > 0, got {args.distill_weight}")
    if args.slice_dice_weight < 0.0:
        parser.error(f"--slice-dice-weight must be >= 0, got {args.slice_dice_weight}")
    if args.teacher is not None and not args.teacher.is_file():
        parser.error(f"--teacher {args.teacher}: no such file")
    try:
        if not args.pseudo_sources:
            args.pseudo_weight = 0.0
        args.task_weights = task_weights(
            args.datasets, args.dataset_weight, args.synthetic_weight, args.pseudo_weight
        )
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = (
        torch.device(args.device)
        if args.device
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    run_dir: pathlib.Path = args.run
    run_dir.mkdir(parents=True, exist_ok=True)
    log_file = (run_dir / "log.jsonl").open("a")

    def log(message: str, **fields: Any) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        print(f"[{stamp}] {message}", flush=True)
        log_file.write(json.dumps({"time": time.time(), "message": message, **fields}) + "\n")
        log_file.flush()

    box_config, prop_config = PRESETS[args.preset]
    prop_config = dataclasses.replace(prop_config, present_features=args.present_features)
    step, trained_seconds, best_score, history = 0, 0.0, -1.0, []
    warm_from = 0
    box2mask, propmask = Box2Mask(box_config), PropMask(prop_config)
    optimizers_state = None
    if args.resume:
        state = load_training_state(run_dir / "last.pt")
        box2mask, propmask = state["networks"]
        step = int(state["step"])
        trained_seconds = float(state["metadata"].get("trained_seconds", 0.0))
        best_score = float(state["metadata"].get("best_score", -1.0))
        history = list(state["metadata"].get("validation", []))
        optimizers_state = state["optimizers"]
        if propmask.config.present_features != args.present_features:
            propmask, optimizers_state = upgrade_present_head(
                propmask, args.present_features, optimizers_state
            )
            warm_from = step - 150  # a short warm-up (50 steps) for the fresh head
            log(f"object-present head re-initialised to read {args.present_features!r} features")
        if args.networks is None:
            # A propmask-only run resumed without the flag must not start training (and so changing)
            # the Box2Mask it was meant to keep; checkpoints older than this key trained both.
            args.networks = str(state["metadata"].get("networks", "both"))
        if args.teacher is None and state["metadata"].get("teacher"):
            log(
                f"note: this run was distilled from {state['metadata']['teacher']}; it continues without a teacher"
            )
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        log(f"resumed at step {step} ({trained_seconds / 3600:.2f} h trained, best score {best_score:.3f})")
    else:
        torch.manual_seed(args.seed)
        if args.init_weights is not None:
            # Continues training when only the shipped networks survive (the run folder is not in git):
            # their configs come with them, so --preset and --present-features do not apply.
            box2mask, propmask, init_metadata = load_weights(args.init_weights)
            step = int(init_metadata.get("step", 0))
            trained_seconds = float(init_metadata.get("trained_seconds", 0.0))
            warm_from = step  # a warm-up for the fresh optimizer moments
            log(f"initialised from {args.init_weights} (step {step}, {trained_seconds / 3600:.2f} h trained)")
        if args.propmask_input_size is not None:
            resized = dataclasses.replace(propmask.config, input_size=args.propmask_input_size)
            propmask.config = resized  # validated by the config itself (divisible by 2**(stages-1))
            log(f"PropMask input size {resized.input_size} px")
    if args.networks is None:
        args.networks = "both"
    if args.teacher is not None and args.networks == "box2mask":
        raise SystemExit(f"--teacher distils PropMask; {run_dir} trains only box2mask (give --networks)")
    log(f"training networks: {args.networks}")
    teacher = None
    if args.teacher is not None:
        _, teacher, _ = load_weights(args.teacher)
        if teacher.config.input_size < propmask.config.input_size:
            raise ValueError(
                f"the teacher's input ({teacher.config.input_size} px) is smaller than the student's "
                f"({propmask.config.input_size} px): it would see less than the network it teaches"
            )
        teacher.to(device).eval().requires_grad_(False)
        log(
            f"distilling PropMask from {args.teacher} ({teacher.config.input_size} px, {teacher.config.widths})"
        )
    box2mask.to(device).train()
    propmask.to(device).train()
    optimizers = {
        "box2mask": torch.optim.AdamW(box2mask.parameters(), lr=args.lr, weight_decay=1e-4),
        "propmask": torch.optim.AdamW(propmask.parameters(), lr=args.lr, weight_decay=1e-4),
    }
    if optimizers_state:
        for name, optimizer in optimizers.items():
            if name in optimizers_state:
                optimizer.load_state_dict(optimizers_state[name])

    pools = build_pools(
        args.data_dir,
        args.datasets,
        args.synthetic,
        args.seed,
        log,
        pseudo_sources=args.pseudo_sources,
        pseudo_volumes=args.pseudo_volumes,
        rib_like_tubes=args.rib_like_tubes,
    )
    sampler = TaskSampler(
        pools,
        args.task_weights,
        seed=args.seed + step,
        rollout_chance=args.rollout,
        correction_share=args.box2mask_corrections,
        max_hops=args.rollout_hops,
    )
    validation_volumes = load_validation_objects(
        args.data_dir, dict(zip(TRAIN_DATASETS, args.val_cases, strict=True))
    )
    log(
        f"validation on {len(validation_volumes)} cases; box2mask {box2mask.config}; propmask {propmask.config}"
    )

    def metadata() -> dict[str, Any]:
        return {
            "trained_seconds": trained_seconds,
            "best_score": best_score,
            "validation": history,
            "datasets": args.datasets,
            "synthetic_volumes": args.synthetic,
            "pseudo_sources": args.pseudo_sources,
            "pseudo_volumes": args.pseudo_volumes if args.pseudo_sources else 0,
            "task_weights": args.task_weights,
            "preset": args.preset,
            "tasks_per_step": args.tasks,
            "rollout_chance": args.rollout,
            "rollout_hops": args.rollout_hops,
            "rib_like_tubes": args.rib_like_tubes,
            "networks": args.networks,
            "teacher": str(args.teacher) if args.teacher is not None else None,
            "distill_weight": args.distill_weight,
            "slice_dice_weight": args.slice_dice_weight,
            "hardware": f"{device.type}, {torch.get_num_threads()} threads",
            "command": " ".join(sys.argv),
        }

    def rng_state() -> dict[str, Any]:
        return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}

    def checkpoint(name: str) -> None:
        save_training_state(run_dir / name, box2mask, propmask, optimizers, step, metadata(), rng_state())

    def run_validation() -> None:
        nonlocal best_score
        box2mask.eval()
        propmask.eval()
        started = time.time()
        predictor = LearnedPredictor(box2mask, propmask, device)
        summary = validate(predictor, validation_volumes)
        box2mask.train()
        propmask.train()
        summary["step"] = step
        summary["trained_hours"] = trained_seconds / 3600
        history.append(summary)
        log(
            f"validation step {step}: "
            + ", ".join(f"{k}={v:.3f}" for k, v in summary.items() if k not in ("step",))
            + f" ({time.time() - started:.0f}s)",
            validation=summary,
        )
        if summary["score"] > best_score:
            best_score = summary["score"]
            checkpoint("best.pt")
            log(f"new best {best_score:.3f} -> {run_dir / 'best.pt'}")

    size = prop_config.input_size
    budget = args.minutes * 60.0
    session_start = time.time()
    last_checkpoint = last_validation = session_start
    running: dict[str, float] = {}
    steps_this_session = 0
    while True:
        elapsed = time.time() - session_start
        if elapsed >= budget or (args.max_steps and steps_this_session >= args.max_steps):
            break
        step_started = time.time()
        lr = learning_rate(args.lr, step, elapsed, budget, warm_from, args.anneal_fraction)
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        losses: dict[str, float] = {}
        if args.networks in ("both", "propmask"):
            losses.update(
                propmask_step(
                    propmask,
                    optimizers["propmask"],
                    sampler,
                    device,
                    args.tasks,
                    teacher=teacher,
                    distill_weight=args.distill_weight or 1.0,
                    slice_dice_weight=args.slice_dice_weight,
                )
            )
        if args.networks == "box2mask" or (args.networks == "both" and step % args.box_every == 0):
            inputs, box_target = sampler.box2mask_batch(args.box_samples, size)
            box_loss = segmentation_loss(box2mask(inputs.to(device)), box_target.to(device))
            optimizers["box2mask"].zero_grad(set_to_none=True)
            box_loss.backward()
            torch.nn.utils.clip_grad_norm_(box2mask.parameters(), 12.0)
            optimizers["box2mask"].step()
            losses["box"] = box_loss.item()
        for key, value in losses.items():
            running[key] = value if key not in running else 0.98 * running[key] + 0.02 * value
        step += 1
        steps_this_session += 1
        trained_seconds += time.time() - step_started
        if step % 25 == 0:
            rate = steps_this_session / max(time.time() - session_start, 1e-6)
            log(
                f"step {step} lr {lr:.2e} "
                + " ".join(f"{k} {v:.4f}" for k, v in running.items())
                + f" | {rate:.2f} steps/s",
                step=step,
                losses=dict(running),
                steps_per_second=rate,
            )
        now = time.time()
        if now - last_validation >= args.val_minutes * 60:
            run_validation()
            last_validation = time.time()
        if now - last_checkpoint >= args.checkpoint_minutes * 60:
            checkpoint("last.pt")
            last_checkpoint = time.time()
            log(f"checkpoint step {step} -> {run_dir / 'last.pt'}")
    run_validation()
    checkpoint("last.pt")
    log(f"finished: step {step}, {trained_seconds / 3600:.2f} h trained, best score {best_score:.3f}")
    log_file.close()
    return {"step": step, "best_score": best_score, "history": history, "running_loss": running}


if __name__ == "__main__":
    main()
