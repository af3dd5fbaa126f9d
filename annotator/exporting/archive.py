"""ZIP archives of export folders, streamed to disk file by file (never built in memory)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from .types import ExportError

# Files that are already compressed are stored as-is: deflating them again costs CPU and saves nothing.
_ALREADY_COMPRESSED_SUFFIXES = (".gz", ".zip", ".npz", ".png", ".jpg", ".jpeg")


def _files_to_archive(src_dir: Path) -> list[Path]:
    """Regular files under ``src_dir`` in a stable (sorted) order.

    Raises ExportError for a symbolic link or for anything that resolves outside ``src_dir``, so an
    archive can never pick up files from elsewhere on the server.
    """
    root = src_dir.resolve()
    files: list[Path] = []
    for current, directory_names, file_names in os.walk(src_dir, followlinks=False):
        current_path = Path(current)
        for name in directory_names:
            if (current_path / name).is_symlink():
                raise ExportError(f"Refusing to archive the symbolic link {current_path / name}.")
        directory_names.sort()
        for name in sorted(file_names):
            path = current_path / name
            if path.is_symlink():
                raise ExportError(f"Refusing to archive the symbolic link {path}.")
            if not path.resolve().is_relative_to(root):
                raise ExportError(f"Refusing to archive {path}: it lies outside {src_dir}.")
            if path.is_file():
                files.append(path)
    return files


def zip_directory(src_dir: Path, zip_path: Path) -> Path:
    """Write ``src_dir`` into the ZIP file ``zip_path`` and return ``zip_path``.

    Entry names are ``<src_dir name>/<relative path>`` with forward slashes, so unpacking recreates the
    folder (e.g. ``Dataset001_Liver/imagesTr/case_0000.nii.gz``). Each file is copied into the archive in
    chunks by ``zipfile`` (ZIP64 enabled), so memory use does not grow with the archive. The archive is
    written to a temporary name next to ``zip_path`` and renamed when complete.

    Raises:
        ExportError: ``src_dir`` is not a folder, ``zip_path`` lies inside ``src_dir`` (the archive would
            swallow itself), or ``src_dir`` holds a symbolic link.
    """
    src_dir = Path(src_dir)
    zip_path = Path(zip_path)
    if not src_dir.is_dir():
        raise ExportError(f"{src_dir} is not a folder.")
    if zip_path.resolve().is_relative_to(src_dir.resolve()):
        raise ExportError(f"The archive {zip_path} must not be written inside the folder it archives.")
    files = _files_to_archive(src_dir)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    partial_path = zip_path.with_name(f".{zip_path.name}.partial")
    try:
        with zipfile.ZipFile(partial_path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            for path in files:
                entry_name = f"{src_dir.name}/{path.relative_to(src_dir).as_posix()}"
                compression = (
                    zipfile.ZIP_STORED
                    if path.name.lower().endswith(_ALREADY_COMPRESSED_SUFFIXES)
                    else zipfile.ZIP_DEFLATED
                )
                archive.write(path, arcname=entry_name, compress_type=compression)
        partial_path.replace(zip_path)
    except BaseException:
        partial_path.unlink(missing_ok=True)
        raise
    return zip_path
