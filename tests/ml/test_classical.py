"""The classical engine on generated volumes: where it stops, in which order it streams, prompt slices."""

from __future__ import annotations

import numpy as np
import pytest

from ml.classical import ClassicalPredictor
from ml.engine import BoxPrompt, MaskPrompt, PointPrompt, load_engine
from ml.predictor import SliceClick, window_from_mask
from ml.propagation import dice


@pytest.fixture(scope="module")
def engine():
    return load_engine("classical")


def prompts_for(volume) -> dict[str, object]:
    z = volume.largest_slice
    ys, xs = np.nonzero(volume.truth[z])
    centre = (round(ys.mean()), round(xs.mean()))
    return {
        "mask": MaskPrompt(z, volume.truth[z]),
        "box": BoxPrompt(z, int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())),
        "point": PointPrompt(z, *centre),
    }


@pytest.mark.parametrize("kind", ["mask", "box", "point"])
@pytest.mark.parametrize("volume_name", ["ellipsoid", "anisotropic_ellipsoid"])
def test_stops_within_two_slices_of_the_object_ends(engine, request, kind: str, volume_name: str) -> None:
    volume = request.getfixturevalue(volume_name)
    result = engine.segment(volume.image, volume.spacing, prompts_for(volume)[kind])
    zs = np.flatnonzero(result.any(axis=(1, 2)))
    assert abs(int(zs[0]) - volume.z_first) <= 2
    assert abs(int(zs[-1]) - volume.z_last) <= 2
    assert dice(result, volume.truth) > 0.9


def test_streams_prompt_first_then_outward_per_direction_never_twice(engine, ellipsoid) -> None:
    steps = list(engine.propagate(ellipsoid.image, ellipsoid.spacing, prompts_for(ellipsoid)["box"]))
    prompt_z = ellipsoid.largest_slice
    assert steps[0].z == prompt_z and steps[0].direction == "prompt"
    up = [step.z for step in steps if step.direction == "up"]
    down = [step.z for step in steps if step.direction == "down"]
    assert up == list(range(prompt_z + 1, prompt_z + 1 + len(up)))
    assert down == list(range(prompt_z - 1, prompt_z - 1 - len(down), -1))
    assert len({step.z for step in steps}) == len(steps)


def test_boundary_slices_cut_the_object(engine, ellipsoid) -> None:
    z = ellipsoid.largest_slice
    result = engine.segment(
        ellipsoid.image, ellipsoid.spacing, prompts_for(ellipsoid)["mask"], z_min=z - 3, z_max=z + 5
    )
    assert set(np.flatnonzero(result.any(axis=(1, 2)))) == set(range(z - 3, z + 6))


def test_box_prompt_finds_the_object_inside_the_box(ellipsoid) -> None:
    z = ellipsoid.largest_slice
    box = prompts_for(ellipsoid)["box"].box
    mask = ClassicalPredictor().prompt_mask(ellipsoid.image[z], (1.0, 1.0), box=box)
    assert dice(mask, ellipsoid.truth[z]) > 0.9


def test_dark_object_on_bright_background_is_found_too(ellipsoid) -> None:
    z = ellipsoid.largest_slice
    inverted = -ellipsoid.image
    box = prompts_for(ellipsoid)["box"].box
    mask = ClassicalPredictor().prompt_mask(inverted[z], (1.0, 1.0), box=box)
    assert dice(mask, ellipsoid.truth[z]) > 0.9


def test_propagate_returns_nothing_past_the_object_end(ellipsoid) -> None:
    last = ellipsoid.z_last
    guide = ellipsoid.truth[last - 1]
    window = window_from_mask(ellipsoid.image[last - 1], guide)
    probabilities = ClassicalPredictor().propagate(
        ellipsoid.image[last - 1], guide, ellipsoid.image[last : last + 5], window, (1.0, 1.0)
    )
    assert probabilities.shape == (5, 56, 56)
    assert (probabilities[2:] < 0.5).all()


def test_clicks_correct_a_prior_mask(ellipsoid) -> None:
    z = ellipsoid.largest_slice
    truth = ellipsoid.truth[z]
    prior = truth.copy()
    ys, xs = np.nonzero(truth)
    top = int(ys.min())
    prior[top : top + 6] = False
    prior[2:6, 2:6] = True
    predictor = ClassicalPredictor()
    corrected = predictor.prompt_mask(
        ellipsoid.image[z],
        (1.0, 1.0),
        clicks=[SliceClick(top + 2, int(xs.mean()), True), SliceClick(4, 4, False)],
        prior=prior,
    )
    assert dice(corrected, truth) > dice(prior, truth) + 0.05
    assert not corrected[2:6, 2:6].any()
