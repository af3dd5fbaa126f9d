"""Health, readiness and metrics views and the JSON log format, in-process (embedded mode: SQLite, no Redis).
The distributed flow test checks the same endpoints against PostgreSQL, Redis and live workers."""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from annotator import observability
from backend.logging_config import JsonFormatter, build_logging


@pytest.fixture(autouse=True)
def _fresh_worker_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observability, "_worker_cache", observability._WorkerCache())


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly ``labels`` in Prometheus text format."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if (
            match
            and match.group(1) == name
            and dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")) == labels
        ):
            return float(match.group(3))
    raise AssertionError(f"{name} {labels} not in metrics:\n{text}")


def test_healthz_answers_without_touching_the_database(client: Any) -> None:
    # No django_db mark: any query here raises, so passing proves liveness needs no database.
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


@pytest.mark.django_db
def test_readyz_is_503_and_says_why_without_a_gpu_worker(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(observability, "_fetch_worker_queues", lambda: {"io@host": ["io"]})
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["gpu_workers"] == {
        "ok": False,
        "error": "no live Celery worker consumes the gpu queue",
    }


@pytest.mark.django_db
def test_readyz_lists_the_gpu_workers_and_skip_leaves_them_out(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        observability,
        "_fetch_worker_queues",
        lambda: {"gpu@a": ["gpu"], "io@b": ["io"], "gpu@c": ["gpu", "io"]},
    )
    body = client.get("/readyz").json()
    assert body["status"] == "ok"
    assert body["checks"]["gpu_workers"] == {"ok": True, "workers": ["gpu@a", "gpu@c"]}
    assert "gpu_workers" not in client.get("/readyz?skip=workers").json()["checks"]


@pytest.mark.django_db
def test_readyz_reports_a_broken_broker_and_a_broken_database(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(observability, "_fetch_worker_queues", lambda: "ConnectionError: refused")
    monkeypatch.setattr(observability, "check_database", lambda: "OperationalError: no such database")
    response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == {"ok": False, "error": "OperationalError: no such database"}
    assert checks["gpu_workers"] == {"ok": False, "error": "ConnectionError: refused"}


def test_worker_answers_are_cached_briefly() -> None:
    cache, calls = observability._WorkerCache(), []

    def fetch() -> dict[str, list[str]]:
        calls.append(1)
        return {}

    cache.get(60, fetch)
    cache.get(60, fetch)
    assert len(calls) == 1
    cache.get(0, fetch)
    assert len(calls) == 2


@pytest.mark.django_db
def test_metrics_histograms_count_jobs_from_their_rows(
    client: Any, team: Any, make_case: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from annotator.models import JobStatus, PropagationJob

    case = make_case(team.project, assignee=team.annotator)
    now = timezone.now()
    # (run seconds, first-slice latency seconds, slices) for three succeeded jobs, plus a queued one.
    for run, latency, slices in ((0.8, 0.2, 11), (3.0, 0.3, 41), (50.0, 5.0, 2)):
        job = PropagationJob.objects.create(case=case, user=team.annotator, label_value=1, status=JobStatus.SUCCEEDED,
                                            slices_done=slices)  # fmt: skip
        created = now - timedelta(seconds=100)
        PropagationJob.objects.filter(pk=job.pk).update(
            created_at=created,
            started_at=created + timedelta(seconds=0.1),
            first_slice_at=created + timedelta(seconds=latency),
            finished_at=created + timedelta(seconds=0.1 + run),
        )
    PropagationJob.objects.create(case=case, user=team.annotator, label_value=1)
    text = client.get("/metrics").content.decode()

    succeeded = {"kind": "propagate", "status": "succeeded"}
    assert metric(text, "proplabel_job_duration_seconds_bucket", le="1.0", **succeeded) == 1
    assert metric(text, "proplabel_job_duration_seconds_bucket", le="4.0", **succeeded) == 2
    assert metric(text, "proplabel_job_duration_seconds_bucket", le="30.0", **succeeded) == 2
    assert metric(text, "proplabel_job_duration_seconds_bucket", le="+Inf", **succeeded) == 3
    assert metric(text, "proplabel_job_duration_seconds_sum", **succeeded) == pytest.approx(53.8)
    assert metric(text, "proplabel_first_slice_latency_seconds_bucket", le="0.25", kind="propagate") == 1
    assert metric(text, "proplabel_first_slice_latency_seconds_bucket", le="0.5", kind="propagate") == 2
    assert metric(text, "proplabel_first_slice_latency_seconds_count", kind="propagate") == 3
    # Mean gaps: (0.8 - 0.1) / 10 = 0.07 s, (3.0 - 0.2) / 40 = 0.07 s, (50.1 - 5.0) / 1 = 45.1 s.
    assert metric(text, "proplabel_slice_interval_seconds_bucket", le="0.1") == 2
    assert metric(text, "proplabel_slice_interval_seconds_count") == 3
    assert metric(text, "proplabel_jobs", kind="propagate", status="queued") == 1
    assert metric(text, "proplabel_jobs_waiting_for_dispatch") == 1
    assert metric(text, "proplabel_queue_depth", queue="gpu") == 0
    assert metric(text, "proplabel_active_websockets") == 0
    assert metric(text, "proplabel_metrics_source_up", source="database") == 1


@pytest.mark.django_db
def test_metrics_want_the_bearer_token_when_one_is_set(client: Any, settings: Any) -> None:
    settings.PROPLABEL_METRICS_TOKEN = "s3cret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


@pytest.mark.asyncio
async def test_the_websocket_gauge_counts_open_connections() -> None:
    seen: list[float] = []

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(observability.ACTIVE_WEBSOCKETS._value.get())
        if scope["path"] == "/boom":
            raise RuntimeError("consumer crashed")

    app = observability.track_websockets(inner)
    before = observability.ACTIVE_WEBSOCKETS._value.get()
    await app({"type": "websocket", "path": "/ws"}, None, None)
    with pytest.raises(RuntimeError):
        await app({"type": "websocket", "path": "/boom"}, None, None)
    await app({"type": "http", "path": "/"}, None, None)
    assert seen == [before + 1, before + 1, before]
    assert observability.ACTIVE_WEBSOCKETS._value.get() == before


def test_json_logs_are_one_object_per_line_with_extra_fields() -> None:
    record = logging.LogRecord("annotator.x", logging.WARNING, __file__, 1, "job %s lost", (7,), None)
    record.job = 7
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING" and entry["logger"] == "annotator.x"
    assert entry["message"] == "job 7 lost" and entry["job"] == 7
    assert "ValueError: boom" in entry["exc_info"]
    assert entry["ts"].endswith("+00:00")


def test_logging_settings_refuse_unknown_formats_and_levels() -> None:
    assert build_logging("JSON", "debug")["handlers"]["console"]["formatter"] == "json"
    with pytest.raises(ImproperlyConfigured, match="LOG_FORMAT"):
        build_logging("xml", "INFO")
    with pytest.raises(ImproperlyConfigured, match="LOG_LEVEL"):
        build_logging("plain", "LOUD")
