"""``python -m ml.report``: every prompt of an engine evaluated once, reused on re-run, one markdown table."""

from __future__ import annotations

import pathlib

import pytest

from ml import report
from tests.ml.test_evaluate import write_dataset


def test_report_evaluates_each_prompt_and_prints_the_model_card_table(
    tmp_path: pathlib.Path, anisotropic_ellipsoid, capsys
) -> None:
    write_dataset(tmp_path, anisotropic_ellipsoid)
    out = tmp_path / "report"
    argv = ["--data-dir", str(tmp_path), "--datasets", "Dataset999_Generated", "--engines", "classical"]
    assert report.main([*argv, "--out", str(out), "--corrections", "2"]) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "Dataset999_Generated_classical_box.json",
        "Dataset999_Generated_classical_mask.json",
        "Dataset999_Generated_classical_point.json",
    ]
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:2] == ["Dataset999_Generated (1)", "classical"]
    assert all(float(value) > 0.8 for value in cells[2:5])  # box, mask and point Dice of an easy blob
    assert len(cells[5].split(" -> ")) == 2  # Dice after each of the two corrections

    stamps = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    assert report.main([*argv, "--out", str(out)]) == 0  # finished runs are reused, not repeated
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == stamps


def test_report_refuses_an_unknown_data_set(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SystemExit):
        report.main(["--data-dir", str(tmp_path), "--datasets", "Dataset404_Missing"])
