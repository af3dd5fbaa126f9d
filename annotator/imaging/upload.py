"""``read_upload``: turn the files of one upload into canonical volumes plus a per-file error list.

Good files import even when others in the same upload are bad; only when nothing usable remains does
``read_upload`` raise. Extracted files that do not belong to a returned volume are removed from ``work_dir``
so a failed series leaves nothing behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from .archive import extract_zip_safely, is_zip_archive
from .dicom import (
    DicomSlice,
    build_series_volume,
    classify_dicom_header,
    describe_series,
    has_dicom_preamble,
    read_dicom_header,
    series_key,
)
from .nifti import looks_like_nifti, read_nifti
from .nrrd_reader import looks_like_nrrd, read_nrrd
from .types import FileError, ImportLimits, LoadedVolume, UploadResult, VolumeImportError

# Magic numbers of 2D picture formats: refused as single 2D images rather than "unknown file".
_PICTURE_MAGIC: tuple[bytes, ...] = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
# Error codes that say "this file was not an image at all": least useful as the reason of a failed upload.
_LOW_RELEVANCE_CODES = {"not_an_image"}
# Files that often travel with DICOM exports and are not worth an error line.
_SILENTLY_SKIPPED_NAMES = {"dicomdir", "readme", "readme.txt", "license", "license.txt"}


class _Progress:
    """Maps phase-local fractions onto one monotonic 0..1 progress callback."""

    def __init__(self, callback: Callable[[float], None] | None) -> None:
        self._callback = callback
        self._last = 0.0

    def report(self, fraction: float) -> None:
        fraction = min(1.0, max(self._last, fraction))
        self._last = fraction
        if self._callback is not None:
            self._callback(fraction)

    def phase(self, start: float, end: float) -> Callable[[float], None]:
        return lambda fraction: self.report(start + (end - start) * fraction)


def _is_picture(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return False
    return head.startswith(_PICTURE_MAGIC)


def _most_relevant(errors: Sequence[FileError]) -> FileError:
    for error in errors:
        if error.code not in _LOW_RELEVANCE_CODES:
            return error
    return errors[0]


def _remove_unreferenced(work_dir: Path, extracted_roots: Sequence[Path], keep: set[str]) -> None:
    """Delete extracted files that no returned volume refers to, then the folders left empty."""
    for root in extracted_roots:
        if not root.exists():
            continue
        for directory, _, files in os.walk(root, topdown=False):
            for file_name in files:
                file_path = Path(directory) / file_name
                if str(file_path) not in keep:
                    file_path.unlink(missing_ok=True)
            if not os.listdir(directory):
                Path(directory).rmdir()


def read_upload(
    paths: Sequence[Path],
    work_dir: Path,
    limits: ImportLimits,
    progress: Callable[[float], None] | None = None,
) -> UploadResult:
    """Read every image in an upload.

    Arguments:
        paths: the uploaded files: zip archives, DICOM files (any names), ``.nii``/``.nii.gz``,
            ``.nrrd``/``.nhdr`` (with its detached data file).
        work_dir: scratch folder owned by the caller; archives are extracted below it. DICOM volumes list
            their files in ``source_meta["source_files"]`` (these may lie in ``work_dir``, so copy what you
            need before deleting it). Extracted files of failed parts are removed.
        limits: size and archive limits.
        progress: called with a monotonic fraction 0..1.
    Returns:
        UploadResult: one LoadedVolume per NIfTI/NRRD file and per DICOM series (several series -> several
        volumes), and one FileError per file / series / archive that could not be imported.
    Raises:
        VolumeImportError: ``too_large`` when the upload exceeds ``max_upload_bytes``; ``nothing_to_import``
            for an empty upload; otherwise, when no volume could be read, the most relevant per-file error
            with every per-file error in its ``file_errors``.
    """
    tracker = _Progress(progress)
    paths = [Path(path) for path in paths]
    if not paths:
        raise VolumeImportError("The upload contains no files.", "nothing_to_import")
    total_bytes = sum(path.stat().st_size for path in paths)
    if total_bytes > limits.max_upload_bytes:
        raise VolumeImportError(
            f"The upload is {total_bytes / 1024**2:,.1f} MiB, over the limit of "
            f"{limits.max_upload_bytes / 1024**2:,.1f} MiB.",
            "too_large",
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    errors: list[FileError] = []
    volumes: list[LoadedVolume] = []
    candidates: list[tuple[Path, str]] = []
    extracted_roots: list[Path] = []

    for index, path in enumerate(paths):
        if is_zip_archive(path):
            destination = work_dir / f"archive_{index:03d}"
            try:
                candidates.extend(extract_zip_safely(path, destination, limits, path.name))
                extracted_roots.append(destination)
            except VolumeImportError as exc:
                errors.append(FileError(path.name, exc.message, exc.code))
        elif path.name.lower().endswith(".zip"):
            errors.append(
                FileError(path.name, f"{path.name} is not a readable zip archive.", "corrupt_archive")
            )
        else:
            candidates.append((path, path.name))
        tracker.report(0.1 * (index + 1) / len(paths))

    # Detached NRRD data files are read through their header, never on their own.
    detached_data = _detached_nrrd_data_files(candidates)
    dicom_slices: list[DicomSlice] = []
    scan_phase = tracker.phase(0.1, 0.3)
    for number, (path, display_name) in enumerate(candidates):
        scan_phase((number + 1) / max(len(candidates), 1))
        if path.resolve() in detached_data or path.name.lower() in _SILENTLY_SKIPPED_NAMES:
            continue
        try:
            if has_dicom_preamble(path):
                dataset = read_dicom_header(path, display_name)
                classify_dicom_header(dataset, display_name)
                dicom_slices.append(DicomSlice(path=path, display_name=display_name, dataset=dataset))
            elif looks_like_nifti(path):
                volumes.append(read_nifti(path, display_name, limits))
            elif looks_like_nrrd(path):
                volumes.append(read_nrrd(path, display_name, limits))
            elif is_zip_archive(path):
                raise VolumeImportError(
                    f"{display_name} is an archive inside an archive; nested archives are not unpacked.",
                    "not_an_image",
                )
            elif _is_picture(path):
                raise VolumeImportError(
                    f"{display_name} is a single 2D picture (PNG/JPEG/GIF/BMP/TIFF); a case needs a 3D "
                    "DICOM series, NIfTI or NRRD volume.",
                    "single_2d_image",
                )
            else:
                dataset = read_dicom_header(path, display_name)
                classify_dicom_header(dataset, display_name)
                dicom_slices.append(DicomSlice(path=path, display_name=display_name, dataset=dataset))
        except VolumeImportError as exc:
            errors.append(FileError(display_name, exc.message, exc.code))

    series: dict[tuple[str, ...], list[DicomSlice]] = {}
    for slice_ in dicom_slices:
        series.setdefault(series_key(slice_), []).append(slice_)
    decode_phase = tracker.phase(0.3, 1.0)
    total_slices = max(len(dicom_slices), 1)
    done_slices = 0
    for members in series.values():
        start = done_slices / total_slices
        span = len(members) / total_slices
        try:
            volumes.append(
                build_series_volume(
                    members, limits, progress=lambda f, s=start, w=span: decode_phase(s + w * f)
                )
            )
        except VolumeImportError as exc:
            errors.append(FileError(describe_series(members), exc.message, exc.code))
        done_slices += len(members)

    keep = {file_name for volume in volumes for file_name in volume.source_meta.get("source_files", [])}
    _remove_unreferenced(work_dir, extracted_roots, keep)
    tracker.report(1.0)
    if not volumes:
        if not errors:
            raise VolumeImportError("The upload contains no image files.", "nothing_to_import")
        first = _most_relevant(errors)
        others = len(errors) - 1
        suffix = f" ({others} other file{'s' if others != 1 else ''} also failed.)" if others else ""
        raise VolumeImportError(first.message + suffix, first.code, file_errors=errors)
    return UploadResult(volumes=volumes, errors=errors)


def _detached_nrrd_data_files(candidates: Sequence[tuple[Path, str]]) -> set[Path]:
    data_files: set[Path] = set()
    for path, _ in candidates:
        if not path.name.lower().endswith(".nhdr"):
            continue
        try:
            with path.open("rb") as handle:
                for raw_line in handle:
                    line = raw_line.decode("latin-1").strip()
                    if not line:
                        break
                    key, _, value = line.partition(":")
                    if key.strip().lower() in ("data file", "datafile"):
                        data_files.add((path.parent / value.strip().lstrip("=").strip()).resolve())
        except OSError:
            continue
    return data_files
