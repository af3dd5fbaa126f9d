"""``python -m ml.evaluate``: objects, simulated prompts and clicks, split lists, and a run end to end."""

from __future__ import annotations

import json
import pathlib
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from ml.engine import BoxPrompt, Click, MaskPrompt, PointPrompt
from ml.evaluate import main, read_split, reorient, select_cases
from ml.objects import (
    correction_click,
    correction_clicks,
    find_objects,
    label_map,
    list_cases,
    load_case,
    make_prompt,
)

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_objects_are_26_connected_components_with_at_least_two_slices_and_50_voxels() -> None:
    labels = np.zeros((10, 30, 30), dtype=np.uint8)
    labels[1:4, 2:7, 2:6] = 1  # 60 voxels over 3 slices: an object
    labels[4, 7, 6] = 1  # touches the corner of the block above: same object under 26-connectivity
    labels[6, 10:20, 10:20] = 1  # 100 voxels on one slice: too flat
    labels[1:4, 20:23, 20:22] = 1  # 18 voxels: too small
    labels[5:9, 20:28, 2:8] = 2  # a second label
    objects = find_objects(labels)
    assert [(obj.label, int(obj.mask.sum())) for obj in objects] == [(1, 61), (2, 192)]
    assert objects[0].slice_range == (1, 4)


def test_prompts_sit_on_the_largest_slice() -> None:
    labels = np.zeros((6, 20, 20), dtype=np.uint8)
    labels[1, 5:8, 5:8] = 1
    labels[2, 4:13, 3:10] = 1  # the largest slice: rows 4..12, columns 3..9
    labels[3, 5:9, 5:9] = 1
    obj = find_objects(labels)[0]
    assert make_prompt(obj, "box", (1.0, 1.0, 1.0)) == BoxPrompt(2, 4, 3, 12, 9)
    mask_prompt = make_prompt(obj, "mask", (1.0, 1.0, 1.0))
    assert isinstance(mask_prompt, MaskPrompt) and np.array_equal(mask_prompt.mask, labels[2] == 1)
    assert make_prompt(obj, "point", (1.0, 1.0, 1.0)) == PointPrompt(2, 8, 6)


def test_correction_click_targets_the_largest_error_on_the_worst_slice() -> None:
    truth = np.zeros((5, 20, 20), dtype=bool)
    truth[1:4, 5:15, 5:15] = True
    missed = truth.copy()
    missed[2, 5:15, 5:10] = False  # 50 missed voxels on slice 2
    missed[1, 5:7, 5:7] = False
    click = correction_click(missed, truth)
    assert (click.z, click.positive) == (2, True)
    assert truth[click.z, click.y, click.x] and not missed[click.z, click.y, click.x]

    extra = truth.copy()
    extra[3, 0:4, 0:20] = True  # 80 extra voxels on slice 3
    click = correction_click(extra, truth)
    assert (click.z, click.positive) == (3, False)
    assert extra[click.z, click.y, click.x] and not truth[click.z, click.y, click.x]

    assert correction_click(truth, truth) is None


def test_a_correction_carries_the_earlier_clicks_on_its_slice_only() -> None:
    added, elsewhere = Click(4, 10, 12, positive=True), Click(5, 10, 12, positive=False)
    removal = Click(4, 20, 3, positive=False)
    assert correction_clicks([added, elsewhere], removal) == [added, removal]
    assert correction_clicks([elsewhere], removal) == [removal]


def test_split_lists_are_read_in_both_layouts_and_missing_ones_are_none(tmp_path: pathlib.Path) -> None:
    nested = tmp_path / "nested.json"
    nested.write_text(
        json.dumps({"rule": "x", "datasets": {"DatasetX": {"train": ["a"], "val": ["b", "c"]}}})
    )
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"DatasetX": {"train": ["a"], "val": ["b"]}}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert read_split("DatasetX", "val", nested) == ["b", "c"]
    assert read_split("DatasetX", "train", flat) == ["a"]
    assert read_split("DatasetY", "val", nested) is None
    assert read_split("DatasetX", "val", broken) is None
    assert read_split("DatasetX", "val", tmp_path / "absent.json") is None


def write_dataset(root: pathlib.Path, volume) -> pathlib.Path:
    """A one-case nnU-Net raw data set from a canonical generated volume (NIfTI axes = canonical reversed)."""
    dataset = root / "Dataset999_Generated"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "labelsTr").mkdir()
    sz, sy, sx = volume.spacing
    affine = np.diag([sx, sy, sz, 1.0])
    nib.save(
        nib.Nifti1Image(volume.image.transpose(2, 1, 0), affine), dataset / "imagesTr" / "gen_001_0000.nii.gz"
    )
    labels = volume.truth.astype(np.uint8).transpose(2, 1, 0)
    nib.save(nib.Nifti1Image(labels, affine), dataset / "labelsTr" / "gen_001.nii.gz")
    (dataset / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "blob": 1}, "file_ending": ".nii.gz", "numTraining": 1})
    )
    return dataset


def test_cases_are_read_in_canonical_order_with_reversed_zooms(
    tmp_path: pathlib.Path, anisotropic_ellipsoid
) -> None:
    dataset = write_dataset(tmp_path, anisotropic_ellipsoid)
    case = load_case(list_cases(dataset)[0])
    assert case.spacing == pytest.approx(anisotropic_ellipsoid.spacing)
    assert np.array_equal(case.labels.astype(bool), anisotropic_ellipsoid.truth)


def test_evaluate_runs_end_to_end_and_writes_json(
    tmp_path: pathlib.Path, anisotropic_ellipsoid, capsys
) -> None:
    dataset = write_dataset(tmp_path, anisotropic_ellipsoid)
    out = tmp_path / "report.json"
    code = main(
        [str(dataset), "--engine", "classical", "--prompt", "box", "--corrections", "2", "--json", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "no 'val' list for Dataset999_Generated" in printed
    assert "1 blob" in printed and "ALL" in printed
    report = json.loads(out.read_text())
    assert report["cases"] == ["gen_001"]
    (obj,) = report["objects"]
    assert obj["prompt_z"] == anisotropic_ellipsoid.largest_slice
    assert obj["dice"] > 0.9
    assert len(obj["dice_after"]) == 2
    assert report["dataset"]["objects"] == 1
    assert report["per_label"]["1 blob"]["mean_dice"] == pytest.approx(obj["dice"])


def test_missing_learned_weights_is_a_clear_error_not_a_fallback(
    tmp_path: pathlib.Path, anisotropic_ellipsoid, capsys
) -> None:
    dataset = write_dataset(tmp_path, anisotropic_ellipsoid)
    code = main([str(dataset), "--engine", "learned", "--weights", str(tmp_path / "nothing")])
    assert code == 2
    assert "weights" in capsys.readouterr().err


@pytest.mark.shared_data
def test_classical_engine_on_two_hippocampus_validation_cases(capsys) -> None:
    dataset = SHARED_DATA / "Dataset001_Hippocampus"
    if not dataset.is_dir():
        pytest.skip("shared data not available")
    cases, note = select_cases(dataset, "val", 2)
    assert len(cases) == 2 and "'val' split" in note
    assert main([str(dataset), "--engine", "classical", "--prompt", "mask", "--cases", "2", "--quiet"]) == 0
    assert "anterior" in capsys.readouterr().out


def test_label_values_above_255_stay_distinct_objects_with_their_names(
    tmp_path: pathlib.Path, anisotropic_ellipsoid, capsys
) -> None:
    dataset = write_dataset(tmp_path, anisotropic_ellipsoid)
    label_path = dataset / "labelsTr" / "gen_001.nii.gz"
    stored = nib.load(str(label_path))
    labels = np.asarray(stored.dataobj).astype(np.uint16) * 500  # 500 would fold onto 244 as uint8
    nib.save(nib.Nifti1Image(labels, stored.affine), label_path)
    (dataset / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "myocardium": 500}, "file_ending": ".nii.gz"})
    )
    case = load_case(list_cases(dataset)[0])
    assert [obj.label for obj in find_objects(case.labels)] == [500]
    out = tmp_path / "report.json"
    assert main([str(dataset), "--engine", "classical", "--prompt", "mask", "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())["per_label"]) == ["500 myocardium"]


def test_label_maps_with_nan_negative_or_interpolated_values_are_refused_by_name() -> None:
    assert label_map(np.array([[0.0, 2.0000001]], dtype=np.float32), "c").dtype == np.uint8
    assert label_map(np.array([0, 70000]), "c").dtype == np.uint32
    for bad, words in (
        (np.array([0.0, np.nan]), "NaN"),
        (np.array([0, -1]), "negative"),
        (np.array([0.0, 0.5]), "non-integer"),
    ):
        with pytest.raises(ValueError, match=words):
            label_map(bad, "case_7")


def test_a_case_that_cannot_be_read_or_is_refused_is_skipped_and_the_others_still_count(
    tmp_path: pathlib.Path, anisotropic_ellipsoid, capsys
) -> None:
    dataset = write_dataset(tmp_path, anisotropic_ellipsoid)
    images, labels = dataset / "imagesTr", dataset / "labelsTr"
    good_image, good_labels = images / "gen_001_0000.nii.gz", labels / "gen_001.nii.gz"
    (images / "gen_002_0000.nii.gz").write_bytes(good_image.read_bytes())
    (labels / "gen_002.nii.gz").write_bytes(good_labels.read_bytes()[:200])  # truncated download
    stored = nib.load(str(good_image))
    with_nan = np.asarray(stored.dataobj, dtype=np.float32).copy()
    with_nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(with_nan, stored.affine), images / "gen_003_0000.nii.gz")
    (labels / "gen_003.nii.gz").write_bytes(good_labels.read_bytes())
    out = tmp_path / "report.json"
    code = main([str(dataset), "--engine", "classical", "--prompt", "box", "--json", str(out)])
    assert code == 1, "figures that leave cases out must not look like a clean run"
    err = capsys.readouterr().err
    assert "skipped gen_002: cannot read its image or label file" in err
    assert "skipped gen_003" in err and "NaN" in err
    assert "2 of 3 cases skipped" in err
    report = json.loads(out.read_text())
    assert [obj["case"] for obj in report["objects"]] == ["gen_001"]
    assert sorted(report["skipped_cases"]) == ["gen_002", "gen_003"]


@pytest.mark.parametrize("orientation", ["flip-y", "flip-x", "swap-yx"])
def test_a_case_can_be_evaluated_as_another_scanner_would_store_it(
    tmp_path: pathlib.Path, anisotropic_ellipsoid, capsys, orientation: str
) -> None:
    """``--orientation`` moves image and labels alike (the labels still sit on the object), and the
    classical engine, which has no preferred direction, scores the case as it does stored."""
    off_centre = SimpleNamespace(
        image=np.roll(anisotropic_ellipsoid.image, (10, 6), axis=(1, 2)),
        truth=np.roll(anisotropic_ellipsoid.truth, (10, 6), axis=(1, 2)),
        spacing=anisotropic_ellipsoid.spacing,
    )
    dataset = write_dataset(tmp_path, off_centre)
    stored = load_case(list_cases(dataset)[0])
    turned = reorient(stored, orientation)
    assert not np.array_equal(turned.labels, stored.labels)
    assert turned.image[turned.labels > 0].mean() == pytest.approx(stored.image[stored.labels > 0].mean())
    if orientation == "swap-yx":
        assert turned.spacing == (stored.spacing[0], stored.spacing[2], stored.spacing[1])

    reports = {}
    for name in ("stored", orientation):
        out = tmp_path / f"{name}.json"
        args = [str(dataset), "--engine", "classical", "--prompt", "box", "--orientation", name]
        assert main([*args, "--json", str(out)]) == 0
        reports[name] = json.loads(out.read_text())
    assert f"orientation {orientation}" in capsys.readouterr().out
    assert reports[orientation]["orientation"] == orientation
    (stored_object,), (turned_object,) = reports["stored"]["objects"], reports[orientation]["objects"]
    assert stored_object["dice"] > 0.9
    assert turned_object["dice"] == pytest.approx(stored_object["dice"], abs=1e-6)
