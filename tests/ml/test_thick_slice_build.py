"""scripts/build_thick_slice_sets.py writes thick-slice variants of validation cases that ml.evaluate reads."""

from __future__ import annotations

import json
import pathlib
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

from ml.objects import list_cases, load_case
from tests.ml.scripts import load_script


@pytest.fixture(scope="module")
def builder() -> ModuleType:
    return load_script("build_thick_slice_sets.py")


def _write_source(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A two-case nnU-Net raw set (``held_out`` validation, ``trained_on`` training) and its splits file."""
    source = root / "Dataset050_Toy"
    (source / "imagesTr").mkdir(parents=True)
    (source / "labelsTr").mkdir()
    (source / "dataset.json").write_text(
        json.dumps(
            {"labels": {"background": 0, "ball": 1}, "file_ending": ".nii.gz", "channel_names": {"0": "MRI"}}
        )
    )
    affine = np.diag([0.8, 0.8, 1.25, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 40.0)
    for case_id in ("held_out", "trained_on"):
        image = np.arange(12 * 10 * 9, dtype=np.int16).reshape(12, 10, 9)
        label = np.zeros((12, 10, 9), dtype=np.uint8)
        label[3:8, 2:7, 1:8] = 1
        nib.save(nib.Nifti1Image(image, affine), str(source / "imagesTr" / f"{case_id}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(source / "labelsTr" / f"{case_id}.nii.gz"))
    splits = root / "splits.json"
    splits.write_text(json.dumps({"datasets": {source.name: {"train": ["trained_on"], "val": ["held_out"]}}}))
    return source, splits


def test_thick_variant_holds_only_validation_cases_with_every_kth_slice_in_place(builder, tmp_path) -> None:
    source, splits = _write_source(tmp_path / "shared")

    target = builder.keep_every_kth_slice(source, 4, tmp_path / "out", "Dataset950_ToyEvery4th", splits)

    (case,) = list_cases(target)
    assert case.case_id == "held_out"
    thinned, original = load_case(case), load_case(list_cases(source)[0])
    assert thinned.image.shape == (3, 10, 12)  # slices 0, 4 and 8 of 9
    np.testing.assert_array_equal(thinned.image, original.image[::4])
    np.testing.assert_array_equal(thinned.labels, original.labels[::4])
    assert thinned.spacing == pytest.approx((5.0, 0.8, 0.8))
    # Every kept voxel stays where it was in world space: new slice j is old slice 4 j.
    new_affine = nib.load(str(case.image_path)).affine
    old_affine = nib.load(str(source / "imagesTr" / "held_out_0000.nii.gz")).affine
    np.testing.assert_allclose(new_affine @ [2, 3, 2, 1], old_affine @ [2, 3, 8, 1])
    assert json.loads((target / "dataset.json").read_text())["labels"] == {"background": 0, "ball": 1}


@pytest.mark.parametrize(
    ("every", "splits_content", "message"),
    [
        (1, None, "k >= 2"),
        (3, {"datasets": {}}, "no validation list"),
    ],
)
def test_thick_variant_is_refused_when_it_could_not_be_a_held_out_thinning(
    builder, tmp_path, every, splits_content, message
) -> None:
    source, splits = _write_source(tmp_path / "shared")
    if splits_content is not None:
        splits.write_text(json.dumps(splits_content))

    with pytest.raises(SystemExit, match=message):
        builder.keep_every_kth_slice(source, every, tmp_path / "out", "Dataset950_ToyEvery3rd", splits)

    assert not (tmp_path / "out").exists()
