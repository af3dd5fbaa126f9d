"""Per-object threshold calibration: the network checked on the object's own slices against known answers.

``RimOracle`` is an over-confident network of the kind a model shows on organs it never saw: it answers the
true mask with probability 0.95 and, around whatever guide it was given, a rim of ``rim_probability``. At the
trained threshold (0.5) every re-guiding then adds that rim and the object swells slice after slice.
``FadingRimOracle`` is the under-confident kind: the outer rim of the true object comes back at
``rim_probability`` < 0.5, so at 0.5 every slice loses it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ml.engine import BoxPrompt, Engine, MaskPrompt
from ml.learned import LearnedPredictor, load_learned_predictor
from ml.predictor import ScoredSlices, Window
from ml.prompts import Click
from ml.propagation import (
    CALIBRATION_THRESHOLDS,
    IDENTITY_THRESHOLDS,
    calibrated_threshold,
    chunk_slices,
    dice,
    uses_threshold_calibration,
)
from tests.ml.tagged import tagged_volume
from tests.ml.test_overlapping_guides import ScoringOracle

torch.set_num_threads(1)

SIZE = 48


def disc_truth(depth: int, first: int, last: int) -> np.ndarray:
    """A disc of radius 8 in the middle of ``SIZE x SIZE`` slices ``first..last``."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    disc = (rows - SIZE / 2) ** 2 + (cols - SIZE / 2) ** 2 <= 8**2
    truth = np.zeros((depth, SIZE, SIZE), dtype=bool)
    truth[first : last + 1] = disc
    return truth


class RimOracle(ScoringOracle):
    """``ScoringOracle`` (true masks, every call logged) with a rim of ``rim_probability`` around each guide."""

    def __init__(self, truth: np.ndarray, *, rim_probability: float, threshold_calibration: bool) -> None:
        super().__init__(truth)
        self.rim_probability = rim_probability
        self.threshold_calibration = threshold_calibration

    def propagate_scored(
        self, guide_image: np.ndarray, guide_mask: np.ndarray, *args: Any, **kwargs: Any
    ) -> ScoredSlices:
        truthful = super().propagate_scored(guide_image, guide_mask, *args, **kwargs)
        rim = ndimage.binary_dilation(guide_mask, iterations=2)
        probabilities = np.where(truthful.probabilities > 0, 0.95, np.where(rim, self.rim_probability, 0.0))
        return ScoredSlices(probabilities.astype(np.float32), truthful.present)


def segmented(oracle: RimOracle, prompt_z: int) -> np.ndarray:
    volume = tagged_volume(oracle.truth.shape[0], SIZE)
    found = np.zeros(oracle.truth.shape, dtype=bool)
    for step in Engine(oracle).propagate(
        volume, (1.0, 1.0, 1.0), MaskPrompt(prompt_z, oracle.truth[prompt_z])
    ):
        found[step.z] = step.mask
    return found


def threshold_at_slice_30(oracle: ScoringOracle, *, drawn_guide: bool = True) -> float:
    """``calibrated_threshold`` for a prompt on slice 30 of a 60-slice, 1 mm volume."""
    volume = tagged_volume(oracle.truth.shape[0], SIZE)
    window = Window(0.0, 100.0)
    return calibrated_threshold(
        oracle,
        volume,
        (1.0, 1.0, 1.0),
        30,
        oracle.truth[30],
        window,
        chunk_slices(1.0),
        z_low=0,
        z_high=59,
        drawn_guide=drawn_guide,
    )


def test_an_over_confident_network_no_longer_swells_the_object_with_calibration() -> None:
    truth = disc_truth(60, 10, 49)
    swollen = segmented(RimOracle(truth, rim_probability=0.75, threshold_calibration=False), 30)
    calibrated = segmented(RimOracle(truth, rim_probability=0.75, threshold_calibration=True), 30)
    assert dice(swollen, truth) < 0.8  # a rim per re-guiding, capped only by the growth guard
    assert dice(calibrated, truth) == 1.0


def test_the_round_trip_picks_the_lowest_threshold_that_drops_the_rim() -> None:
    truth = disc_truth(60, 10, 49)
    oracle = RimOracle(truth, rim_probability=0.75, threshold_calibration=True)
    threshold = threshold_at_slice_30(oracle)
    assert threshold == 0.8
    # up and down: one call there, then one back per candidate threshold; a raised threshold is final, so
    # the drawn guide's own slice is not asked for
    assert len(oracle.calls) == 2 * (1 + len(CALIBRATION_THRESHOLDS))


def test_a_network_that_is_right_on_these_images_keeps_the_trained_threshold() -> None:
    truth = disc_truth(60, 10, 49)
    oracle = RimOracle(truth, rim_probability=0.0, threshold_calibration=True)
    assert threshold_at_slice_30(oracle) == 0.5
    assert dice(segmented(oracle, 30), truth) == 1.0


def test_an_object_ending_at_the_prompt_slice_keeps_the_trained_threshold() -> None:
    truth = disc_truth(60, 30, 30)
    oracle = RimOracle(truth, rim_probability=0.75, threshold_calibration=True)
    threshold = threshold_at_slice_30(oracle)
    assert threshold == 0.5  # nothing beyond the prompt to go there and back through
    assert len(oracle.calls) == 3  # one look each way, no round trips, then the guide's own slice


def test_predictors_that_do_not_ask_for_calibration_cost_no_extra_calls() -> None:
    truth = disc_truth(60, 10, 49)
    oracle = RimOracle(truth, rim_probability=0.75, threshold_calibration=False)
    assert not uses_threshold_calibration(oracle)
    threshold = threshold_at_slice_30(oracle)
    assert threshold == 0.5 and len(oracle.calls) == 0


def test_the_shipped_learned_predictor_calibrates_and_can_be_told_not_to() -> None:
    assert load_learned_predictor(device="cpu").threshold_calibration is True
    assert load_learned_predictor(device="cpu", threshold_calibration=False).threshold_calibration is False
    assert LearnedPredictor.from_untrained("fast", "cpu").threshold_calibration is False


def test_a_correction_past_the_end_re_propagates_at_the_calibrated_threshold_too() -> None:
    truth = disc_truth(60, 10, 49)
    volume = tagged_volume(60, SIZE)
    stopped_early = truth.copy()
    stopped_early[36:] = False  # the first propagation ended at slice 35
    click = Click(40, SIZE // 2, SIZE // 2, positive=True)
    results = {}
    for calibrate in (False, True):
        oracle = RimOracle(truth, rim_probability=0.75, threshold_calibration=calibrate)
        results[calibrate] = Engine(oracle).refine(
            volume, (1.0, 1.0, 1.0), stopped_early, [click], anchor_z=30
        )
    # the click re-propagates away from the prompt slice (30), from slice 40 up
    assert dice(results[False][40:], truth[40:]) < 0.9
    assert dice(results[True][40:], truth[40:]) == 1.0


def test_cancelling_during_the_calibration_stops_after_the_call_in_flight() -> None:
    truth = disc_truth(60, 10, 49)
    oracle = RimOracle(truth, rim_probability=0.75, threshold_calibration=True)
    volume = tagged_volume(60, SIZE)

    def cancelled() -> bool:  # the user cancels while the first call runs
        return len(oracle.calls) >= 1

    steps = list(
        Engine(oracle).propagate(volume, (1.0, 1.0, 1.0), MaskPrompt(30, truth[30]), should_stop=cancelled)
    )
    assert [step.z for step in steps] == [30]  # the prompt slice only
    assert len(oracle.calls) == 1  # not the 12 calls of a full calibration


def test_cancelling_a_correction_during_its_calibration_re_propagates_nothing() -> None:
    truth = disc_truth(60, 10, 49)
    stopped_early = truth.copy()
    stopped_early[36:] = False
    oracle = RimOracle(truth, rim_probability=0.75, threshold_calibration=True)

    def cancelled() -> bool:
        return len(oracle.calls) >= 1

    steps = list(
        Engine(oracle).refine_steps(
            tagged_volume(60, SIZE),
            (1.0, 1.0, 1.0),
            stopped_early,
            [Click(40, SIZE // 2, SIZE // 2, positive=True)],
            anchor_z=30,
            should_stop=cancelled,
        )
    )
    assert [step.z for step in steps] == [40]  # the corrected slice only
    assert len(oracle.calls) == 1


class FadingRimOracle(ScoringOracle):
    """``ScoringOracle`` answering the true mask's core at 0.95 and its outer 2-pixel rim at ``rim_probability``."""

    def __init__(self, truth: np.ndarray, *, rim_probability: float) -> None:
        super().__init__(truth)
        self.rim_probability = rim_probability
        self.threshold_calibration = True

    def propagate_scored(self, *args: Any, **kwargs: Any) -> ScoredSlices:
        truthful = super().propagate_scored(*args, **kwargs)
        inside = truthful.probabilities > 0
        core = np.stack([ndimage.binary_erosion(slice_, iterations=2) for slice_ in inside])
        probabilities = np.where(core, 0.95, np.where(inside, self.rim_probability, 0.0))
        return ScoredSlices(probabilities.astype(np.float32), truthful.present)


def test_an_under_confident_network_keeps_the_rim_it_would_lose_at_the_trained_threshold() -> None:
    truth = disc_truth(60, 10, 49)
    oracle = FadingRimOracle(truth, rim_probability=0.35)
    assert threshold_at_slice_30(oracle) == 0.3  # the guide's own slice comes back whole only below 0.35
    assert dice(segmented(oracle, 30), truth) == 1.0
    oracle.threshold_calibration = False
    assert dice(segmented(oracle, 30), truth) < 0.8, "at 0.5 every slice but the prompt loses its rim"


def test_the_lowest_restoring_threshold_is_taken_and_a_faint_rim_is_not_chased() -> None:
    truth = disc_truth(60, 10, 49)
    assert threshold_at_slice_30(FadingRimOracle(truth, rim_probability=0.45)) == min(IDENTITY_THRESHOLDS)
    assert threshold_at_slice_30(FadingRimOracle(truth, rim_probability=0.2)) == 0.5  # below every candidate


def test_a_guide_the_network_drew_itself_is_not_checked_against_its_own_slice() -> None:
    truth = disc_truth(60, 10, 49)
    oracle = FadingRimOracle(truth, rim_probability=0.35)
    assert threshold_at_slice_30(oracle, drawn_guide=False) == 0.5  # a box's or a click's Box2Mask answer
    box = BoxPrompt(30, 16, 16, 32, 32)
    assert len(list(Engine(oracle).propagate(tagged_volume(60, SIZE), (1.0, 1.0, 1.0), box))) > 1
    assert not any(targets == [guide] for guide, targets, _ in oracle.calls), (
        "no call for a guide's own slice"
    )
