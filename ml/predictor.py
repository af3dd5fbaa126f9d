"""The seam between the propagation loop and whatever predicts slices.

The loop in ``ml/propagation.py`` decides *which* slices to predict, in which order, and when to stop;
a ``SlicePredictor`` only answers two questions on full-size 2D slices of the canonical ``(Z, Y, X)``
volume:

* ``prompt_mask``: what is the object's 2D mask on the prompt slice, given a box and/or clicks
  (and optionally a prior mask to correct)?
* ``propagate``: given a guide slice with its mask, what are the object's masks on some nearby slices?

Both the learned predictor (``ml/learned.py``: Box2Mask + PropMask) and the classical one
(``ml/classical.py``: thresholds, region growing, morphology) implement it, so the loop, stop rule,
3D connectivity and ``refine`` logic exist once.

All images handed to a predictor are raw intensities (HU for CT, any scale for MR) as ``float32``;
predictors window them themselves, usually with the ``Window`` the loop computed once from the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Window:
    """An intensity window; ``apply`` maps ``[low, high]`` linearly onto ``[0, 1]`` and clips."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            raise ValueError(f"window bounds must be finite, got {self.low}, {self.high}")
        if self.high <= self.low:
            object.__setattr__(self, "high", self.low + 1.0)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Any-shape raw intensities -> float32 in [0, 1]."""
        scaled = (np.asarray(image, dtype=np.float32) - self.low) / (self.high - self.low)
        return np.clip(scaled, 0.0, 1.0, out=scaled)


@dataclass(frozen=True)
class SliceClick:
    """A click on a 2D slice: voxel row ``y``, column ``x``; positive adds, negative removes."""

    y: int
    x: int
    positive: bool = True


class SlicePredictor(Protocol):
    """Predicts 2D masks on full-size slices. Implementations must be safe to call from one thread."""

    name: str

    def prompt_mask(
        self,
        image: np.ndarray,
        spacing_yx: tuple[float, float],
        *,
        box: tuple[int, int, int, int] | None = None,
        clicks: Sequence[SliceClick] = (),
        prior: np.ndarray | None = None,
    ) -> np.ndarray:
        """The object's mask on one slice from a box and/or clicks.

        Args:
            image: raw intensities, float32 ``(Y, X)``.
            spacing_yx: pixel spacing ``(sy, sx)`` in mm.
            box: inclusive voxel bounds ``(y0, x0, y1, x1)``; may be None when clicks are given.
            clicks: positive/negative clicks on this slice.
            prior: bool ``(Y, X)``, the current mask to correct with ``clicks`` (None: segment afresh).

        Returns:
            bool ``(Y, X)``; may be empty when nothing was found.
        """
        ...

    def propagate(
        self,
        guide_image: np.ndarray,
        guide_mask: np.ndarray,
        targets: np.ndarray,
        window: Window,
        spacing_yx: tuple[float, float],
        *,
        guide_distances: Sequence[float] | None = None,
    ) -> np.ndarray:
        """Carry the guide mask over to nearby slices.

        Args:
            guide_image: raw intensities, float32 ``(Y, X)``.
            guide_mask: bool ``(Y, X)``, non-empty.
            targets: raw intensities, float32 ``(K, Y, X)``, ordered by distance from the guide
                (the first is the guide's direct neighbour).
            window: the intensity window for this object (from the prompt slice's foreground).
            spacing_yx: pixel spacing ``(sy, sx)`` in mm.
            guide_distances: distance in mm of each target from the guide (``K`` values), if known.

        Returns:
            float32 ``(K, Y, X)`` foreground probabilities in [0, 1]. A slice where the object has
            ended must come back with no value >= 0.5: that is how the loop knows to stop.
        """
        ...


View = Literal["plain", "mirrored", "both"]
"""Which image a scoring predictor looks at: the crop, its left-right mirror image, or both (averaged)."""


@dataclass(frozen=True)
class ScoredSlices:
    """One guide's answer for its targets before any stop decision (so the loop can average guides)."""

    probabilities: np.ndarray
    """float32 ``(K, Y, X)`` foreground probabilities, not gated by ``present``."""
    present: np.ndarray
    """float32 ``(K,)`` probability that the object is on each target at all."""
    seen: np.ndarray | None = None
    """bool ``(Y, X)``: where the predictor looked (its crop); ``probabilities`` outside it are no answer,
    only the zeros it was pasted back into. None: it looked at the whole slice."""


@runtime_checkable
class ScoringPredictor(SlicePredictor, Protocol):
    """A predictor whose answers can be averaged over two guides (``ml/propagation.py``, overlapping guides).

    ``overlapping_guides`` switches that on; ``present_threshold`` is where an averaged ``present`` means
    the object has ended; ``flip_averaging`` lets the loop alternate plain and mirrored views per guide."""

    overlapping_guides: bool
    present_threshold: float
    flip_averaging: bool

    def propagate_scored(
        self,
        guide_image: np.ndarray,
        guide_mask: np.ndarray,
        targets: np.ndarray,
        window: Window,
        spacing_yx: tuple[float, float],
        *,
        view: View = "plain",
    ) -> ScoredSlices:
        """Like ``SlicePredictor.propagate`` but ungated, with the object-present probability per target."""
        ...


@runtime_checkable
class ObjectRefiningPredictor(SlicePredictor, Protocol):
    """A predictor that can re-draw a finished propagation as a whole (the learned one with a slice
    refiner); ``refiner`` is None when it has nothing to refine with."""

    refiner: object | None

    def refine_object(
        self,
        volume: np.ndarray,
        mask: np.ndarray,
        keep: Sequence[int] = (),
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """bool ``(Z, Y, X)``: ``mask`` (the finished object) re-drawn; slices in ``keep`` unchanged.
        ``should_stop`` may be polled while it works; when it fired, the answer is not used."""
        ...


def window_from_mask(image: np.ndarray, mask: np.ndarray, margin: float = 0.0) -> Window:
    """PropSAM's window: the 0.5-99.5 percentiles of the object's foreground intensities.

    Args:
        image: raw intensities ``(..., Y, X)``.
        mask: bool, same shape as ``image``; the object's foreground.
        margin: widen the window on both sides by this fraction of its width.

    Falls back to the whole image's percentiles when the mask has fewer than 8 voxels.
    """
    values = np.asarray(image, dtype=np.float32)[np.asarray(mask, dtype=bool)]
    values = values[np.isfinite(values)]
    if values.size < 8:
        values = np.asarray(image, dtype=np.float32).ravel()
        values = values[np.isfinite(values)]
    if values.size == 0:
        return Window(0.0, 1.0)
    low, high = np.percentile(values, [0.5, 99.5])
    width = max(float(high - low), 1e-3)
    return Window(float(low) - margin * width, float(high) + margin * width)
