"""Plain value types of the export layer and the input checks every writer shares.

No Django here: services build ``ExportCase`` objects from their models and pass them in. Geometry contract
(docs/ARCHITECTURE.md): ``image`` and ``label`` are ``(Z, Y, X)`` C-order arrays on the canonical grid and
``affine`` maps the index column vector ``(z, y, x, 1)`` to world RAS+ mm.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

SourceFormat = Literal["dicom", "nifti", "nrrd"]
SOURCE_FORMATS: tuple[str, ...] = ("dicom", "nifti", "nrrd")

_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_UNSAFE_IDENTIFIER_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]+")


class ExportError(Exception):
    """An export that cannot go ahead; ``str(error)`` is a message for the user naming the case/problem."""


@dataclass(frozen=True)
class LabelSpec:
    """One label class of a project.

    Attributes:
        value: the voxel value of the class in label maps, 1..255 (0 is background).
        name: the class name, shown to users and written into dataset.json / the SEG segment label.
        color: display colour ``"#rrggbb"``.
    """

    value: int
    name: str
    color: str = "#ff0000"


@dataclass
class ExportCase:
    """One case to export, on its canonical grid.

    Attributes:
        case_id: an identifier for file names; writers sanitise it to ``[A-Za-z0-9_-]``.
        image: ``(Z, Y, X)`` voxels in the stored dtype (CT in HU).
        label: uint8 ``(Z, Y, X)``, 0 = background, other values = ``LabelSpec.value``.
        affine: 4x4, ``(z, y, x, 1)`` -> world RAS+ mm.
        source_format: ``"dicom"``, ``"nifti"`` or ``"nrrd"``.
        source_meta: what the importer kept about the source (``annotator.imaging`` readers): for NIfTI
            ``affine`` (the source ``(i, j, k)`` affine), ``shape``, ``sform_code``, ``qform_code``; for
            NRRD ``affine_ras_ijk``; for DICOM the UIDs and ``sop_instance_uids`` (one per canonical z).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    source_format: SourceFormat
    source_meta: dict[str, Any] = field(default_factory=dict)


def sanitize_identifier(raw: str, fallback: str = "case") -> str:
    """A file-name-safe identifier: runs of characters outside ``[A-Za-z0-9_-]`` become one ``_``.

    ``"Patient 7/CT (arterial)"`` -> ``"Patient_7_CT_arterial"``; an identifier with nothing safe in it
    becomes ``fallback``.
    """
    cleaned = _UNSAFE_IDENTIFIER_CHARACTERS.sub("_", str(raw)).strip("_")
    return cleaned or fallback


def validate_label_specs(labels: Sequence[LabelSpec]) -> list[LabelSpec]:
    """Check a project's label classes and return them sorted by value.

    Raises ExportError for: no classes, a value outside 1..255, duplicate values or (case-insensitively)
    duplicate names, an empty name, the reserved name ``background``, or a colour that is not ``#rrggbb``.
    """
    if not labels:
        raise ExportError("The project has no label classes: define at least one before exporting.")
    seen_values: set[int] = set()
    seen_names: set[str] = set()
    for spec in labels:
        if isinstance(spec.value, bool) or not isinstance(spec.value, int | np.integer):
            raise ExportError(f"Label class {spec.name!r} has a non-integer value {spec.value!r}.")
        if not 1 <= int(spec.value) <= 255:
            raise ExportError(
                f"Label class {spec.name!r} has value {spec.value}: values must be 1..255 (0 is background)."
            )
        name = spec.name.strip()
        if not name:
            raise ExportError(f"Label class with value {spec.value} has an empty name.")
        if name.lower() == "background":
            raise ExportError(
                f"Label class value {spec.value} is named 'background', which is reserved for 0."
            )
        if int(spec.value) in seen_values:
            raise ExportError(f"Two label classes share the value {spec.value}.")
        if name.lower() in seen_names:
            raise ExportError(f"Two label classes share the name {name!r}.")
        if not _HEX_COLOR.match(spec.color):
            raise ExportError(f"Label class {spec.name!r} has colour {spec.color!r}; expected '#rrggbb'.")
        seen_values.add(int(spec.value))
        seen_names.add(name.lower())
    return sorted(labels, key=lambda spec: int(spec.value))


def validate_case(case: ExportCase, label_values: Iterable[int]) -> np.ndarray:
    """Check one case against the geometry contract and the project's classes.

    Arguments:
        case: the case to export.
        label_values: the values of the project's label classes (background 0 is always allowed).

    Returns:
        The label as a C-contiguous uint8 ``(Z, Y, X)`` array.

    Raises:
        ExportError: unknown source format, image/label not 3D, label shape != image shape, a 4x4 affine that
            is not finite or is singular, label values that are negative, non-integer or not in
            ``label_values`` (the message lists them).
    """
    if case.source_format not in SOURCE_FORMATS:
        raise ExportError(
            f"Case {case.case_id!r}: unknown source format {case.source_format!r} "
            f"(expected one of {', '.join(SOURCE_FORMATS)})."
        )
    image = np.asarray(case.image)
    label = np.asarray(case.label)
    if image.ndim != 3:
        raise ExportError(f"Case {case.case_id!r}: the image must be 3D (Z, Y, X), got shape {image.shape}.")
    if label.shape != image.shape:
        raise ExportError(
            f"Case {case.case_id!r}: label shape {label.shape} differs from image shape {image.shape} "
            "(both must be (Z, Y, X) on the same grid)."
        )
    affine = np.asarray(case.affine, dtype=np.float64)
    if (
        affine.shape != (4, 4)
        or not np.all(np.isfinite(affine))
        or abs(np.linalg.det(affine[:3, :3])) < 1e-12
    ):
        raise ExportError(f"Case {case.case_id!r}: the affine must be a finite, invertible 4x4 matrix.")
    if label.dtype.kind == "f":
        if not np.array_equal(label, np.round(label)):
            raise ExportError(f"Case {case.case_id!r}: the label holds non-integer values.")
    elif label.dtype.kind not in "uib":
        raise ExportError(f"Case {case.case_id!r}: the label has unsupported dtype {label.dtype}.")
    if label.dtype == np.uint8:
        # A histogram is much faster than np.unique (a sort) on volumes of 100+ million voxels.
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    else:
        present = np.unique(label)
    allowed = {0, *(int(value) for value in label_values)}
    unknown = sorted(int(value) for value in present if int(value) not in allowed)
    if unknown:
        raise ExportError(
            f"Case {case.case_id!r}: label values {unknown} are not label classes of the project "
            f"(known: {sorted(allowed - {0})})."
        )
    return np.ascontiguousarray(label, dtype=np.uint8)
