"""Pseudo-labelled real images: objects cut from an image by its own intensities, and their place in training."""

from __future__ import annotations

import json
import pathlib

import nibabel as nib
import numpy as np
import pytest

from ml import train
from ml.data import Case, object_volume, pseudo_labelled_case, split_at_necks


def ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2


def two_structure_case(labels: np.ndarray | None = None) -> tuple[Case, np.ndarray, np.ndarray]:
    """A noisy mid-grey volume holding a bright ball and a dark ball; returns the case and both balls."""
    shape = (24, 64, 64)
    rng = np.random.default_rng(0)
    bright, dark = ball(shape, (12, 20, 20), 8), ball(shape, (12, 44, 44), 7)
    image = 100.0 + 4.0 * rng.standard_normal(shape)
    image[bright] += 80.0
    image[dark] -= 80.0
    given = np.zeros(shape, dtype=np.uint8) if labels is None else labels
    return Case("two", "test", image.astype(np.float32), given, (1.0, 1.0, 1.0)), bright, dark


def best_dice(truth: np.ndarray, labels: np.ndarray) -> float:
    scores = []
    for value in np.unique(labels[truth]):
        if value:
            found = labels == value
            scores.append(2 * np.sum(found & truth) / (found.sum() + truth.sum()))
    return max(scores, default=0.0)


def test_structures_the_image_shows_become_objects_without_any_label() -> None:
    case, bright, dark = two_structure_case()
    pseudo = pseudo_labelled_case(case, np.random.default_rng(1))
    assert pseudo.dataset == "pseudo" and pseudo.image is case.image and pseudo.spacing == case.spacing
    assert best_dice(bright, pseudo.labels) > 0.85
    assert best_dice(dark, pseudo.labels) > 0.85


def test_the_given_labels_are_never_read() -> None:
    case, _, _ = two_structure_case()
    scribbled, _, _ = two_structure_case(
        np.random.default_rng(2).integers(0, 3, case.image.shape, dtype=np.uint8)
    )
    first = pseudo_labelled_case(case, np.random.default_rng(7)).labels
    second = pseudo_labelled_case(scribbled, np.random.default_rng(7)).labels
    assert np.array_equal(first, second)


def test_the_background_is_not_an_object() -> None:
    case, bright, dark = two_structure_case()
    pseudo = pseudo_labelled_case(case, np.random.default_rng(3))
    background = ~(bright | dark)
    for info in object_volume(pseudo).objects:
        assert info.areas.sum() <= 0.2 * case.image.size
    assert best_dice(background, pseudo.labels) < 0.5


def test_two_chambers_joined_by_a_narrow_neck_are_cut_apart() -> None:
    shape = (30, 30, 70)
    left, right = ball(shape, (15, 15, 17), 10), ball(shape, (15, 15, 52), 10)
    neck = np.zeros(shape, dtype=bool)
    neck[14:16, 14:16, 17:53] = True
    pieces = split_at_necks(left | right | neck, depth=3)
    assert len(pieces) == 2
    for chamber in (left, right):
        assert max(2 * np.sum(piece & chamber) / (piece.sum() + chamber.sum()) for piece in pieces) > 0.95
    assert np.array_equal(np.logical_or.reduce(pieces), left | right | neck)


def test_a_compact_region_is_not_cut() -> None:
    region = ball((20, 20, 20), (10, 10, 10), 6)
    assert [piece.sum() for piece in split_at_necks(region, depth=3)] == [region.sum()]


def write_image_only_dataset(root: pathlib.Path, case: Case) -> str:
    name = "Dataset998_Unlabelled"
    dataset = root / name
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(
        nib.Nifti1Image(case.image.transpose(2, 1, 0), affine), dataset / "imagesTr" / "u_001_0000.nii.gz"
    )
    empty = np.zeros(case.image.shape, dtype=np.uint8).transpose(2, 1, 0)
    nib.save(nib.Nifti1Image(empty, affine), dataset / "labelsTr" / "u_001.nii.gz")
    (dataset / "dataset.json").write_text(json.dumps({"labels": {"background": 0}, "file_ending": ".nii.gz"}))
    return name


def test_training_draws_pseudo_labelled_tasks_from_a_data_set_without_labels(tmp_path: pathlib.Path) -> None:
    name = write_image_only_dataset(tmp_path, two_structure_case()[0])
    pools = train.build_pools(
        tmp_path, [], 0, 0, lambda message: None, pseudo_sources=[name], pseudo_volumes=3
    )
    assert len(pools["pseudo"]) == 3 and all(volume.objects for volume in pools["pseudo"])
    sampler = train.TaskSampler(pools, {"pseudo": 1.0}, seed=0)
    batch = sampler.propmask_batch(4, 4, 32)
    assert batch.guide_mask.flatten(1).amax(1).eq(1).all()


def test_the_pseudo_share_comes_out_of_the_real_data_share() -> None:
    names = ["Dataset001_Hippocampus"]
    weights = train.task_weights(names, [], 0.25, 0.35)
    assert weights == pytest.approx({names[0]: 0.4, "synthetic": 0.25, "pseudo": 0.35})
    assert "pseudo" not in train.task_weights(names, [], 0.3)
    with pytest.raises(ValueError, match="--pseudo-weight"):
        train.task_weights(names, [], 0.5, 0.5)


def test_shares_that_leave_nothing_for_the_data_sets_are_refused_before_anything_loads() -> None:
    with pytest.raises(SystemExit):
        train.parse_args(["--pseudo-sources", "Dataset001_Hippocampus", "--pseudo-weight", "0.8"])
    # Without sources the pseudo share is not used, so it cannot crowd out the data sets.
    assert "pseudo" not in train.parse_args(["--pseudo-weight", "0.8"]).task_weights
