"""Celery tasks: thin adapters that receive ids and call services. Job rows hold all state."""

from __future__ import annotations

from celery import shared_task

from annotator import live_tasks  # noqa: F401  (registers the gpu-queue propagation task with Celery)
from annotator.export_tasks import run_export  # noqa: F401  (registers the export task with workers)
from annotator.services import imports


@shared_task(name="annotator.tasks.run_import", ignore_result=True)
def run_import(job_id: int) -> None:
    imports.run_import_job(job_id)
