"""Overlapping guides: every slice past the first half-chunk is the average of its two nearest guides.

``ScoringOracle`` answers with the true masks, scaled by a per-guide confidence, and a per-guide
object-present probability, so each test can script what one guide believes and check what the loop does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from ml.config import CROP_SCALE
from ml.engine import Engine, MaskPrompt
from ml.learned import LearnedPredictor
from ml.predictor import ScoredSlices, ScoringPredictor, SliceClick, View, Window
from ml.preprocess import box_of_mask, square_crop
from ml.propagation import (
    average_seen,
    cut_by_crop,
    guide_views,
    slices_kept_per_guide,
    slices_per_guide,
    uses_overlapping_guides,
)
from tests.ml.tagged import square_truth, tagged_volume

torch.set_num_threads(1)


class ScoringOracle:
    """True masks from a scriptable guide: ``present_by_guide[g][z]`` overrides the present probability
    guide ``g`` gives slice ``z`` (default 1 inside the object, 0 outside). With ``sees_only_its_crop`` it
    answers like a network that sees only its crop: the true mask at probability 0.9 inside PropSAM's
    square crop around the guide, nothing outside it, and says where the crop lay (``seen``).

    ``calls`` logs ``(guide_z, [target z, ...], view)``."""

    name = "scoring-oracle"
    present_threshold = 0.5

    def __init__(
        self, truth: np.ndarray, *, flip_averaging: bool = True, sees_only_its_crop: bool = False
    ) -> None:
        self.truth = truth
        self.sees_only_its_crop = sees_only_its_crop
        self.overlapping_guides = True
        self.flip_averaging = flip_averaging
        self.present_by_guide: dict[int, dict[int, float]] = {}
        self.calls: list[tuple[int, list[int], View]] = []

    def prompt_mask(
        self,
        image: np.ndarray,
        spacing_yx: tuple[float, float],
        *,
        box: tuple[int, int, int, int] | None = None,
        clicks: Sequence[SliceClick] = (),
        prior: np.ndarray | None = None,
    ) -> np.ndarray:
        return self.truth[int(image[0, 0])].copy()

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
        raise AssertionError("with overlapping guides the loop asks for scored answers only")

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
        assert guide_mask.any(), "the loop must never hand over an empty guide"
        guide_z = int(guide_image[0, 0])
        target_z = [int(target[0, 0]) for target in targets]
        self.calls.append((guide_z, target_z, view))
        scripted = self.present_by_guide.get(guide_z, {})
        present = np.asarray([scripted.get(z, float(self.truth[z].any())) for z in target_z], np.float32)
        probabilities = self.truth[target_z].astype(np.float32)
        if not self.sees_only_its_crop:
            return ScoredSlices(probabilities=probabilities, present=present)
        seen = square_crop(box_of_mask(guide_mask), CROP_SCALE).region(guide_mask.shape)
        return ScoredSlices(probabilities=0.9 * probabilities * seen, present=present, seen=seen)


def propagated(oracle: ScoringOracle, truth: np.ndarray, prompt_z: int) -> list:
    return list(
        Engine(oracle).propagate(
            tagged_volume(truth.shape[0]), (1.0, 1.0, 1.0), MaskPrompt(prompt_z, truth[prompt_z])
        )
    )


def test_the_whole_object_streams_once_with_guides_half_a_chunk_apart() -> None:
    truth = square_truth(60, 10, 47)
    oracle = ScoringOracle(truth)
    steps = propagated(oracle, truth, 20)
    zs = [step.z for step in steps]
    assert len(zs) == len(set(zs)) and set(zs) == set(range(10, 48))
    assert [step.z for step in steps if step.direction == "up"] == list(range(21, 48))
    up_calls = [call for call in oracle.calls if call[1][0] > call[0]]
    # 8 slices predicted per guide, the nearer 4 kept: every slice past the first 4 is seen by two guides.
    assert [guide for guide, _, _ in up_calls][:4] == [20, 24, 28, 32]
    assert up_calls[0][1] == list(range(21, 29)) and up_calls[1][1] == list(range(25, 33))


def test_one_guide_wrongly_calling_the_object_ended_does_not_cut_it_short() -> None:
    truth = square_truth(60, 10, 47)
    oracle = ScoringOracle(truth)
    oracle.present_by_guide[24] = {27: 0.2}  # guide 20 says 0.9 (scripted below): the mean 0.55 goes on
    oracle.present_by_guide[20] = {27: 0.9}
    steps = propagated(oracle, truth, 20)
    assert 27 in {step.z for step in steps} and max(step.z for step in steps) == 47


def test_propagation_stops_where_both_guides_together_say_the_object_ended() -> None:
    truth = square_truth(60, 10, 47)
    oracle = ScoringOracle(truth)
    oracle.present_by_guide[20] = {27: 0.3}
    oracle.present_by_guide[24] = {27: 0.4}
    steps = propagated(oracle, truth, 20)
    assert max(step.z for step in steps) == 26  # slice 27 averaged 0.35: the up direction ends before it
    assert min(step.z for step in steps) == 10


def test_guides_alternate_mirrored_and_plain_views_after_a_first_guide_seen_both_ways() -> None:
    truth = square_truth(60, 5, 55)
    oracle = ScoringOracle(truth)
    propagated(oracle, truth, 30)
    up_views = [view for guide, targets, view in oracle.calls if targets[0] > guide]
    assert up_views[:4] == ["both", "mirrored", "plain", "mirrored"]
    single = ScoringOracle(truth, flip_averaging=False)
    propagated(single, truth, 30)
    assert {view for _, _, view in single.calls} == {"plain"}


def test_a_predictor_without_overlapping_guides_keeps_every_predicted_slice() -> None:
    truth = square_truth(30, 2, 27)
    oracle = ScoringOracle(truth)
    assert isinstance(oracle, ScoringPredictor) and uses_overlapping_guides(oracle)
    assert (slices_per_guide(oracle, 8), slices_kept_per_guide(oracle, 8)) == (8, 4)
    assert (slices_per_guide(oracle, 4), slices_kept_per_guide(oracle, 4)) == (4, 2)
    assert slices_kept_per_guide(oracle, 1) == 1
    oracle.overlapping_guides = False
    assert not uses_overlapping_guides(oracle)
    assert (slices_per_guide(oracle, 8), slices_kept_per_guide(oracle, 8)) == (8, 8)
    views = guide_views(ScoringOracle(truth, flip_averaging=False))
    assert [next(views) for _ in range(3)] == ["plain", "plain", "plain"]


def moving_square_truth(depth: int, first: int, last: int, size: int = 64) -> np.ndarray:
    """An 8x8 square on slices ``first..last`` that moves one pixel along x per slice (a rib on axial CT)."""
    truth = np.zeros((depth, size, size), dtype=bool)
    for z in range(first, last + 1):
        x0 = 4 + (z - first)
        truth[z, 28:36, x0 : x0 + 8] = True
    return truth


def test_an_object_moving_across_slices_keeps_its_size_through_every_re_guiding() -> None:
    truth = moving_square_truth(50, 2, 45)
    oracle = ScoringOracle(truth, sees_only_its_crop=True)
    steps = Engine(oracle).propagate(tagged_volume(50, 64), (1.0, 1.0, 1.0), MaskPrompt(2, truth[2]))
    found = np.zeros_like(truth)
    for step in steps:
        found[step.z] = step.mask
    # Every guide's crop leaves the square's leading edge out of the slices 3 or more away, and the next
    # guide sees it: averaged with the earlier guide's zeros there, the edge fell under 0.5 and the square
    # lost a column at each re-guiding until nothing was left.
    assert [z for z in range(50) if found[z].any()] == list(range(2, 46))
    assert all((found[z] == truth[z]).all() for z in range(2, 46))


def slab(columns: range) -> np.ndarray:
    """A ``(6, 10)`` answer of 0.9 on ``columns`` of every row, 0 elsewhere."""
    answer = np.zeros((6, 10), dtype=np.float32)
    answer[:, columns.start : columns.stop] = 0.9
    return answer


def crop(columns: range) -> np.ndarray:
    """A ``(6, 10)`` crop region: ``columns`` of every row."""
    return slab(columns) > 0


def test_past_the_edge_of_a_crop_that_cut_the_object_the_other_guide_answers_alone() -> None:
    far, far_crop = slab(range(3, 6)), crop(range(0, 6))  # reaches its crop's edge (column 5)
    near, near_crop = slab(range(3, 8)), crop(range(2, 10))  # ends inside its crop
    mean = average_seen(near, near_crop, far, far_crop)
    assert np.allclose(mean[:, 3:6], 0.9) and np.allclose(mean[:, 6:8], 0.9)  # not 0.45: far could not look
    assert not mean[:, [0, 1, 2, 8, 9]].any()


def test_an_object_reaching_the_slice_border_is_not_cut_by_a_crop_that_ends_there() -> None:
    answer, at_border = slab(range(7, 10)), crop(range(4, 10))  # the crop's right side is the slice's
    assert not cut_by_crop(answer, at_border, 0.5)
    assert cut_by_crop(answer, crop(range(4, 9)), 0.5)
    assert not cut_by_crop(answer, None, 0.5)


def test_a_guide_whose_object_ends_inside_its_crop_keeps_its_zeros_in_the_mean() -> None:
    far, far_crop = slab(range(3, 5)), crop(range(0, 6))  # ends before its crop's edge
    near, near_crop = slab(range(3, 8)), crop(range(2, 10))
    mean = average_seen(near, near_crop, far, far_crop)
    assert np.allclose(mean[:, 3:5], 0.9) and np.allclose(mean[:, 5:8], 0.45)  # a leak of near's is halved
    assert np.allclose(average_seen(near, None, far, None), (near + far) / 2)


def test_the_learned_predictor_says_which_pixels_its_crop_covered_only_when_asked(
    untrained: LearnedPredictor,
) -> None:
    volume = np.random.default_rng(3).normal(0, 1, (3, 64, 64)).astype(np.float32)
    guide_mask = np.zeros((64, 64), dtype=bool)
    guide_mask[10:20, 40:50] = True  # crop 15 px, centred on the box
    corner = np.zeros((64, 64), dtype=bool)
    corner[0:10, 56:64] = True  # its 15 px crop hangs over the slice's top and right edges
    args = (volume[1:], Window(-2.0, 2.0), (1.0, 1.0))
    assert untrained.propagate_scored(volume[0], guide_mask, *args).seen is None  # the shipped choice
    untrained.crop_aware_averaging = True
    try:
        scored = untrained.propagate_scored(volume[0], guide_mask, *args)
        at_corner = untrained.propagate_scored(volume[0], corner, *args)
    finally:
        untrained.crop_aware_averaging = False
    assert scored.seen is not None and scored.seen.sum() == 15 * 15
    assert scored.seen[10:20, 40:50].all() and not scored.probabilities[:, ~scored.seen].any()
    assert (
        at_corner.seen is not None and at_corner.seen.sum() == 12 * 12 and at_corner.seen[0:12, 52:64].all()
    )


@pytest.fixture(scope="module")
def untrained() -> LearnedPredictor:
    torch.manual_seed(0)
    return LearnedPredictor.from_untrained("fast", "cpu")


def test_learned_scored_views_mirror_back_and_both_is_their_mean(untrained: LearnedPredictor) -> None:
    rng = np.random.default_rng(1)
    volume = rng.normal(0, 1, (5, 40, 40)).astype(np.float32)
    volume[:, 12:26, 8:22] += 3.0  # an off-centre object, so the mirror image is a different input
    guide_mask = np.zeros((40, 40), dtype=bool)
    guide_mask[12:26, 8:22] = True
    args = (volume[0], guide_mask, volume[1:], Window(-2.0, 5.0), (1.0, 1.0))
    plain = untrained.propagate_scored(*args, view="plain")
    mirrored = untrained.propagate_scored(*args, view="mirrored")
    both = untrained.propagate_scored(*args, view="both")
    assert plain.probabilities.shape == (4, 40, 40) and plain.present.shape == (4,)
    assert not np.allclose(plain.probabilities, mirrored.probabilities, atol=1e-4)
    assert np.allclose(both.probabilities, (plain.probabilities + mirrored.probabilities) / 2, atol=1e-4)
    assert np.allclose(both.present, (plain.present + mirrored.present) / 2, atol=1e-4)
    with pytest.raises(ValueError, match="view must be"):
        untrained.propagate_scored(*args, view="sideways")  # type: ignore[arg-type]


def test_learned_propagate_is_the_scored_answer_gated_by_the_present_threshold(
    untrained: LearnedPredictor,
) -> None:
    rng = np.random.default_rng(2)
    volume = rng.normal(0, 1, (4, 32, 32)).astype(np.float32)
    guide_mask = np.zeros((32, 32), dtype=bool)
    guide_mask[10:20, 10:20] = True
    args = (volume[0], guide_mask, volume[1:], Window(-2.0, 2.0), (1.0, 1.0))
    scored = untrained.propagate_scored(*args, view="plain")
    untrained.present_threshold = float(np.median(scored.present))
    try:
        gated = untrained.propagate(*args)
    finally:
        untrained.present_threshold = 0.5
    kept = scored.present >= float(np.median(scored.present))
    assert np.allclose(gated[kept], scored.probabilities[kept], atol=1e-5)
    assert not gated[~kept].any()


def test_the_shipped_engine_averages_plainly_and_comparisons_can_ask_for_crop_aware_averaging() -> None:
    from ml.engine import load_engine
    from ml.evaluate import parse_args

    assert load_engine(device="cpu").predictor.crop_aware_averaging is False
    assert load_engine(device="cpu", crop_aware_averaging=True).predictor.crop_aware_averaging is True
    assert parse_args(["somewhere", "--crop-aware-averaging"]).crop_aware_averaging is True
    assert parse_args(["somewhere"]).crop_aware_averaging is False
