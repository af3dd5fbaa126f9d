"""Fixtures for the imaging tests: the shared real data (skipped when absent) and synthetic files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DICOM_DATA = SHARED_DATA / "dicom"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


def write_ct_slice(
    path: Path,
    pixels: np.ndarray,
    position: Sequence[float],
    *,
    series_uid: str,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    pixel_spacing: Sequence[float] = (0.8, 0.7),
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    description: str = "synthetic",
) -> None:
    """One single-frame CT file; ``pixels`` (rows, columns) int16 stored values."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.PatientID = "SYNTH"
    ds.PatientName = "Synthetic^Phantom"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def make_ct_series(tmp_path: Path) -> Callable[..., list[Path]]:
    """Write a synthetic CT series; slice k has stored value 1024 + 10 * k everywhere except a marker.

    Keyword arguments: ``folder``, ``positions_z`` (mm, default 5 slices 2.5 mm apart), ``shift_x_per_slice``
    (gantry tilt), ``shuffle_names`` (file names in reverse spatial order), ``rows``, ``columns``, plus any
    ``write_ct_slice`` keyword. The voxel (row 1, column 2) of every slice holds 3000 (a landmark).
    """

    def make(
        folder: str = "series",
        positions_z: Sequence[float] = (0.0, 2.5, 5.0, 7.5, 10.0),
        shift_x_per_slice: float = 0.0,
        shuffle_names: bool = True,
        rows: int = 6,
        columns: int = 8,
        **slice_options: object,
    ) -> list[Path]:
        directory = tmp_path / folder
        directory.mkdir(parents=True, exist_ok=True)
        series_uid = str(slice_options.pop("series_uid", generate_uid()))
        paths = []
        for k, z in enumerate(positions_z):
            pixels = np.full((rows, columns), 1024 + 10 * k, dtype=np.int16)
            pixels[1, 2] = 3000
            # Reverse-sorted names prove sorting is by position, not by file name.
            number = len(positions_z) - 1 - k if shuffle_names else k
            path = directory / f"IM{number:04d}"
            write_ct_slice(
                path,
                pixels,
                (-10.0 + k * shift_x_per_slice, -20.0, z),
                series_uid=series_uid,
                **slice_options,
            )  # type: ignore[arg-type]
            paths.append(path)
        return paths

    return make


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    image = nib.Nifti1Image(data, np.diag([1.5, 1.0, 2.0, 1.0]) if affine is None else affine)
    nib.save(image, str(path))
    return path


@pytest.fixture
def write_nifti() -> Callable[..., Path]:
    """``write_nifti(path, data (i, j, k), affine=diag(1.5, 1, 2))`` -> path."""
    return _write_nifti
