"""Every malformed request becomes a ValueError that names the problem, before any model work."""

from __future__ import annotations

import numpy as np
import pytest

from ml.engine import BoxPrompt, Click, MaskPrompt, PointPrompt, load_engine

SHAPE = (10, 20, 24)


@pytest.fixture(scope="module")
def engine():
    return load_engine("classical")


def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


def with_nan() -> np.ndarray:
    data = volume()
    data[4, 3, 3] = np.nan
    return data


def with_inf() -> np.ndarray:
    data = volume()
    data[7, 0, 0] = np.inf
    return data


def some_mask() -> np.ndarray:
    mask = np.zeros(SHAPE[1:], dtype=bool)
    mask[5:9, 6:10] = True
    return mask


SPACING = (2.0, 1.0, 1.0)
GOOD = BoxPrompt(5, 4, 4, 10, 12)


@pytest.mark.parametrize(
    ("data", "spacing", "prompt", "kwargs", "message"),
    [
        (volume, SPACING, BoxPrompt(5, 8, 4, 3, 12), {}, "box is empty"),
        (volume, SPACING, BoxPrompt(5, 4, 12, 10, 4), {}, "box is empty"),
        (volume, SPACING, BoxPrompt(5, 4, 4, 20, 12), {}, "outside the slice"),
        (volume, SPACING, BoxPrompt(5, -3, 4, 10, 12), {}, "outside the slice"),
        (volume, SPACING, BoxPrompt(10, 4, 4, 10, 12), {}, "outside the volume"),
        (volume, SPACING, BoxPrompt(-1, 4, 4, 10, 12), {}, "outside the volume"),
        (volume, SPACING, BoxPrompt(5, 4.5, 4, 10, 12), {}, "integer"),
        (volume, SPACING, PointPrompt(5, 20, 3), {}, "outside the volume"),
        (volume, SPACING, PointPrompt(5, 3, -1), {}, "outside the volume"),
        (volume, SPACING, PointPrompt(12, 3, 3), {}, "outside the volume"),
        (volume, SPACING, MaskPrompt(5, np.ones((20, 23), dtype=bool)), {}, "shape"),
        (volume, SPACING, MaskPrompt(5, np.ones((10, 20, 24), dtype=bool)), {}, "shape"),
        (volume, SPACING, MaskPrompt(5, np.zeros((20, 24), dtype=bool)), {}, "empty"),
        (volume, SPACING, "box", {}, "prompt must be"),
        (lambda: volume()[0], SPACING, GOOD, {}, "3D"),
        (lambda: volume()[None], SPACING, GOOD, {}, "3D"),
        (lambda: np.zeros((0, 20, 24), dtype=np.float32), SPACING, GOOD, {}, "empty"),
        (lambda: volume().astype(bool), SPACING, GOOD, {}, "real numbers"),
        (with_nan, SPACING, GOOD, {}, "NaN"),
        (with_inf, SPACING, GOOD, {}, "NaN or infinite"),
        (volume, (0.0, 1.0, 1.0), GOOD, {}, "spacing"),
        (volume, (1.0, -1.0, 1.0), GOOD, {}, "spacing"),
        (volume, (1.0, float("nan"), 1.0), GOOD, {}, "spacing"),
        (volume, (1.0, float("inf"), 1.0), GOOD, {}, "spacing"),
        (volume, (1.0, 1.0), GOOD, {}, "3 values"),
        (volume, "abc", GOOD, {}, "spacing"),
        (volume, SPACING, GOOD, {"z_min": 6}, "boundary slices"),
        (volume, SPACING, GOOD, {"z_min": 7, "z_max": 3}, "above z_max"),
        (volume, SPACING, GOOD, {"z_max": 99}, "outside the volume"),
        (volume, SPACING, GOOD, {"chunk_mm": 0}, "chunk_mm"),
    ],
)
def test_bad_propagation_requests_raise_value_error_naming_the_problem(
    engine, data, spacing, prompt, kwargs, message
) -> None:
    with pytest.raises(ValueError, match=message):
        engine.propagate(data(), spacing, prompt, **kwargs)
    with pytest.raises(ValueError, match=message):
        engine.segment(data(), spacing, prompt, **kwargs)


def good_mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[3:7, 5:9, 6:10] = True
    return mask


@pytest.mark.parametrize(
    ("mask", "clicks", "edited", "message"),
    [
        (good_mask(), [], None, "at least one click or edited slice"),
        (good_mask(), [Click(5, 25, 3)], None, "outside the volume"),
        (good_mask(), [Click(11, 3, 3)], None, "outside the volume"),
        (good_mask(), ["click"], None, "Click objects"),
        (good_mask()[0], [Click(5, 6, 7)], None, "volume shape"),
        (np.zeros((10, 20, 23), dtype=bool), [Click(5, 6, 7)], None, "volume shape"),
        (good_mask(), [], {5: np.zeros((19, 24), dtype=bool)}, "slice shape"),
        (good_mask(), [], {15: some_mask()}, "outside the volume"),
        (good_mask(), [], [some_mask()], "edited must map"),
    ],
)
def test_bad_refine_requests_raise_value_error_naming_the_problem(
    engine, mask, clicks, edited, message
) -> None:
    with pytest.raises(ValueError, match=message):
        engine.refine(volume(), SPACING, mask, clicks=clicks, edited=edited)
    with pytest.raises(ValueError, match=message):
        engine.refine_steps(volume(), SPACING, mask, clicks=clicks, edited=edited)


def test_refine_clicks_outside_the_boundary_slices_are_rejected(engine) -> None:
    with pytest.raises(ValueError, match="boundary slices"):
        engine.refine(volume(), SPACING, good_mask(), clicks=[Click(8, 6, 7)], z_max=6)


@pytest.mark.parametrize(
    "prompt",
    [
        BoxPrompt(5, 0, 0, 19, 23),
        BoxPrompt(5, 3, 3, 3, 3),
        PointPrompt(0, 0, 0),
        PointPrompt(9, 19, 23),
        MaskPrompt(5, some_mask()),
    ],
)
def test_odd_but_valid_prompts_on_pure_noise_do_not_crash(engine, prompt) -> None:
    result = engine.segment(volume(), SPACING, prompt)
    assert result.shape == SHAPE and result.dtype == bool


@pytest.mark.parametrize(
    ("clicks", "edited"),
    [
        ([Click(5, 0, 0, positive=False)], None),
        ([Click(9, 19, 23, positive=True)], None),
        ([], {2: np.zeros(SHAPE[1:], dtype=bool)}),
        ([Click(0, 0, 0, positive=False)], {0: np.zeros(SHAPE[1:], dtype=bool)}),
    ],
)
def test_odd_but_valid_refinements_do_not_crash(engine, clicks, edited) -> None:
    result = engine.refine(volume(), SPACING, np.zeros(SHAPE, dtype=bool), clicks=clicks, edited=edited)
    assert result.shape == SHAPE and result.dtype == bool


def test_uniform_volume_does_not_crash(engine) -> None:
    flat = np.full(SHAPE, 7, dtype=np.int16)
    result = engine.segment(flat, SPACING, GOOD)
    assert result.shape == SHAPE
