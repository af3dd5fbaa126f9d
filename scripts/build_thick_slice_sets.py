"""Build thick-slice variants of the shared sets' validation cases from ``../shared/data``.

    python scripts/build_thick_slice_sets.py [--shared ../shared/data] [--out var/holdout]

Clinical CT and MR are often stored with 3-5 mm slices; the shared human-labelled sets have 0.625-1 mm
slices, and the shipped model was trained on those. Keeping every k-th slice of a validation case
(``ml/splits.json``; never a training case) gives the same anatomy, labels and scanner with the slice gap a
thick-slice protocol would have, so ``python -m ml.evaluate`` shows how both engines hold up as the slices
thin out:

* ``Dataset911_HippocampusEvery3rdSlice``: hippocampus, 1 -> 3 mm;
* ``Dataset912_LeftAtriumEvery4thSlice``: left atrium, 0.625 -> 2.5 mm;
* ``Dataset913_LeftAtriumEvery8thSlice``: left atrium, 0.625 -> 5 mm;
* ``Dataset914_TotalSegmentatorCTEvery3rdSlice``: TotalSegmentator CT (model-made labels), 1.5 -> 4.5 mm.

The slice axis is the engine's (NIfTI axis 2, see ``ml.objects.load_case``). Slice 0 is kept and the
affine's slice column is scaled by k, so every kept voxel stays where it was in world space. The output is
derived from ../shared/data and lands in ``var/`` (ignored by git) unless told otherwise; it must never be
committed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import nibabel as nib
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ml.evaluate import SPLITS_PATH, read_split  # noqa: E402
from ml.objects import list_cases  # noqa: E402

VARIANTS: tuple[tuple[str, int, str], ...] = (
    # (shared data set, keep every k-th slice, name of the variant)
    ("Dataset001_Hippocampus", 3, "Dataset911_HippocampusEvery3rdSlice"),
    ("Dataset002_LeftAtrium", 4, "Dataset912_LeftAtriumEvery4thSlice"),
    ("Dataset002_LeftAtrium", 8, "Dataset913_LeftAtriumEvery8thSlice"),
    ("Dataset003_TotalSegmentatorCT", 3, "Dataset914_TotalSegmentatorCTEvery3rdSlice"),
)


def keep_every_kth_slice(
    source: pathlib.Path,
    every: int,
    out: pathlib.Path,
    name: str,
    splits_path: pathlib.Path = SPLITS_PATH,
) -> pathlib.Path:
    """Write ``out/name``: the validation cases of the nnU-Net raw set ``source``, every ``every``-th slice.

    Raises:
        SystemExit: ``every`` below 2, ``source`` missing, or no validation list for it in ``splits_path``
            (without one the variant could hold training cases).
    """
    if every < 2:
        raise SystemExit(f"keep every k-th slice needs k >= 2, got {every}")
    if not source.is_dir():
        raise SystemExit(f"{source} not found: pass --shared pointing at ../shared/data")
    wanted = read_split(source.name, "val", splits_path)
    if wanted is None:
        raise SystemExit(
            f"{splits_path.name} has no validation list for {source.name}: refusing to guess one"
        )
    wanted_ids = set(wanted)
    cases = [case for case in list_cases(source) if case.case_id in wanted_ids]
    if not cases:
        raise SystemExit(f"none of the validation cases of {source.name} is in {source}")
    target = out / name
    (target / "imagesTr").mkdir(parents=True, exist_ok=True)
    (target / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case in cases:
        for path, folder in ((case.image_path, "imagesTr"), (case.label_path, "labelsTr")):
            _write_thinned(path, every, target / folder / path.name)
    description = json.loads((source / "dataset.json").read_text())
    description.update(
        name=name,
        numTraining=len(cases),
        notes=f"every {every}th slice (NIfTI axis 2) of the {len(cases)} validation cases of {source.name}, "
        f"written by scripts/build_thick_slice_sets.py; slice spacing x {every}",
    )
    (target / "dataset.json").write_text(json.dumps(description, indent=2))
    return target


def _write_thinned(path: pathlib.Path, every: int, destination: pathlib.Path) -> None:
    original = nib.load(str(path))
    # Sliced from the proxy so that only the kept slices are read; dtype and scaling as stored.
    thinned = np.asanyarray(original.dataobj[:, :, ::every])
    affine = original.affine.copy()
    affine[:, 2] *= every
    header = original.header.copy()
    zooms = header.get_zooms()
    header.set_zooms((*zooms[:2], float(zooms[2]) * every, *zooms[3:]))
    nib.save(nib.Nifti1Image(thinned, affine, header), str(destination))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=pathlib.Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "var" / "holdout")
    args = parser.parse_args(argv)
    for source_name, every, name in VARIANTS:
        target = keep_every_kth_slice(args.shared / source_name, every, args.out, name)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
