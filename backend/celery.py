"""The Celery app shared by the web process (which enqueues) and the workers (which run tasks)."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")

app = Celery("backend")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def ensure_embedded_broker_folders() -> None:
    """The filesystem broker needs its folders to exist before the first message is sent or read."""
    options = app.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "control_folder", "processed_folder"):
        if folder := options.get(key):
            Path(folder).mkdir(parents=True, exist_ok=True)


if str(app.conf.broker_url or "").startswith("filesystem"):
    ensure_embedded_broker_folders()
