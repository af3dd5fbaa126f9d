"""Where PropLabel keeps files in media storage (voxels, label volumes, uploads, DICOM sources, exports).

Names are storage-relative (``volumes/<uuid>.raw.gz``); paths on disk are only handed out for code that
needs a real file (the imaging readers), via ``local_path``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage

logger = logging.getLogger(__name__)

VOLUMES_DIR = "volumes"
LABELS_DIR = "labels"
UPLOADS_DIR = "uploads"
SOURCES_DIR = "sources"
EXPORTS_DIR = "exports"


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_bytes(folder: str, data: bytes, suffix: str) -> str:
    """Store ``data`` under a fresh unique name in ``folder``; returns the storage name."""
    name = f"{folder}/{uuid.uuid4().hex}{suffix}"
    stored = default_storage.save(name, ContentFile(data))
    return stored


def save_file(name: str, content: File) -> str:
    return default_storage.save(name, content)


def read_bytes(name: str) -> bytes:
    with default_storage.open(name, "rb") as handle:
        return handle.read()


def local_path(name: str) -> Path:
    """The file system path of a stored file (media storage is a local/mounted folder)."""
    return Path(default_storage.path(name))


def new_folder(parent: str) -> str:
    """A fresh, empty storage folder name under ``parent`` (created on disk)."""
    name = f"{parent}/{uuid.uuid4().hex}"
    local_path(name).mkdir(parents=True, exist_ok=False)
    return name


def delete_files(names: Iterable[str]) -> None:
    """Remove stored files; a file that is already gone is not an error (cleanup must not fail twice)."""
    for name in names:
        if not name:
            continue
        try:
            default_storage.delete(name)
        except OSError:
            logger.warning("could not delete stored file %s", name, exc_info=True)


def delete_folder(name: str) -> None:
    if not name:
        return
    shutil.rmtree(local_path(name), ignore_errors=True)
