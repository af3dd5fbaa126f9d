"""Build the held-out CT evaluation set from ``../shared/data/dicom/ct_series_20slice``.

    python scripts/build_holdout_ct.py [--shared ../shared/data] [--out var/holdout]

The 20-slice CT series (512 x 512, 0.98 x 0.98 x 2 mm, JPEG 2000) and its TotalSegmentator label map are
imported with the product's own readers (``annotator.imaging``: DICOM geometry, the label file's y-flipped
direction resolved in world space) and written as a one-case nnU-Net raw data set,
``<out>/Dataset900_CTSeries20Holdout``, that ``python -m ml.evaluate`` reads. No network was trained on this
series and no ml choice was made on it (model card, "Session 18"): it is the held-out check of issue 4's
"leave one data set out" line. The output is derived from ../shared/data and lands in ``var/`` (ignored by
git) unless told otherwise; it must never be committed.
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

from annotator.imaging import ImportLimits, align_label, read_upload  # noqa: E402

SERIES = "dicom/ct_series_20slice"
NAMES_FROM = "Dataset003_TotalSegmentatorCT/dataset.json"  # the same TotalSegmentator 'total' ids
DATASET_NAME = "Dataset900_CTSeries20Holdout"
CASE_ID = "ct_series_20slice"
LIVER = 5
MIN_LIVER_MEAN_HU = 40.0  # the shared README: 89 HU when aligned in world space, -75 HU when overlaid naively


def build(shared: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """Write the data set below ``out`` and return its folder.

    Raises:
        SystemExit: the shared series is missing, or the aligned label does not sit on the liver.
    """
    series_dir = shared / SERIES
    if not series_dir.is_dir():
        raise SystemExit(f"{series_dir} not found: pass --shared pointing at the shared data folder")
    names = json.loads((shared / NAMES_FROM).read_text())["labels"]
    with tempfile.TemporaryDirectory() as work:
        files = sorted(path for path in (series_dir / "dicom").iterdir() if path.is_file())
        (volume,) = read_upload(files, pathlib.Path(work), ImportLimits()).volumes
        labels = align_label(series_dir / "example_seg_dicom.nii.gz", volume, allowed_values=None)
    image = np.asarray(volume.array, dtype=np.int16)
    liver_hu = float(image[labels == LIVER].mean())
    if liver_hu < MIN_LIVER_MEAN_HU:
        raise SystemExit(f"label misaligned: mean HU inside the liver is {liver_hu:.0f}, expected ~89")

    dataset = out / DATASET_NAME
    for sub in ("imagesTr", "labelsTr"):
        (dataset / sub).mkdir(parents=True, exist_ok=True)
    sz, sy, sx = volume.spacing
    # ml.objects reads NIfTI voxel axes (i, j, k) = (x, y, z) and zooms as the spacing.
    affine = np.diag([sx, sy, sz, 1.0])
    nib.save(
        nib.Nifti1Image(image.transpose(2, 1, 0), affine),
        str(dataset / "imagesTr" / f"{CASE_ID}_0000.nii.gz"),
    )
    nib.save(
        nib.Nifti1Image(labels.astype(np.uint8).transpose(2, 1, 0), affine),
        str(dataset / "labelsTr" / f"{CASE_ID}.nii.gz"),
    )
    present = sorted(int(value) for value in np.unique(labels) if value)
    by_value = {int(value): name for name, value in names.items()}
    (dataset / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, **{by_value[value]: value for value in present}},
                "numTraining": 1,
                "file_ending": ".nii.gz",
                "source": f"../shared/data/{SERIES} (built by scripts/build_holdout_ct.py)",
                "label_origin": "TotalSegmentator --fast output (silver), not ground truth",
                "notes": f"liver mean {liver_hu:.0f} HU after world-space alignment",
            },
            indent=1,
        )
    )
    print(
        f"{dataset}: {image.shape[::-1]} voxels (x, y, z), spacing {volume.spacing[::-1]} mm, "
        f"{len(present)} labels, liver mean {liver_hu:.0f} HU"
    )
    return dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=pathlib.Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "var" / "holdout")
    args = parser.parse_args(argv)
    build(args.shared, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
