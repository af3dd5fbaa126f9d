"""Health, readiness and Prometheus metrics (``/healthz``, ``/readyz``, ``/metrics``).

* ``/healthz`` (liveness): the process answers HTTP. It checks nothing else on purpose: a database outage
  must not make Kubernetes restart every web pod, which would only add a restart storm to the outage.
* ``/readyz`` (readiness): the database answers ``SELECT 1``; Redis answers ``PING`` when ``REDIS_URL`` is
  set; at least one live Celery worker consumes the ``gpu`` queue (a broadcast ``active_queues`` with a
  short timeout, cached for a moment so probes cannot flood the workers). 200 or 503 with a JSON body that
  names every check. ``?skip=workers`` leaves the worker check out: the web pods' own readiness probe uses it,
  because a web tier without GPU workers still serves browsing and review (see deploy/OPERATIONS.md).
* ``/metrics`` (Prometheus text): queue depth per queue (messages waiting in the broker, and jobs waiting
  in the database for a fair-dispatch slot), job counts by status, job duration and slice latency
  histograms, active WebSockets of this process.

The job histograms are computed from the job rows (``PropagationJob`` times), not observed in process:
jobs run on worker machines that Prometheus may not reach, and every web replica then reports the same
cluster-wide figures (aggregate them with ``max by (...)``, not ``sum``). Only the WebSocket gauge is
per process; with several server processes per pod set ``PROMETHEUS_MULTIPROC_DIR`` and it is summed over
the live processes (``multiprocess_mode="livesum"``).

Optional ``PROPLABEL_METRICS_TOKEN``: when set, ``/metrics`` wants ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

logger = logging.getLogger(__name__)

QUEUES = ("gpu", "io")
"""The Celery queues of docs/ARCHITECTURE.md."""

# kombu's Redis transport keeps one list per queue and priority step; priority 0 is the bare queue name.
_KOMBU_PRIORITY_SEPARATOR = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (3, 6, 9)

JOB_DURATION_BUCKETS = (0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600, 1800)
SLICE_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
SLICE_INTERVAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)


def _setting(name: str, default: Any) -> Any:
    """A Django setting (backend/settings.py reads it from the environment), else the default."""
    return getattr(settings, name, default)


# --- health and readiness ------------------------------------------------------------------------------------


def check_database() -> str | None:
    """None when every configured database answers ``SELECT 1``, else the error."""
    try:
        for alias in connections:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _redis_client() -> Any:
    import redis

    timeout = float(_setting("PROPLABEL_READYZ_TIMEOUT", 1.0))
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=False
    )


def check_redis() -> str | None:
    """None when ``REDIS_URL`` is unset (embedded mode) or Redis answers ``PING``, else the error."""
    if not getattr(settings, "REDIS_URL", ""):
        return None
    try:
        client = _redis_client()
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class _WorkerCache:
    """The last ``active_queues`` answer, kept briefly: a burst of probes must not become a burst of
    broadcasts that every worker has to answer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at = 0.0
        self.value: dict[str, list[str]] | str = {}

    def get(
        self, max_age: float, fetch: Callable[[], dict[str, list[str]] | str]
    ) -> dict[str, list[str]] | str:
        with self.lock:
            if time.monotonic() - self.at > max_age:
                self.value = fetch()
                self.at = time.monotonic()
            return self.value


_worker_cache = _WorkerCache()


def _fetch_worker_queues() -> dict[str, list[str]] | str:
    from backend.celery import app

    timeout = float(_setting("PROPLABEL_READYZ_WORKER_TIMEOUT", 1.0))
    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return {host: sorted(q.get("name", "") for q in queues or []) for host, queues in replies.items()}


def live_workers(queue: str) -> list[str] | str:
    """Names of the live Celery workers consuming ``queue``, or an error message."""
    found = _worker_cache.get(
        float(_setting("PROPLABEL_READYZ_WORKER_CACHE_SECONDS", 2.0)), _fetch_worker_queues
    )
    if isinstance(found, str):
        return found
    return sorted(host for host, queues in found.items() if queue in queues)


def readiness(skip: Iterable[str] = ()) -> tuple[bool, dict[str, Any]]:
    """Run the readiness checks; ``skip`` may hold ``workers`` (and ``redis`` / ``database``, for tests)."""
    skip = set(skip)
    checks: dict[str, Any] = {}
    if "database" not in skip:
        error = check_database()
        checks["database"] = {"ok": error is None, **({"error": error} if error else {})}
    if "redis" not in skip and getattr(settings, "REDIS_URL", ""):
        error = check_redis()
        checks["redis"] = {"ok": error is None, **({"error": error} if error else {})}
    if "workers" not in skip:
        workers = live_workers("gpu")
        if isinstance(workers, str):
            checks["gpu_workers"] = {"ok": False, "error": workers}
        elif workers:
            checks["gpu_workers"] = {"ok": True, "workers": workers}
        else:
            checks["gpu_workers"] = {"ok": False, "error": "no live Celery worker consumes the gpu queue"}
    return all(check["ok"] for check in checks.values()), checks


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: this process serves requests. Nothing else is checked (see the module docstring)."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: 200 when every check passes, else 503; the body names each check and its error."""
    skip = [part for part in request.GET.get("skip", "").split(",") if part]
    ok, checks = readiness(skip)
    if not ok:
        logger.warning("readiness failed: %s", {name: c for name, c in checks.items() if not c["ok"]})
    return JsonResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503
    )


# --- metrics -----------------------------------------------------------------------------------------------


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


ACTIVE_WEBSOCKETS = Gauge(
    "proplabel_active_websockets",
    "WebSocket connections open in this server process (summed over live processes in multiprocess mode).",
    multiprocess_mode="livesum",
)


def track_websockets(app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """ASGI middleware: count WebSocket connections while the inner application handles them.

    Wrap the outermost WebSocket application in ``backend/asgi.py``. A connection counts from the moment the
    server hands it over until the application returns (accepted or refused, closed by either side).
    """

    async def wrapped(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope.get("type") != "websocket":
            await app(scope, receive, send)
            return
        ACTIVE_WEBSOCKETS.inc()
        try:
            await app(scope, receive, send)
        finally:
            ACTIVE_WEBSOCKETS.dec()

    return wrapped


def broker_queue_depths() -> dict[str, int]:
    """Messages waiting in the broker per queue (Redis lists, or the embedded filesystem broker's files)."""
    redis_url = getattr(settings, "REDIS_URL", "")
    depths: dict[str, int] = {}
    if redis_url:
        client = _redis_client()
        try:
            for queue in QUEUES:
                names = [queue] + [
                    f"{queue}{_KOMBU_PRIORITY_SEPARATOR}{step}" for step in _KOMBU_PRIORITY_STEPS
                ]
                depths[queue] = sum(int(client.llen(name)) for name in names)
        finally:
            client.close()
        return depths
    folder = (getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}).get("data_folder_in")
    for queue in QUEUES:
        # kombu's filesystem transport writes one "<stamp>_<uuid>.<queue>.msg" file per message.
        depths[queue] = (
            len(list(Path(folder).glob(f"*.{queue}.msg"))) if folder and Path(folder).is_dir() else 0
        )
    return depths


def _redis_unacked() -> int | None:
    """Messages a worker has taken but not acknowledged (kombu's ``unacked`` hash), when on Redis."""
    if not getattr(settings, "REDIS_URL", ""):
        return None
    client = _redis_client()
    try:
        return int(client.hlen("unacked"))
    finally:
        client.close()


def _histogram(
    name: str,
    documentation: str,
    label_names: list[str],
    rows: Iterable[tuple[tuple[str, ...], Any]],
    buckets: tuple[float, ...],
) -> HistogramMetricFamily:
    """Aggregate ``rows`` of (label values, {"n", "sum", "b0".."bk"}) into one histogram family."""
    family = HistogramMetricFamily(name, documentation, labels=label_names)
    for labels, agg in rows:
        count = int(agg["n"] or 0)
        cumulative = [(floatToGoString(le), int(agg[f"b{i}"] or 0)) for i, le in enumerate(buckets)]
        cumulative.append(("+Inf", count))
        family.add_metric(list(labels), cumulative, float(agg["sum"] or 0.0))
    return family


def _duration_aggregate(queryset: Any, start: str, end: str, buckets: tuple[float, ...]) -> dict[str, Any]:
    """Count, sum (seconds) and cumulative bucket counts of ``end - start`` over ``queryset``, in SQL."""
    from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum

    rows = queryset.filter(**{f"{start}__isnull": False, f"{end}__isnull": False}).annotate(
        _d=ExpressionWrapper(F(end) - F(start), output_field=DurationField())
    )
    aggregates: dict[str, Any] = {"n": Count("pk"), "sum": Sum("_d")}
    for index, upper in enumerate(buckets):
        aggregates[f"b{index}"] = Count("pk", filter=Q(_d__lte=timedelta(seconds=upper)))
    result = rows.aggregate(**aggregates)
    total = result["sum"]
    result["sum"] = total.total_seconds() if isinstance(total, timedelta) else float(total or 0) / 1e6
    return result


class ClusterCollector(Collector):
    """Metrics read from the database and the broker at scrape time (the same on every web replica)."""

    def collect(self) -> Iterator[Any]:
        from annotator.models import ExportJob, ImportJob, JobStatus, PropagationJob

        up = GaugeMetricFamily(
            "proplabel_metrics_source_up", "1 when the source answered this scrape", labels=["source"]
        )
        try:
            depth = GaugeMetricFamily(
                "proplabel_queue_depth", "Messages waiting in the broker per Celery queue", labels=["queue"]
            )
            for queue, count in broker_queue_depths().items():
                depth.add_metric([queue], count)
            yield depth
            unacked = _redis_unacked()
            if unacked is not None:
                yield GaugeMetricFamily(
                    "proplabel_broker_unacked_messages",
                    "Messages taken by a worker, not yet acknowledged",
                    unacked,
                )
            up.add_metric(["broker"], 1)
        except Exception:
            logger.exception("metrics: broker unavailable")
            up.add_metric(["broker"], 0)
        try:
            yield from self._database_metrics(ImportJob, ExportJob, PropagationJob, JobStatus)
            up.add_metric(["database"], 1)
        except Exception:
            logger.exception("metrics: database unavailable")
            up.add_metric(["database"], 0)
        yield up

    def _database_metrics(
        self, import_job: Any, export_job: Any, propagation_job: Any, status: Any
    ) -> Iterator[Any]:
        from django.db.models import Count

        jobs = GaugeMetricFamily("proplabel_jobs", "Job rows by kind and status", labels=["kind", "status"])
        for kind, model in (("import", import_job), ("export", export_job)):
            for row in model.objects.values("status").annotate(n=Count("pk")).order_by():
                jobs.add_metric([kind, row["status"]], row["n"])
        for row in propagation_job.objects.values("kind", "status").annotate(n=Count("pk")).order_by():
            jobs.add_metric([row["kind"], row["status"]], row["n"])
        yield jobs

        waiting = GaugeMetricFamily(
            "proplabel_jobs_waiting_for_dispatch",
            "Propagation jobs held in the database until their user has a free slot (fair dispatch)",
            propagation_job.objects.filter(status=status.QUEUED, claimed_at__isnull=True).count(),
        )
        yield waiting

        ended = propagation_job.objects.exclude(status__in=[status.QUEUED, status.RUNNING])
        by_kind_status = list(ended.values_list("kind", "status").distinct().order_by())
        yield _histogram(
            "proplabel_job_duration_seconds",
            "Propagation/refinement job run time (started to finished), all ended jobs",
            ["kind", "status"],
            (
                (
                    (kind, st),
                    _duration_aggregate(
                        ended.filter(kind=kind, status=st), "started_at", "finished_at", JOB_DURATION_BUCKETS
                    ),
                )
                for kind, st in by_kind_status
            ),
            JOB_DURATION_BUCKETS,
        )
        kinds = sorted({kind for kind, _ in by_kind_status})
        yield _histogram(
            "proplabel_first_slice_latency_seconds",
            "Time from the prompt request (job created) to its first streamed slice",
            ["kind"],
            (
                (
                    (kind,),
                    _duration_aggregate(
                        ended.filter(kind=kind), "created_at", "first_slice_at", SLICE_LATENCY_BUCKETS
                    ),
                )
                for kind in kinds
            ),
            SLICE_LATENCY_BUCKETS,
        )
        yield self._slice_interval(ended)

    @staticmethod
    def _slice_interval(ended: Any) -> HistogramMetricFamily:
        """Mean gap between streamed slices per succeeded job ((finished - first slice) / (slices - 1))."""
        rows = ended.filter(
            status="succeeded", slices_done__gt=1, first_slice_at__isnull=False, finished_at__isnull=False
        ).values_list("first_slice_at", "finished_at", "slices_done")
        # Bounded: the newest jobs only, so a scrape stays cheap however long the history grows.
        limit = int(_setting("PROPLABEL_METRICS_SLICE_SAMPLE", 5000))
        gaps = [
            (finished - first).total_seconds() / (slices - 1)
            for first, finished, slices in rows.order_by("-finished_at")[:limit]
        ]
        family = HistogramMetricFamily(
            "proplabel_slice_interval_seconds",
            f"Mean gap between streamed slices per succeeded job (newest {limit} jobs)",
        )
        buckets = [
            (floatToGoString(le), sum(1 for gap in gaps if gap <= le)) for le in SLICE_INTERVAL_BUCKETS
        ]
        buckets.append(("+Inf", len(gaps)))
        family.add_metric([], buckets, sum(gaps))
        return family


def metrics_registry() -> CollectorRegistry:
    """This process's registry (or all live processes' in multiprocess mode) plus the cluster collector."""
    registry = CollectorRegistry()
    if _multiprocess_dir():
        MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry.register(_Forward(REGISTRY))
    registry.register(ClusterCollector())
    return registry


class _Forward(Collector):
    """Expose another registry's metrics (the process default: WebSocket gauge, process and GC metrics)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        yield from self.source.collect()


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    token = str(_setting("PROPLABEL_METRICS_TOKEN", "") or "")
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return HttpResponse("metrics need Authorization: Bearer <PROPLABEL_METRICS_TOKEN>\n", status=401)
    return HttpResponse(generate_latest(metrics_registry()), content_type=CONTENT_TYPE_LATEST)
