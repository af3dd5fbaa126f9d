"""Upload helpers for API tests: post files the way the browser does, then let the io task run."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any


def as_upload(name: str, data: bytes) -> io.BytesIO:
    buffer = io.BytesIO(data)
    buffer.name = name
    return buffer


def path_upload(path: Path, name: str | None = None) -> io.BytesIO:
    return as_upload(name or path.name, path.read_bytes())


def post_import(
    client: Any,
    project: Any,
    files: list[io.BytesIO],
    capture_on_commit: Any,
    *,
    label: io.BytesIO | None = None,
    **fields: Any,
) -> Any:
    """POST an import; with the ``celery_eager`` fixture active the task runs when the request commits."""
    data: dict[str, Any] = {"files": files, **fields}
    if label is not None:
        data["label_file"] = label
    with capture_on_commit(execute=True):
        return client.post(f"/api/projects/{project.pk}/imports/", data=data, format="multipart")


def finished_job(client: Any, response: Any) -> dict[str, Any]:
    assert response.status_code == 202, response.content
    job = client.get(f"/api/imports/{response.json()['id']}/").json()
    assert job["status"] not in ("queued", "running"), job
    return job
