"""The public engine API (stable: the server, ``python -m ml.evaluate`` and outside scripts use exactly this).

```python
from ml.engine import load_engine, BoxPrompt, MaskPrompt, PointPrompt, Click
engine = load_engine()                      # learned, shipped weights; load_engine("classical") needs none
for step in engine.propagate(volume, spacing, prompt):    # one item per finished slice
    step.z, step.mask                       # int, bool (Y, X); also step.direction, step.done, ...
mask = engine.segment(volume, spacing, prompt)            # bool (Z, Y, X)
mask = engine.refine(volume, spacing, mask, clicks=[Click(z, y, x, positive=True)], edited={z: mask2d})
```

``volume`` is the raw intensity array ``(Z, Y, X)`` (HU for CT, any scale for MR); ``spacing`` is
``(sz, sy, sx)`` in mm. Every input problem raises ``ValueError`` naming it, before any model work.
Optional keyword arguments: ``z_min``/``z_max`` (inclusive boundary slices), ``chunk_mm`` (propagation
chunk, default 20 mm), ``should_stop`` (a callable polled between predictor calls and between streamed
slices; the generators then end early and ``segment``/``refine`` raise ``PropagationCancelled``) and, for
refinement, ``anchor_z`` (the original prompt slice: re-propagation runs away from it).

``engine.refine_steps(...)`` streams a refinement like ``propagate`` streams a propagation: corrected
slices first (``direction == "prompt"``), then each re-propagated slice with its full new content.

An ``Engine`` holds its predictor (networks loaded once); calls keep no state between them, so one engine
serves any number of requests (one at a time per thread).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from ml.predictor import SlicePredictor
from ml.prompts import BoxPrompt, Click, MaskPrompt, PointPrompt, Prompt, validate_prompt
from ml.propagation import (
    DEFAULT_CHUNK_MM,
    PropagationCancelled,
    PropagationStep,
    propagate_prompt,
    refine_steps,
)
from ml.volume_checks import (
    check_mask_2d,
    check_mask_3d,
    check_slice_bounds,
    check_slice_index,
    check_spacing,
    check_volume,
)

__all__ = [
    "BoxPrompt",
    "Click",
    "Engine",
    "MaskPrompt",
    "PointPrompt",
    "PropagationCancelled",
    "PropagationStep",
    "load_engine",
]

ENGINE_KINDS = ("learned", "classical")


class Engine:
    """Prompt -> 3D mask, slice by slice, with any ``SlicePredictor`` (learned or classical)."""

    def __init__(self, predictor: SlicePredictor, *, chunk_mm: float = DEFAULT_CHUNK_MM) -> None:
        self.predictor = predictor
        self.chunk_mm = _check_chunk_mm(chunk_mm)

    @property
    def name(self) -> str:
        return self.predictor.name

    def __repr__(self) -> str:
        return f"Engine({self.name!r}, chunk_mm={self.chunk_mm})"

    def propagate(
        self,
        volume: np.ndarray,
        spacing: Sequence[float],
        prompt: Prompt,
        *,
        z_min: int | None = None,
        z_max: int | None = None,
        chunk_mm: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[PropagationStep]:
        """Stream the object's slices: the prompt slice first, then outward in both directions.

        Inputs are validated now (``ValueError`` at call time); the returned iterator does the work.

        Args:
            volume: raw intensities ``(Z, Y, X)``.
            spacing: ``(sz, sy, sx)`` in mm.
            prompt: ``BoxPrompt``, ``MaskPrompt`` or ``PointPrompt``.
            z_min, z_max: inclusive boundary slices (default: the volume's ends); the prompt must lie
                between them.
            chunk_mm: slices per predictor call = ``chunk_mm / sz`` (default: the engine's, 20 mm).
            should_stop: polled between predictor calls; True ends the stream early.

        Returns:
            Iterator of ``PropagationStep`` (``z``, bool ``(Y, X)`` ``mask``, ``direction``, counters).
            Writing each step's mask into slice ``z``, in order, gives the final 3D result (see
            ``segment``); with a slice refiner, slices it re-drew come again at the end (``"refined"``).
        """
        volume, spacing_mm, prompt, (z_low, z_high), chunk = self._check_request(
            volume, spacing, prompt, z_min, z_max, chunk_mm
        )
        return propagate_prompt(
            self.predictor,
            volume,
            spacing_mm,
            prompt,
            z_low=z_low,
            z_high=z_high,
            chunk_mm=chunk,
            should_stop=should_stop,
        )

    def segment(
        self,
        volume: np.ndarray,
        spacing: Sequence[float],
        prompt: Prompt,
        *,
        z_min: int | None = None,
        z_max: int | None = None,
        chunk_mm: float | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """The whole 3D mask, bool ``(Z, Y, X)`` (arguments as in ``propagate``).

        Raises:
            ValueError: bad input.
            PropagationCancelled: ``should_stop`` returned True before the end.
        """
        watch = _StopWatch(should_stop)
        steps = self.propagate(
            volume, spacing, prompt, z_min=z_min, z_max=z_max, chunk_mm=chunk_mm, should_stop=watch
        )
        result = np.zeros(np.shape(volume), dtype=bool)
        for step in steps:
            result[step.z] = step.mask
        if watch.fired:
            raise PropagationCancelled("propagation was cancelled before it finished")
        return result

    def refine_steps(
        self,
        volume: np.ndarray,
        spacing: Sequence[float],
        mask: np.ndarray,
        clicks: Sequence[Click] = (),
        edited: Mapping[int, np.ndarray] | None = None,
        *,
        z_min: int | None = None,
        z_max: int | None = None,
        chunk_mm: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        anchor_z: int | None = None,
    ) -> Iterator[PropagationStep]:
        """Stream a refinement: corrected slices first (direction ``"prompt"``), then re-propagated ones.

        Each step's ``mask`` is the new full content of slice ``z``; slices not yielded keep their old
        mask. Arguments as in ``refine``; inputs are validated at call time.
        """
        volume, spacing_mm, old_mask, clicks, edited, (z_low, z_high), chunk = self._check_refine_request(
            volume, spacing, mask, clicks, edited, z_min, z_max, chunk_mm
        )
        return refine_steps(
            self.predictor,
            volume,
            spacing_mm,
            old_mask,
            clicks,
            edited,
            z_low=z_low,
            z_high=z_high,
            chunk_mm=chunk,
            should_stop=should_stop,
            anchor_z=None if anchor_z is None else check_slice_index(anchor_z, volume.shape[0], "anchor_z"),
        )

    def refine(
        self,
        volume: np.ndarray,
        spacing: Sequence[float],
        mask: np.ndarray,
        clicks: Sequence[Click] = (),
        edited: Mapping[int, np.ndarray] | None = None,
        *,
        z_min: int | None = None,
        z_max: int | None = None,
        chunk_mm: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        anchor_z: int | None = None,
    ) -> np.ndarray:
        """Correct ``mask`` with clicks and/or edited slices and re-propagate outward from them.

        Args:
            volume: raw intensities ``(Z, Y, X)``.
            spacing: ``(sz, sy, sx)`` in mm.
            mask: the current bool ``(Z, Y, X)`` mask of the label.
            clicks: ``Click(z, y, x, positive)``; positive adds missed tissue, negative removes. Pass every
                click made on a slice since the object's prompt, not only the newest: the corrections
                network reads them together (a lone negative click on a slice a positive one just fixed
                reads as "the object ends before this slice" and empties it).
            edited: ``{z: bool (Y, X)}`` slices the user redrew (taken as given, then re-propagated from).
            z_min, z_max: inclusive boundary slices for the re-propagation.
            anchor_z: the original prompt slice, if known. Re-propagation runs away from it (RadSAM);
                by default away from the largest slice of the corrected object.

        Returns:
            bool ``(Z, Y, X)``, a new array (``mask`` is not modified).

        Raises:
            ValueError: bad input (also: neither clicks nor edited slices given).
            PropagationCancelled: ``should_stop`` returned True before the end.
        """
        watch = _StopWatch(should_stop)
        steps = self.refine_steps(
            volume,
            spacing,
            mask,
            clicks,
            edited,
            z_min=z_min,
            z_max=z_max,
            chunk_mm=chunk_mm,
            should_stop=watch,
            anchor_z=anchor_z,
        )
        result = check_mask_3d(mask, np.shape(volume)).copy()
        for step in steps:
            result[step.z] = step.mask
        if watch.fired:
            raise PropagationCancelled("refinement was cancelled before it finished")
        return result

    # ------------------------------------------------------------------ validation

    def _check_request(
        self,
        volume: np.ndarray,
        spacing: Sequence[float],
        prompt: Prompt,
        z_min: int | None,
        z_max: int | None,
        chunk_mm: float | None,
    ) -> tuple[np.ndarray, tuple[float, float, float], Prompt, tuple[int, int], float]:
        volume = check_volume(volume)
        spacing_mm = check_spacing(spacing)
        prompt = validate_prompt(prompt, volume.shape)
        bounds = check_slice_bounds(z_min, z_max, volume.shape[0])
        if not bounds[0] <= prompt.z <= bounds[1]:
            raise ValueError(
                f"prompt slice z={prompt.z} lies outside the boundary slices {bounds[0]}..{bounds[1]}"
            )
        chunk = self.chunk_mm if chunk_mm is None else _check_chunk_mm(chunk_mm)
        return volume, spacing_mm, prompt, bounds, chunk

    def _check_refine_request(
        self,
        volume: np.ndarray,
        spacing: Sequence[float],
        mask: np.ndarray,
        clicks: Sequence[Click],
        edited: Mapping[int, np.ndarray] | None,
        z_min: int | None,
        z_max: int | None,
        chunk_mm: float | None,
    ) -> tuple[
        np.ndarray,
        tuple[float, float, float],
        np.ndarray,
        list[Click],
        dict[int, np.ndarray],
        tuple[int, int],
        float,
    ]:
        volume = check_volume(volume)
        spacing_mm = check_spacing(spacing)
        old_mask = check_mask_3d(mask, volume.shape)
        bounds = check_slice_bounds(z_min, z_max, volume.shape[0])
        if isinstance(clicks, Click):
            clicks = [clicks]
        checked_clicks = []
        for click in clicks:
            if not isinstance(click, Click):
                raise ValueError(f"clicks must be Click objects, got {type(click).__name__}")
            checked_clicks.append(click.validate(volume.shape))
        if edited is None:
            edited = {}
        if not isinstance(edited, Mapping):
            raise ValueError(f"edited must map slice index -> 2D mask, got {type(edited).__name__}")
        checked_edited: dict[int, np.ndarray] = {}
        for z, slice_mask in edited.items():
            index = check_slice_index(z, volume.shape[0], "edited slice z")
            checked_edited[index] = check_mask_2d(
                slice_mask, volume.shape[1:], f"edited mask on slice {index}", allow_empty=True
            )
        if not checked_clicks and not checked_edited:
            raise ValueError("refine needs at least one click or edited slice")
        for z in [click.z for click in checked_clicks] + list(checked_edited):
            if not bounds[0] <= z <= bounds[1]:
                raise ValueError(
                    f"correction on slice z={z} lies outside the boundary slices {bounds[0]}..{bounds[1]}"
                )
        chunk = self.chunk_mm if chunk_mm is None else _check_chunk_mm(chunk_mm)
        return volume, spacing_mm, old_mask, checked_clicks, checked_edited, bounds, chunk


class _StopWatch:
    """Wraps ``should_stop`` and remembers whether it ever fired (a finished stream never polls it again)."""

    def __init__(self, should_stop: Callable[[], bool] | None) -> None:
        self.should_stop = should_stop
        self.fired = False

    def __call__(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.fired = True
        return self.fired


def _check_chunk_mm(chunk_mm: float) -> float:
    try:
        value = float(chunk_mm)
    except (TypeError, ValueError) as error:
        raise ValueError(f"chunk_mm must be a number of mm, got {chunk_mm!r}") from error
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"chunk_mm must be finite and > 0, got {chunk_mm!r}")
    return value


def load_engine(
    kind: str = "learned",
    *,
    weights_dir: pathlib.Path | str | None = None,
    device: str | None = None,
    chunk_mm: float = DEFAULT_CHUNK_MM,
    slice_refinement: bool = True,
    crop_aware_averaging: bool | None = None,
    focused_corrections: bool | None = None,
) -> Engine:
    """Build an engine.

    Args:
        kind: ``"learned"`` (shipped weights from ``ml/weights/`` or ``weights_dir``) or ``"classical"``
            (no weights; the fallback and baseline).
        weights_dir: folder holding the learned weights (learned only).
        device: torch device for the learned engine (default: CUDA when available, else CPU).
        chunk_mm: default propagation chunk in mm.
        slice_refinement: False leaves out the weights' slice refiner (learned only; for comparisons).
        crop_aware_averaging: overrides the shipped choice (``ml.learned.SHIPPED_CROP_AWARE_AVERAGING``;
            learned only; for comparisons).
        focused_corrections: overrides the shipped choice (``ml.learned.SHIPPED_FOCUSED_CORRECTIONS``; learned
            only; for comparisons).

    Raises:
        ValueError: unknown ``kind``.
        FileNotFoundError: the learned weights are missing (never silently replaced by the classical engine).
    """
    if kind == "classical":
        from ml.classical import ClassicalPredictor

        return Engine(ClassicalPredictor(), chunk_mm=chunk_mm)
    if kind == "learned":
        from ml.learned import load_learned_predictor  # imports torch: only when asked for

        directory = pathlib.Path(weights_dir) if weights_dir is not None else None
        try:
            overrides = {
                "crop_aware_averaging": crop_aware_averaging,
                "focused_corrections": focused_corrections,
            }
            options = {name: value for name, value in overrides.items() if value is not None}
            predictor = load_learned_predictor(
                weights_dir=directory, device=device, slice_refinement=slice_refinement, **options
            )
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"the learned engine cannot start: {error}. Use load_engine('classical') for the weight-free engine."
            ) from error
        return Engine(predictor, chunk_mm=chunk_mm)
    raise ValueError(f"unknown engine kind {kind!r}; choose one of {ENGINE_KINDS}")
