"""Build the held-out CT evaluation sets from ``../shared/data/dicom``.

    python scripts/build_holdout_ct.py [--shared ../shared/data] [--out var/holdout]

Two one-case nnU-Net raw data sets that ``python -m ml.evaluate`` reads, each imported with the product's
own readers (``annotator.imaging``: DICOM geometry, label files resolved in world space):

* ``<out>/Dataset900_CTSeries20Holdout``: the 20-slice CT series (512 x 512, 0.98 x 0.98 x 2 mm, JPEG 2000)
  and its TotalSegmentator label map (stored y-flipped). No network was trained on it; it has informed
  ml choices since session 18 (``ml/weights/TRAINING_LOG.md``), so it is no longer a clean check.
* ``<out>/Dataset901_DcmqiCT3SliceHoldout``: dcmqi's 3-slice abdominal CT (512 x 512, 0.81 x 0.81 x 1 mm)
  with its hand-drawn NRRD label maps: liver, spine, and the map its authors named "heart", which outlines
  the stomach. Human labels, first evaluated in session 23; no ml choice was made on it.

Both are the held-out checks of issue 4's "leave one data set out" line. The output is derived from
../shared/data and lands in ``var/`` (ignored by git) unless told otherwise; it must never be committed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import nibabel as nib
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotator.imaging import ImportLimits, LoadedVolume, align_label, read_upload  # noqa: E402

SERIES = "dicom/ct_series_20slice"
NAMES_FROM = "Dataset003_TotalSegmentatorCT/dataset.json"  # the same TotalSegmentator 'total' ids
DATASET_NAME = "Dataset900_CTSeries20Holdout"
CASE_ID = "ct_series_20slice"
LIVER = 5
MIN_LIVER_MEAN_HU = 40.0  # the shared README: 89 HU when aligned in world space, -75 HU when overlaid naively

HAND_SERIES = "dicom/dcmqi_ct3slice"
HAND_DATASET_NAME = "Dataset901_DcmqiCT3SliceHoldout"
HAND_CASE_ID = "dcmqi_ct3slice"
HAND_LABELS: tuple[tuple[str, str, int], ...] = (
    # (label map file, value in it, name); written in this order, a later map never overwrites an earlier
    # one's voxels (the stomach outline overlaps the liver's by ~500 voxels).
    ("liver_spine_seg.nrrd", 1, "liver"),
    ("liver_spine_seg.nrrd", 2, "spine"),
    ("heart_seg.nrrd", 3, "stomach_labelled_heart"),
)
MIN_SPINE_MEAN_HU = 200.0  # bone; the aligned spine map averages ~330 HU, soft tissue would be < 100


def build(shared: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """Write the data set below ``out`` and return its folder.

    Raises:
        SystemExit: the shared series is missing, or the aligned label does not sit on the liver.
    """
    series_dir = _shared_folder(shared, SERIES)
    names = json.loads((shared / NAMES_FROM).read_text())["labels"]
    files = sorted(path for path in (series_dir / "dicom").iterdir() if path.is_file())
    volume, (labels,) = _read_aligned(files, [series_dir / "example_seg_dicom.nii.gz"])
    image = np.asarray(volume.array, dtype=np.int16)
    liver_hu = float(image[labels == LIVER].mean())
    if liver_hu < MIN_LIVER_MEAN_HU:
        raise SystemExit(f"label misaligned: mean HU inside the liver is {liver_hu:.0f}, expected ~89")

    present = sorted(int(value) for value in np.unique(labels) if value)
    by_value = {int(value): name for name, value in names.items()}
    return _write_dataset(
        out / DATASET_NAME,
        CASE_ID,
        image,
        labels,
        volume.spacing,
        {by_value[value]: value for value in present},
        source=SERIES,
        label_origin="TotalSegmentator --fast output (silver), not ground truth",
        notes=f"liver mean {liver_hu:.0f} HU after world-space alignment",
    )


def build_hand_labelled(shared: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """Write the dcmqi 3-slice set below ``out`` and return its folder.

    Raises:
        SystemExit: the shared folder is missing, or the aligned spine map does not sit on bone.
    """
    series_dir = _shared_folder(shared, HAND_SERIES)
    map_names = sorted({file_name for file_name, _, _ in HAND_LABELS})
    volume, aligned = _read_aligned(
        sorted((series_dir / "ct").glob("*.dcm")), [series_dir / "nrrd" / name for name in map_names]
    )
    maps = dict(zip(map_names, aligned, strict=True))
    image = np.asarray(volume.array, dtype=np.int16)
    labels = np.zeros(image.shape, dtype=np.uint8)
    names: dict[str, int] = {}
    for number, (file_name, value, name) in enumerate(HAND_LABELS, start=1):
        labels[(maps[file_name] == value) & (labels == 0)] = number
        names[name] = number
    spine_hu = float(image[labels == names["spine"]].mean())
    if spine_hu < MIN_SPINE_MEAN_HU:
        raise SystemExit(f"label misaligned: mean HU inside the spine is {spine_hu:.0f}, expected ~330")
    return _write_dataset(
        out / HAND_DATASET_NAME,
        HAND_CASE_ID,
        image,
        labels,
        volume.spacing,
        names,
        source=HAND_SERIES,
        label_origin="hand-drawn test segmentations (dcmqi); the map named 'heart' outlines the stomach",
        notes=f"spine mean {spine_hu:.0f} HU after world-space alignment",
    )


def _shared_folder(shared: pathlib.Path, relative: str) -> pathlib.Path:
    folder = shared / relative
    if not folder.is_dir():
        raise SystemExit(f"{folder} not found: pass --shared pointing at the shared data folder")
    return folder


def _read_aligned(
    image_files: list[pathlib.Path], label_files: list[pathlib.Path]
) -> tuple[LoadedVolume, list[np.ndarray]]:
    """The series as the product imports it, and each label file resampled onto it in world space."""
    with tempfile.TemporaryDirectory() as work:
        (volume,) = read_upload(image_files, pathlib.Path(work), ImportLimits()).volumes
        return volume, [align_label(path, volume, allowed_values=None) for path in label_files]


def _write_dataset(
    dataset: pathlib.Path,
    case_id: str,
    image: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    names: dict[str, int],
    *,
    source: str,
    label_origin: str,
    notes: str,
) -> pathlib.Path:
    """One image and its label map (both ``(Z, Y, X)``) as a one-case nnU-Net raw data set."""
    for sub in ("imagesTr", "labelsTr"):
        (dataset / sub).mkdir(parents=True, exist_ok=True)
    sz, sy, sx = spacing
    # ml.objects reads NIfTI voxel axes (i, j, k) = (x, y, z) and zooms as the spacing.
    affine = np.diag([sx, sy, sz, 1.0])
    nib.save(
        nib.Nifti1Image(image.transpose(2, 1, 0), affine),
        str(dataset / "imagesTr" / f"{case_id}_0000.nii.gz"),
    )
    nib.save(
        nib.Nifti1Image(labels.astype(np.uint8).transpose(2, 1, 0), affine),
        str(dataset / "labelsTr" / f"{case_id}.nii.gz"),
    )
    (dataset / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, **names},
                "numTraining": 1,
                "file_ending": ".nii.gz",
                "source": f"../shared/data/{source} (built by scripts/build_holdout_ct.py)",
                "label_origin": label_origin,
                "notes": notes,
            },
            indent=1,
        )
    )
    print(
        f"{dataset}: {image.shape[::-1]} voxels (x, y, z), spacing {spacing[::-1]} mm, {len(names)} labels, {notes}"
    )
    return dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=pathlib.Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "var" / "holdout")
    args = parser.parse_args(argv)
    build(args.shared, args.out)
    build_hand_labelled(args.shared, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
