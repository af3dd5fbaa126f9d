"""nnU-Net v2 raw data set writer.

Layout written under ``out_dir``::

    DatasetNNN_Name/
        imagesTr/<case>_0000.nii.gz     image on the source grid and geometry
        labelsTr/<case>.nii.gz          uint8 label map, same grid and affine as the image
        dataset.json

``dataset.json`` holds what nnU-Net requires (``channel_names``, ``labels`` with ``background: 0`` and
consecutive ids, ``numTraining``, ``file_ending``) plus ``name``, ``description`` and two PropLabel keys
nnU-Net ignores:

* ``label_value_mapping``: ``{class name: {"project_value": v, "nnunet_value": n, "color": "#rrggbb"}}``.
  Project values are remapped to consecutive nnU-Net ids in ascending value order (values 1, 4, 7 become
  1, 2, 3), because nnU-Net requires consecutive labels; the mapping says how to go back.
* ``case_ids``: ``{exported identifier: original case_id}`` (identifiers are sanitised and made unique).

Cases are consumed one at a time from the iterable, written, and dropped, so the caller can load them
lazily and the writer never holds more than one case in memory.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np

from .nifti import source_grid, write_volume_on_source_grid
from .types import (
    ExportCase,
    ExportError,
    LabelSpec,
    sanitize_identifier,
    validate_case,
    validate_label_specs,
)

NNUNET_FILE_ENDING = ".nii.gz"
_CHANNEL_SUFFIX = "_0000"
# nnU-Net finds a case's images by "<case>_XXXX<file_ending>"; an identifier that itself ends in _dddd would
# be ambiguous to a human reading the folder, so such endings get a trailing marker.
_AMBIGUOUS_CHANNEL_ENDING = re.compile(r"_\d{4}$")


def nnunet_dataset_folder_name(dataset_id: int, dataset_name: str) -> str:
    """``DatasetNNN_Name`` as nnU-Net expects: id 1..999 zero-padded to 3 digits, name sanitised.

    Raises ExportError for an id outside 1..999.
    """
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ExportError(f"nnU-Net data set ids are 1..999, got {dataset_id!r}.")
    return f"Dataset{dataset_id:03d}_{sanitize_identifier(dataset_name, fallback='PropLabel')}"


def consecutive_label_ids(labels: Sequence[LabelSpec]) -> dict[int, int]:
    """Project value -> nnU-Net id (1, 2, 3, ... in ascending project value); background 0 is implicit."""
    values = sorted(int(spec.value) for spec in labels)
    return {value: index for index, value in enumerate(values, start=1)}


def _remap_lookup(value_to_id: dict[int, int]) -> np.ndarray:
    """A 256-entry uint8 table: ``table[project_value] = nnU-Net id`` (values that are no class map to 0)."""
    table = np.zeros(256, dtype=np.uint8)
    for value, label_id in value_to_id.items():
        table[value] = label_id
    return table


def _unique_identifier(case_id: str, used: set[str]) -> str:
    base = sanitize_identifier(case_id)
    if _AMBIGUOUS_CHANNEL_ENDING.search(base):
        base = f"{base}_c"
    identifier = base
    suffix = 2
    while identifier.lower() in used:
        identifier = f"{base}_{suffix}"
        suffix += 1
    used.add(identifier.lower())
    return identifier


def _write_cases(
    dataset_dir: Path,
    cases: Iterable[ExportCase],
    value_to_id: dict[int, int],
    total: int | None,
    report: Callable[[float], None],
) -> dict[str, str]:
    """Write ``imagesTr``/``labelsTr`` case by case; returns ``{exported identifier: original case_id}``."""
    images_dir = dataset_dir / "imagesTr"
    labels_dir = dataset_dir / "labelsTr"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    remap = _remap_lookup(value_to_id)
    used_identifiers: set[str] = set()
    case_ids: dict[str, str] = {}
    for case in cases:
        label = validate_case(case, value_to_id.keys())
        grid = source_grid(case)
        identifier = _unique_identifier(case.case_id, used_identifiers)
        write_volume_on_source_grid(
            np.asarray(case.image), grid, images_dir / f"{identifier}{_CHANNEL_SUFFIX}{NNUNET_FILE_ENDING}"
        )
        write_volume_on_source_grid(remap[label], grid, labels_dir / f"{identifier}{NNUNET_FILE_ENDING}")
        case_ids[identifier] = str(case.case_id)
        if total:
            report(min(len(case_ids) / total, 1.0))
    if not case_ids:
        raise ExportError("There are no cases to export (no approved cases?).")
    return case_ids


def write_nnunet_dataset(
    out_dir: Path,
    dataset_id: int,
    dataset_name: str,
    cases: Iterable[ExportCase],
    labels: Sequence[LabelSpec],
    channel_name: str = "CT",
    progress: Callable[[float], None] | None = None,
    *,
    num_cases: int | None = None,
    description: str = "Exported by PropLabel",
) -> Path:
    """Write an nnU-Net v2 raw data set and return its folder ``out_dir/DatasetNNN_Name``.

    Arguments:
        out_dir: parent folder (created if missing). The data set folder must not exist yet or be empty.
        dataset_id: 1..999.
        dataset_name: free text; sanitised to ``[A-Za-z0-9_-]``.
        cases: the cases, consumed lazily one by one (a generator that loads each case on demand is fine).
            Each label must only hold 0 and values of ``labels``.
        labels: the project's label classes (values 1..255, unique names, not "background").
        channel_name: the single input channel's name (nnU-Net normalises ``"CT"`` specially; use e.g.
            ``"MRI"`` otherwise).
        progress: called with the done fraction in [0, 1] after each case (strictly increasing), and with
            1.0 once dataset.json is written. The fraction needs the case count: ``len(cases)`` when
            ``cases`` is sized, else ``num_cases``; with neither, only the final 1.0 is reported.
        num_cases: the number of cases for progress reporting when ``cases`` is a generator.
        description: written to dataset.json.

    Raises:
        ExportError: no cases, bad label classes, a bad case (shape mismatch, unknown label values,
            inconsistent geometry; the message names the case), a non-empty target folder. On any error the
            partly written data set folder is removed.
    """
    ordered_labels = validate_label_specs(labels)
    value_to_id = consecutive_label_ids(ordered_labels)
    channel = channel_name.strip() or "CT"
    dataset_dir = Path(out_dir) / nnunet_dataset_folder_name(dataset_id, dataset_name)
    if dataset_dir.exists() and any(dataset_dir.iterdir()):
        raise ExportError(f"The export folder {dataset_dir} already exists and is not empty.")
    total = len(cases) if isinstance(cases, Sized) else num_cases
    reported: list[float] = []

    def report(fraction: float) -> None:
        if progress is not None and (not reported or fraction > reported[-1]):
            reported.append(fraction)
            progress(fraction)

    try:
        case_ids = _write_cases(dataset_dir, cases, value_to_id, total, report)
        dataset_json: dict[str, Any] = {
            "channel_names": {"0": channel},
            "labels": {
                "background": 0,
                **{spec.name.strip(): value_to_id[int(spec.value)] for spec in ordered_labels},
            },
            "numTraining": len(case_ids),
            "file_ending": NNUNET_FILE_ENDING,
            "name": dataset_dir.name,
            "description": description,
            "label_value_mapping": {
                spec.name.strip(): {
                    "project_value": int(spec.value),
                    "nnunet_value": value_to_id[int(spec.value)],
                    "color": spec.color,
                }
                for spec in ordered_labels
            },
            "case_ids": case_ids,
        }
        # dataset.json last: a folder without it is recognisably incomplete.
        (dataset_dir / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        # The folder did not exist or was empty before: remove the partial export.
        shutil.rmtree(dataset_dir, ignore_errors=True)
        raise
    report(1.0)
    return dataset_dir
