"""The PropSAM propagation loop and RadSAM-style refinement, generic over a ``SlicePredictor``.

The loop owns *which* slices are predicted, in which order, and when to stop; the predictor
(``ml/predictor.py``) only turns a guide slice + mask into masks on nearby slices.

Propagation from a prompt on slice ``g``:

1. The prompt slice's 2D mask (box/click -> ``predictor.prompt_mask``; a mask prompt as given) is
   yielded before any propagation work, so a viewer paints it at once.
2. The intensity window is taken once, from the 0.5-99.5 percentiles of the prompt's foreground. With a
   predictor that asks for it (the shipped learned one), the mask threshold is then chosen once per object
   (``calibrated_threshold``): 0.5 unless a round trip from the prompt slice and back proves the network
   over-confident on these images, or, for a drawn mask, its answer for the prompt slice itself proves it
   under-confident.
3. Each direction advances in chunks of ``Z = clip(round(chunk_mm / sz), 1, MAX_CHUNK_SLICES)`` slices
   (about 20 mm, so the number of autoregressive steps does not depend on slice thickness, but never more
   than 8 slices from one guide on thin-slice scans); the guide of the next chunk is the
   outermost slice predicted in the previous one. Directions alternate chunk by chunk so both grow on screen.
   A chunk is cut short at the first slice whose mask nears the edge of the crop a predictor takes around
   the guide (1.5x its box): the object is growing past it, so that slice becomes the next guide and the
   rest of the chunk is predicted again around it. With a scoring predictor that asks for it (the shipped
   learned one), guides overlap instead: each predicts up to ``OVERLAP_WINDOW_SLICES`` (8) slices, the nearer
   half is kept, and every later slice is the mean of two guides (``_overlapping_direction_chunks``).
4. A direction stops at the first slice whose prediction is empty (no probability >= the threshold), at
   the boundary slices ``z_low``/``z_high``, or at the volume edge.
5. PropSAM keeps only the 3D components that touch the prompt. Because slices are streamed before the end,
   this is done as we go: on each slice only the 2D components (8-connected) that overlap the previous
   slice's kept mask dilated by one voxel survive. A chain of such overlaps is exactly 26-connectivity to
   the prompt. A slice whose area grows by more than ``MAX_GROWTH`` (10 %) over the previous kept slice
   keeps only its part within ``growth_band_px`` of it (0.8 mm per mm of slice gap, at least a pixel): a
   leak into touching look-alike tissue then creeps instead of filling the crop in one chunk.
6. With a predictor that has a slice refiner (the shipped learned one, ``ml/refiner.py``), once both
   directions are done every slice is re-drawn from its 3D neighbourhood; the slices that change (still
   26-connected to the prompt slice, which stays as it was) are streamed again, nearest the prompt first,
   with direction ``"refined"``. Each streamed step is its slice's full content, so writing every step into
   the volume in order gives the final 3D result.

Refinement (``refine_steps``, RadSAM edit mode): clicked slices are corrected by the predictor, edited
slices are taken as given, and each corrected slice is re-propagated away from the object's anchor
(the prompt slice) until the new slices agree with the old mask again, at a threshold calibrated from that
corrected slice. With a predictor that asks for focused corrections (an option, not shipped: see
``ml.learned.SHIPPED_FOCUSED_CORRECTIONS``), a click on a slice that already has a mask changes it only near
the click (``focus_region``, after FocalClick).

Directions: ``"up"`` walks towards increasing ``z``, ``"down"`` towards decreasing ``z``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

import numpy as np
from scipy import ndimage

from ml.predictor import (
    ObjectRefiningPredictor,
    ScoringPredictor,
    SliceClick,
    SlicePredictor,
    View,
    Window,
    window_from_mask,
)
from ml.prompts import BoxPrompt, Click, MaskPrompt, PointPrompt, Prompt

DEFAULT_CHUNK_MM = 20.0
"""PropSAM's propagation thickness: slices per chunk = 20 mm / slice spacing (capped, see below)."""
OVERLAP_WINDOW_SLICES = 8
"""With overlapping guides a guide predicts at most this many slices and the loop keeps the nearer half, so
on thin-slice scans every slice averages guides 1-4 and 5-8 slices away. Training cases (box, step-20329
weights, guides alternating views, predicted / kept) favoured denser guides: hippocampus 0.753 / 0.756 /
0.760 / 0.760 / 0.761 and left atrium 0.840 / - / 0.841 / 0.841 / - for 8/4, 4/2, 6/3, 8/3, 8/2 (6/3 costs
what 8/4 costs). On validation 6/3 was mixed against 8/4 (box: hippocampus 0.753 -> 0.762, left atrium
0.864 -> 0.861, TotalSegmentator MR 0.683 -> 0.675, CT 0.572 -> 0.573) and made a leaking model leak more:
the model trained without the left atrium, on the left atrium, 0.479 -> 0.409 (each re-guiding lets a
leak grow). 8/4 improved every set for the shipped model, so it stays."""

MAX_CHUNK_SLICES = 8
"""At most this many slices are predicted from one guide. On 0.625 mm left-atrium scans 20 mm is 32 slices,
and the far ones, predicted from a guide 32 slices away, drift: capping at 8 (the issue's "4-8 slices per
guide"; 6 scored the same) raised the learned engine's left-atrium box Dice from 0.807 to 0.821 on the
training cases (0.834 -> 0.857 on the validation cases; the classical engine's 0.720 -> 0.716); hippocampus
(20 slices per chunk at 1 mm) stayed at 0.723. Scans of 2.5 mm or thicker are unaffected."""
CALIBRATION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
"""Mask thresholds the round trip (``calibrated_threshold``) chooses from; 0.5 is the trained one."""
CALIBRATION_MARGIN = 0.02
"""A threshold other than 0.5 is taken only when it reproduces the guide better than 0.5 by this much Dice
(fixed before measuring: on images like the training ones 0.5 should stand unless the evidence is clear)."""
IDENTITY_THRESHOLDS = (0.3, 0.4)
"""Thresholds below 0.5 that ``calibrated_threshold`` may lower to when the network answers the guide's own
slice with a shrunk outline (``_identity_threshold``)."""
AGREEMENT_DICE = 0.9
"""Refinement stops in a direction once the re-propagated slice agrees this well with the old mask."""
FOCUS_RADIUS_FRACTION = 0.5
"""A focused correction changes its slice only within this share of ``sqrt(area of the slice's mask)`` of
the click (``focus_region``); fixed before measuring, never tuned."""
FOCUS_MIN_RADIUS_PX = 6.0
"""... and at least within this many pixels (objects a few pixels across)."""
NEIGHBOUR_PRIOR_REACH = 3
"""A positive click on a slice where the object is missing borrows, as the prior to correct, the object's
mask on the nearest non-empty slice at most this many slices away (see ``corrected_slices``)."""
MAX_GROWTH: float | None = 0.1
"""A kept slice whose area grows by more than this share over the previous kept slice may only grow within
``growth_band_px`` of it: leaks into touching tissue grow fast, objects change smoothly. The classical
predictor applies the same limits inside its own chunks (it re-classifies in a one-pixel band instead of
cutting). None switches the loop's guard off."""
GROWTH_BAND_PER_GAP = 0.8
"""Width (mm) of that band per mm of slice gap, at least one pixel (thick slices move more)."""
CROP_REACH_SCALE = 1.5
"""PropSAM's crop: 1.5 x the guide's box (``ml.config.CROP_SCALE`` for the learned predictor)."""
CROP_REACH_FRACTION = 0.95
"""A chunk is cut short at the first slice reaching the outer 5 % of the guide's crop (see ``_outgrows``)."""
PROMPT, UP, DOWN, REFINED = "prompt", "up", "down", "refined"

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_Answer = tuple[np.ndarray, float, "np.ndarray | None"]
"""One guide's answer for one slice: probabilities ``(Y, X)``, object-present probability, where it looked."""


class PropagationCancelled(Exception):
    """``should_stop`` fired before the 3D result was complete (raised by ``segment``/``refine`` only)."""


@dataclass(frozen=True, eq=False)
class PropagationStep:
    """One finished slice.

    Attributes:
        z: slice index.
        mask: bool ``(Y, X)``, the full content of slice ``z`` for this object/label after this step.
        direction: ``"prompt"`` (the prompt or a corrected slice), ``"up"`` (z increasing), ``"down"``, or
            ``"refined"`` (a slice re-drawn by the slice refiner after both directions finished).
        done: slices yielded so far, this one included.
        done_up, done_down: of those, how many were in each direction.
    """

    z: int
    mask: np.ndarray
    direction: str
    done: int
    done_up: int
    done_down: int


@dataclass
class _Counter:
    done: int = 0
    per_direction: dict[str, int] = field(default_factory=lambda: {PROMPT: 0, UP: 0, DOWN: 0, REFINED: 0})

    def step(self, z: int, mask: np.ndarray, direction: str) -> PropagationStep:
        self.done += 1
        self.per_direction[direction] += 1
        return PropagationStep(
            z, mask, direction, self.done, self.per_direction[UP], self.per_direction[DOWN]
        )


def chunk_slices(spacing_z: float, chunk_mm: float = DEFAULT_CHUNK_MM) -> int:
    """Slices per propagation chunk: ``round(chunk_mm / sz)`` within ``1..MAX_CHUNK_SLICES``.

    Thick slices still advance one at a time; thin ones are never predicted more than
    ``MAX_CHUNK_SLICES`` away from their guide."""
    return min(MAX_CHUNK_SLICES, max(1, round(chunk_mm / spacing_z)))


def keep_connected(candidate: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``candidate`` touching ``previous`` dilated by one voxel.

    Args:
        candidate: bool ``(Y, X)``, a slice's raw prediction.
        previous: bool ``(Y, X)``, the kept mask of the neighbouring slice nearer the prompt.

    Returns:
        bool ``(Y, X)``: in 3D, the kept voxels are 26-connected to ``previous``.
    """
    if not candidate.any():
        return candidate
    reach = ndimage.binary_dilation(previous, structure=_EIGHT_CONNECTED)
    components, _ = ndimage.label(candidate, structure=_EIGHT_CONNECTED)
    touching = np.unique(components[reach & candidate])
    touching = touching[touching > 0]
    if touching.size == 0:
        return np.zeros_like(candidate)
    return np.isin(components, touching)


def growth_band_px(spacing: tuple[float, float, float]) -> int:
    """Pixels a fast-growing slice may reach past the previous kept slice (see ``MAX_GROWTH``)."""
    return max(1, int(np.ceil(GROWTH_BAND_PER_GAP * spacing[0] / min(spacing[1], spacing[2]) - 1e-6)))


def guard_growth(mask: np.ndarray, previous: np.ndarray, band_px: int) -> np.ndarray:
    """``mask`` (bool ``(Y, X)``), cut to ``previous`` dilated by ``band_px`` when it grew by more than
    ``MAX_GROWTH`` over ``previous``."""
    if MAX_GROWTH is None or mask.sum() <= (1.0 + MAX_GROWTH) * previous.sum():
        return mask
    return mask & ndimage.binary_dilation(previous, structure=_EIGHT_CONNECTED, iterations=band_px)


def dice(first: np.ndarray, second: np.ndarray) -> float:
    """Dice overlap of two bool masks of equal shape (1.0 when both are empty)."""
    total = int(first.sum()) + int(second.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(first, second).sum()) / total


def _slice(volume: np.ndarray, z: int) -> np.ndarray:
    return np.asarray(volume[z], dtype=np.float32)


def _direction_chunks(
    predictor: SlicePredictor,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    start_z: int,
    start_mask: np.ndarray,
    window: Window,
    step: int,
    last_z: int,
    chunk: int,
    threshold: float = 0.5,
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Propagate one direction, one chunk per item: ``[(z, kept bool (Y, X)), ...]`` in outward order.

    Args:
        start_z, start_mask: the first guide (non-empty mask).
        step: +1 (up) or -1 (down).
        last_z: the last slice this direction may reach (inclusive boundary).
        chunk: slices per predictor call.
        threshold: probability at which a pixel is the object (``calibrated_threshold``).

    Ends after the first empty slice (that slice is not included), or at ``last_z``.
    """
    if uses_overlapping_guides(predictor):
        yield from _overlapping_direction_chunks(
            predictor, volume, spacing, start_z, start_mask, window, step, last_z, chunk, threshold
        )
        return
    spacing_z, spacing_yx = spacing[0], (spacing[1], spacing[2])
    guide_z, guide_mask = start_z, start_mask
    while True:
        stop = last_z + step
        targets_z = list(range(guide_z + step, stop, step))[:chunk]
        if not targets_z:
            return
        probabilities = predictor.propagate(
            _slice(volume, guide_z),
            guide_mask,
            np.asarray(volume[targets_z], dtype=np.float32),
            window,
            spacing_yx,
            guide_distances=[abs(z - guide_z) * spacing_z for z in targets_z],
        )
        candidates = (
            (z, np.asarray(probability) >= threshold)
            for z, probability in zip(targets_z, probabilities, strict=True)
        )
        kept, ended = _keep_outward(candidates, guide_mask, growth_band_px(spacing))
        yield kept
        if ended:
            return
        guide_z, guide_mask = kept[-1]


def _keep_outward(
    candidates: Iterable[tuple[int, np.ndarray]], guide_mask: np.ndarray, band_px: int
) -> tuple[list[tuple[int, np.ndarray]], bool]:
    """The slices of one guide's chunk that the loop keeps, and whether the object ended in it.

    Walks ``(z, candidate bool (Y, X))`` outward, keeping each slice's part connected to the previous kept
    slice (``keep_connected``) and, when it grows fast, within ``band_px`` of it (``guard_growth``); ends
    at the first empty one (the object ended) or after a slice that outgrows the guide's crop (later
    candidates were cut by that crop: re-guide from there).
    """
    kept: list[tuple[int, np.ndarray]] = []
    previous = guide_mask
    reach = _crop_reach(guide_mask)
    for z, candidate in candidates:
        mask = guard_growth(keep_connected(candidate, previous), previous, band_px)
        if not mask.any():
            return kept, True
        kept.append((z, mask))
        previous = mask
        if _outgrows(mask, reach):
            break
    return kept, False


def cut_by_crop(probability: np.ndarray, seen: np.ndarray | None, threshold: float) -> bool:
    """Whether a guide's float ``(Y, X)`` answer reaches the edge of the rectangle it looked at (``seen``,
    its crop; the slice's own border does not count): then the object may go on past the crop, where the
    guide could not look."""
    if seen is None:
        return False
    rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    if rows.size == 0:
        return False
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    height, width = seen.shape
    inside = probability[y0 : y1 + 1, x0 : x1 + 1] >= threshold
    return bool(
        (y0 > 0 and inside[0].any())
        or (y1 < height - 1 and inside[-1].any())
        or (x0 > 0 and inside[:, 0].any())
        or (x1 < width - 1 and inside[:, -1].any())
    )


def average_seen(
    probability: np.ndarray,
    seen: np.ndarray | None,
    other: np.ndarray,
    other_seen: np.ndarray | None,
    threshold: float = 0.5,
) -> np.ndarray:
    """Two guides' float ``(Y, X)`` answers for one slice, averaged, except outside a guide's crop
    (``seen``, None = the whole slice) when that guide's object was cut by the crop's edge: there the
    other guide answers alone.

    A guide whose crop cut its object has no answer past the cut, only zeros: averaging those in halved
    the probability at the edge an object moves towards, so an object that moves across the slices (a rib
    on axial CT) lost its leading edge at every re-guiding and shrank until propagation stopped. A guide
    whose object ends inside its crop did see that nothing is there: its zeros stay in the mean, and keep
    a leak of the other guide's in check."""
    seen = seen if cut_by_crop(probability, seen, threshold) else None
    other_seen = other_seen if cut_by_crop(other, other_seen, threshold) else None
    mean = (probability + other) / 2
    if seen is not None:
        mean = np.where(seen, mean, other)
    if other_seen is not None:
        mean = np.where(other_seen, mean, probability)
    return mean.astype(np.float32, copy=False)


def uses_overlapping_guides(predictor: SlicePredictor) -> TypeGuard[ScoringPredictor]:
    """Whether the loop averages two guides per slice for this predictor (see ``_overlapping_direction_chunks``)."""
    return isinstance(predictor, ScoringPredictor) and predictor.overlapping_guides


def slices_per_guide(predictor: SlicePredictor, chunk: int) -> int:
    """How many slices the loop asks one guide for: the chunk, or with overlapping guides at most
    ``OVERLAP_WINDOW_SLICES`` of it."""
    return min(chunk, OVERLAP_WINDOW_SLICES) if uses_overlapping_guides(predictor) else chunk


def slices_kept_per_guide(predictor: SlicePredictor, chunk: int) -> int:
    """Of the slices predicted from one guide, how many the loop keeps before re-guiding."""
    predicted = slices_per_guide(predictor, chunk)
    return max(1, predicted // 2) if uses_overlapping_guides(predictor) else predicted


def guide_views(predictor: ScoringPredictor) -> Iterator[View]:
    """Views of successive guides: both for the first (its near slices have no second guide), then mirrored
    and plain in turn, so each slice is seen once each way at the cost of flip averaging."""
    if not predictor.flip_averaging:
        while True:
            yield "plain"
    yield "both"
    while True:
        yield "mirrored"
        yield "plain"


def _overlapping_direction_chunks(
    predictor: ScoringPredictor,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    start_z: int,
    start_mask: np.ndarray,
    window: Window,
    step: int,
    last_z: int,
    chunk: int,
    threshold: float = 0.5,
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """``_direction_chunks`` with overlapping guides: each guide predicts ``slices_per_guide`` slices (the
    chunk, at most ``OVERLAP_WINDOW_SLICES``) but only the nearer half is kept; the next guide is the last
    kept slice, and its predictions of the slices the previous guide also reached are averaged with those
    (probabilities and object-present probabilities; past a crop that cut its object a guide has no say,
    see ``average_seen``).

    So every slice past the first half-window is the mean of two guides, one 1..h and one h+1..2h slices
    away (h = half the window, 4 on thin-slice scans): drift from either guide is damped, and stopping
    needs both to agree.
    """
    spacing_yx = (spacing[1], spacing[2])
    predicted, keep = slices_per_guide(predictor, chunk), slices_kept_per_guide(predictor, chunk)
    views = guide_views(predictor)
    guide_z, guide_mask = start_z, start_mask
    earlier: dict[int, _Answer] = {}  # slice -> the previous guide's answer
    while True:
        targets_z = list(range(guide_z + step, last_z + step, step))[:predicted]
        if not targets_z:
            return
        scored = predictor.propagate_scored(
            _slice(volume, guide_z),
            guide_mask,
            np.asarray(volume[targets_z], dtype=np.float32),
            window,
            spacing_yx,
            view=next(views),
        )
        answers: dict[int, _Answer] = {}
        for z, probability, present in zip(targets_z, scored.probabilities, scored.present, strict=True):
            seen = scored.seen
            if z in earlier:
                before_probability, before_present, before_seen = earlier[z]
                probability = average_seen(probability, seen, before_probability, before_seen, threshold)
                present = (present + before_present) / 2
                seen = None if seen is None or before_seen is None else seen | before_seen
            answers[z] = (probability, float(present), seen)
        candidates = (
            (z, (answers[z][0] >= threshold) & (answers[z][1] >= predictor.present_threshold))
            for z in targets_z[:keep]
        )
        kept, ended = _keep_outward(candidates, guide_mask, growth_band_px(spacing))
        yield kept
        if ended:
            return
        guide_z, guide_mask = kept[-1]
        # Answers past the new guide stay in the average even when a slice outgrew the crop and they may be
        # cut by it: dropping them measured worse (hippocampus training cases 0.753 -> 0.744).
        earlier = {z: answer for z, answer in answers.items() if (z - guide_z) * step > 0}


def uses_threshold_calibration(predictor: SlicePredictor) -> TypeGuard[ScoringPredictor]:
    """Whether the loop chooses this predictor's mask threshold per object (``calibrated_threshold``)."""
    return uses_overlapping_guides(predictor) and bool(getattr(predictor, "threshold_calibration", False))


def calibrated_threshold(
    predictor: SlicePredictor,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    z: int,
    mask: np.ndarray,
    window: Window,
    chunk: int,
    *,
    z_low: int,
    z_high: int,
    should_stop: Callable[[], bool] | None = None,
    drawn_guide: bool = False,
) -> float:
    """The mask threshold for one object's propagation from the guide ``mask`` on slice ``z``.

    Checks of how the network behaves on this very image, each against an answer known in advance:

    1. A round trip from slice ``z`` one re-guiding step up and down and back may raise the threshold to the
       best of ``CALIBRATION_THRESHOLDS`` if it reproduces the guide better than 0.5 by ``CALIBRATION_MARGIN``,
       for a network that is over-confident here (each re-guiding would add a rim).
    2. If it did not and ``drawn_guide`` (the guide is the user's own outline: a mask prompt), the network
       is asked for slice ``z`` itself (``_identity_threshold``); where it answers the guide with a shrunk
       outline (under-confident here: on an unseen CT the rim it misses comes back at 0.2-0.45), the
       threshold is lowered to the lowest of ``IDENTITY_THRESHOLDS`` that reproduces the guide better by
       ``CALIBRATION_MARGIN``. A raised threshold is never lowered. After a box or a click the guide is
       Box2Mask's answer, not the truth, and lowering the threshold there extends its leaks (TotalSegmentator
       CT box 0.585 -> 0.573, session 24), so those guides skip this check.

    0.5 when the predictor does not ask for calibration. ``should_stop`` is polled before every call: once it
    fires, the answer is at hand at once (the caller, polling the same flag, then ends).
    """
    if not uses_threshold_calibration(predictor) or not mask.any():
        return 0.5
    should_stop = should_stop or _never_stop
    spacing_yx = (spacing[1], spacing[2])
    view: View = "both" if predictor.flip_averaging else "plain"
    hop = slices_kept_per_guide(predictor, chunk)
    image = _slice(volume, z)
    # The round trip: for each threshold, one re-guiding step (``slices_kept_per_guide``) up and down,
    # thresholded there, and back to slice z, scored against the mask it started from (Dice, averaged over
    # the directions where the object goes on). On images unlike the training ones a network can be
    # over-confident, so that every re-guiding adds a rim (the model trained without the left atrium, on it:
    # the round trip grows the mask, and its Dice rises with the threshold); on familiar images 0.5
    # reproduces the guide best. Two guide calls per threshold and direction, one target each.
    scores: dict[float, list[float]] = {threshold: [] for threshold in CALIBRATION_THRESHOLDS}
    for step in (+1, -1):
        there_z = z + step * hop
        if not z_low <= there_z <= z_high:
            continue
        if should_stop():
            return 0.5
        there = predictor.propagate_scored(
            image, mask, np.asarray(volume[[there_z]], dtype=np.float32), window, spacing_yx, view=view
        )
        if there.present[0] < predictor.present_threshold or not (there.probabilities[0] >= 0.5).any():
            continue  # the object ends before that slice: nothing to go there and back through
        for threshold in CALIBRATION_THRESHOLDS:
            forward = there.probabilities[0] >= threshold
            if not forward.any():
                scores[threshold].append(0.0)
                continue
            if should_stop():
                return 0.5
            back = predictor.propagate_scored(
                _slice(volume, there_z), forward, image[None], window, spacing_yx, view=view
            )
            scores[threshold].append(dice(back.probabilities[0] >= threshold, mask))
    if scores[0.5]:
        mean = {threshold: float(np.mean(values)) for threshold, values in scores.items()}
        best = max(CALIBRATION_THRESHOLDS, key=lambda threshold: mean[threshold])
        if mean[best] >= mean[0.5] + CALIBRATION_MARGIN:
            return best
    if not drawn_guide or should_stop():
        return 0.5
    return _identity_threshold(predictor, image, mask, window, spacing_yx, view)


def _identity_threshold(
    predictor: ScoringPredictor,
    image: np.ndarray,
    mask: np.ndarray,
    window: Window,
    spacing_yx: tuple[float, float],
    view: View,
) -> float:
    """0.5, or the lowest of ``IDENTITY_THRESHOLDS`` at which the network's answer for the guide slice itself
    reproduces ``mask`` better than at 0.5 by ``CALIBRATION_MARGIN`` (Dice). One guide call, one target.

    The answer is known (the guide), and unlike a round trip no propagation loss mixes in: on the
    hippocampus, where every slice away from the guide loses area, a round trip would prefer 0.3 and leak,
    while the guide's own slice keeps 0.5 (session 24).
    """
    own = predictor.propagate_scored(image, mask, image[None], window, spacing_yx, view=view).probabilities[0]
    trained = dice(own >= 0.5, mask)
    for threshold in sorted(IDENTITY_THRESHOLDS):
        if dice(own >= threshold, mask) >= trained + CALIBRATION_MARGIN:
            return threshold
    return 0.5


def _crop_reach(guide_mask: np.ndarray) -> tuple[float, float, float]:
    """``(centre_y, centre_x, half_side)`` of the square a predictor sees around this guide, shrunk a little.

    PropSAM crops ``CROP_REACH_SCALE`` x the guide box; a slice whose mask comes within
    ``1 - CROP_REACH_FRACTION`` of that edge may already be truncated by it.
    """
    rows = np.flatnonzero(guide_mask.any(axis=1))
    cols = np.flatnonzero(guide_mask.any(axis=0))
    side = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    half = CROP_REACH_FRACTION * CROP_REACH_SCALE * side / 2
    return (rows[0] + rows[-1] + 1) / 2, (cols[0] + cols[-1] + 1) / 2, max(half, 2.0)


def _outgrows(mask: np.ndarray, reach: tuple[float, float, float]) -> bool:
    """Whether the mask's box leaves the square ``reach`` (see ``_crop_reach``)."""
    centre_y, centre_x, half = reach
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return bool(
        rows[0] < centre_y - half
        or rows[-1] + 1 > centre_y + half
        or cols[0] < centre_x - half
        or cols[-1] + 1 > centre_x + half
    )


def _never_stop() -> bool:
    return False


def propagate_prompt(
    predictor: SlicePredictor,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    prompt: Prompt,
    *,
    z_low: int,
    z_high: int,
    chunk_mm: float = DEFAULT_CHUNK_MM,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[PropagationStep]:
    """Stream one object's slices from a validated prompt (see the module docstring for the rules).

    Args:
        volume: raw intensities ``(Z, Y, X)`` (validated by the caller).
        spacing: ``(sz, sy, sx)`` in mm.
        prompt: a validated ``BoxPrompt``, ``MaskPrompt`` or ``PointPrompt`` with ``z_low <= z <= z_high``.
        z_low, z_high: inclusive boundary slices.
        should_stop: polled before every predictor call; when it returns True the generator ends early.

    Yields:
        The prompt slice first (possibly empty, then nothing follows), then propagated slices, each
        direction in outward order, directions alternating chunk by chunk, then (with a slice refiner) the
        slices it changed; later steps of a slice replace earlier ones.
    """
    should_stop = should_stop or _never_stop
    counter = _Counter()
    spacing_yx = (spacing[1], spacing[2])
    image = _slice(volume, prompt.z)
    if isinstance(prompt, MaskPrompt):
        prompt_mask = np.asarray(prompt.mask, dtype=bool)
    elif isinstance(prompt, BoxPrompt):
        prompt_mask = np.asarray(predictor.prompt_mask(image, spacing_yx, box=prompt.box), dtype=bool)
    elif isinstance(prompt, PointPrompt):
        click = SliceClick(prompt.y, prompt.x, positive=True)
        prompt_mask = np.asarray(predictor.prompt_mask(image, spacing_yx, clicks=[click]), dtype=bool)
    else:  # validate_prompt already rejects these; kept so a bypassing caller gets a clear message
        raise ValueError(f"unsupported prompt type {type(prompt).__name__}")
    yield counter.step(prompt.z, prompt_mask, PROMPT)
    if not prompt_mask.any():
        return
    window = window_from_mask(image, prompt_mask)
    chunk = chunk_slices(spacing[0], chunk_mm)
    threshold = calibrated_threshold(
        predictor,
        volume,
        spacing,
        prompt.z,
        prompt_mask,
        window,
        chunk,
        z_low=z_low,
        z_high=z_high,
        should_stop=should_stop,
        drawn_guide=isinstance(prompt, MaskPrompt),
    )
    runs = [
        (
            direction,
            _direction_chunks(
                predictor, volume, spacing, prompt.z, prompt_mask, window, step, last_z, chunk, threshold
            ),
        )
        for direction, step, last_z in ((UP, +1, z_high), (DOWN, -1, z_low))
    ]
    found = np.zeros(volume.shape, dtype=bool)
    found[prompt.z] = prompt_mask
    for step in _interleave(runs, counter, should_stop):
        found[step.z] = step.mask
        yield step
    if uses_slice_refiner(predictor) and not should_stop():
        yield from _refined_steps(predictor, volume, found, prompt.z, counter, should_stop)


def uses_slice_refiner(predictor: SlicePredictor) -> TypeGuard[ObjectRefiningPredictor]:
    """Whether the loop re-draws finished propagations with this predictor's slice refiner."""
    return isinstance(predictor, ObjectRefiningPredictor) and predictor.refiner is not None


def _refined_steps(
    predictor: ObjectRefiningPredictor,
    volume: np.ndarray,
    found: np.ndarray,
    prompt_z: int,
    counter: _Counter,
    should_stop: Callable[[], bool],
) -> Iterator[PropagationStep]:
    """The slices the refiner changes, nearest the prompt first (the prompt slice is never changed)."""
    refined = np.asarray(
        predictor.refine_object(volume, found, keep=[prompt_z], should_stop=should_stop), dtype=bool
    )
    if should_stop():  # cancelled while refining: part of the object would be re-drawn, part not
        return
    components, _ = ndimage.label(refined, structure=np.ones((3, 3, 3), dtype=bool))
    touching = np.unique(components[prompt_z][found[prompt_z]])
    refined = np.isin(components, touching[touching > 0])
    changed = [z for z in range(found.shape[0]) if not np.array_equal(refined[z], found[z])]
    for z in sorted(changed, key=lambda index: (abs(index - prompt_z), index)):
        if should_stop():
            return
        yield counter.step(z, refined[z], REFINED)


def _interleave(
    runs: list[tuple[str, Iterator[list[tuple[int, np.ndarray]]]]],
    counter: _Counter,
    should_stop: Callable[[], bool],
) -> Iterator[PropagationStep]:
    """Round-robin over per-direction chunk iterators, one chunk each in turn, until all are exhausted."""
    active = list(runs)
    while active:
        for run in list(active):
            if should_stop():
                return
            direction, chunks = run
            kept = next(chunks, None)
            if kept is None:
                active.remove(run)
                continue
            for z, mask in kept:
                if should_stop():  # also between slices of a computed chunk: a cancel shows at once
                    return
                yield counter.step(z, mask, direction)


# ------------------------------------------------------------------------------------------------ refine


def _components_touching(mask: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """Union of the 8-connected components of ``mask`` that overlap ``reach`` (both bool ``(Y, X)``)."""
    if not mask.any() or not reach.any():
        return np.zeros_like(mask)
    components, _ = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    touching = np.unique(components[mask & reach])
    touching = touching[touching > 0]
    return np.isin(components, touching)


def _dilate(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(mask, structure=_EIGHT_CONNECTED)


def uses_focused_corrections(predictor: SlicePredictor) -> bool:
    """Whether a click on a slice with a mask may change that slice only near the click (``focus_region``)."""
    return bool(getattr(predictor, "focused_corrections", False))


def focus_region(mask: np.ndarray, clicks: Sequence[SliceClick]) -> np.ndarray:
    """bool ``(Y, X)``: the disks around ``clicks`` that a focused correction of ``mask`` may change.

    Radius ``max(FOCUS_MIN_RADIUS_PX, FOCUS_RADIUS_FRACTION * sqrt(mask area))`` pixels: half the side of a
    square as large as the object, so a click reaches the outline it is on and not the far side of the object.
    """
    radius = max(FOCUS_MIN_RADIUS_PX, FOCUS_RADIUS_FRACTION * float(np.sqrt(mask.sum())))
    rows, cols = np.ogrid[: mask.shape[0], : mask.shape[1]]
    region = np.zeros(mask.shape, dtype=bool)
    for click in clicks:
        region |= (rows - click.y) ** 2 + (cols - click.x) ** 2 <= radius**2
    return region


def corrected_slices(
    predictor: SlicePredictor,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    old_mask: np.ndarray,
    clicks: Sequence[Click],
    edited: Mapping[int, np.ndarray],
) -> dict[int, np.ndarray]:
    """New 2D masks for every edited or clicked slice (validated inputs).

    Edited masks are taken as given; clicks then correct the slice's mask (the edited one if any, else
    the old one) with ``predictor.prompt_mask(clicks=..., prior=...)``. With focused corrections
    (``uses_focused_corrections``) the answer replaces that mask only within ``focus_region`` of the clicks.
    Negative clicks on an empty slice have nothing to remove and leave it empty. A positive click on an empty
    slice next to the object (the propagation stopped too early) corrects the neighbouring slice's mask
    instead (``_neighbour_prior``): Box2Mask was trained on exactly that, while a click alone on a wide crop
    can grab a whole neighbouring organ, which the re-propagation would then carry through the volume. That
    answer is not focused: the slice had nothing to keep.

    Returns:
        ``{z: bool (Y, X)}`` sorted by ``z``.
    """
    corrected = {int(z): np.asarray(mask, dtype=bool) for z, mask in edited.items()}
    by_slice: dict[int, list[SliceClick]] = {}
    for click in clicks:
        by_slice.setdefault(click.z, []).append(SliceClick(click.y, click.x, click.positive))
    for z, slice_clicks in by_slice.items():
        prior = corrected.get(z, old_mask[z])
        positive = [(click.y, click.x) for click in slice_clicks if click.positive]
        if not prior.any() and not positive:
            corrected[z] = prior.copy()
            continue
        own_mask = prior if prior.any() else None
        if own_mask is None:
            prior = _neighbour_prior(old_mask, corrected, z, positive[0])
        answer = np.asarray(
            predictor.prompt_mask(
                _slice(volume, z),
                (spacing[1], spacing[2]),
                clicks=slice_clicks,
                prior=prior if prior.any() else None,
            ),
            dtype=bool,
        )
        if own_mask is not None and uses_focused_corrections(predictor):
            answer = np.where(focus_region(own_mask, slice_clicks), answer, own_mask)
        corrected[z] = answer
    return dict(sorted(corrected.items()))


def _neighbour_prior(
    old_mask: np.ndarray, corrected: Mapping[int, np.ndarray], z: int, click: tuple[int, int]
) -> np.ndarray:
    """The object's 2D mask on the slice nearest ``z`` (within ``NEIGHBOUR_PRIOR_REACH``), as a prior for z.

    Only the 8-connected component nearest to the click is taken (another structure of the same label on
    that slice is not what the click is about); on a tie between both sides, the closer component wins.

    Returns:
        bool ``(Y, X)``; all False when no slice within reach has the object.
    """
    best: tuple[float, np.ndarray] | None = None
    for distance in range(1, NEIGHBOUR_PRIOR_REACH + 1):
        for neighbour in (z - distance, z + distance):
            if not 0 <= neighbour < old_mask.shape[0]:
                continue
            mask = corrected.get(neighbour, old_mask[neighbour])
            if not mask.any():
                continue
            components, _ = ndimage.label(mask, structure=_EIGHT_CONNECTED)
            rows, cols = np.nonzero(components)
            squared = (rows - click[0]) ** 2 + (cols - click[1]) ** 2
            nearest = int(np.argmin(squared))
            if best is None or squared[nearest] < best[0]:
                best = (float(squared[nearest]), components == components[rows[nearest], cols[nearest]])
        if best is not None:
            return best[1]
    return np.zeros(old_mask.shape[1:], dtype=bool)


def refine_steps(
    predictor: SlicePredictor,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    old_mask: np.ndarray,
    clicks: Sequence[Click] = (),
    edited: Mapping[int, np.ndarray] | None = None,
    *,
    z_low: int,
    z_high: int,
    chunk_mm: float = DEFAULT_CHUNK_MM,
    should_stop: Callable[[], bool] | None = None,
    agreement_dice: float = AGREEMENT_DICE,
    anchor_z: int | None = None,
) -> Iterator[PropagationStep]:
    """RadSAM edit mode: correct the clicked/edited slices, then re-propagate outward from them.

    Each corrected slice with a non-empty mask guides the direction(s) pointing away from the object's
    anchor slice: ``anchor_z`` when given (the original prompt slice), else the largest slice of the old
    object the correction belongs to (``object_anchor_slice``). On the anchor slice itself, or for a new
    object, both directions are re-propagated. A corrected slice that ends up empty guides nothing.

    A propagated slice replaces the part of the old slice that belongs to this object (old 2D components
    touching the new mask or the previous slice's replaced part); old components elsewhere on the slice
    (another object of the same label) are kept. Removing a structure on a corrected slice (negative
    click or erasing) therefore also removes it outward, as far as the new propagation reaches.

    A direction stops when the new slice agrees with the old one (Dice >= ``agreement_dice``; that slice
    is left as it was), when it comes back empty (old slices beyond stay: the new propagation never
    reached them), at the next corrected slice, or at ``z_low``/``z_high``. It also stops where the old
    object has ended, unless the corrected slice itself lay outside the old object: a click past the end
    extends the object, a click inside it corrects outlines but does not lengthen it (re-propagations
    from inside ran past the object's true end: left-atrium box Dice after 3 simulated clicks 0.856 with
    that, 0.865 without; TotalSegmentator CT 0.590 -> 0.604). Slices no direction reaches are never touched.

    Args:
        old_mask: bool ``(Z, Y, X)``, the current mask of the label (validated).
        clicks: validated clicks inside ``z_low..z_high``.
        edited: ``{z: bool (Y, X)}`` validated edited slices.

    Yields:
        The corrected slices first (direction ``"prompt"``, increasing ``z``), then every re-propagated
        slice with its full new content. Applying the steps to ``old_mask`` gives the refined mask.
    """
    should_stop = should_stop or _never_stop
    counter = _Counter()
    edited = dict(edited or {})
    corrected = corrected_slices(predictor, volume, spacing, old_mask, clicks, edited)
    clicked_points: dict[int, list[tuple[int, int]]] = {}
    for click in clicks:
        clicked_points.setdefault(click.z, []).append((click.y, click.x))
    for z, mask in corrected.items():
        yield counter.step(z, mask, PROMPT)

    chunk = chunk_slices(spacing[0], chunk_mm)
    corrected_z = sorted(corrected)
    runs: list[tuple[str, Iterator[list[tuple[int, np.ndarray]]]]] = []
    thresholds: dict[int, float] = {}  # per corrected slice, shared by its two directions
    for index, z in enumerate(corrected_z):
        new_mask = corrected[z]
        related = _related_old_part(old_mask[z], new_mask, clicked_points.get(z, []))
        if not new_mask.any() and not related.any():
            continue
        upper = corrected_z[index + 1] - 1 if index + 1 < len(corrected_z) else z_high
        lower = corrected_z[index - 1] + 1 if index > 0 else z_low
        anchor = anchor_z if anchor_z is not None else object_anchor_slice(old_mask, z, new_mask | related)
        if not new_mask.any() and (anchor is None or anchor == z):
            continue  # an emptied slice with no known prompt side: which side ended is unknowable
        for direction, step, last_z in ((UP, +1, min(upper, z_high)), (DOWN, -1, max(lower, z_low))):
            if anchor is not None and (anchor - z) * step > 0:
                continue  # towards the prompt: those slices were the better-guided ones; RadSAM leaves them
            chunks: Iterator[list[tuple[int, np.ndarray]]] = iter(())
            if new_mask.any():
                window = window_from_mask(_slice(volume, z), new_mask)
                if z not in thresholds:
                    thresholds[z] = calibrated_threshold(
                        predictor,
                        volume,
                        spacing,
                        z,
                        new_mask,
                        window,
                        chunk,
                        z_low=z_low,
                        z_high=z_high,
                        should_stop=should_stop,
                    )
                chunks = _direction_chunks(
                    predictor, volume, spacing, z, new_mask, window, step, last_z, chunk, thresholds[z]
                )
            replaced = _replace_until_agreement(
                chunks,
                old_mask,
                related,
                agreement_dice,
                guide_z=z,
                step=step,
                last_z=last_z,
                clear_beyond_end=anchor is not None,
            )
            runs.append((direction, replaced))
    yield from _interleave(runs, counter, should_stop)


def object_anchor_slice(old_mask: np.ndarray, z: int, touching: np.ndarray) -> int | None:
    """The largest slice of the old 3D object that a correction on slice ``z`` belongs to.

    Args:
        old_mask: bool ``(Z, Y, X)``.
        touching: bool ``(Y, X)``, the corrected mask on slice ``z`` plus the old part it replaced.

    Returns:
        The slice where the 26-connected old components reached from ``touching`` (on slices
        ``z - 1 .. z + 1``) have their largest area; None when the correction touches no old object.
    """
    low, high = max(z - 1, 0), min(z + 2, old_mask.shape[0])
    reach = ndimage.binary_dilation(touching, structure=_EIGHT_CONNECTED)
    if not (old_mask[low:high] & reach).any():
        return None
    # Label only the old mask's bounding box: a whole CT volume would cost seconds per click.
    rows = np.flatnonzero(old_mask.any(axis=(0, 2)))
    cols = np.flatnonzero(old_mask.any(axis=(0, 1)))
    box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    components, _ = ndimage.label(old_mask[box], structure=np.ones((3, 3, 3), dtype=bool))
    labels = np.unique(components[low:high][old_mask[box][low:high] & reach[box[1:]]])
    labels = labels[labels > 0]
    areas = np.isin(components, labels).sum(axis=(1, 2))
    return int(np.argmax(areas))


def _related_old_part(
    old_slice: np.ndarray, new_mask: np.ndarray, points: list[tuple[int, int]]
) -> np.ndarray:
    """The part of a corrected slice's old mask that the correction was about.

    The old 2D components touching the new mask, the removed part (old but no longer new) or a click:
    a false blob removed by a negative click or erased by hand counts, another object elsewhere on the
    slice that the correction left alone does not.
    """
    reach = _dilate(new_mask) | (old_slice & ~new_mask)
    for y, x in points:
        reach[y, x] = True
    return _components_touching(old_slice, reach)


def _replace_until_agreement(
    chunks: Iterator[list[tuple[int, np.ndarray]]],
    old_mask: np.ndarray,
    related_at_guide: np.ndarray,
    agreement_dice: float,
    *,
    guide_z: int,
    step: int,
    last_z: int,
    clear_beyond_end: bool,
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Turn new propagated masks into full new slice contents; end once a slice agrees with the old mask,
    or where the old object ends when the correction was made inside it (``related_at_guide`` non-empty).

    When the new propagation ends before ``last_z`` without agreeing (it found the object's end) and
    ``clear_beyond_end`` is set, the old object's continuation beyond that end is cleared slice by slice
    (the 2D components chained to the last replaced part) until nothing of it is left: the correction
    says the object stops there.
    """
    previous_related = related_at_guide
    reached_z = guide_z
    for kept in chunks:
        written: list[tuple[int, np.ndarray]] = []
        for z, new_mask in kept:
            reached_z = z
            old_slice = old_mask[z]
            related = _components_touching(old_slice, _dilate(new_mask) | _dilate(previous_related))
            if dice(new_mask, related) >= agreement_dice:
                yield written
                return
            if related_at_guide.any() and not related.any():
                # The old object ended before this slice and the correction was made inside it: the click
                # was about that slice's outline, not about the object's length.
                yield written
                return
            written.append((z, new_mask | (old_slice & ~related)))
            previous_related = related
        yield written
    if not clear_beyond_end:
        return
    cleared: list[tuple[int, np.ndarray]] = []
    for z in range(reached_z + step, last_z + step, step):
        related = _components_touching(old_mask[z], _dilate(previous_related))
        if not related.any():
            break
        cleared.append((z, old_mask[z] & ~related))
        previous_related = related
    yield cleared
