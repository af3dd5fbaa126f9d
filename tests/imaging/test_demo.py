"""Demo cases: a deterministic phantom offline, the TotalSegmentator sdist when the network allows."""

from __future__ import annotations

import hashlib
import socket

import nibabel as nib
import numpy as np
import pytest

from annotator.imaging import ImportLimits, align_label, read_upload
from annotator.imaging.demo import PHANTOM_LABEL_NAMES, generate_phantom, parse_class_maps, prepare_demo_cases

# Recorded once; a change means the phantom (and every screenshot/test built on it) changed.
PHANTOM_IMAGE_SHA256 = "66393df1cdfcc8ee18b8bd631bb8f83dbbfdb1b22c17889732bf33b0bb286864"
PHANTOM_LABEL_SHA256 = "3743d43b567e064975ee068a16ab5635c4d42fb8a2397adbd1ccc23535b265f5"


def test_offline_demo_is_a_deterministic_phantom(tmp_path):
    (case,) = prepare_demo_cases(tmp_path / "cache", allow_download=False)
    assert case.source.startswith("generated phantom")
    assert "download not allowed" in case.source
    assert case.modality == "CT" and case.label_names == PHANTOM_LABEL_NAMES
    image = np.asanyarray(nib.load(str(case.image_path)).dataobj).transpose(2, 1, 0)
    label = np.asanyarray(nib.load(str(case.label_path)).dataobj).transpose(2, 1, 0)
    assert hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() == PHANTOM_IMAGE_SHA256
    assert hashlib.sha256(np.ascontiguousarray(label).tobytes()).hexdigest() == PHANTOM_LABEL_SHA256
    (again,) = prepare_demo_cases(tmp_path / "other_cache", allow_download=False)
    assert again.image_path.read_bytes() == case.image_path.read_bytes()


def test_phantom_imports_and_its_organs_have_their_intensities(tmp_path):
    (case,) = prepare_demo_cases(tmp_path / "cache", allow_download=False)
    (volume,) = read_upload([case.image_path], tmp_path / "work", ImportLimits()).volumes
    assert volume.modality == "CT" and volume.spacing == pytest.approx((3.0, 1.5, 1.5))
    label = align_label(case.label_path, volume, allowed_values=case.label_names)
    assert set(np.unique(label)) == {0, *PHANTOM_LABEL_NAMES}
    assert volume.array[label == 31].mean() == pytest.approx(700, abs=5)  # bone
    assert volume.array[label == 5].mean() == pytest.approx(60, abs=5)  # liver
    assert volume.array[0, 0, 0] < -980  # air in the corner


def test_phantom_liver_is_on_the_patient_right():
    _, label, affine = generate_phantom()
    centre_zyx = np.argwhere(label == 5).mean(axis=0)
    world_ras = affine @ np.array([*centre_zyx, 1.0])
    assert world_ras[0] > 0  # RAS x > 0 = patient right


def test_class_map_is_parsed_without_importing_the_package():
    source = 'class_map = {\n  "total": {1: "spleen", 5: "liver"},\n  "total_mr": {1: "spleen"},\n  "other": {2: "x"}}\n'
    assert parse_class_maps(source) == {"total": {1: "spleen", 5: "liver"}, "total_mr": {1: "spleen"}}
    with pytest.raises(ValueError):
        parse_class_maps("class_map = {}\n")


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_download_gives_the_verified_totalsegmentator_cases_and_the_cache_needs_no_network(tmp_path):
    if not _pypi_reachable():
        pytest.skip("pypi.org is not reachable")
    cases = prepare_demo_cases(tmp_path / "cache", allow_download=True)
    assert [case.name for case in cases] == [
        "TotalSegmentator example CT",
        "TotalSegmentator aorta CT crop",
        "TotalSegmentator example MR",
    ]
    assert all(case.source.startswith("PyPI sdist totalsegmentator==2.18.0") for case in cases)
    ct, aorta, mr = cases
    assert ct.label_names[5] == "liver" and len(ct.label_names) == 41
    assert aorta.label_names == {52: "aorta"}
    assert mr.modality == "MR" and len(mr.label_names) == 23
    for case in cases:
        (volume,) = read_upload([case.image_path], tmp_path / "work" / case.name, ImportLimits()).volumes
        assert case.label_path is not None
        align_label(case.label_path, volume, allowed_values=case.label_names)
    # Second run: offline, served from the cache.
    assert prepare_demo_cases(tmp_path / "cache", allow_download=False) == cases
