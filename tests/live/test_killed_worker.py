"""A gpu worker SIGKILLed mid-job, with real Celery worker processes (embedded mode: filesystem broker in a
temp folder, the test's SQLite database file, the SQLite channel layer, a shared media folder)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asgiref.sync import sync_to_async

from annotator.bench_live import (
    FAST_BROKER_POLL,
    WorkerProcess,
    embedded_env,
    start_worker,
    use_broker_folder,
)
from annotator.maskcodec import encode_rle
from annotator.models import Case, JobStatus, PropagationJob, SegmentationRevision
from annotator.services import storage
from tests.live.helpers import BOX

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio, pytest.mark.slow]

STALE_SECONDS = 3


@pytest.fixture
def liver(team: Any) -> int:
    return team.project.label_classes.get(name="liver").pk


@pytest.fixture
def workers(live_layer: Path, settings: Any, tmp_path: Path) -> Iterator[Callable[[str], WorkerProcess]]:
    """``workers(name)`` starts a real gpu worker process sharing this test's database, media and layer."""
    from django.db import connections

    var_dir = live_layer.parent
    settings.PROPLABEL_ENGINE = "classical"
    settings.PROPLABEL_JOB_STALE_SECONDS = STALE_SECONDS
    env = embedded_env(
        var_dir,
        database=_database_url(connections["default"]),
        media=Path(settings.MEDIA_ROOT),
        PROPLABEL_ENGINE="classical",
        PROPLABEL_JOB_STALE_SECONDS=str(STALE_SECONDS),
        PROPLABEL_JOB_HEARTBEAT_SECONDS="0.5",
    )
    use_broker_folder(var_dir)
    started: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        # Slow slices (0.3 s) so that the job is still running when the worker is killed.
        worker = start_worker(env, name, tmp_path, slice_delay=0.3, broker_poll=FAST_BROKER_POLL)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


def _database_url(connection: Any) -> str:
    """The test database as the worker processes must open it (SQLite file or PostgreSQL)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgresql://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


async def post(client: Any, url: str, data: dict[str, Any] | None = None) -> Any:
    return await sync_to_async(client.post)(url, data or {}, format="json")


async def events_until(ws: Any, last_types: set[str], timeout: float = 90) -> list[dict[str, Any]]:
    received = []
    deadline = time.monotonic() + timeout
    while True:
        event = await ws.receive_json_from(timeout=max(0.1, deadline - time.monotonic()))
        received.append(event)
        if event["type"] in last_types:
            return received


@sync_to_async
def job_row(job_id: int) -> PropagationJob:
    return PropagationJob.objects.get(pk=job_id)


@sync_to_async
def revision_file(revision_id: int) -> tuple[str, bytes]:
    revision = SegmentationRevision.objects.get(pk=revision_id)
    return revision.content_hash, storage.read_bytes(revision.file.name)


async def save_first_revision(client: Any, case: Any, liver: int) -> int:
    mask = np.zeros((40, 40), dtype=bool)
    mask[2:6, 2:6] = True
    response = await post(
        client,
        f"/api/cases/{case.pk}/revisions/",
        {"label": liver, "base_revision": None, "edited_slices": [{"z": 3, "rle": encode_rle(mask)}]},
    )
    assert response.status_code == 201, response.content
    return response.json()["id"]


def owner_of(job: PropagationJob, candidates: list[WorkerProcess]) -> WorkerProcess:
    return next(worker for worker in candidates if job.worker.startswith(f"{worker.name}@"))


async def test_a_worker_killed_mid_job_is_replaced_by_another_and_saved_revisions_stay_intact(
    workers, object_case, team, liver, ws_connect, api_client
):
    # given: a saved revision and two gpu workers
    client = api_client(team.annotator)
    saved = await save_first_revision(client, object_case, liver)
    before = await revision_file(saved)
    pool = [await sync_to_async(workers)("w1"), await sync_to_async(workers)("w2")]
    ws, connected, _ = await ws_connect(team.annotator, object_case.pk)
    assert connected

    # when: the worker running the propagation is SIGKILLed after its first slice
    response = await post(
        client,
        f"/api/cases/{object_case.pk}/propagations/",
        {"label": liver, "prompt": BOX, "base_revision": saved},
    )
    assert response.status_code == 202
    job_id = response.json()["id"]
    await events_until(ws, {"slice"})
    victim = owner_of(await job_row(job_id), pool)
    victim.kill()

    # then: the browser hears that the job is retried, the other worker finishes it
    events = await events_until(ws, {"job.done", "job.failed"})
    types = [event["type"] for event in events]
    assert "job.retrying" in types, types
    retry = events[types.index("job.retrying")]
    assert "stopped responding" in retry["reason"] and retry["job"]["status"] == "queued"
    assert types[-1] == "job.done", events[-1]
    job = await job_row(job_id)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2
    assert owner_of(job, pool) is not victim
    # and the revision saved before is untouched; the new one builds on it
    assert await revision_file(saved) == before
    new_revision = await sync_to_async(SegmentationRevision.objects.get)(pk=events[-1]["revision"])
    assert new_revision.parent_id == saved
    assert (
        await sync_to_async(lambda: Case.objects.get(pk=object_case.pk).current_revision_id)()
        == new_revision.pk
    )
    await ws.disconnect()


async def test_a_job_whose_worker_is_lost_twice_fails_with_the_reason(
    workers, object_case, team, liver, ws_connect, api_client
):
    client = api_client(team.annotator)
    saved = await save_first_revision(client, object_case, liver)
    before = await revision_file(saved)
    ws, connected, _ = await ws_connect(team.annotator, object_case.pk)
    assert connected
    first = await sync_to_async(workers)("w1")
    response = await post(
        client,
        f"/api/cases/{object_case.pk}/propagations/",
        {"label": liver, "prompt": BOX, "base_revision": saved},
    )
    job_id = response.json()["id"]
    await events_until(ws, {"slice"})
    first.kill()

    # No worker is left to sweep: the job status request notices the silence and queues the job again.
    await sync_to_async(time.sleep)(STALE_SECONDS + 0.5)
    assert (await sync_to_async(client.get)(f"/api/jobs/{job_id}/")).json()["status"] == "queued"
    await events_until(ws, {"job.retrying"})
    second = await sync_to_async(workers)("w2")
    await events_until(ws, {"slice"})
    assert (await job_row(job_id)).attempts == 2
    second.kill()
    await sync_to_async(time.sleep)(STALE_SECONDS + 0.5)
    status = (await sync_to_async(client.get)(f"/api/jobs/{job_id}/")).json()
    assert (
        status["status"] == "failed"
        and "stopped responding" in status["error"]
        and "giving up" in status["error"]
    )
    failed = (await events_until(ws, {"job.failed"}))[-1]
    assert failed["job"]["id"] == job_id and "giving up" in failed["error"]
    assert await revision_file(saved) == before
    assert await sync_to_async(lambda: Case.objects.get(pk=object_case.pk).current_revision_id)() == saved
    await ws.disconnect()
