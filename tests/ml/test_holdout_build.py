"""scripts/build_holdout_ct.py turns the shared CT series and their labels into data sets ml.evaluate can read."""

from __future__ import annotations

import json
from types import ModuleType

import numpy as np
import pytest

from ml.objects import find_objects, label_names, list_cases, load_case
from tests.ml.scripts import load_script


@pytest.fixture(scope="module")
def builder() -> ModuleType:
    return load_script("build_holdout_ct.py")


def test_built_set_puts_the_labels_on_the_ct_voxels_they_were_drawn_on(
    builder, shared_data, tmp_path
) -> None:
    dataset = builder.build(shared_data, tmp_path)

    (case,) = list_cases(dataset)
    loaded = load_case(case)
    assert loaded.image.shape == (20, 512, 512)
    assert loaded.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    names = label_names(dataset)
    liver = next(value for value, name in names.items() if name == "liver")
    # The label file is stored y-flipped: only a world-space alignment puts the liver on liver tissue.
    assert loaded.image[loaded.labels == liver].mean() == pytest.approx(89, abs=5)
    assert len(np.unique(loaded.labels)) - 1 == 31
    assert len(find_objects(loaded.labels)) >= 31
    meta = json.loads((dataset / "dataset.json").read_text())
    assert "silver" in meta["label_origin"]


def test_a_label_that_lands_on_the_wrong_tissue_is_refused(
    builder, shared_data, tmp_path, monkeypatch
) -> None:
    aligned = builder.align_label

    def naive_overlay(*args, **kwargs) -> np.ndarray:
        return aligned(*args, **kwargs)[:, ::-1, :]  # what ignoring the file's direction matrix gives

    monkeypatch.setattr(builder, "align_label", naive_overlay)
    with pytest.raises(SystemExit, match="label misaligned"):
        builder.build(shared_data, tmp_path)
    assert not (tmp_path / builder.DATASET_NAME).exists(), "nothing is written for a misaligned label"


def test_a_missing_shared_folder_is_named(builder, tmp_path) -> None:
    with pytest.raises(SystemExit, match="not found"):
        builder.build(tmp_path / "nowhere", tmp_path / "out")


def test_hand_labelled_set_keeps_each_drawn_structure_on_its_tissue(builder, shared_data, tmp_path) -> None:
    dataset = builder.build_hand_labelled(shared_data, tmp_path)

    (case,) = list_cases(dataset)
    loaded = load_case(case)
    assert loaded.image.shape == (3, 512, 512)
    assert loaded.spacing == pytest.approx((1.0, 0.810547, 0.810547), abs=1e-5)
    by_name = {name: value for value, name in label_names(dataset).items()}
    assert set(by_name) - {"background"} == {"liver", "spine", "stomach_labelled_heart"}
    assert (loaded.labels == by_name["liver"]).sum() == 107098, "the liver map's voxels all survive"
    assert loaded.image[loaded.labels == by_name["spine"]].mean() > 250, "the spine map sits on bone"
    assert len(find_objects(loaded.labels)) == 3
    meta = json.loads((dataset / "dataset.json").read_text())
    assert "hand-drawn" in meta["label_origin"]


def test_a_hand_drawn_map_that_misses_the_bone_is_refused(
    builder, shared_data, tmp_path, monkeypatch
) -> None:
    aligned = builder.align_label

    def shifted(*args, **kwargs) -> np.ndarray:
        return np.roll(aligned(*args, **kwargs), 60, axis=1)  # a map placed 5 cm off its image

    monkeypatch.setattr(builder, "align_label", shifted)
    with pytest.raises(SystemExit, match="label misaligned"):
        builder.build_hand_labelled(shared_data, tmp_path)
    assert not (tmp_path / builder.HAND_DATASET_NAME).exists(), "nothing is written for a misaligned label"
