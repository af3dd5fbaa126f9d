"""Evaluation objects: nnU-Net raw data sets -> canonical volumes -> objects -> simulated prompts and clicks.

Definitions (issue 3, used by ``python -m ml.evaluate``):

* Canonical arrays (docs/ARCHITECTURE.md): NIfTI data transposed ``(2, 1, 0)`` so ``Z`` is the third NIfTI
  voxel axis; spacing ``(sz, sy, sx)`` = the header zooms reversed.
* An object is a 3D connected component (26-connectivity) of one label value spanning at least
  ``MIN_OBJECT_SLICES`` slices and ``MIN_OBJECT_VOXELS`` voxels.
* The prompt goes on the slice where the object's area is largest: box = the tight 2D box there,
  mask = the 2D mask there, point = the interior point farthest from the mask's edge.
* A correction click goes to the centre (farthest-from-edge point) of the largest 2D error region on the
  slice with the most wrong voxels: positive on missed tissue, negative on extra.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ml.prompts import BoxPrompt, Click, MaskPrompt, PointPrompt, Prompt

MIN_OBJECT_SLICES = 2
MIN_OBJECT_VOXELS = 50
PROMPT_KINDS = ("box", "mask", "point")

_TWENTY_SIX = np.ones((3, 3, 3), dtype=bool)
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class CaseFiles:
    """One labelled case of an nnU-Net raw data set."""

    case_id: str
    image_path: pathlib.Path
    label_path: pathlib.Path


@dataclass(frozen=True)
class LoadedCase:
    """``image`` float32 ``(Z, Y, X)``, ``labels`` ``(Z, Y, X)`` (``label_map``), ``spacing`` ``(sz, sy, sx)`` mm."""

    case_id: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class EvalObject:
    """One object: its label value, index among the case's objects, and bool ``(Z, Y, X)`` mask."""

    label: int
    index: int
    mask: np.ndarray

    @property
    def slice_range(self) -> tuple[int, int]:
        zs = np.flatnonzero(self.mask.any(axis=(1, 2)))
        return int(zs[0]), int(zs[-1])

    @property
    def prompt_slice(self) -> int:
        """The slice of largest area (the first such slice on ties)."""
        return int(np.argmax(self.mask.sum(axis=(1, 2))))


def read_dataset_json(dataset_dir: pathlib.Path) -> dict:
    path = pathlib.Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{dataset_dir} is not an nnU-Net raw data set: {path} is missing")
    return json.loads(path.read_text())


def label_names(dataset_dir: pathlib.Path) -> dict[int, str]:
    """``{value: name}`` from dataset.json's ``labels`` (``{name: value}``; region-style lists skipped)."""
    names: dict[int, str] = {}
    for name, value in read_dataset_json(dataset_dir).get("labels", {}).items():
        if isinstance(value, int):
            names[value] = name
    return names


def list_cases(dataset_dir: pathlib.Path) -> list[CaseFiles]:
    """All labelled cases (sorted by id) in ``imagesTr/labelsTr`` and ``imagesTs/labelsTs``.

    A case needs its label file and its first channel ``<case>_0000<ending>``.
    """
    dataset_dir = pathlib.Path(dataset_dir)
    ending = read_dataset_json(dataset_dir).get("file_ending", ".nii.gz")
    cases: list[CaseFiles] = []
    for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        label_dir = dataset_dir / labels
        if not label_dir.is_dir():
            continue
        for label_path in sorted(label_dir.glob(f"*{ending}")):
            case_id = label_path.name[: -len(ending)]
            image_path = dataset_dir / images / f"{case_id}_0000{ending}"
            if image_path.is_file():
                cases.append(CaseFiles(case_id, image_path, label_path))
    return sorted(cases, key=lambda case: case.case_id)


def label_map(raw: np.ndarray, name: str) -> np.ndarray:
    """A label volume as the smallest unsigned integer type that holds its values, unchanged otherwise.

    Label values are kept as they are (a heart data set's 205, 420, 500, 550, 600, 820 and 850 stay seven
    distinct objects: a cast to uint8 used to fold 500 onto 244). Stored floats are rounded if they lie within
    0.01 of an integer (a label file saved as float32).

    Raises:
        ValueError: NaN/inf, negative values, or values that are not integers (an interpolated label map).
    """
    values = np.asarray(raw)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{name}: labels must be numbers, got dtype {values.dtype}")
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise ValueError(f"{name}: the label map contains NaN or infinite values")
        rounded = np.rint(values)
        if np.abs(values - rounded).max(initial=0.0) > 0.01:
            raise ValueError(
                f"{name}: the label map holds non-integer values (was it resampled with interpolation?)"
            )
        values = rounded
    if values.size and values.min() < 0:
        raise ValueError(f"{name}: the label map holds negative values (lowest {values.min():g})")
    highest = int(values.max(initial=0))
    if highest > np.iinfo(np.uint32).max:
        raise ValueError(f"{name}: label value {highest} is too large")
    kind = np.uint8 if highest <= 255 else np.uint16 if highest <= 65535 else np.uint32
    return values.astype(kind)


def load_case(case: CaseFiles) -> LoadedCase:
    """Read a case into canonical arrays (see the module docstring).

    Raises:
        ValueError: a file that cannot be read, an image that is not 3D, image and labels of different
            shapes, or a bad label map (``label_map``); the message names the case.
    """
    import nibabel as nib  # only the evaluation reads NIfTI; the engine never needs it

    try:
        image_nii = nib.load(str(case.image_path))
        label_nii = nib.load(str(case.label_path))
        image = np.asarray(image_nii.dataobj, dtype=np.float32)
        raw_labels = np.asarray(label_nii.dataobj)
    # nibabel raises many types for a truncated or foreign file; to the caller they all mean "unreadable".
    except Exception as error:
        raise ValueError(f"{case.case_id}: cannot read its image or label file: {error}") from error
    if image.ndim == 4 and image.shape[3] == 1:
        image = image[..., 0]
    if raw_labels.ndim == 4 and raw_labels.shape[3] == 1:
        raw_labels = raw_labels[..., 0]
    if image.ndim != 3:
        raise ValueError(f"{case.case_id}: image must be 3D, got shape {image.shape}")
    if raw_labels.shape != image.shape:
        raise ValueError(f"{case.case_id}: image {image.shape} and labels {raw_labels.shape} differ")
    labels = label_map(raw_labels, case.case_id)
    zooms = image_nii.header.get_zooms()[:3]
    return LoadedCase(
        case.case_id,
        np.ascontiguousarray(image.transpose(2, 1, 0)),
        np.ascontiguousarray(labels.transpose(2, 1, 0)),
        (float(zooms[2]), float(zooms[1]), float(zooms[0])),
    )


def find_objects(labels: np.ndarray) -> list[EvalObject]:
    """Objects of a ``(Z, Y, X)`` label volume, ordered by label value then component size (largest first)."""
    objects: list[EvalObject] = []
    for value in np.unique(labels):
        if value == 0:
            continue
        components, count = ndimage.label(labels == value, structure=_TWENTY_SIX)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        index = 0
        for component in np.argsort(-sizes, kind="stable") + 1:
            if sizes[component - 1] < MIN_OBJECT_VOXELS:
                continue
            mask = components == component
            if np.count_nonzero(mask.any(axis=(1, 2))) < MIN_OBJECT_SLICES:
                continue
            objects.append(EvalObject(int(value), index, mask))
            index += 1
    return objects


def interior_point(mask_2d: np.ndarray, spacing_yx: tuple[float, float] = (1.0, 1.0)) -> tuple[int, int]:
    """The pixel of a non-empty bool ``(Y, X)`` mask farthest (in mm) from its edge; slice borders count as edge.

    Ties (a plateau of equally deep pixels) go to the one nearest the mask's centroid.
    """
    padded = np.pad(mask_2d, 1)
    distance = ndimage.distance_transform_edt(padded, sampling=spacing_yx)[1:-1, 1:-1]
    ys, xs = np.nonzero(distance >= distance.max() - 1e-6)
    centre_y, centre_x = np.argwhere(mask_2d).mean(axis=0)
    nearest = int(np.argmin((ys - centre_y) ** 2 + (xs - centre_x) ** 2))
    return int(ys[nearest]), int(xs[nearest])


def make_prompt(obj: EvalObject, kind: str, spacing: tuple[float, float, float]) -> Prompt:
    """The simulated prompt of ``kind`` (``box``, ``mask``, ``point``) on the object's largest slice."""
    z = obj.prompt_slice
    mask_2d = obj.mask[z]
    if kind == "mask":
        return MaskPrompt(z, mask_2d.copy())
    if kind == "box":
        rows = np.flatnonzero(mask_2d.any(axis=1))
        cols = np.flatnonzero(mask_2d.any(axis=0))
        return BoxPrompt(z, int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1]))
    if kind == "point":
        y, x = interior_point(mask_2d, (spacing[1], spacing[2]))
        return PointPrompt(z, y, x)
    raise ValueError(f"unknown prompt kind {kind!r}; choose one of {PROMPT_KINDS}")


def correction_click(
    prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> Click | None:
    """The next simulated correction, or None when the prediction is already perfect.

    Args:
        prediction, truth: bool ``(Z, Y, X)``.

    The worst slice is the one with the most wrong voxels; on it the largest 8-connected region of
    missed (positive click) or extra (negative click) voxels is clicked at its farthest-from-edge point.
    """
    missed = truth & ~prediction
    extra = prediction & ~truth
    errors_per_slice = missed.sum(axis=(1, 2)) + extra.sum(axis=(1, 2))
    if errors_per_slice.max() == 0:
        return None
    z = int(np.argmax(errors_per_slice))
    best: tuple[int, bool, np.ndarray] | None = None
    for positive, error in ((True, missed[z]), (False, extra[z])):
        if not error.any():
            continue
        components, _ = ndimage.label(error, structure=_EIGHT)
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            best = (int(sizes[largest - 1]), positive, components == largest)
    assert best is not None  # errors_per_slice[z] > 0 guarantees one non-empty error map
    y, x = interior_point(best[2], (spacing[1], spacing[2]))
    return Click(z, y, x, positive=best[1])


def correction_clicks(earlier: Sequence[Click], click: Click) -> list[Click]:
    """What a correction hands the engine: ``click`` after the ``earlier`` corrections on its slice (since the
    object's prompt), as the viewer sends them (``frontend/src/prompts.js``). The corrections network reads
    a slice's clicks together; a lone negative click on a slice that a positive one just fixed reads as "the
    object ends before this slice" and empties it."""
    return [*(previous for previous in earlier if previous.z == click.z), click]


def dice_3d(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two bool ``(Z, Y, X)`` masks (1.0 when both are empty)."""
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(prediction, truth).sum()) / total
