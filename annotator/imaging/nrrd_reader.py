"""NRRD (``.nrrd`` attached, ``.nhdr`` detached) reading into the canonical layout.

pynrrd returns data in NRRD axis order (fastest axis first, ``index_order="F"``), i.e. ``(i, j, k)`` like
NIfTI, so canonical = ``data.transpose(2, 1, 0)``. World coordinates come from ``space directions`` /
``space origin`` in the file's ``space`` (LPS, RAS, LAS, ...) and are converted to RAS.
``source_meta`` keys: ``file_name``, ``header`` (the JSON-able header fields: type, sizes, space,
space directions, space origin, kinds, encoding, endian, ...), ``affine_ras_ijk``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nrrd
import numpy as np

from .common import check_finite, check_spatial_shape, check_volume_size, guess_modality_without_header
from .geometry import ijk_affine_to_canonical, spacing_from_affine
from .nifti import case_name_from_file
from .storage import to_storage_dtype
from .types import ImportLimits, LoadedVolume, VolumeImportError

NRRD_SUFFIXES = (".nrrd", ".nhdr")

# Sign that turns each world axis of a NRRD space into the RAS axis.
_SPACE_TO_RAS_SIGNS: dict[str, tuple[float, float, float]] = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
    "right-anterior-superior-time": (1.0, 1.0, 1.0),
    "left-anterior-superior-time": (-1.0, 1.0, 1.0),
    "left-posterior-superior-time": (-1.0, -1.0, 1.0),
    # Scanner / right-handed spaces have no anatomical meaning; ITK (and Slicer) treat them as LPS.
    "scanner-xyz": (-1.0, -1.0, 1.0),
    "3d-right-handed": (-1.0, -1.0, 1.0),
}


def looks_like_nrrd(path: Path) -> bool:
    """True for ``.nrrd``/``.nhdr`` names or a file that starts with the ``NRRD000`` magic."""
    if path.name.lower().endswith(NRRD_SUFFIXES):
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(7) == b"NRRD000"
    except OSError:
        return False


def _json_safe(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return np.where(np.isnan(value), None, value).tolist() if value.dtype.kind == "f" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def nrrd_header_affine_ras(header: dict[str, Any], display_name: str) -> tuple[np.ndarray, list[str]]:
    """``(i, j, k, 1) -> RAS`` affine from a NRRD header with three spatial axes; plus warnings."""
    warnings: list[str] = []
    directions = header.get("space directions")
    if directions is not None:
        rows = [np.asarray(row, dtype=np.float64) for row in directions]
        spatial_rows = [row for row in rows if row.ndim == 1 and np.all(np.isfinite(row))]
        if len(spatial_rows) != 3 or any(row.size != 3 for row in spatial_rows):
            raise VolumeImportError(
                f"{display_name}: NRRD 'space directions' do not describe three spatial axes.", "four_d"
            )
        linear = np.stack(spatial_rows, axis=1)
    elif "spacings" in header:
        linear = np.diag(np.asarray(header["spacings"], dtype=np.float64)[:3])
        warnings.append("The NRRD has no 'space directions': axes assumed aligned with the world axes.")
    else:
        linear = np.eye(3)
        warnings.append("The NRRD has no spacing information: 1 mm voxels assumed.")
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        origin = np.zeros(3)
        warnings.append("The NRRD has no usable 'space origin': origin set to 0.")
    space = str(header.get("space", "left-posterior-superior")).lower()
    if space not in _SPACE_TO_RAS_SIGNS:
        raise VolumeImportError(f"{display_name}: unsupported NRRD space {space!r}.", "corrupt_file")
    if "space" not in header:
        warnings.append("The NRRD does not name its space: LPS assumed (ITK convention).")
    signs = np.diag([*_SPACE_TO_RAS_SIGNS[space], 1.0])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    affine = signs @ affine
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeImportError(f"{display_name}: NRRD 'space directions' are degenerate.", "corrupt_file")
    return affine, warnings


def read_nrrd_array(
    path: Path, display_name: str, limits: ImportLimits | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Header-checked read of a 3D NRRD: ``(data (i, j, k), header)``; size checked before decoding."""
    try:
        header = nrrd.read_header(str(path))
    except (nrrd.NRRDError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise VolumeImportError(
            f"{display_name} is not a readable NRRD file: {exc}", "corrupt_file"
        ) from None
    sizes = tuple(int(side) for side in header.get("sizes", ()))
    kinds = [str(kind).lower() for kind in header.get("kinds", ["domain"] * len(sizes))]
    # Non-spatial axes (vector components, time, RGB) are only acceptable when they are singletons.
    non_spatial = [size for size, kind in zip(sizes, kinds, strict=False) if kind not in ("domain", "space")]
    if any(size > 1 for size in non_spatial):
        raise VolumeImportError(
            f"{display_name} has non-spatial axes ({', '.join(kinds)}; sizes {sizes}): only single 3D scalar "
            "volumes can be imported.",
            "four_d",
        )
    spatial_sizes = tuple(
        size for size, kind in zip(sizes, kinds, strict=False) if kind in ("domain", "space")
    )
    check_spatial_shape(spatial_sizes, display_name)
    if limits is not None:
        check_volume_size(spatial_sizes, 4, limits, display_name)
    try:
        data, header = nrrd.read(str(path), index_order="F")
    except (nrrd.NRRDError, OSError, ValueError, EOFError) as exc:
        raise VolumeImportError(f"{display_name} is truncated or corrupt: {exc}", "corrupt_file") from None
    data = np.asarray(data).reshape(spatial_sizes, order="A")
    return data, header


def read_nrrd(path: Path, display_name: str, limits: ImportLimits) -> LoadedVolume:
    """Read a 3D NRRD into ``LoadedVolume`` (array ``(Z, Y, X)`` = data ``(i, j, k)`` transposed)."""
    data, header = read_nrrd_array(path, display_name, limits)
    check_finite(data, display_name)
    affine_ijk, warnings = nrrd_header_affine_ras(header, display_name)
    array = to_storage_dtype(data.transpose(2, 1, 0))
    affine = ijk_affine_to_canonical(affine_ijk)
    modality, modality_warning = guess_modality_without_header(array)
    if modality_warning:
        warnings.insert(0, modality_warning)
    return LoadedVolume(
        array=array,
        spacing=spacing_from_affine(affine),
        affine=affine,
        modality=modality,
        name=case_name_from_file(display_name),
        source_format="nrrd",
        source_meta={
            "file_name": display_name,
            "header": _json_safe({key: value for key, value in header.items() if key != "data file"}),
            "affine_ras_ijk": affine_ijk.tolist(),
        },
        warnings=warnings,
    )
