"""Latency benchmark of live propagation in embedded mode: ``python -m annotator.bench_live``.

What runs: a throw-away embedded site in a temp folder (SQLite database file, filesystem Celery broker,
SQLite channel layer, media folder); a real Celery worker *process* on the ``gpu`` queue (solo pool, the
engine loaded once and kept warm); this process plays the web tier: it posts the prompt through the REST
API and listens on the case's WebSocket through the real ASGI application, so every slice event crosses
from the worker process to this one through the channel layer, as in production embedded mode.

Data: the TotalSegmentator demo CT and its aorta label when ``./run demo`` has cached them (never
downloaded from here), else a generated CT-like volume with a 100-slice object.

Printed per run and as medians: time from the prompt request to the first slice event, mean gap between
slice events, time to the job's done event (the whole object, revision saved), slices, engine name.

``python -m annotator.bench_live worker --name NAME`` starts such a worker (also used by the killed-worker
test); ``--slice-delay`` slows every streamed slice down so a test can catch a job mid-run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FAST_BROKER_POLL = 0.02
"""Seconds between a test worker's looks into the filesystem queue (kombu's default is 1 s)."""


# --- the embedded site and its worker processes ------------------------------------------------------------


def embedded_env(
    root: Path, *, database: Path | str | None = None, media: Path | None = None, **extra: str
) -> dict[str, str]:
    """Environment of an embedded-mode process whose database, broker, channel layer and media live in
    ``root`` (or at the given database / media paths)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "DJANGO_MEDIA_ROOT", "PROPLABEL_VAR_DIR"}
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "backend.settings",
            "PROPLABEL_VAR_DIR": str(root),
            "DATABASE_URL": database_url(database or root / "proplabel.sqlite3"),
            "DJANGO_MEDIA_ROOT": str(media or root / "media"),
            "PYTHONPATH": str(REPO),
        }
    )
    env.update(extra)
    return env


def database_url(database: Path | str) -> str:
    """A SQLite file path, or an URL as it is (e.g. PostgreSQL)."""
    text = str(database)
    return text if "://" in text else f"sqlite:///{text}"


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log.read_text()[-3000:]}")
            if " ready." in self.log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.name} not ready after {timeout} s: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a pulled plug would do: no cleanup, no ack."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_worker(
    env: dict[str, str], name: str, log_dir: Path, slice_delay: float = 0.0, broker_poll: float | None = None
) -> WorkerProcess:
    """A Celery worker process on the ``gpu`` queue (solo pool) with ``env`` (see ``embedded_env``).

    ``broker_poll`` overrides the filesystem broker's polling interval (None: what the settings say).
    """
    log = log_dir / f"worker-{name}.log"
    command = [sys.executable, "-m", "annotator.bench_live", "worker", "--name", name]
    if slice_delay:
        command += ["--slice-delay", str(slice_delay)]
    if broker_poll is not None:
        command += ["--broker-poll", str(broker_poll)]
    handle = log.open("wb")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    handle.close()
    return WorkerProcess(name, process, log)


def run_worker(name: str, slice_delay: float, broker_poll: float | None) -> None:
    """Body of ``python -m annotator.bench_live worker``: a gpu worker with a fast filesystem-broker poll."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
    django.setup()
    from backend.celery import app

    if slice_delay > 0:
        _slow_down_engine(slice_delay)
    options = dict(app.conf.broker_transport_options or {})
    if broker_poll is not None:
        options["polling_interval"] = broker_poll
        _set_transport_options(app, options)
    # kombu's virtual transports poll every second unless told otherwise.
    print(f"broker polling interval: {options.get('polling_interval', 1.0)} s", flush=True)
    app.worker_main(
        [
            "worker",
            "-Q",
            "gpu",
            "-P",
            "solo",
            "-c",
            "1",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
        ]
    )


def _slow_down_engine(delay: float) -> None:
    from annotator.services import propagation

    real_get_engine = propagation.get_engine

    class SlowEngine:
        def __init__(self, engine: Any) -> None:
            self.engine = engine

        def propagate(self, *args: Any, **kwargs: Any) -> Any:
            for step in self.engine.propagate(*args, **kwargs):
                time.sleep(delay)
                yield step

        def __getattr__(self, name: str) -> Any:
            return getattr(self.engine, name)

    def slow_get_engine() -> Any:
        loaded = real_get_engine()
        return propagation.LoadedEngine(SlowEngine(loaded.engine), loaded.name, loaded.note)

    propagation.get_engine = slow_get_engine  # type: ignore[assignment]


def _set_transport_options(app: Any, options: dict[str, Any]) -> None:
    # The app reads Django settings with the CELERY_ namespace: that spelling wins over the plain one.
    app.conf.broker_transport_options = options
    app.conf.CELERY_BROKER_TRANSPORT_OPTIONS = options


def use_broker_folder(var_dir: Path) -> None:
    """Point this process's Celery producer at the embedded broker folders under ``var_dir``."""
    from backend.celery import app

    queue = var_dir / "celery"
    options = dict(app.conf.broker_transport_options or {})
    options.update(
        {
            "data_folder_in": str(queue / "queue"),
            "data_folder_out": str(queue / "queue"),
            "control_folder": str(queue / "control"),
            "processed_folder": str(queue / "processed"),
        }
    )
    for key in ("data_folder_in", "control_folder", "processed_folder"):
        Path(options[key]).mkdir(parents=True, exist_ok=True)
    _set_transport_options(app, options)
    # Connections made with the old options must not be reused.
    app._pool = None
    app.amqp._producer_pool = None


# --- the benchmark --------------------------------------------------------------------------------------------


@dataclass
class BenchObject:
    name: str
    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    prompt: dict[str, int | str]
    source: str


def generated_object(depth: int = 100) -> BenchObject:
    """CT-like ``(depth + 12, 160, 160)`` volume with a smooth object spanning ``depth`` slices."""
    shape = (depth + 12, 160, 160)
    z, y, x = np.indices(shape, dtype=np.float32)
    centre_z = (shape[0] - 1) / 2
    along = (z - centre_z) / (depth / 2)
    # A spindle whose radius shrinks towards both ends and whose centre drifts a little (like an organ).
    radius = 26 * np.sqrt(np.clip(1 - along**2, 0, 1)) + 3
    cy, cx = 80 + 6 * np.sin(along * 1.5), 78 + 4 * along
    inside = ((y - cy) ** 2 + (x - cx) ** 2 <= radius**2) & (np.abs(along) <= 1)
    body = (y - 80) ** 2 + (x - 80) ** 2 <= 70**2
    volume = np.full(shape, -1000, dtype=np.int16)
    volume[body] = 40
    volume[inside] = 150
    volume += np.random.default_rng(7).integers(-6, 7, size=shape).astype(np.int16)
    mid = round(centre_z)
    ys, xs = np.nonzero(inside[mid])
    prompt = {
        "type": "box",
        "z": mid,
        "y0": int(ys.min()),
        "x0": int(xs.min()),
        "y1": int(ys.max()),
        "x1": int(xs.max()),
    }
    spacing = (1.0, 0.8, 0.8)
    # (z, y, x, 1) -> RAS mm: x runs right, y anterior, z superior.
    affine = np.array([[0, 0, spacing[2], 0], [0, spacing[1], 0, 0], [spacing[0], 0, 0, 0], [0, 0, 0, 1.0]])
    return BenchObject(
        "generated spindle", volume, spacing, affine, prompt, f"generated {depth}-slice object"
    )


def demo_object(cache_dir: Path) -> BenchObject | None:
    """The cached TotalSegmentator demo CT with a box on its aorta (the longest labelled object), if cached."""
    import nibabel as nib
    from scipy import ndimage

    from annotator.imaging import prepare_demo_cases

    if not (cache_dir / "totalsegmentator_2.18.0" / "reference_files.json").exists():
        return None
    for case in prepare_demo_cases(cache_dir, allow_download=False):
        if case.modality != "CT" or case.label_path is None:
            continue
        image = nib.load(str(case.image_path))
        array = np.asarray(image.dataobj).transpose(2, 1, 0)
        labels = np.asarray(nib.load(str(case.label_path)).dataobj).transpose(2, 1, 0).astype(np.int32)
        zooms = image.header.get_zooms()[:3]
        spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
        best: tuple[int, int, np.ndarray] | None = None
        for value in (v for v in np.unique(labels) if v):
            components, count = ndimage.label(labels == value)
            for index in range(1, count + 1):
                component = components == index
                slices = int(component.any(axis=(1, 2)).sum())
                if best is None or slices > best[0]:
                    best = (slices, int(value), component)
        if best is None:
            continue
        component = best[2]
        z = int(np.argmax(component.sum(axis=(1, 2))))
        ys, xs = np.nonzero(component[z])
        prompt = {
            "type": "box",
            "z": z,
            "y0": int(ys.min()),
            "x0": int(xs.min()),
            "y1": int(ys.max()),
            "x1": int(xs.max()),
        }
        affine = np.asarray(image.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
        clipped = np.clip(array, -32768, 32767).astype(np.int16)
        return BenchObject(
            f"{case.name} label {best[1]} ({case.label_names.get(best[1], '?')}, {best[0]} slices)",
            clipped,
            spacing,
            affine,
            prompt,
            case.source,
        )
    return None


def _setup_site(root: Path, engine: str) -> dict[str, str]:
    env = embedded_env(root, PROPLABEL_ENGINE=engine)
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    use_broker_folder(root)
    return env


def _create_case(obj: BenchObject) -> tuple[Any, Any, int]:
    from django.contrib.auth import get_user_model

    from annotator.imaging import LoadedVolume
    from annotator.models import Case, Membership, Project, Role
    from annotator.services import cases

    user = get_user_model().objects.create_user("bench", password="bench-password-123")
    project = Project.objects.create(name="bench", created_by=user)
    Membership.objects.create(project=project, user=user, role=Role.MANAGER)
    label = project.label_classes.create(name="object", value=1, color="#e6194b")
    loaded = LoadedVolume(
        array=obj.array,
        spacing=obj.spacing,
        affine=obj.affine,
        modality="CT",
        name="bench",
        source_format="nifti",
        source_meta={},
    )
    case = cases.create_case_with_volume(project, loaded, actor=user, name="bench")
    Case.objects.filter(pk=case.pk).update(assignee=user)
    return user, case, label.pk


async def _one_run(
    user: Any, case: Any, label: int, prompt: dict[str, Any], timeout: float
) -> dict[str, Any]:
    from asgiref.sync import sync_to_async
    from channels.testing import WebsocketCommunicator
    from django.test import Client

    from backend.asgi import application

    client = Client()
    await sync_to_async(client.force_login)(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    ws = WebsocketCommunicator(
        application,
        f"/ws/cases/{case.pk}/",
        headers=[(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie)],
    )
    connected, _ = await ws.connect(timeout=10)
    if not connected:
        raise RuntimeError("the WebSocket was refused")
    state = await ws.receive_json_from(timeout=10)
    body = json.dumps({"label": label, "prompt": prompt, "base_revision": state["current_revision"]})
    started = time.perf_counter()
    response = await sync_to_async(client.post)(
        f"/api/cases/{case.pk}/propagations/", body, content_type="application/json", HTTP_HOST="127.0.0.1"
    )
    answered = time.perf_counter()
    if response.status_code != 202:
        raise RuntimeError(f"prompt refused: {response.status_code} {response.content[:300]!r}")
    job_id = response.json()["id"]
    slice_times: list[float] = []
    result: dict[str, Any] = {}
    while True:
        event = await ws.receive_json_from(timeout=timeout)
        now = time.perf_counter()
        if event["type"] == "slice" and event["job"] == job_id:
            slice_times.append(now)
        elif event["type"] in ("job.done", "job.failed", "job.cancelled") and event["job"]["id"] == job_id:
            result = {
                "status": event["type"],
                "engine": event["job"].get("engine"),
                "note": event["job"].get("engine_note"),
            }
            break
    await ws.disconnect()
    gaps = np.diff(slice_times) if len(slice_times) > 1 else np.array([0.0])
    return {
        **result,
        "request_ms": (answered - started) * 1000,
        "first_slice_s": slice_times[0] - started if slice_times else float("nan"),
        "mean_gap_ms": float(gaps.mean() * 1000),
        "total_s": now - started,
        "slices": len(slice_times),
    }


def run_benchmark(
    engine: str, repeat: int, keep: bool, broker_poll: float | None = None
) -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="proplabel-bench-"))
    env = _setup_site(root, engine)
    # The demo cache of the real site (./run demo), not of the temp site; never downloaded from here.
    cache = Path(os.environ.get("PROPLABEL_DEMO_CACHE_DIR") or REPO / "var" / "demo-cache")
    obj = demo_object(cache) or generated_object()
    user, case, label = _create_case(obj)
    worker = start_worker(env, "bench", root, broker_poll=broker_poll)
    try:
        worker.wait_ready()
        poll = next(
            (line for line in worker.log.read_text().splitlines() if line.startswith("broker polling")), ""
        )
        print(f"object: {obj.name}; volume {obj.array.shape} spacing {obj.spacing}; source: {obj.source}")
        print(f"worker: separate process, solo pool, {poll}")
        print(f"prompt: {obj.prompt}")
        runs = []
        for index in range(repeat + 1):
            figures = asyncio.run(_one_run(user, case, label, obj.prompt, timeout=300))
            tag = "warm-up" if index == 0 else f"run {index}"
            print(
                f"{tag:>8}: {figures['status']} engine={figures['engine']} slices={figures['slices']} "
                f"request={figures['request_ms']:.0f} ms first slice={figures['first_slice_s'] * 1000:.0f} ms "
                f"mean gap={figures['mean_gap_ms']:.1f} ms total={figures['total_s']:.2f} s"
            )
            if index:
                runs.append(figures)
        if runs:
            print(
                f"median over {len(runs)} runs ({runs[0]['engine']} engine{', ' + runs[0]['note'] if runs[0]['note'] else ''}): "
                f"first slice {statistics.median(r['first_slice_s'] for r in runs) * 1000:.0f} ms, "
                f"mean gap {statistics.median(r['mean_gap_ms'] for r in runs):.1f} ms, "
                f"whole object ({runs[0]['slices']} slices) {statistics.median(r['total_s'] for r in runs):.2f} s"
            )
        return runs
    finally:
        worker.stop()
        if not keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m annotator.bench_live", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser(
        "worker", help="run an embedded-mode gpu worker (used by the benchmark and tests)"
    )
    worker.add_argument("--name", default="gpu")
    worker.add_argument("--slice-delay", type=float, default=0.0)
    worker.add_argument("--broker-poll", type=float, default=None)
    parser.add_argument(
        "--engine",
        default=os.environ.get("PROPLABEL_ENGINE", "learned"),
        help="learned (falls back to classical, stated, when weights are missing) or classical",
    )
    parser.add_argument("--repeat", type=int, default=3, help="measured runs after one warm-up run")
    parser.add_argument("--keep", action="store_true", help="keep the temp site folder")
    parser.add_argument(
        "--broker-poll",
        type=float,
        default=None,
        help="the worker's filesystem-broker polling interval in s (default: the settings', kombu's 1 s if unset)",
    )
    args = parser.parse_args(argv)
    if args.command == "worker":
        run_worker(args.name, args.slice_delay, args.broker_poll)
        return
    run_benchmark(args.engine, args.repeat, args.keep, args.broker_poll)


if __name__ == "__main__":
    main()
