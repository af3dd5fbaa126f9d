"""The classical slice predictor: no weights, the fallback engine and the baseline the learned one must beat.

Everything is a local two-class intensity model plus shape priors:

* ``IntensityModel``: histograms (on windowed, lightly smoothed intensities) of the object's pixels and of
  a ring of background around it; a pixel's foreground probability is Bayes' rule on the two histograms
  with a spatial prior. Histograms rather than means cope with a background made of several tissues
  (grey matter on one side, CSF and white matter on the other).
* Propagation (RadSAM-style chaining inside each chunk): each target slice is classified only inside a
  band around the previous slice's mask (the object moves little from slice to slice; the band widens with
  the slice gap; one pixel for thin slices), then opened, hole-filled and reduced to the components
  touching the previous mask. A slice counts as empty (the object has ended) when its result is smaller
  than ``MIN_AREA_MM2``, or when its pixels look like the object only thanks to the spatial prior
  (``min_evidence``). A slice that grows faster than ``max_growth`` is redone with a one-pixel band.
* Box prompt: foreground model from the centre of the box, background model from a ring outside the box,
  one refit from the first result; the component covering the box centre. When that misses the box's
  sides (a tight box touches its object on all four), the Otsu component touching most sides instead.
* Point prompt: rays from the click stop where the intensity leaves the click's distribution; their
  (outlier-trimmed) extent becomes a box, segmented like a box prompt.
* Corrections on a prior mask: a positive click adds the foreground-like region grown from it (bounded by
  its distance to the prior); a negative click removes its component when that is a side blob, else the
  background-like part around it, else a disk as wide as the prior is thick there.

All arrays are full-size slices ``(Y, X)``; work happens on crops around the object for speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ml.predictor import SliceClick, Window, window_from_mask
from ml.propagation import GROWTH_BAND_PER_GAP, MAX_GROWTH

HISTOGRAM_BINS = 32
SMOOTHING_PX = 0.8
"""Gaussian smoothing (pixels) before classification: takes the edge off MR/CT noise without blurring borders."""
MIN_AREA_MM2 = 2.0
"""A propagated slice smaller than this (and than ``MIN_AREA_PX``) counts as empty: the object ended."""
MIN_AREA_PX = 3
SPATIAL_PRIOR_INSIDE = 0.9
"""Prior foreground probability deep inside the previous slice's mask (falls towards 1 - this outside it)."""
CLICK_REACH_MM = 64.0
"""Longest ray (mm) cast from a lone click."""
CLICK_RAYS = 16
CLICK_SEED_PX = 2.5
"""Radius (pixels) of the disk around a lone click whose intensities define "like the click"."""
CLICK_TOLERANCE = 3.0
"""A ray from a lone click stops where the intensity is this many robust standard deviations off the click's."""

_EIGHT = np.ones((3, 3), dtype=bool)
_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class _Crop:
    """Inclusive-exclusive rectangle ``[y0, y1) x [x0, x1)`` of a slice."""

    y0: int
    x0: int
    y1: int
    x1: int

    @classmethod
    def around(cls, mask: np.ndarray, margin: int) -> _Crop:
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        return cls.from_bounds(rows[0], cols[0], rows[-1], cols[-1], margin, mask.shape)

    @classmethod
    def from_bounds(cls, y0: int, x0: int, y1: int, x1: int, margin: int, shape: tuple[int, ...]) -> _Crop:
        return cls(
            max(int(y0) - margin, 0),
            max(int(x0) - margin, 0),
            min(int(y1) + margin + 1, shape[0]),
            min(int(x1) + margin + 1, shape[1]),
        )

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def paste(self, part: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        full = np.zeros(shape, dtype=part.dtype)
        full[self.slices] = part
        return full


@dataclass(frozen=True)
class IntensityModel:
    """Foreground and background histograms over windowed intensities in [0, 1] (``HISTOGRAM_BINS`` bins)."""

    foreground: np.ndarray
    background: np.ndarray

    @classmethod
    def fit(
        cls, foreground_values: np.ndarray, background_values: np.ndarray, blur_bins: float = 1.0
    ) -> IntensityModel:
        """Histograms of the two samples (values in [0, 1]), blurred and normalised to densities."""
        return cls(_density(foreground_values, blur_bins), _density(background_values, blur_bins))

    def probability(self, values: np.ndarray, prior: np.ndarray | float = 0.5) -> np.ndarray:
        """Foreground probability of windowed values (any shape) under a spatial ``prior``."""
        bins = np.clip((values * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
        foreground = self.foreground[bins] * prior
        background = self.background[bins] * (1.0 - np.asarray(prior))
        return foreground / (foreground + background)


def _density(values: np.ndarray, blur_bins: float) -> np.ndarray:
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    counts = counts.astype(np.float64)
    if blur_bins > 0:
        counts = ndimage.gaussian_filter1d(counts, blur_bins, mode="nearest")
    # A floor keeps unseen intensities from being certain either way (ties go to the background).
    return counts / max(counts.sum(), 1.0) + 1e-4


def _otsu_free_window(image: np.ndarray, region: tuple[slice, slice]) -> Window:
    """Window from the 0.5-99.5 percentiles of a region (used when no object mask exists yet)."""
    return window_from_mask(image[region], np.ones(image[region].shape, dtype=bool))


def _prepare(image: np.ndarray, window: Window) -> np.ndarray:
    return ndimage.gaussian_filter(window.apply(image), SMOOTHING_PX)


def _ring(mask: np.ndarray, width_px: int) -> np.ndarray:
    return ndimage.binary_dilation(mask, _EIGHT, iterations=max(width_px, 1)) & ~mask


def _clean(candidate: np.ndarray) -> np.ndarray:
    """Open (only when the mask is big enough to survive it) and fill holes."""
    if candidate.sum() > 40:
        opened = ndimage.binary_opening(candidate, _CROSS)
        if opened.any():
            candidate = opened
    return ndimage.binary_fill_holes(candidate)


def _components_touching(mask: np.ndarray, reach: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    components, _ = ndimage.label(mask, _EIGHT)
    touching = np.unique(components[mask & reach])
    touching = touching[touching > 0]
    return np.isin(components, touching) if touching.size else np.zeros_like(mask)


def _component_at(mask: np.ndarray, y: int, x: int) -> np.ndarray:
    components, _ = ndimage.label(mask, _EIGHT)
    label = components[y, x]
    return components == label if label else np.zeros_like(mask)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask, _EIGHT)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    return components == (int(np.argmax(sizes)) + 1)


def _ellipse(height: int, width: int, scale: float) -> np.ndarray:
    """bool ``(height, width)``: the inscribed ellipse scaled by ``scale`` about the centre."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    ry, rx = max(scale * height / 2, 0.75), max(scale * width / 2, 0.75)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _disk(
    shape: tuple[int, ...], y: float, x: float, radius_mm: float, spacing_yx: tuple[float, float]
) -> np.ndarray:
    yy, xx = np.ogrid[0 : shape[0], 0 : shape[1]]
    return ((yy - y) * spacing_yx[0]) ** 2 + ((xx - x) * spacing_yx[1]) ** 2 <= radius_mm**2


def _sides_touched(mask: np.ndarray, box: tuple[int, int, int, int], tolerance: int = 1) -> int:
    """How many sides of the inclusive ``box`` the mask reaches (within ``tolerance`` pixels)."""
    if not mask.any():
        return 0
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    y0, x0, y1, x1 = box
    return (
        int(rows[0] <= y0 + tolerance)
        + int(rows[-1] >= y1 - tolerance)
        + int(cols[0] <= x0 + tolerance)
        + int(cols[-1] >= x1 - tolerance)
    )


def _otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (64 bins)."""
    counts, edges = np.histogram(values, bins=64, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between))])


def _best_side_touching_component(
    prepared: np.ndarray, in_box: np.ndarray, box: tuple[int, int, int, int]
) -> np.ndarray:
    """Among the components of both Otsu classes inside the box, the one touching most sides (then largest)."""
    threshold = _otsu_threshold(prepared[in_box])
    best, best_score = np.zeros_like(in_box), (0, 0)
    for side in (prepared > threshold, prepared <= threshold):
        candidate = _clean(side & in_box) & in_box
        components, count = ndimage.label(candidate, _EIGHT)
        for label in range(1, count + 1):
            component = components == label
            score = (_sides_touched(component, box), int(component.sum()))
            if score > best_score:
                best, best_score = component, score
    return ndimage.binary_fill_holes(best)


class ClassicalPredictor:
    """``SlicePredictor`` without weights (see the module docstring); deterministic and thread-safe."""

    name = "classical"

    def __init__(
        self,
        *,
        band_pixels: float = 1.0,
        band_per_gap: float = GROWTH_BAND_PER_GAP,
        prior_inside: float = SPATIAL_PRIOR_INSIDE,
        max_growth: float | None = MAX_GROWTH,
        min_evidence: float | None = 0.5,
    ) -> None:
        """Propagation knobs (defaults tuned on training cases only).

        Args:
            band_pixels: smallest band (in pixels) a slice may grow beyond the previous mask.
            band_per_gap: band width per mm of slice gap (thick slices move more).
            prior_inside: spatial prior deep inside the previous mask.
            max_growth: when the area grows by more than this fraction per slice, fall back to a one-pixel
                band (leaks grow fast; real objects change smoothly); None disables it.
            min_evidence: a slice whose mask has a mean intensity-only foreground probability below this
                counts as empty (the chain is following tissue that merely resembles the object).
        """
        self.min_evidence = min_evidence
        self.band_pixels = band_pixels
        self.band_per_gap = band_per_gap
        self.prior_inside = prior_inside
        self.max_growth = max_growth

    # ------------------------------------------------------------------ propagation

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
        """float32 ``(K, Y, X)`` masks (0/1) chained from the guide, nearest target first.

        After the first empty target, all further targets are empty too (the chain has nothing to follow).
        """
        guide_mask = np.asarray(guide_mask, dtype=bool)
        targets = np.asarray(targets, dtype=np.float32)
        count = targets.shape[0]
        result = np.zeros(targets.shape, dtype=np.float32)
        if not guide_mask.any() or count == 0:
            return result
        pixel_mm = min(spacing_yx)
        distances = (
            list(guide_distances) if guide_distances is not None else [float(k + 1) for k in range(count)]
        )
        gaps = np.diff([0.0, *distances])
        model = self._fit_from_mask(guide_image, guide_mask, window)
        previous = guide_mask
        for index in range(count):
            band_mm = max(self.band_pixels * pixel_mm, self.band_per_gap * float(gaps[index]))
            mask, evidence = self._follow(
                targets[index], previous, model, window, spacing_yx, band_mm, self.prior_inside
            )
            if self.max_growth is not None and mask.sum() > (1.0 + self.max_growth) * previous.sum():
                mask, evidence = self._follow(
                    targets[index], previous, model, window, spacing_yx, pixel_mm, self.prior_inside
                )
            if self.min_evidence is not None and evidence < self.min_evidence:
                break
            if mask.sum() < MIN_AREA_PX or mask.sum() * spacing_yx[0] * spacing_yx[1] < MIN_AREA_MM2:
                break
            result[index] = mask
            previous = mask
        return result

    @staticmethod
    def _fit_from_mask(image: np.ndarray, mask: np.ndarray, window: Window) -> IntensityModel:
        crop = _Crop.around(mask, margin=12)
        prepared = _prepare(np.asarray(image, dtype=np.float32)[crop.slices], window)
        inside = mask[crop.slices]
        ring_px = max(3, round(0.25 * np.sqrt(inside.sum())))
        ring = _ring(inside, ring_px)
        return IntensityModel.fit(prepared[inside], prepared[ring])

    @staticmethod
    def _follow(
        target: np.ndarray,
        previous: np.ndarray,
        model: IntensityModel,
        window: Window,
        spacing_yx: tuple[float, float],
        band_mm: float,
        prior_inside: float,
    ) -> tuple[np.ndarray, float]:
        """bool ``(Y, X)``: the object on ``target`` given the previous slice's mask, and its evidence.

        The evidence is the mean foreground probability of the mask's pixels from intensity alone
        (no spatial prior); 0 for an empty mask.
        """
        band_px = int(np.ceil(band_mm / min(spacing_yx)))
        crop = _Crop.around(previous, margin=band_px + 4)
        prior_mask = previous[crop.slices]
        prepared = _prepare(target[crop.slices], window)
        inside_mm = ndimage.distance_transform_edt(prior_mask, sampling=spacing_yx)
        outside_mm = ndimage.distance_transform_edt(~prior_mask, sampling=spacing_yx)
        signed_mm = np.where(prior_mask, inside_mm, -outside_mm)
        prior = 0.5 + (prior_inside - 0.5) * np.tanh(signed_mm / band_mm)
        band = outside_mm <= band_mm
        candidate = (model.probability(prepared, prior) >= 0.5) & band
        candidate = _components_touching(_clean(candidate), ndimage.binary_dilation(prior_mask, _EIGHT))
        evidence = float(model.probability(prepared[candidate]).mean()) if candidate.any() else 0.0
        return crop.paste(candidate, previous.shape), evidence

    # ------------------------------------------------------------------ prompt slice

    def prompt_mask(
        self,
        image: np.ndarray,
        spacing_yx: tuple[float, float],
        *,
        box: tuple[int, int, int, int] | None = None,
        clicks: Sequence[SliceClick] = (),
        prior: np.ndarray | None = None,
    ) -> np.ndarray:
        """bool ``(Y, X)`` from a box and/or clicks, optionally correcting ``prior`` (see module docstring)."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise ValueError(f"image must be 2D (Y, X), got shape {image.shape}")
        height, width = image.shape
        for click in clicks:
            if not (0 <= click.y < height and 0 <= click.x < width):
                raise ValueError(f"click ({click.y}, {click.x}) lies outside the {height}x{width} slice")
        mask = np.zeros(image.shape, dtype=bool)
        if prior is not None:
            prior = np.asarray(prior, dtype=bool)
            if prior.shape != image.shape:
                raise ValueError(f"prior mask has shape {prior.shape}, the slice is {image.shape}")
            mask = prior.copy()
        positive = [click for click in clicks if click.positive]
        negative = [click for click in clicks if not click.positive]
        if box is not None:
            y0, x0, y1, x1 = (int(value) for value in box)
            if y1 < y0 or x1 < x0:
                raise ValueError(f"box {box} is empty (need y0 <= y1 and x0 <= x1)")
            if y0 < 0 or x0 < 0 or y1 >= height or x1 >= width:
                raise ValueError(f"box {box} reaches outside the {height}x{width} slice")
            mask |= self._from_box(image, spacing_yx, (y0, x0, y1, x1))
        elif not mask.any():
            if not positive:
                raise ValueError("prompt_mask needs a box, a prior mask or at least one positive click")
            first, positive = positive[0], positive[1:]
            mask = self._from_click(image, spacing_yx, first.y, first.x)
        for click in positive:
            mask = self._add_at(image, spacing_yx, mask, click.y, click.x)
        for click in negative:
            mask = self._remove_at(image, spacing_yx, mask, click.y, click.x)
        return mask

    def _from_box(
        self, image: np.ndarray, spacing_yx: tuple[float, float], box: tuple[int, int, int, int]
    ) -> np.ndarray:
        y0, x0, y1, x1 = box
        height, width = y1 - y0 + 1, x1 - x0 + 1
        margin = max(3, round(0.25 * max(height, width)))
        crop = _Crop.from_bounds(y0, x0, y1, x1, margin, image.shape)
        region = image[crop.slices]
        in_box = np.zeros(region.shape, dtype=bool)
        in_box[y0 - crop.y0 : y1 - crop.y0 + 1, x0 - crop.x0 : x1 - crop.x0 + 1] = True
        centre = np.zeros(region.shape, dtype=bool)
        centre[in_box] = _ellipse(height, width, 0.5).ravel()
        window = window_from_mask(region, in_box, margin=0.05)
        prepared = _prepare(region, window)
        background = ~ndimage.binary_dilation(in_box, _EIGHT)
        if not background.any():  # the box fills the slice: use its frame as the background sample
            background = in_box & ~ndimage.binary_erosion(in_box, _EIGHT, iterations=2)
        model = IntensityModel.fit(prepared[centre], prepared[background], blur_bins=1.5)
        mask = self._classify_in(prepared, model, in_box, centre)
        if mask.any():  # refit once on the first result: its own intensities and its own surroundings
            surroundings = background | (in_box & ~ndimage.binary_dilation(mask, _EIGHT, iterations=2))
            if surroundings.sum() >= 8 and mask.sum() >= 8:
                refit = IntensityModel.fit(prepared[mask], prepared[surroundings])
                second = self._classify_in(prepared, refit, in_box, centre)
                if second.sum() >= 0.25 * mask.sum():
                    mask = second
        local_box = (y0 - crop.y0, x0 - crop.x0, y1 - crop.y0, x1 - crop.x0)
        if _sides_touched(mask, local_box) < 3:
            # A tight box touches its object on all four sides; a crescent or an L-shape misses the box
            # centre, so the centre-seeded model found something else. Try the two intensity classes.
            alternative = _best_side_touching_component(prepared, in_box, local_box)
            if _sides_touched(alternative, local_box) > _sides_touched(mask, local_box):
                mask = alternative
        if not mask.any():  # nothing separable: the box's inscribed ellipse is the honest best guess
            mask = centre | (
                in_box & ndimage.binary_dilation(centre, _EIGHT, iterations=max(1, min(height, width) // 4))
            )
        return crop.paste(mask, image.shape)

    @staticmethod
    def _classify_in(
        prepared: np.ndarray, model: IntensityModel, allowed: np.ndarray, seed: np.ndarray
    ) -> np.ndarray:
        candidate = _clean((model.probability(prepared) >= 0.5) & allowed) & allowed
        components, count = ndimage.label(candidate, _EIGHT)
        if count == 0:
            return candidate
        overlap = np.bincount(components[seed & candidate], minlength=count + 1)[1:]
        if overlap.max() == 0:
            return np.zeros_like(candidate)
        return ndimage.binary_fill_holes(components == (int(np.argmax(overlap)) + 1))

    def _from_click(self, image: np.ndarray, spacing_yx: tuple[float, float], y: int, x: int) -> np.ndarray:
        """A lone click: estimate the object's box by casting rays, then segment that box like a box prompt.

        Rays leave the click in ``CLICK_RAYS`` directions and stop where the smoothed intensity leaves the
        click's own distribution; rays much longer than the median (leaks along a similar neighbour) are
        cut back. Like ProMISe's default ROI, but sized from the image instead of fixed.
        """
        reach_mm = CLICK_REACH_MM
        half_y = max(round(reach_mm / spacing_yx[0]), 4)
        half_x = max(round(reach_mm / spacing_yx[1]), 4)
        crop = _Crop(
            max(y - half_y, 0),
            max(x - half_x, 0),
            min(y + half_y + 1, image.shape[0]),
            min(x + half_x + 1, image.shape[1]),
        )
        local_y, local_x = y - crop.y0, x - crop.x0
        prepared = _prepare(image[crop.slices], _otsu_free_window(image, crop.slices))
        seed = _disk(prepared.shape, local_y, local_x, CLICK_SEED_PX * min(spacing_yx), spacing_yx)
        values = prepared[seed]
        centre = float(np.median(values))
        spread = max(1.4826 * float(np.median(np.abs(values - centre))), 0.04)
        lengths_mm = []
        ends = []
        for angle in np.linspace(0.0, 2 * np.pi, CLICK_RAYS, endpoint=False):
            step_y, step_x = np.sin(angle), np.cos(angle)
            outside_run, last_inside = 0, 0
            for distance in range(1, 2 * max(half_y, half_x)):
                ry, rx = round(local_y + distance * step_y), round(local_x + distance * step_x)
                if not (0 <= ry < prepared.shape[0] and 0 <= rx < prepared.shape[1]):
                    break
                if abs(prepared[ry, rx] - centre) > CLICK_TOLERANCE * spread:
                    outside_run += 1
                    if outside_run >= 2:
                        break
                else:
                    outside_run, last_inside = 0, distance
            lengths_mm.append(last_inside * float(np.hypot(step_y * spacing_yx[0], step_x * spacing_yx[1])))
            ends.append((step_y, step_x, last_inside))
        cap = 2.0 * max(float(np.median(lengths_mm)), min(spacing_yx))
        points_y, points_x = [y], [x]
        for (step_y, step_x, length), length_mm in zip(ends, lengths_mm, strict=True):
            scale = min(1.0, cap / length_mm) if length_mm > 0 else 0.0
            points_y.append(round(y + length * scale * step_y))
            points_x.append(round(x + length * scale * step_x))
        box = (
            max(min(points_y) - 1, 0),
            max(min(points_x) - 1, 0),
            min(max(points_y) + 1, image.shape[0] - 1),
            min(max(points_x) + 1, image.shape[1] - 1),
        )
        found = self._from_box(image, spacing_yx, box)
        if not found[y, x]:
            found = found | _disk(image.shape, y, x, 1.5 * min(spacing_yx), spacing_yx)
        return _component_at(found, y, x)

    # ------------------------------------------------------------------ corrections

    def _add_at(
        self, image: np.ndarray, spacing_yx: tuple[float, float], mask: np.ndarray, y: int, x: int
    ) -> np.ndarray:
        """Add the missed region around a positive click at ``(y, x)`` to ``mask``."""
        if mask[y, x]:
            return mask
        if not mask.any():
            return self._from_click(image, spacing_yx, y, x)
        gap_mm = float(ndimage.distance_transform_edt(~mask, sampling=spacing_yx)[y, x])
        reach_mm = float(np.clip(2.0 * gap_mm, 2.0 * min(spacing_yx), 25.0))
        margin = int(np.ceil(reach_mm / min(spacing_yx))) + 4
        crop = _Crop.from_bounds(y, x, y, x, margin, image.shape)
        local = mask[crop.slices]
        region = image[crop.slices]
        window = window_from_mask(image, mask) if mask.sum() >= 8 else _otsu_free_window(image, crop.slices)
        prepared = _prepare(region, window)
        local_y, local_x = y - crop.y0, x - crop.x0
        within = _disk(region.shape, local_y, local_x, reach_mm, spacing_yx)
        background_sample = _ring(local, 3) & ~within
        if local.sum() >= 8 and background_sample.sum() >= 8:
            model = IntensityModel.fit(prepared[local], prepared[background_sample])
            grown = (model.probability(prepared) >= 0.5) & within & ~local
            grown = _component_at(
                grown | _disk(region.shape, local_y, local_x, min(spacing_yx), spacing_yx), local_y, local_x
            )
        else:
            grown = np.zeros_like(local)
        core = _disk(region.shape, local_y, local_x, max(gap_mm, 1.0 * min(spacing_yx)), spacing_yx)
        added = ndimage.binary_fill_holes(local | grown | core)
        result = mask.copy()
        result[crop.slices] = added
        return result

    def _remove_at(
        self, image: np.ndarray, spacing_yx: tuple[float, float], mask: np.ndarray, y: int, x: int
    ) -> np.ndarray:
        """Remove the wrongly included region around a negative click at ``(y, x)`` from ``mask``."""
        if not mask[y, x]:
            return mask
        component = _component_at(mask, y, x)
        largest = _largest_component(mask)
        if not (component & largest).any():  # a side blob: drop it whole
            return mask & ~component
        thickness_mm = float(ndimage.distance_transform_edt(mask, sampling=spacing_yx)[y, x])
        radius_mm = max(thickness_mm, 1.0 * min(spacing_yx))
        window = window_from_mask(image, mask)
        prepared = _prepare(image, window)
        ring = _ring(mask, 3)
        removed = _disk(mask.shape, y, x, radius_mm + 0.5 * min(spacing_yx), spacing_yx) & mask
        if mask.sum() >= 8 and ring.sum() >= 8:
            model = IntensityModel.fit(
                prepared[mask & ~removed] if (mask & ~removed).sum() >= 8 else prepared[mask], prepared[ring]
            )
            unlike = (model.probability(prepared) < 0.5) & mask
            unlike = _component_at(unlike | removed, y, x)
            if unlike.sum() <= 0.5 * mask.sum():
                removed = removed | unlike
        result = mask & ~removed
        if result.any():  # drop crumbs the cut left behind
            components, _count = ndimage.label(result, _EIGHT)
            sizes = np.bincount(components.ravel())[1:]
            result = np.isin(components, np.flatnonzero(sizes >= 0.05 * sizes.max()) + 1)
        return result
