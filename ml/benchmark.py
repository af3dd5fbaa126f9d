"""Speed benchmark: ``python -m ml.benchmark [--json OUT]``.

In one run, on the same generated inputs and through the predictor's own code path (crop, window,
resize, network, present gate, paste-back):

* ms per slice the propagation loop keeps, for the shipped configuration (``ml/weights/`` as
  ``load_learned_predictor`` builds it; an untrained network of the FAST preset when no weights are shipped
  yet: same architecture, same speed). With overlapping guides (``ml.propagation``) a guide predicts up
  to 8 slices of a ``--slices`` chunk in one view and the loop keeps the nearer half, so a kept slice costs
  two single-view predictions, the same work as flip averaging. Beside it: ms per predicted target with
  flip averaging and as one pass;
* the same for the paper-size configuration (PropSAM: channels 32..512, 224 px, untrained: only its speed
  matters here; one pass, every target kept) and the ratio of the two;
* ms per slice of the shipped slice refiner (``ml/refiner.py``; it re-draws every slice of the finished
  object once), and the total per slice (loop + refiner) that the 25 ms target applies to;
* the worst-case time per object of the loop's threshold calibration (``ml.propagation.calibrated_threshold``:
  one call there and one back per candidate threshold, in both directions, and for a drawn mask one for its
  own slice), paid once before propagating;
* the time to propagate a 100-slice object with the shipped configuration (the loop's calls at 1 mm:
  ``ml.propagation.slices_per_guide`` targets per guide, its views and guide spacing; the network is run
  whatever it predicts, so the figure does not depend on where a model would stop), calibration and
  refinement included.

Per-call figures use ``MAX_CHUNK_SLICES`` targets per call by default, the most the loop ever sends.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ml.checkpoint import WEIGHTS_FILE
from ml.learned import LearnedPredictor, load_learned_predictor
from ml.predictor import Window
from ml.propagation import (
    CALIBRATION_THRESHOLDS,
    MAX_CHUNK_SLICES,
    chunk_slices,
    guide_views,
    slices_kept_per_guide,
    slices_per_guide,
    uses_overlapping_guides,
    uses_threshold_calibration,
)
from ml.refiner import slices_to_refine


def generated_volume(
    depth: int, size: int, seed: int = 0, radii_yx: tuple[float, float] = (0.3, 0.25)
) -> tuple[np.ndarray, np.ndarray]:
    """``(image float32 (depth, size, size), mask bool (depth, size, size))``: a noisy bright ellipsoid whose
    in-plane radii are ``radii_yx`` of half the slice side."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(
        np.linspace(-1, 1, depth), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij"
    )
    mask = (zz / 0.98) ** 2 + (yy / radii_yx[0]) ** 2 + (xx / radii_yx[1]) ** 2 < 1.0
    image = (100.0 * mask + rng.normal(0, 20, mask.shape)).astype(np.float32)
    return image, mask


def _median_ms(call: Callable[[], object], per: int, repeats: int) -> float:
    """Median ms of ``call`` divided by ``per`` over ``repeats`` runs, after one warm-up run."""
    call()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000.0 / per)
    return statistics.median(timings)


def time_propagation(
    predictor: LearnedPredictor, image: np.ndarray, mask: np.ndarray, slices: int, repeats: int
) -> float:
    """Median ms per predicted target over ``repeats`` calls of ``slices`` targets (after one warm-up).

    The predictor's own ``propagate``: both views when it averages flips, one otherwise."""
    guide_z = image.shape[0] // 2
    targets = image[guide_z + 1 : guide_z + 1 + slices]
    window = Window(0.0, 100.0)
    return _median_ms(
        lambda: predictor.propagate(image[guide_z], mask[guide_z], targets, window, (1.0, 1.0)),
        slices,
        repeats,
    )


def time_loop_slice(
    predictor: LearnedPredictor, image: np.ndarray, mask: np.ndarray, slices: int, repeats: int
) -> float:
    """Median ms per slice the loop keeps, once past the first guide: the time of one guide's call
    divided by the slices the loop keeps from it, for a chunk of ``slices``.

    With overlapping guides a guide predicts ``slices_per_guide`` targets (at most 8) in one view (plain or
    mirrored in turn) and the loop keeps the nearer half; otherwise the call is ``propagate`` of ``slices``
    targets (both views when flip averaging) and every target is kept."""
    if not uses_overlapping_guides(predictor):
        return time_propagation(predictor, image, mask, slices, repeats)
    predicted, kept = slices_per_guide(predictor, slices), slices_kept_per_guide(predictor, slices)
    guide_z = image.shape[0] // 2
    targets = image[guide_z + 1 : guide_z + 1 + predicted]
    window = Window(0.0, 100.0)
    return _median_ms(
        lambda: predictor.propagate_scored(
            image[guide_z], mask[guide_z], targets, window, (1.0, 1.0), view="plain"
        ),
        kept,
        repeats,
    )


def time_refiner(predictor: LearnedPredictor, image: np.ndarray, mask: np.ndarray, repeats: int) -> float:
    """Median ms per re-drawn slice of the predictor's slice refiner on the whole object (0 without one)."""
    if predictor.refiner is None:
        return 0.0
    visited = len(slices_to_refine(mask, predictor.refiner.config))
    return _median_ms(lambda: predictor.refine_object(image, mask), visited, repeats)


def time_calibration(predictor: LearnedPredictor, image: np.ndarray, mask: np.ndarray, repeats: int) -> float:
    """Worst-case ms per object of the loop's threshold calibration (0 when the predictor does not ask for
    it): both directions go on, so each runs one call there and one back per candidate threshold, one
    target each, in the first guide's view; a drawn mask then adds one call for its own slice."""
    if not uses_threshold_calibration(predictor):
        return 0.0
    calls = 2 * (1 + len(CALIBRATION_THRESHOLDS)) + 1
    guide_z = image.shape[0] // 2
    view = "both" if predictor.flip_averaging else "plain"
    window = Window(0.0, 100.0)
    single = _median_ms(
        lambda: predictor.propagate_scored(
            image[guide_z], mask[guide_z], image[guide_z + 4 : guide_z + 5], window, (1.0, 1.0), view=view
        ),
        1,
        repeats,
    )
    return single * calls


def time_object(predictor: LearnedPredictor, image: np.ndarray, mask: np.ndarray) -> float:
    """Seconds to propagate the whole object outward from its middle with the loop's calls (1 mm slices):
    the loop's chunk per guide, its views, and the next guide where the loop would put it. The network
    runs whatever it predicts, so the figure does not depend on where a model would stop."""
    depth = image.shape[0]
    middle = depth // 2
    reach = slices_per_guide(predictor, chunk_slices(1.0))
    advance = slices_kept_per_guide(predictor, chunk_slices(1.0))
    overlapping = uses_overlapping_guides(predictor)
    window = Window(0.0, 100.0)
    started = time.perf_counter()
    for direction in (1, -1):
        guide = middle
        views = guide_views(predictor) if overlapping else None
        while 0 <= guide + direction < depth:
            indices = [
                guide + direction * step
                for step in range(1, reach + 1)
                if 0 <= guide + direction * step < depth
            ]
            if views is not None:
                predictor.propagate_scored(
                    image[guide], mask[guide], image[indices], window, (1.0, 1.0), view=next(views)
                )
            else:
                predictor.propagate(image[guide], mask[guide], image[indices], window, (1.0, 1.0))
            guide = indices[min(advance, len(indices)) - 1]
    predictor.refine_object(image, mask)
    return time.perf_counter() - started


def run(
    slices: int = MAX_CHUNK_SLICES,
    paper_slices: int = 4,
    repeats: int = 3,
    size: int = 256,
    threads: int = 2,
    weights_dir: pathlib.Path | None = None,
) -> dict[str, Any]:
    """All figures as a dict (see the module docstring). ``weights_dir``: time a candidate weights folder
    instead of ``ml/weights`` (it must hold weights: a candidate is never replaced by an untrained network)."""
    torch.set_num_threads(threads)
    if weights_dir is not None:
        shipped = load_learned_predictor(weights_dir, device="cpu")
        shipped_source = f"{weights_dir} (trained)"
    else:
        try:
            shipped = load_learned_predictor(device="cpu")
            shipped_source = "ml/weights (trained)"
        except FileNotFoundError:
            shipped = LearnedPredictor.from_untrained("fast", "cpu")
            shipped_source = "FAST preset, untrained (no shipped weights found)"
    paper = LearnedPredictor.from_untrained("paper", "cpu")
    image, mask = generated_volume(101, size)
    shipped_ms = time_loop_slice(shipped, image, mask, slices, repeats)
    flip_averaged = copy.copy(shipped)
    flip_averaged.flip_averaging = True
    flip_averaged_ms = time_propagation(flip_averaged, image, mask, slices, repeats)
    single_pass = copy.copy(shipped)
    single_pass.flip_averaging = False
    single_pass_ms = time_propagation(single_pass, image, mask, slices, repeats)
    refiner_ms = time_refiner(shipped, image, mask, repeats)
    calibration_ms = time_calibration(shipped, image, mask, repeats)
    paper_ms = time_propagation(paper, image, mask, paper_slices, max(1, repeats - 1))
    object_seconds = time_object(shipped, image, mask) + calibration_ms / 1000.0
    tiny_ms = None
    if shipped.small_crop_propmask is not None:
        # A tube about 6 voxels across (a spinal cord, a rib): its crops stay at the smallest side, so the
        # loop runs the small-crop PropMask; users see this speed on such objects.
        tiny_radius = 3.0 * 2.0 / (size - 1)
        tiny_image, tiny_mask = generated_volume(101, size, radii_yx=(tiny_radius, tiny_radius))
        tiny_ms = time_loop_slice(shipped, tiny_image, tiny_mask, slices, repeats)
    return {
        "shipped_ms_per_slice": round(shipped_ms, 2),
        "refiner_ms_per_slice": round(refiner_ms, 2),
        "total_ms_per_slice": round(shipped_ms + refiner_ms, 2),
        "calibration_ms_per_object": round(calibration_ms, 1),
        "shipped_flip_averaging": shipped.flip_averaging,
        "shipped_overlapping_guides": uses_overlapping_guides(shipped),
        "flip_averaged_ms_per_target": round(flip_averaged_ms, 2),
        "shipped_single_pass_ms_per_slice": round(single_pass_ms, 2),
        "paper_ms_per_slice": round(paper_ms, 2),
        "speedup": round(paper_ms / shipped_ms, 1),
        "object_100_slices_seconds": round(object_seconds, 2),
        "small_crop_ms_per_slice": round(tiny_ms, 2) if tiny_ms is not None else None,
        "small_crop_total_ms_per_slice": round(tiny_ms + refiner_ms, 2) if tiny_ms is not None else None,
        "shipped_source": shipped_source,
        "shipped_config": shipped.propmask.config.to_dict(),
        "paper_config": paper.propmask.config.to_dict(),
        "slice_size": [size, size],
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "targets_per_call": {"shipped": slices, "paper": paper_slices},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m ml.benchmark", description="PropMask speed, shipped vs paper size."
    )
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--slices", type=int, default=MAX_CHUNK_SLICES, help="targets per propagate call (shipped)"
    )
    parser.add_argument("--paper-slices", type=int, default=4, help="targets per propagate call (paper size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--size", type=int, default=256, help="slice height and width of the generated volume"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--weights", type=pathlib.Path, default=None, help="weights folder to time (default ml/weights)"
    )
    args = parser.parse_args(argv)
    if min(args.slices, args.paper_slices, args.repeats) < 1 or args.size < 32:
        parser.error("--slices, --paper-slices and --repeats must be >= 1 and --size >= 32")
    if args.weights is not None and not (args.weights / WEIGHTS_FILE).is_file():
        parser.error(f"no weights file {WEIGHTS_FILE} in {args.weights}")
    figures = run(args.slices, args.paper_slices, args.repeats, args.size, args.threads, args.weights)
    how = [
        name
        for name, used in (
            ("overlapping guides", figures["shipped_overlapping_guides"]),
            ("flip averaging", figures["shipped_flip_averaging"]),
        )
        if used
    ]
    print(
        f"shipped ({figures['shipped_source']}{', ' if how else ''}{' + '.join(how)}): "
        f"{figures['shipped_ms_per_slice']:.1f} ms per slice in the loop "
        f"(per predicted target: {figures['flip_averaged_ms_per_target']:.1f} ms with flip averaging, "
        f"{figures['shipped_single_pass_ms_per_slice']:.1f} ms for one pass without averaging)"
    )
    print(
        f"slice refiner: {figures['refiner_ms_per_slice']:.1f} ms per slice; "
        f"total {figures['total_ms_per_slice']:.1f} ms per slice (target <= 25)"
    )
    if figures["calibration_ms_per_object"]:
        print(f"threshold calibration: {figures['calibration_ms_per_object']:.0f} ms per object (worst case)")
    print(f"paper size (32..512 channels, 224 px): {figures['paper_ms_per_slice']:.1f} ms per slice")
    print(f"speed-up: {figures['speedup']:.1f}x")
    print(f"100-slice object (shipped): {figures['object_100_slices_seconds']:.2f} s")
    if figures["small_crop_ms_per_slice"] is not None:
        print(
            f"objects a few voxels across (small-crop PropMask): {figures['small_crop_ms_per_slice']:.1f} ms "
            f"per slice in the loop, {figures['small_crop_total_ms_per_slice']:.1f} ms with the refiner"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
