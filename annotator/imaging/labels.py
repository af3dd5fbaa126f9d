"""Label files (NIfTI, NRRD, DICOM SEG) put onto a volume's canonical grid, exactly, or refused.

A label is accepted only when its voxel grid holds the same world points as the volume's grid (within a
tenth of a voxel), i.e. it differs by an axis permutation and/or flips (the usual RAS vs LPS and
"y-flipped export" cases). It is then reordered exactly, with no interpolation. Anything else (another
spacing, origin, extent, an oblique rotation) is refused as ``label_grid_mismatch``: resampling a label
silently changes the annotation, so the user should export it on the image grid.
"""

from __future__ import annotations

import warnings as python_warnings
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import pydicom

from .dicom import has_dicom_preamble
from .geometry import LPS_TO_RAS, apply_axis_mapping, ijk_affine_to_canonical, signed_axis_mapping
from .nifti import load_nifti_image, looks_like_nifti, read_nifti_data
from .nrrd_reader import looks_like_nrrd, nrrd_header_affine_ras, read_nrrd_array
from .types import LoadedVolume, VolumeImportError

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _grid_mismatch(
    label_name: str, label_shape: tuple[int, ...], volume: LoadedVolume, detail: str
) -> VolumeImportError:
    return VolumeImportError(
        f"{label_name} is not on the voxel grid of '{volume.name}' (label {' x '.join(map(str, label_shape))}, "
        f"image {' x '.join(map(str, volume.shape))} (Z x Y x X)): {detail}. Export the label on the image's "
        "grid and upload it again.",
        "label_grid_mismatch",
    )


def _integral_labels(values: np.ndarray, label_name: str) -> np.ndarray:
    """Check a label array holds integers 0..255 and return it as uint8."""
    if values.dtype == np.uint8:
        return values
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise VolumeImportError(
                f"{label_name} holds non-integer values (e.g. probabilities); a label map must hold integer "
                "class values.",
                "label_not_integer",
            )
    elif not (np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_):
        raise VolumeImportError(
            f"{label_name} has voxel type {values.dtype}, not integer labels.", "label_not_integer"
        )
    if values.size and (values.min() < 0 or values.max() > 255):
        bad = np.unique(values[(values < 0) | (values > 255)])[:10]
        raise VolumeImportError(
            f"{label_name} uses values {', '.join(str(int(v)) for v in bad)} outside 0-255; they are not label "
            "classes of this project.",
            "label_unknown_values",
        )
    return values.astype(np.uint8)


def _check_allowed_values(label: np.ndarray, allowed_values: Collection[int] | None, label_name: str) -> None:
    if allowed_values is None:
        return
    present = set(np.unique(label).tolist()) - {0}
    unknown = sorted(present - {int(value) for value in allowed_values})
    if unknown:
        allowed_text = ", ".join(str(value) for value in sorted(allowed_values)) or "none"
        shown = ", ".join(map(str, unknown[:20])) + (
            f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        )
        raise VolumeImportError(
            f"{label_name} uses {len(unknown)} label value{'s' if len(unknown) != 1 else ''} that are not label "
            f"classes of this project ({shown}; defined: {allowed_text}). Add the classes first or remap the "
            "label file.",
            "label_unknown_values",
        )


def _align_grid_array(
    label_zyx: np.ndarray, label_affine: np.ndarray, volume: LoadedVolume, label_name: str
) -> np.ndarray:
    shape = tuple(int(side) for side in label_zyx.shape)
    mapping = signed_axis_mapping(label_affine, shape, volume.affine, volume.shape)  # type: ignore[arg-type]
    if mapping is None:
        raise _grid_mismatch(label_name, shape, volume, "its voxels are at other positions in space")
    axes, flips = mapping
    return apply_axis_mapping(label_zyx, axes, flips)


def _read_dicom_seg(label_path: Path, volume: LoadedVolume, label_name: str) -> np.ndarray:
    """Paint every frame of a DICOM SEG onto the volume grid; value = ReferencedSegmentNumber.

    Each frame is located in space by its own PlanePosition/PlaneOrientation/PixelMeasures, so SEGs that
    cover only some slices, in any frame order, land where they belong. FRACTIONAL segments count where
    the fraction is >= 0.5. Overlapping segments cannot live in one label map and are refused.
    """
    try:
        with python_warnings.catch_warnings():
            python_warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(str(label_path))
            frames = dataset.pixel_array
    except Exception as exc:  # pydicom raises many types for broken files
        raise VolumeImportError(
            f"{label_name} is not a readable DICOM SEG ({exc}).", "corrupt_dicom"
        ) from None
    if str(dataset.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise VolumeImportError(
            f"{label_name} is a DICOM file but not a Segmentation (SEG) object.", "not_an_image"
        )
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    fractional = str(dataset.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL"
    max_fraction = float(dataset.get("MaximumFractionalValue", 255) or 255)
    shared = dataset.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence", [])
    if len(per_frame) != frames.shape[0]:
        raise VolumeImportError(
            f"{label_name}: the SEG's per-frame information does not match its frames.", "corrupt_dicom"
        )

    def group_item(frame_group: pydicom.Dataset, name: str) -> pydicom.Dataset | None:
        for source in (frame_group, shared):
            if source is not None and name in source:
                return source[name].value[0]
        return None

    label = np.zeros(volume.shape, dtype=np.uint8)
    inverse = np.linalg.inv(volume.affine)
    for frame_index, frame_group in enumerate(per_frame):
        position = group_item(frame_group, "PlanePositionSequence")
        orientation = group_item(frame_group, "PlaneOrientationSequence")
        measures = group_item(frame_group, "PixelMeasuresSequence")
        segment = group_item(frame_group, "SegmentIdentificationSequence")
        if position is None or orientation is None or measures is None or segment is None:
            raise VolumeImportError(
                f"{label_name}: frame {frame_index + 1} lacks its position in space.", "corrupt_dicom"
            )
        cosines = np.asarray(orientation.ImageOrientationPatient, dtype=np.float64)
        row_spacing, column_spacing = (float(value) for value in measures.PixelSpacing)
        frame_affine_lps = np.eye(4)
        frame_affine_lps[:3, 0] = np.cross(cosines[:3], cosines[3:])  # dummy 1 mm slice axis
        frame_affine_lps[:3, 1] = cosines[3:] * row_spacing
        frame_affine_lps[:3, 2] = cosines[:3] * column_spacing
        frame_affine_lps[:3, 3] = np.asarray(position.ImagePositionPatient, dtype=np.float64)
        frame_to_volume = inverse @ (LPS_TO_RAS @ frame_affine_lps)
        pixels = frames[frame_index]
        if fractional:
            pixels = pixels.astype(np.float64) / max_fraction >= 0.5
        frame_mask = np.asarray(pixels).astype(bool)
        rows, columns = frame_mask.shape
        # The frame is a (1, rows, columns) grid; it must coincide with one plane of the volume grid.
        placed = _place_frame(frame_to_volume, (rows, columns), volume.shape)
        if placed is None:
            raise _grid_mismatch(
                label_name,
                (len(per_frame), rows, columns),
                volume,
                f"frame {frame_index + 1} does not lie on a slice of the image",
            )
        target_index, frame_on_grid = placed(frame_mask)
        value = int(segment.ReferencedSegmentNumber)
        current = label[target_index]
        clash = frame_on_grid & (current != 0) & (current != value)
        if clash.any():
            raise VolumeImportError(
                f"{label_name}: segment {value} overlaps segment {int(current[clash][0])}; a label map holds one "
                "class per voxel. Upload the overlapping segments as separate label files.",
                "label_overlap",
            )
        current[frame_on_grid] = value
    return label


FramePainter = Callable[[np.ndarray], tuple[tuple[int | slice, ...], np.ndarray]]


def _place_frame(
    frame_to_volume: np.ndarray, frame_shape: tuple[int, int], volume_shape: tuple[int, int, int]
) -> FramePainter | None:
    """Find where a 2D frame grid sits on the volume grid; returns a painter or None.

    The painter maps a bool frame ``(rows, columns)`` to ``(index tuple into the volume, bool plane)``.
    """
    linear = frame_to_volume[:3, 1:3]  # volume-index change per frame row / column step
    axes: list[int] = []
    signs: list[float] = []
    for column in range(2):
        axis = int(np.argmax(np.abs(linear[:, column])))
        if (
            abs(abs(linear[axis, column]) - 1.0) > 1e-3
            or np.sum(np.abs(linear[:, column])) - abs(linear[axis, column]) > 1e-3
        ):
            return None
        axes.append(axis)
        signs.append(float(np.sign(linear[axis, column])))
    if axes[0] == axes[1]:
        return None
    slice_axis = ({0, 1, 2} - set(axes)).pop()
    origin = frame_to_volume[:3, 3]
    rounded = np.round(origin)
    if np.max(np.abs(origin - rounded)) > 0.1:
        return None
    rows, columns = frame_shape
    ends = [rounded[axes[0]] + signs[0] * (rows - 1), rounded[axes[1]] + signs[1] * (columns - 1)]
    slice_index = int(rounded[slice_axis])
    if not 0 <= slice_index < volume_shape[slice_axis]:
        return None
    for axis, start, end, length in (
        (axes[0], rounded[axes[0]], ends[0], rows),
        (axes[1], rounded[axes[1]], ends[1], columns),
    ):
        low, high = min(start, end), max(start, end)
        if low != 0 or high != volume_shape[axis] - 1 or length != volume_shape[axis]:
            return None

    def paint(frame_mask: np.ndarray) -> tuple[tuple[int | slice, ...], np.ndarray]:
        plane = frame_mask
        if signs[0] < 0:
            plane = plane[::-1, :]
        if signs[1] < 0:
            plane = plane[:, ::-1]
        # plane axes are now (axes[0], axes[1]) in increasing volume index; order them as the volume's.
        if axes[0] > axes[1]:
            plane = plane.T
        index: list[int | slice] = [slice(None)] * 3
        index[slice_axis] = slice_index
        return tuple(index), np.ascontiguousarray(plane)

    return paint


def align_label(label_path: Path, volume: LoadedVolume, allowed_values: Collection[int] | None) -> np.ndarray:
    """Read a label file and return it on the volume's canonical grid.

    Arguments:
        label_path: NIfTI (``.nii``/``.nii.gz``), NRRD (``.nrrd``/``.nhdr``) or DICOM SEG file.
        volume: the image it belongs to (its ``affine`` and ``shape`` define the target grid).
        allowed_values: label values that exist in the project (0 is always allowed); None skips the check.
    Returns:
        uint8 ``(Z, Y, X)`` array, exactly the label's voxels reordered (no interpolation).
    Raises:
        VolumeImportError: ``label_grid_mismatch``, ``label_unknown_values``, ``label_not_integer``,
            ``label_overlap`` (DICOM SEG), ``four_d``, ``corrupt_file``, ``not_an_image``.
    """
    label_name = label_path.name
    if looks_like_nifti(label_path):
        image = load_nifti_image(label_path, label_name)
        data = np.asarray(read_nifti_data(image, label_name))
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise VolumeImportError(f"{label_name} is not a 3D label map (shape {data.shape}).", "four_d")
        values = _integral_labels(data, label_name)
        aligned = _align_grid_array(
            values.transpose(2, 1, 0),
            ijk_affine_to_canonical(np.asarray(image.affine, dtype=np.float64)),
            volume,
            label_name,
        )
    elif looks_like_nrrd(label_path):
        data, header = read_nrrd_array(label_path, label_name, None)
        affine_ijk, _ = nrrd_header_affine_ras(header, label_name)
        values = _integral_labels(np.asarray(data), label_name)
        aligned = _align_grid_array(
            values.transpose(2, 1, 0), ijk_affine_to_canonical(affine_ijk), volume, label_name
        )
    elif has_dicom_preamble(label_path):
        aligned = _read_dicom_seg(label_path, volume, label_name)
    else:
        raise VolumeImportError(f"{label_name} is not a NIfTI, NRRD or DICOM SEG label file.", "not_an_image")
    _check_allowed_values(aligned, allowed_values, label_name)
    return aligned
