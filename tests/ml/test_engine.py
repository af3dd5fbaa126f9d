"""Engine API on generated volumes with the classical engine: refine (RadSAM edit mode) and loading."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from ml.engine import Click, MaskPrompt, load_engine
from ml.propagation import dice


@pytest.fixture(scope="module")
def engine():
    return load_engine("classical")


def changed_slices(before: np.ndarray, after: np.ndarray) -> list[int]:
    return [int(z) for z in np.flatnonzero((before != after).any(axis=(1, 2)))]


def test_positive_click_fills_a_planted_missing_chunk_without_touching_far_slices(engine, ellipsoid) -> None:
    z = ellipsoid.largest_slice + 3
    mask = ellipsoid.truth.copy()
    ys, xs = np.nonzero(mask[z])
    centre_y, centre_x = int(ys.mean()), int(xs.mean())
    mask[z, centre_y - 4 : centre_y + 5, :centre_x] = False  # a bite out of the left half
    click = Click(z, centre_y, centre_x - 6, positive=True)
    assert not mask[click.z, click.y, click.x]

    refined = engine.refine(ellipsoid.image, ellipsoid.spacing, mask, clicks=[click])

    assert dice(refined[z], ellipsoid.truth[z]) > dice(mask[z], ellipsoid.truth[z]) + 0.05
    assert dice(refined[z], ellipsoid.truth[z]) > 0.93
    changed = changed_slices(mask, refined)
    assert all(abs(index - z) <= 3 for index in changed)


def test_negative_click_removes_a_planted_false_blob_without_touching_far_slices(engine, ellipsoid) -> None:
    z = ellipsoid.largest_slice - 4
    mask = ellipsoid.truth.copy()
    mask[z, 2:8, 2:8] = True  # a false blob in the background corner
    refined = engine.refine(ellipsoid.image, ellipsoid.spacing, mask, clicks=[Click(z, 5, 5, positive=False)])
    assert not refined[z, 2:8, 2:8].any()
    assert np.array_equal(refined[z], ellipsoid.truth[z])
    assert all(abs(index - z) <= 3 for index in changed_slices(mask, refined))


def test_negative_click_trims_a_leak_attached_to_the_object(engine, ellipsoid) -> None:
    z = ellipsoid.largest_slice
    mask = ellipsoid.truth.copy()
    xs = np.flatnonzero(mask[z].any(axis=0))
    centre_y = int(np.flatnonzero(mask[z].any(axis=1)).mean())
    leak = np.zeros_like(mask[z])
    leak[centre_y - 3 : centre_y + 4, xs[-1] + 1 : xs[-1] + 8] = True  # sticks out of the right edge
    mask[z] |= leak
    refined = engine.refine(
        ellipsoid.image, ellipsoid.spacing, mask, clicks=[Click(z, centre_y, int(xs[-1]) + 4, positive=False)]
    )
    assert refined[z][leak].sum() <= 0.2 * leak.sum()
    assert dice(refined[z], ellipsoid.truth[z]) > 0.95


def test_a_wrong_stretch_is_replaced_by_repropagation_from_the_corrected_slice(engine, ellipsoid) -> None:
    """A slice run where the old mask is shifted sideways gets re-propagated until it agrees again."""
    z = ellipsoid.largest_slice
    mask = ellipsoid.truth.copy()
    mask[z + 1 : z + 4] = np.roll(ellipsoid.truth[z + 1 : z + 4], 6, axis=2)
    edited = {z + 1: ellipsoid.truth[z + 1]}
    refined = engine.refine(ellipsoid.image, ellipsoid.spacing, mask, edited=edited)
    assert np.array_equal(refined[z + 1], ellipsoid.truth[z + 1])  # an edited slice is taken as given
    for index in (z + 2, z + 3):
        assert dice(refined[index], ellipsoid.truth[index]) > 0.9
    assert np.array_equal(refined[z - 2 :: -1], mask[z - 2 :: -1])


def test_refine_keeps_a_second_object_of_the_label_on_repropagated_slices(engine, ellipsoid) -> None:
    z = ellipsoid.largest_slice
    mask = ellipsoid.truth.copy()
    mask[z + 1 : z + 4, 1:5, 50:54] = True  # another lesion of the same label, far in-plane
    mask[z + 1 : z + 3] |= np.roll(ellipsoid.truth[z + 1 : z + 3], 5, axis=1)  # a smear to re-propagate
    mask[z] |= np.roll(ellipsoid.truth[z], 5, axis=1)
    refined = engine.refine(ellipsoid.image, ellipsoid.spacing, mask, edited={z: ellipsoid.truth[z]})
    assert changed_slices(mask, refined)[:3] == [z, z + 1, z + 2]
    assert refined[z + 1 : z + 4, 1:5, 50:54].all()
    without_lesion = refined[z + 1].copy()
    without_lesion[1:5, 50:54] = False
    assert dice(without_lesion, ellipsoid.truth[z + 1]) > 0.9  # the smear is gone


def test_refine_steps_applied_to_the_old_mask_equal_refine(engine, ellipsoid) -> None:
    z = ellipsoid.largest_slice + 2
    mask = ellipsoid.truth.copy()
    mask[z, 2:8, 2:8] = True
    clicks = [Click(z, 5, 5, positive=False)]
    streamed = mask.copy()
    steps = list(engine.refine_steps(ellipsoid.image, ellipsoid.spacing, mask, clicks=clicks))
    assert steps[0].direction == "prompt" and steps[0].z == z
    for step in steps:
        streamed[step.z] = step.mask
    assert np.array_equal(streamed, engine.refine(ellipsoid.image, ellipsoid.spacing, mask, clicks=clicks))
    assert mask[z, 2:8, 2:8].all()  # refine never modifies its input


def test_engine_gives_the_same_answer_when_called_again(engine, anisotropic_ellipsoid) -> None:
    prompt = MaskPrompt(
        anisotropic_ellipsoid.largest_slice, anisotropic_ellipsoid.truth[anisotropic_ellipsoid.largest_slice]
    )
    first = engine.segment(anisotropic_ellipsoid.image, anisotropic_ellipsoid.spacing, prompt)
    second = engine.segment(anisotropic_ellipsoid.image, anisotropic_ellipsoid.spacing, prompt)
    assert np.array_equal(first, second)


def test_learned_engine_without_weights_raises_file_not_found(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="classical"):
        load_engine("learned", weights_dir=tmp_path)


def test_unknown_engine_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown engine kind"):
        load_engine("magic")
