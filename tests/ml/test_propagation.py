"""The propagation loop itself, driven by a scripted predictor (``OraclePredictor`` tests the loop only).

Each generated slice carries its own index in pixel ``(0, 0)``, so the oracle can look up the true mask of
any target and log which slices it was asked for. Predictor quality plays no part here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from scipy import ndimage

from ml.engine import BoxPrompt, Click, Engine, MaskPrompt, PointPrompt, PropagationCancelled
from ml.predictor import SliceClick, Window
from ml.propagation import chunk_slices, focus_region, growth_band_px, guard_growth, keep_connected
from tests.ml.tagged import square_truth, tagged_volume


class OraclePredictor:
    """Answers with the true masks (tests the loop only, not any model).

    ``calls`` logs ``(guide_z, [target z, ...])`` per ``propagate`` call; ``prompt_calls`` counts prompt masks
    and ``priors`` records the prior each was given (None or a copy).
    """

    name = "oracle"

    def __init__(self, truth: np.ndarray) -> None:
        self.truth = truth
        self.calls: list[tuple[int, list[int]]] = []
        self.prompt_calls = 0
        self.priors: list[np.ndarray | None] = []

    def prompt_mask(
        self,
        image: np.ndarray,
        spacing_yx: tuple[float, float],
        *,
        box: tuple[int, int, int, int] | None = None,
        clicks: Sequence[SliceClick] = (),
        prior: np.ndarray | None = None,
    ) -> np.ndarray:
        self.prompt_calls += 1
        self.priors.append(None if prior is None else prior.copy())
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
        assert guide_mask.any(), "the loop must never hand over an empty guide"
        target_z = [int(target[0, 0]) for target in targets]
        self.calls.append((int(guide_image[0, 0]), target_z))
        return self.truth[target_z].astype(np.float32)


def run(engine: Engine, volume: np.ndarray, spacing: tuple[float, float, float], prompt, **kwargs) -> list:
    return list(engine.propagate(volume, spacing, prompt, **kwargs))


def test_prompt_slice_is_yielded_before_any_propagation_work() -> None:
    truth = square_truth(30, 5, 25)
    oracle = OraclePredictor(truth)
    steps = Engine(oracle).propagate(tagged_volume(30), (1.0, 1.0, 1.0), BoxPrompt(15, 8, 8, 15, 15))
    first = next(steps)
    assert (first.z, first.direction, first.done) == (15, "prompt", 1)
    assert oracle.calls == []
    assert np.array_equal(first.mask, truth[15])


def test_each_direction_is_outward_ordered_and_no_slice_repeats() -> None:
    truth = square_truth(60, 3, 55)
    steps = run(Engine(OraclePredictor(truth)), tagged_volume(60), (1.0, 1.0, 1.0), MaskPrompt(30, truth[30]))
    zs = [step.z for step in steps]
    assert len(zs) == len(set(zs))
    up = [step.z for step in steps if step.direction == "up"]
    down = [step.z for step in steps if step.direction == "down"]
    assert up == list(range(31, 56))
    assert down == list(range(29, 2, -1))
    assert steps[-1].done == len(steps) and steps[-1].done_up == len(up) and steps[-1].done_down == len(down)


def test_directions_interleave_chunk_by_chunk() -> None:
    truth = square_truth(80, 2, 77)
    steps = run(Engine(OraclePredictor(truth)), tagged_volume(80), (1.0, 1.0, 1.0), MaskPrompt(40, truth[40]))
    directions = [step.direction for step in steps[1:]]
    first_down = directions.index("down")
    assert first_down == 8  # one chunk up (20 mm capped at 8 slices), then one down
    assert "up" in directions[first_down:]  # up resumes after the down chunk


def test_stops_at_first_empty_slice_and_next_guide_is_the_outermost_slice() -> None:
    truth = square_truth(60, 10, 47)
    oracle = OraclePredictor(truth)
    steps = run(Engine(oracle), tagged_volume(60), (1.0, 1.0, 1.0), MaskPrompt(20, truth[20]))
    assert {step.z for step in steps} == set(range(10, 48))
    up_calls = [call for call in oracle.calls if call[1][0] > call[0]]
    assert [guide for guide, _ in up_calls] == [20, 28, 36, 44]
    assert up_calls[0][1] == list(range(21, 29))


@pytest.mark.parametrize(
    ("spacing_z", "slices"), [(0.5, 8), (1.0, 8), (2.5, 8), (4.0, 5), (5.0, 4), (30.0, 1)]
)
def test_chunk_is_about_twenty_millimetres_but_never_more_than_eight_slices(
    spacing_z: float, slices: int
) -> None:
    assert chunk_slices(spacing_z) == slices
    truth = square_truth(90, 0, 89)
    oracle = OraclePredictor(truth)
    run(Engine(oracle), tagged_volume(90), (spacing_z, 1.0, 1.0), MaskPrompt(45, truth[45]))
    assert max(len(targets) for _, targets in oracle.calls) == slices


def test_boundary_slices_are_respected() -> None:
    truth = square_truth(50, 0, 49)
    steps = run(
        Engine(OraclePredictor(truth)),
        tagged_volume(50),
        (1.0, 1.0, 1.0),
        MaskPrompt(25, truth[25]),
        z_min=18,
        z_max=31,
    )
    assert {step.z for step in steps} == set(range(18, 32))


def test_volume_edges_end_the_walk() -> None:
    truth = square_truth(12, 0, 11)
    steps = run(Engine(OraclePredictor(truth)), tagged_volume(12), (1.0, 1.0, 1.0), MaskPrompt(0, truth[0]))
    assert [step.z for step in steps] == list(range(12))


def test_blobs_not_connected_to_the_prompt_are_dropped_as_they_stream() -> None:
    truth = square_truth(30, 5, 25)
    truth[12:18, 0:3, 20:23] = True  # a separate object the predictor also "sees"
    steps = run(
        Engine(OraclePredictor(truth)),
        tagged_volume(30),
        (1.0, 1.0, 1.0),
        MaskPrompt(15, square_truth(30, 5, 25)[15]),
    )
    for step in steps[1:]:
        assert not step.mask[0:3, 20:23].any()


def test_a_slice_with_only_an_unconnected_blob_stops_the_direction() -> None:
    truth = square_truth(30, 5, 25)
    truth[20:26] = False
    truth[20:26, 0:4, 0:4] = True  # jumps away: not 26-connected to slice 19
    steps = run(Engine(OraclePredictor(truth)), tagged_volume(30), (1.0, 1.0, 1.0), MaskPrompt(15, truth[15]))
    assert max(step.z for step in steps) == 19


def test_keep_connected_counts_diagonal_neighbours() -> None:
    previous = np.zeros((8, 8), dtype=bool)
    previous[2, 2] = True
    candidate = np.zeros((8, 8), dtype=bool)
    candidate[3, 3] = True  # diagonal to the previous pixel: 26-connected in 3D
    candidate[6, 6] = True
    kept = keep_connected(candidate, previous)
    assert kept[3, 3] and not kept[6, 6]


def test_segment_equals_the_union_of_the_streamed_slices() -> None:
    truth = square_truth(40, 4, 33)
    engine = Engine(OraclePredictor(truth))
    union = np.zeros_like(truth)
    for step in engine.propagate(tagged_volume(40), (2.0, 1.0, 1.0), PointPrompt(20, 12, 12)):
        union[step.z] |= step.mask
    segmented = engine.segment(tagged_volume(40), (2.0, 1.0, 1.0), PointPrompt(20, 12, 12))
    assert np.array_equal(segmented, union)
    assert np.array_equal(segmented, truth)


def test_an_empty_prompt_result_yields_the_prompt_slice_and_stops() -> None:
    truth = square_truth(20, 12, 18)  # nothing on slice 5
    oracle = OraclePredictor(truth)
    steps = run(Engine(oracle), tagged_volume(20), (1.0, 1.0, 1.0), BoxPrompt(5, 2, 2, 6, 6))
    assert [(step.z, bool(step.mask.any())) for step in steps] == [(5, False)]
    assert oracle.calls == []


def test_should_stop_ends_the_stream_promptly_and_segment_raises() -> None:
    truth = square_truth(200, 0, 199)
    oracle = OraclePredictor(truth)
    engine = Engine(oracle)
    steps = list(
        engine.propagate(
            tagged_volume(200),
            (1.0, 1.0, 1.0),
            MaskPrompt(100, truth[100]),
            should_stop=lambda: len(oracle.calls) >= 2,
        )
    )
    assert len(oracle.calls) == 2
    assert len(steps) == 1 + 8  # the chunk computed when the stop came is not streamed
    with pytest.raises(PropagationCancelled):
        engine.segment(
            tagged_volume(200), (1.0, 1.0, 1.0), MaskPrompt(100, truth[100]), should_stop=lambda: True
        )


def test_refine_repropagates_away_from_the_anchor_and_stops_where_the_old_mask_agrees() -> None:
    truth = square_truth(40, 5, 35)
    old = truth.copy()
    old[20:31] = np.roll(truth[20:31], 4, axis=2)  # wrong stretch above the click
    old[8:13] = np.roll(truth[8:13], 4, axis=2)  # wrong stretch on the anchor's other side
    engine = Engine(OraclePredictor(truth))
    steps = list(
        engine.refine_steps(tagged_volume(40), (1.0, 1.0, 1.0), old, clicks=[Click(20, 12, 9)], anchor_z=15)
    )
    assert [step.z for step in steps] == list(range(20, 31))
    assert [step.direction for step in steps] == ["prompt"] + ["up"] * 10
    refined = engine.refine(tagged_volume(40), (1.0, 1.0, 1.0), old, clicks=[Click(20, 12, 9)], anchor_z=15)
    assert np.array_equal(refined[20:], truth[20:])
    assert np.array_equal(refined[:20], old[:20])


def test_refine_without_anchor_walks_away_from_the_objects_largest_slice() -> None:
    truth = np.zeros((40, 24, 24), dtype=bool)
    for z in range(5, 36):
        half = 8 - abs(z - 15) // 3  # largest around z = 15
        truth[z, 12 - max(half, 1) : 12 + max(half, 1), 12 - max(half, 1) : 12 + max(half, 1)] = True
    old = truth.copy()
    old[24:30] = np.roll(truth[24:30], 3, axis=1)
    old[10:14] = np.roll(truth[10:14], 3, axis=1)
    refined = Engine(OraclePredictor(truth)).refine(
        tagged_volume(40), (1.0, 1.0, 1.0), old, clicks=[Click(24, 12, 12)]
    )
    assert np.array_equal(refined[24:], truth[24:])
    assert np.array_equal(refined[:24], old[:24])


def test_refine_on_an_empty_mask_grows_a_new_object_both_ways() -> None:
    truth = square_truth(30, 8, 22)
    refined = Engine(OraclePredictor(truth)).refine(
        tagged_volume(30), (1.0, 1.0, 1.0), np.zeros_like(truth), clicks=[Click(15, 12, 12)]
    )
    assert np.array_equal(refined, truth)


def test_a_click_on_a_slice_past_the_early_end_corrects_the_neighbouring_slices_outline() -> None:
    truth = square_truth(40, 5, 25)
    old = truth.copy()
    old[23:] = False  # propagation stopped two slices early
    old[22, 1:4, 18:22] = True  # another structure of the label on the last slice, far from the click
    oracle = OraclePredictor(truth)
    refined = Engine(oracle).refine(
        tagged_volume(40), (1.0, 1.0, 1.0), old, clicks=[Click(23, 12, 12)], anchor_z=15
    )
    assert oracle.priors[0] is not None
    assert np.array_equal(oracle.priors[0], truth[22])  # the object's part, not the far blob
    assert np.array_equal(refined[23:], truth[23:])


def test_a_click_inside_the_object_corrects_outlines_but_does_not_lengthen_it() -> None:
    predicted = square_truth(40, 5, 32)  # what the predictor finds: the object running on to slice 32
    old = square_truth(40, 5, 25)
    old[20:26] = np.roll(old[20:26], 4, axis=2)  # a wrong stretch up to the old end
    refined = Engine(OraclePredictor(predicted)).refine(
        tagged_volume(40), (1.0, 1.0, 1.0), old, clicks=[Click(20, 12, 9)], anchor_z=15
    )
    assert np.array_equal(refined[20:26], predicted[20:26])  # outlines corrected up to the old end
    assert not refined[26:].any()  # and no further


def test_a_click_far_from_any_object_slice_is_segmented_afresh() -> None:
    truth = square_truth(40, 5, 25)
    old = truth.copy()
    old[18:] = False
    oracle = OraclePredictor(truth)
    Engine(oracle).refine(tagged_volume(40), (1.0, 1.0, 1.0), old, clicks=[Click(22, 12, 12)], anchor_z=10)
    assert oracle.priors == [None]  # 4 slices from the last object slice: beyond NEIGHBOUR_PRIOR_REACH


def test_emptying_a_slice_past_the_objects_end_clears_the_run_on_beyond_it() -> None:
    truth = square_truth(40, 5, 25)
    old = square_truth(40, 5, 31)  # ran on six slices too far
    old[0:3, 0:4, 0:4] = True  # an unrelated blob far away stays
    engine = Engine(OraclePredictor(truth))
    refined = engine.refine(
        tagged_volume(40), (1.0, 1.0, 1.0), old, clicks=[Click(28, 12, 12, positive=False)], anchor_z=15
    )
    assert not refined[28:].any()
    assert np.array_equal(refined[:28], old[:28])


class CroppingOracle(OraclePredictor):
    """The oracle, blind outside a 1.5x square crop around the guide's box like PropSAM (tests the loop only)."""

    def propagate(self, guide_image, guide_mask, targets, window, spacing_yx, *, guide_distances=None):
        probabilities = super().propagate(guide_image, guide_mask, targets, window, spacing_yx)
        rows = np.flatnonzero(guide_mask.any(axis=1))
        cols = np.flatnonzero(guide_mask.any(axis=0))
        half = 1.5 * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) / 2
        centre_y, centre_x = (rows[0] + rows[-1] + 1) / 2, (cols[0] + cols[-1] + 1) / 2
        visible = np.zeros(guide_mask.shape, dtype=bool)
        visible[
            max(int(centre_y - half), 0) : int(np.ceil(centre_y + half)),
            max(int(centre_x - half), 0) : int(np.ceil(centre_x + half)),
        ] = True
        return probabilities * visible


def cone_truth(depth: int = 40, size: int = 80) -> np.ndarray:
    """A cone along z: radius 2 px at z = 0 growing 0.9 px per slice."""
    yy, xx = np.mgrid[0:size, 0:size]
    truth = np.zeros((depth, size, size), dtype=bool)
    for z in range(depth):
        truth[z] = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (2 + 0.9 * z) ** 2
    return truth


def test_an_object_growing_past_the_crop_is_followed_by_re_guiding_early(monkeypatch) -> None:
    truth = cone_truth()
    volume = tagged_volume(40, 80)
    grown = Engine(CroppingOracle(truth)).segment(volume, (1.0, 1.0, 1.0), MaskPrompt(3, truth[3]))
    assert np.array_equal(grown, truth)

    import ml.propagation

    monkeypatch.setattr(ml.propagation, "CROP_REACH_FRACTION", 100.0)  # never re-guide early
    truncated = Engine(CroppingOracle(truth)).segment(volume, (1.0, 1.0, 1.0), MaskPrompt(3, truth[3]))
    assert truncated.sum() < 0.9 * truth.sum()


class LeakingPredictor(OraclePredictor):
    """Answers each target with its guide's mask grown by 3 pixels per slice of distance: a leak into
    look-alike tissue."""

    def propagate(self, guide_image, guide_mask, targets, window, spacing_yx, *, guide_distances=None):
        guide_z = int(guide_image[0, 0])
        return np.stack(
            [
                ndimage.binary_dilation(guide_mask, iterations=3 * abs(int(target[0, 0]) - guide_z))
                for target in targets
            ]
        ).astype(np.float32)


def test_a_leak_that_grows_fast_is_held_to_a_narrow_band_per_slice(monkeypatch) -> None:
    truth = np.zeros((12, 64, 64), dtype=bool)
    truth[:, 28:36, 28:36] = True
    volume = tagged_volume(12, 64)
    guarded = Engine(LeakingPredictor(truth)).segment(volume, (1.0, 1.0, 1.0), MaskPrompt(0, truth[0]))
    # One pixel per 1 mm slice at most (8-connected), instead of three per slice.
    for z in range(1, 12):
        allowed = ndimage.binary_dilation(guarded[z - 1], structure=np.ones((3, 3), dtype=bool))
        assert not (guarded[z] & ~allowed).any()
    assert guarded[11].sum() <= (8 + 2 * 11) ** 2

    import ml.propagation

    monkeypatch.setattr(ml.propagation, "MAX_GROWTH", None)
    unguarded = Engine(LeakingPredictor(truth)).segment(volume, (1.0, 1.0, 1.0), MaskPrompt(0, truth[0]))
    assert unguarded[11].sum() > 2 * guarded[11].sum()


def test_the_growth_band_widens_with_the_slice_gap() -> None:
    assert growth_band_px((1.0, 1.0, 1.0)) == 1
    assert growth_band_px((3.0, 3.0, 3.0)) == 1
    assert growth_band_px((5.0, 0.6, 0.6)) == 7
    slow = np.zeros((20, 20), dtype=bool)
    slow[5:15, 5:15] = True
    assert np.array_equal(guard_growth(slow, slow, 1), slow)  # no growth: untouched


class RedrawingOracle(OraclePredictor):
    """Answers a correction (a prompt with a prior) with the true slice plus a blob far from any click, like a
    network that re-draws the whole slice for one click (tests the loop only)."""

    def __init__(self, truth: np.ndarray, *, focused_corrections: bool) -> None:
        super().__init__(truth)
        self.focused_corrections = focused_corrections

    def prompt_mask(self, image, spacing_yx, *, box=None, clicks=(), prior=None) -> np.ndarray:
        answer = super().prompt_mask(image, spacing_yx, box=box, clicks=clicks, prior=prior)
        if prior is not None:
            answer[50:56, 50:56] = True
        return answer


def _big_square_truth(depth: int, first: int, last: int) -> np.ndarray:
    truth = np.zeros((depth, 64, 64), dtype=bool)
    truth[first : last + 1, 20:40, 20:40] = True
    return truth


@pytest.mark.parametrize("focused", [True, False])
def test_a_click_fixes_the_outline_it_is_on_and_a_focused_one_nothing_far_from_it(focused: bool) -> None:
    truth = _big_square_truth(30, 5, 25)
    old = truth.copy()
    old[15, 20:24, 26:34] = False  # a bite out of the top edge
    oracle = RedrawingOracle(truth, focused_corrections=focused)
    refined = Engine(oracle).refine(
        tagged_volume(30, size=64), (1.0, 1.0, 1.0), old, clicks=[Click(15, 22, 30)], anchor_z=10
    )
    assert refined[15, 20:24, 26:34].all(), "the bite the click was on is filled"
    assert refined[15, 50:56, 50:56].any() != focused, "only an unfocused correction adds the far blob"
    assert np.array_equal(refined[:15], truth[:15]) and np.array_equal(refined[16:], truth[16:])


def test_a_focused_click_on_an_empty_slice_takes_the_whole_answer() -> None:
    truth = _big_square_truth(30, 5, 27)
    old = truth.copy()
    old[26:] = False  # propagation stopped two slices early: slice 26 has nothing to keep
    refined = Engine(RedrawingOracle(truth, focused_corrections=True)).refine(
        tagged_volume(30, size=64), (1.0, 1.0, 1.0), old, clicks=[Click(26, 30, 30)], anchor_z=10
    )
    assert refined[26, 20:40, 20:40].all(), "the square's corners lie beyond the focus radius and still come"


def test_the_focus_reaches_half_the_side_of_a_square_as_large_as_the_mask() -> None:
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:30, 10:30] = True  # 400 px: radius 10
    region = focus_region(mask, [SliceClick(20, 20, True)])
    assert region[20, 30] and not region[20, 31] and region[10, 20] and not region[9, 20]
    tiny = np.zeros((64, 64), dtype=bool)
    tiny[5, 5] = True  # 1 px: the minimum radius, 6
    assert focus_region(tiny, [SliceClick(5, 5, True)]).sum() == np.count_nonzero(
        (np.arange(64)[:, None] - 5) ** 2 + (np.arange(64)[None, :] - 5) ** 2 <= 36
    )


def test_the_shipped_engine_takes_whole_correction_answers_and_comparisons_can_focus_them() -> None:
    from ml.engine import load_engine
    from ml.evaluate import parse_args

    assert load_engine(device="cpu").predictor.focused_corrections is False
    assert load_engine(device="cpu", focused_corrections=True).predictor.focused_corrections is True
    assert parse_args(["somewhere", "--focused-corrections"]).focused_corrections is True
    assert parse_args(["somewhere"]).focused_corrections is False
