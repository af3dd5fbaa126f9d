"""Safe zip extraction: every check runs on the central directory BEFORE a single byte is written.

Refused (whole archive, nothing extracted): entries with absolute paths, drive letters or ``..`` components
(``zip_path_traversal``), symbolic links (``zip_symlink``), more entries than ``max_files``
(``zip_too_many_files``), a total expanded size over ``max_uncompressed_bytes`` (``too_large``), an absurd
expansion ratio for the archive or a large entry (``zip_bomb``), encrypted or unreadable archives
(``corrupt_archive``). While extracting, an entry that inflates past its declared size is a bomb too; the
partial extraction is removed before the error is raised.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from .types import ImportLimits, VolumeImportError

# Per-entry ratio is only meaningful for entries large enough to hurt; small zero-filled files compress
# absurdly well and are harmless.
_ENTRY_RATIO_MIN_BYTES = 16 * 1024**2
_COPY_CHUNK_BYTES = 1024**2
# Noise that archivers and operating systems add; skipped silently.
_IGNORED_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}


def is_zip_archive(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError:
        return False
    return magic in (b"PK\x03\x04", b"PK\x05\x06") and zipfile.is_zipfile(path)


def _safe_member_path(member: zipfile.ZipInfo, archive_name: str) -> PurePosixPath:
    raw_name = member.filename.replace("\\", "/")
    member_path = PurePosixPath(raw_name)
    first = member_path.parts[0] if member_path.parts else ""
    if (
        raw_name.startswith("/")
        or ".." in member_path.parts
        or (len(first) >= 2 and first[1] == ":")
        or "\0" in raw_name
    ):
        raise VolumeImportError(
            f"{archive_name} contains the entry {member.filename!r}, whose path points outside the archive "
            "folder; the archive was rejected and nothing was extracted.",
            "zip_path_traversal",
        )
    return member_path


def _is_symlink(member: zipfile.ZipInfo) -> bool:
    unix_mode = member.external_attr >> 16
    return stat.S_ISLNK(unix_mode)


def _is_ignored(member_path: PurePosixPath) -> bool:
    return any(part in _IGNORED_PARTS or part.startswith("._") for part in member_path.parts)


def extract_zip_safely(
    archive_path: Path, destination: Path, limits: ImportLimits, archive_name: str
) -> list[tuple[Path, str]]:
    """Extract ``archive_path`` into ``destination`` (created; must not exist yet) after checking it.

    Returns:
        ``[(extracted file path, display name "archive.zip/inner/path"), ...]`` for every regular file.
    Raises:
        VolumeImportError with one of the codes in the module docstring; ``destination`` is then absent.
    """
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise VolumeImportError(
            f"{archive_name} is not a readable zip archive ({exc}).", "corrupt_archive"
        ) from None
    with archive:
        members = archive.infolist()
        if len(members) > limits.max_files:
            raise VolumeImportError(
                f"{archive_name} holds {len(members):,} entries, more than the limit of {limits.max_files:,}.",
                "zip_too_many_files",
            )
        planned: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        total_uncompressed = 0
        for member in members:
            member_path = _safe_member_path(member, archive_name)
            if _is_symlink(member):
                raise VolumeImportError(
                    f"{archive_name} contains a symbolic link ({member.filename!r}); archives with links are "
                    "rejected for safety and nothing was extracted.",
                    "zip_symlink",
                )
            if member.flag_bits & 0x1:
                raise VolumeImportError(
                    f"{archive_name} is password-protected ({member.filename!r}); upload an unencrypted archive.",
                    "corrupt_archive",
                )
            if member.is_dir() or _is_ignored(member_path):
                continue
            total_uncompressed += member.file_size
            if (
                member.file_size >= _ENTRY_RATIO_MIN_BYTES
                and member.file_size > limits.max_compression_ratio * max(member.compress_size, 1)
            ):
                raise VolumeImportError(
                    f"{archive_name}: the entry {member.filename!r} expands {member.file_size / max(member.compress_size, 1):,.0f}"
                    f" times (limit {limits.max_compression_ratio:g}); this looks like a zip bomb and was rejected.",
                    "zip_bomb",
                )
            planned.append((member, member_path))
        if total_uncompressed > limits.max_uncompressed_bytes:
            raise VolumeImportError(
                f"{archive_name} expands to {total_uncompressed / 1024**3:.1f} GiB, more than the limit of "
                f"{limits.max_uncompressed_bytes / 1024**3:.1f} GiB.",
                "too_large",
            )
        archive_bytes = max(archive_path.stat().st_size, 1)
        if (
            total_uncompressed >= _ENTRY_RATIO_MIN_BYTES
            and total_uncompressed > limits.max_compression_ratio * archive_bytes
        ):
            raise VolumeImportError(
                f"{archive_name} expands {total_uncompressed / archive_bytes:,.0f} times its size (limit "
                f"{limits.max_compression_ratio:g}); this looks like a zip bomb and was rejected.",
                "zip_bomb",
            )

        destination.mkdir(parents=True, exist_ok=False)
        root = destination.resolve()
        extracted: list[tuple[Path, str]] = []
        try:
            for member, member_path in planned:
                target = root.joinpath(*member_path.parts)
                # Belt and braces after the name checks: the resolved target must stay under the root.
                if root not in target.resolve().parents:
                    raise VolumeImportError(
                        f"{archive_name}: the entry {member.filename!r} would be written outside the archive folder.",
                        "zip_path_traversal",
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with archive.open(member) as source, target.open("wb") as sink:
                    while chunk := source.read(_COPY_CHUNK_BYTES):
                        written += len(chunk)
                        if written > member.file_size:
                            raise VolumeImportError(
                                f"{archive_name}: the entry {member.filename!r} inflates beyond its declared size; "
                                "the archive was rejected.",
                                "zip_bomb",
                            )
                        sink.write(chunk)
                extracted.append((target, f"{archive_name}/{member_path.as_posix()}"))
        except VolumeImportError:
            shutil.rmtree(destination, ignore_errors=True)
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            shutil.rmtree(destination, ignore_errors=True)
            raise VolumeImportError(
                f"{archive_name} could not be extracted ({exc}).", "corrupt_archive"
            ) from None
    return extracted
