"""Value types shared by the import layer.

Everything here is plain Python (no Django) so services, tasks and tests can build and inspect them.
Geometry contract (docs/ARCHITECTURE.md): arrays are ``(Z, Y, X)`` in C order, ``spacing`` is
``(sz, sy, sx)`` in mm and ``affine`` maps the index column vector ``(z, y, x, 1)`` to world RAS+ mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

SourceFormat = Literal["dicom", "nifti", "nrrd"]


@dataclass(frozen=True)
class ImportLimits:
    """Upper bounds that protect the server from uploads that are too big or malicious.

    ``max_upload_bytes`` caps the summed size of the uploaded files as received; ``max_uncompressed_bytes``
    caps what archives may expand to and what a single volume may decode to; ``max_compression_ratio``
    rejects zip bombs (uncompressed / compressed size of an archive); ``max_files`` caps archive entries;
    ``max_voxels`` caps one volume's ``Z * Y * X``.
    """

    max_upload_bytes: int = 2 * 1024**3
    max_uncompressed_bytes: int = 8 * 1024**3
    max_compression_ratio: float = 200.0
    max_files: int = 20000
    max_voxels: int = 1024**3


class VolumeImportError(Exception):
    """An import (or label alignment) that cannot go ahead.

    ``message`` is meant for the user as-is: it names the problem and the file. ``code`` is a short stable
    id the API and the tests can match on, e.g. ``"corrupt_dicom"``, ``"not_an_image"``,
    ``"single_2d_image"``, ``"four_d"``, ``"non_finite"``, ``"too_large"``, ``"zip_path_traversal"``,
    ``"zip_bomb"``, ``"gantry_tilt"``, ``"irregular_spacing"``, ``"label_grid_mismatch"``,
    ``"label_unknown_values"`` (full list: ``ERROR_CODES``).

    ``file_errors`` lists every file (or series, or archive) that failed when the error stands for a whole
    upload none of whose files could be read (``read_upload``); it is empty otherwise.
    """

    def __init__(self, message: str, code: str, file_errors: Sequence[FileError] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.file_errors: list[FileError] = list(file_errors)

    def __repr__(self) -> str:
        return f"VolumeImportError(code={self.code!r}, message={self.message!r})"


# Every code the imaging layer raises, with what it means; the API may map them to translated messages.
ERROR_CODES: dict[str, str] = {
    "too_large": "the upload or one volume exceeds a configured size limit",
    "not_an_image": "the file is not a DICOM, NIfTI or NRRD image (or is a DICOM object without pixels)",
    "single_2d_image": "only one 2D slice: a 3D volume needs several slices",
    "four_d": "a 4D (or multi-component) image: only single 3D volumes are supported",
    "non_finite": "the image contains NaN or infinite voxel values",
    "corrupt_dicom": "a DICOM file could not be parsed or its pixel data could not be decoded",
    "corrupt_file": "a NIfTI/NRRD file could not be read (truncated or malformed)",
    "unsupported_dicom": "a DICOM variant the importer does not handle (colour, multi-frame, ...)",
    "missing_geometry": "DICOM slices without position/orientation/pixel spacing",
    "mixed_series": "slices of one series disagree (orientation, size, pixel spacing)",
    "duplicate_slices": "several slices of one series share a position (time series / echoes)",
    "gantry_tilt": "slices are not stacked along their normal (tilted gantry / sheared volume)",
    "irregular_spacing": "slice positions are not equally spaced (gaps or missing slices)",
    "zip_path_traversal": "an archive entry would land outside the extraction folder",
    "zip_symlink": "an archive contains a symbolic link",
    "zip_bomb": "an archive expands far beyond its size or beyond the limits",
    "zip_too_many_files": "an archive has more entries than allowed",
    "corrupt_archive": "an archive could not be read",
    "nothing_to_import": "the upload contained no files",
    "label_grid_mismatch": "a label file is not on the image's voxel grid",
    "label_unknown_values": "a label file uses values that are not label classes of the project",
    "label_not_integer": "a label file holds non-integer values",
    "label_overlap": "a DICOM SEG has overlapping segments that one label map cannot hold",
}


@dataclass
class LoadedVolume:
    """One imported 3D image in the canonical layout.

    Attributes:
        array: ``(Z, Y, X)`` C-order voxels, already in a storage dtype (uint8/int16/uint16/float32),
            CT in HU (DICOM rescale applied).
        spacing: ``(sz, sy, sx)`` voxel size in mm, all > 0.
        affine: 4x4 float64, ``(z, y, x, 1)`` -> world RAS+ mm.
        modality: ``"CT"``, ``"MR"``, ``"PT"`` or ``"OT"``.
        name: a human-readable case name derived from the source.
        source_format: ``"dicom"``, ``"nifti"`` or ``"nrrd"``.
        source_meta: JSON-serialisable facts that export needs to land on the source grid
            (see the reader modules for the keys per format).
        warnings: non-fatal remarks for the user (e.g. "modality guessed").
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    modality: str
    name: str
    source_format: SourceFormat
    source_meta: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        z, y, x = self.array.shape
        return (int(z), int(y), int(x))


@dataclass
class FileError:
    """A file (or DICOM series, or archive) of an upload that could not be imported."""

    name: str
    message: str
    code: str


@dataclass
class UploadResult:
    """What an upload produced: the good volumes and a per-file account of the bad parts."""

    volumes: list[LoadedVolume]
    errors: list[FileError]
