"""Demo cases a fresh machine can reach: TotalSegmentator's reference scans, or a generated phantom.

The reference files come from the PyPI source distribution ``totalsegmentator==2.18.0`` (Apache-2.0),
fetched with pip (no build, no install), verified against ``SDIST_SHA256`` and read with tarfile; only the
few needed members are written to the cache, under names chosen here (never the archive's paths). Label names
come from ``class_map`` in that sdist's ``totalsegmentator/map_to_binary.py``, parsed with ``ast`` (the package
is never imported). When the download is not allowed or fails, or the checksum differs, a deterministic
synthetic CT phantom with a few organs is generated instead, and ``DemoCase.source`` says why.
The second call finds everything in ``cache_dir`` and needs no network.

Note: the TotalSegmentator CT and MR label maps use different class maps ('total' vs 'total_mr'), so the
same value can name different organs in the CT and MR cases; ``label_names`` is therefore per case.
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

SDIST_REQUIREMENT = "totalsegmentator==2.18.0"
SDIST_FILE_NAME = "totalsegmentator-2.18.0.tar.gz"
SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
SDIST_SOURCE = f"PyPI sdist {SDIST_REQUIREMENT} (sha256 {SDIST_SHA256[:12]}...), tests/reference_files"
_SDIST_ROOT = "totalsegmentator-2.18.0/"
_CLASS_MAP_MEMBER = _SDIST_ROOT + "totalsegmentator/map_to_binary.py"
# archive member -> cache file name (flat, chosen here)
_REFERENCE_MEMBERS: dict[str, str] = {
    _SDIST_ROOT + "tests/reference_files/example_ct_sm.nii.gz": "example_ct_sm.nii.gz",
    _SDIST_ROOT + "tests/reference_files/example_seg.nii.gz": "example_seg.nii.gz",
    _SDIST_ROOT + "tests/reference_files/example_mr_sm.nii.gz": "example_mr_sm.nii.gz",
    _SDIST_ROOT + "tests/reference_files/example_seg_mr.nii.gz": "example_seg_mr.nii.gz",
    _SDIST_ROOT
    + "tests/reference_files/aorta_report/test_result/models/ct_cropped.nii.gz": "aorta_ct_cropped.nii.gz",
    _SDIST_ROOT
    + "tests/reference_files/aorta_report/test_result/models/aorta.nii.gz": "aorta_seg_binary.nii.gz",
    _CLASS_MAP_MEMBER: "map_to_binary.py",
}
_MAX_MEMBER_BYTES = 64 * 1024**2
_DOWNLOAD_TIMEOUT_SECONDS = 900
# 'total' class map value of the aorta: the aorta crop's binary label (1) is remapped to it so both CT
# cases use the same ids.
_TOTAL_AORTA_VALUE = 52
_COMPLETE_MARKER = "reference_files.json"

PHANTOM_LABEL_NAMES: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    5: "liver",
    31: "vertebrae_L1",
    52: "aorta",
}


@dataclass(frozen=True)
class DemoCase:
    """One demo image (NIfTI) with its optional label map and the names of the label values present."""

    name: str
    image_path: Path
    label_path: Path | None
    label_names: dict[int, str]
    modality: str
    source: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024**2):
            digest.update(chunk)
    return digest.hexdigest()


def _download_sdist(cache_dir: Path) -> Path:
    """The verified sdist in ``cache_dir`` (downloaded with pip when absent). Raises RuntimeError."""
    sdist = cache_dir / SDIST_FILE_NAME
    if not (sdist.exists() and _sha256(sdist) == SDIST_SHA256):
        with tempfile.TemporaryDirectory(dir=cache_dir) as download_dir:
            command = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                "--no-build-isolation", "--disable-pip-version-check", "--quiet", SDIST_REQUIREMENT,
                "-d", download_dir,
            ]  # fmt: skip
            try:
                completed = subprocess.run(
                    command, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_SECONDS, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RuntimeError(f"pip download failed: {exc}") from None
            downloaded = Path(download_dir) / SDIST_FILE_NAME
            if completed.returncode != 0 or not downloaded.exists():
                detail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"pip download failed: {detail[0]}")
            downloaded.replace(sdist)
    actual = _sha256(sdist)
    if actual != SDIST_SHA256:
        sdist.unlink(missing_ok=True)
        raise RuntimeError(f"checksum mismatch for {SDIST_FILE_NAME}: got {actual}")
    return sdist


def _extract_reference_files(sdist: Path, target_dir: Path) -> None:
    """Write the needed members (regular files only, size-capped) to ``target_dir`` under fixed names."""
    target_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, mode="r:gz") as archive:
        for member_name, file_name in _REFERENCE_MEMBERS.items():
            try:
                member = archive.getmember(member_name)
            except KeyError:
                raise RuntimeError(f"{SDIST_FILE_NAME} lacks {member_name}") from None
            if not member.isfile() or member.size > _MAX_MEMBER_BYTES:
                raise RuntimeError(f"{member_name} in {SDIST_FILE_NAME} is not a regular file of sane size")
            source = archive.extractfile(member)
            if source is None:
                raise RuntimeError(f"cannot read {member_name}")
            partial = target_dir / (file_name + ".part")
            partial.write_bytes(source.read())
            partial.replace(target_dir / file_name)


def parse_class_maps(
    map_to_binary_source: str, tasks: tuple[str, ...] = ("total", "total_mr")
) -> dict[str, dict[int, str]]:
    """Read ``class_map[task]`` literals from map_to_binary.py source without importing it."""
    tree = ast.parse(map_to_binary_source)
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "class_map"
            and isinstance(node.value, ast.Dict)
        ):
            maps: dict[str, dict[int, str]] = {}
            for key_node, value_node in zip(node.value.keys, node.value.values, strict=True):
                if key_node is None:
                    continue
                key = ast.literal_eval(key_node)
                if key in tasks:
                    maps[key] = {
                        int(value): str(name) for value, name in ast.literal_eval(value_node).items()
                    }
            missing = set(tasks) - set(maps)
            if missing:
                raise ValueError(f"class_map lacks {sorted(missing)}")
            return maps
    raise ValueError("no top-level class_map dict literal found")


def _present_label_names(label_path: Path, class_map: dict[int, str]) -> dict[int, str]:
    values = np.unique(np.asanyarray(nib.load(str(label_path)).dataobj)).astype(int)
    return {int(value): class_map.get(int(value), f"label_{int(value)}") for value in values if value != 0}


def _remap_binary_label(source: Path, destination: Path, value: int) -> None:
    """Copy a 0/1 NIfTI label with 1 replaced by ``value``, on the identical grid/affine/header."""
    image = nib.load(str(source))
    data = np.asanyarray(image.dataobj)
    remapped = np.where(data > 0, value, 0).astype(np.uint8)
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    nib.save(nib.Nifti1Image(remapped, image.affine, header), str(destination))


def _reference_cases(reference_dir: Path) -> list[DemoCase]:
    maps = parse_class_maps((reference_dir / "map_to_binary.py").read_text(encoding="utf-8"))
    aorta_label = reference_dir / "aorta_seg.nii.gz"
    if not aorta_label.exists():
        _remap_binary_label(reference_dir / "aorta_seg_binary.nii.gz", aorta_label, _TOTAL_AORTA_VALUE)
    specs = [
        ("TotalSegmentator example CT", "example_ct_sm.nii.gz", "example_seg.nii.gz", maps["total"], "CT"),
        (
            "TotalSegmentator aorta CT crop",
            "aorta_ct_cropped.nii.gz",
            "aorta_seg.nii.gz",
            maps["total"],
            "CT",
        ),
        (
            "TotalSegmentator example MR",
            "example_mr_sm.nii.gz",
            "example_seg_mr.nii.gz",
            maps["total_mr"],
            "MR",
        ),
    ]
    cases = []
    for name, image_file, label_file, class_map, modality in specs:
        label_path = reference_dir / label_file
        cases.append(
            DemoCase(
                name=name,
                image_path=reference_dir / image_file,
                label_path=label_path,
                label_names=_present_label_names(label_path, class_map),
                modality=modality,
                source=SDIST_SOURCE,
            )
        )
    return cases


def _hash_noise(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Deterministic noise in [-1, 1) from an integer hash of the voxel index (not numpy's RNG, whose
    streams may change between versions and would change the phantom's checksum)."""
    index = np.arange(int(np.prod(shape)), dtype=np.uint64).reshape(shape)
    mixed = (index + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
    mixed ^= mixed >> np.uint64(31)
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    mixed ^= mixed >> np.uint64(29)
    return (mixed >> np.uint64(40)).astype(np.float64) / float(1 << 23) - 1.0


def generate_phantom(
    shape_zyx: tuple[int, int, int] = (48, 128, 128),
    spacing_zyx: tuple[float, float, float] = (3.0, 1.5, 1.5),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CT-like abdomen: body, liver, spleen, kidneys, aorta, a vertebra; deterministic bit for bit.

    Returns:
        ``(image int16 (Z, Y, X) in HU, label uint8 (Z, Y, X) with PHANTOM_LABEL_NAMES values,
        affine 4x4 canonical (z, y, x, 1) -> RAS)``.
    """
    depth, height, width = shape_zyx
    sz, sy, sx = spacing_zyx
    z, y, x = np.meshgrid(
        (np.arange(depth) - (depth - 1) / 2) * sz,
        (np.arange(height) - (height - 1) / 2) * sy,
        (np.arange(width) - (width - 1) / 2) * sx,
        indexing="ij",
    )
    # Canonical y runs anterior -> posterior and x patient right -> left (DICOM-like, see the affine).

    def ellipsoid(cz: float, cy: float, cx: float, rz: float, ry: float, rx: float) -> np.ndarray:
        return ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0

    body = ((y / 80.0) ** 2 + (x / 88.0) ** 2) <= 1.0
    label = np.zeros(shape_zyx, dtype=np.uint8)
    organs = [
        (5, ellipsoid(10, -5, -40, 45, 40, 38)),  # liver, patient right
        (1, ellipsoid(15, 20, 55, 28, 18, 15)),  # spleen, patient left
        (2, ellipsoid(-20, 35, -38, 25, 14, 11)),  # kidney right
        (3, ellipsoid(-15, 35, 38, 25, 14, 11)),  # kidney left
        (52, ((y - 10) / 9.0) ** 2 + ((x - 10) / 9.0) ** 2 <= 1.0),  # aorta, a tube through all slices
        (31, ellipsoid(0, 45, 0, 40, 14, 16)),  # vertebral body
    ]
    for value, mask in organs:
        label[mask & body] = value
    hounsfield = {0: 30.0, 5: 60.0, 1: 45.0, 2: 150.0, 3: 150.0, 52: 200.0, 31: 700.0}
    image = np.full(shape_zyx, -1000.0)
    for value, hu in hounsfield.items():
        image[body & (label == value)] = hu
    image += np.where(body, 12.0, 4.0) * _hash_noise(shape_zyx, seed=20260124)
    affine = np.array(
        [[0.0, 0.0, -sx, (width - 1) / 2 * sx],
         [0.0, -sy, 0.0, (height - 1) / 2 * sy],
         [sz, 0.0, 0.0, -(depth - 1) / 2 * sz],
         [0.0, 0.0, 0.0, 1.0]]
    )  # fmt: skip
    return np.round(image).astype(np.int16), label, affine


def _write_phantom(cache_dir: Path, reason: str) -> list[DemoCase]:
    phantom_dir = cache_dir / "phantom"
    phantom_dir.mkdir(parents=True, exist_ok=True)
    image_path, label_path = phantom_dir / "phantom_ct.nii.gz", phantom_dir / "phantom_ct_seg.nii.gz"
    if not (image_path.exists() and label_path.exists()):
        image, label, affine_zyx = generate_phantom()
        affine_ijk = affine_zyx[:, [2, 1, 0, 3]]
        for data, path in ((image, image_path), (label, label_path)):
            nifti = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine_ijk)
            nifti.set_sform(affine_ijk, code=1)
            nifti.set_qform(affine_ijk, code=1)
            nifti.header.set_xyzt_units("mm")
            partial = path.with_name(path.name + ".part.nii.gz")
            nib.save(nifti, str(partial))
            partial.replace(path)
    return [
        DemoCase(
            name="Synthetic abdomen phantom",
            image_path=image_path,
            label_path=label_path,
            label_names=dict(PHANTOM_LABEL_NAMES),
            modality="CT",
            source=f"generated phantom ({reason})",
        )
    ]


def prepare_demo_cases(cache_dir: Path, allow_download: bool = True) -> list[DemoCase]:
    """Demo cases from the TotalSegmentator sdist (cached), or a generated phantom as the fallback.

    Arguments:
        cache_dir: folder kept between runs; the sdist, the extracted reference files and the phantom live here.
        allow_download: False never touches the network (the cache is still used when complete).
    Returns:
        3 TotalSegmentator cases (example CT, aorta CT crop, example MR), or 1 phantom case.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    reference_dir = cache_dir / "totalsegmentator_2.18.0"
    marker = reference_dir / _COMPLETE_MARKER
    if not marker.exists():
        if not allow_download:
            return _write_phantom(cache_dir, "download not allowed and no cached TotalSegmentator files")
        try:
            sdist = _download_sdist(cache_dir)
            _extract_reference_files(sdist, reference_dir)
        except (RuntimeError, OSError, tarfile.TarError) as exc:
            return _write_phantom(cache_dir, f"TotalSegmentator sdist unavailable: {exc}")
        marker.write_text(json.dumps({"sdist": SDIST_FILE_NAME, "sha256": SDIST_SHA256}), encoding="utf-8")
    try:
        return _reference_cases(reference_dir)
    except (OSError, ValueError, SyntaxError) as exc:
        return _write_phantom(cache_dir, f"cached TotalSegmentator files unreadable: {exc}")
