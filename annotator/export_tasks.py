"""Celery task of data set exports (``io`` queue). Thin: the ExportJob row holds all state."""

from __future__ import annotations

from celery import shared_task

from annotator.services import exports


# The name is the one routed to the io queue in settings.CELERY_TASK_ROUTES.
@shared_task(name="annotator.tasks.run_export", ignore_result=True)
def run_export(job_id: int) -> None:
    exports.run_export_job(job_id)
