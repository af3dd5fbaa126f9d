"""An embedded PropLabel server for the browser tests: SQLite, file-system broker, one Celery worker, Daphne.

Everything lives in one temporary folder and binds to 127.0.0.1 on a free port. ``python -m
tests.e2e.live_server`` runs it in the foreground (handy for looking at the viewer by hand); the pytest
fixture in ``conftest.py`` uses ``start_embedded_server`` / ``EmbeddedServer.stop``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
HOST = "127.0.0.1"
DEMO_PASSWORD = "demo-e2e-password"
# The browser tests hold each streamed slice this long (seconds) to watch a job in flight and cancel it.
SLICE_DELAY = 0.08


@dataclass
class EmbeddedServer:
    base_url: str
    var_dir: Path
    username: str = "annotator"
    password: str = DEMO_PASSWORD
    reviewer: str = "reviewer"
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        # Each child runs in its own session: signal the whole group so Celery's children go too.
        for process in reversed(self.processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 10
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _env(var_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PROPLABEL_VAR_DIR=str(var_dir),
        DEMO_PASSWORD=DEMO_PASSWORD,
        DJANGO_SETTINGS_MODULE="backend.settings",
        PYTHONUNBUFFERED="1",
    )
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_TASK_ALWAYS_EAGER"):
        env.pop(name, None)  # embedded mode, whatever the calling shell has set
    return env


def _run(argv: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        result = subprocess.run(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:4])} failed:\n{log.read_text()[-3000:]}")


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the web server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the web server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def _wait_worker_ready(process: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    """Until Celery logs "ready": jobs posted earlier would only queue, and its start-up eats the CPU."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Celery worker exited:\n{log.read_text()[-3000:]}")
        if log.is_file() and " ready." in log.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise RuntimeError(f"the Celery worker was not ready within {timeout} s:\n{log.read_text()[-3000:]}")


def start_embedded_server(
    var_dir: Path | None = None, port: int | None = None, slice_delay: float = 0.0
) -> EmbeddedServer:
    """Migrate, seed the offline demo (generated phantom, no download), start a worker and Daphne.

    ``slice_delay`` > 0 holds every streamed slice that long (the distributed tests' worker wrapper), so a
    browser test can watch a propagation in flight and cancel it; the worker computes the same masks.
    """
    var_dir = var_dir or Path(tempfile.mkdtemp(prefix="proplabel-e2e-"))
    var_dir.mkdir(parents=True, exist_ok=True)
    env = _env(var_dir)
    log = var_dir / "server.log"
    manage = [PYTHON, str(REPO / "manage.py")]
    _run([*manage, "migrate", "--noinput"], env, log)
    _run([*manage, "seed_demo", "--offline", "--cache-dir", str(var_dir / "demo-cache")], env, log)
    port = port or _free_port()
    server = EmbeddedServer(base_url=f"http://{HOST}:{port}", var_dir=var_dir)
    worker_options = [
        "-Q",
        "gpu,io",
        "--pool",
        "solo",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "INFO",
    ]
    if slice_delay > 0:
        env = {**env, "PROPLABEL_TEST_SLICE_DELAY": str(slice_delay)}
        worker_argv = [PYTHON, "-m", "tests.distributed.worker_main", *worker_options]
    else:
        worker_argv = [PYTHON, "-m", "celery", "-A", "backend", "worker", *worker_options]
    worker = _spawn(worker_argv, env, var_dir / "worker.log")
    server.processes.append(worker)
    web = _spawn([PYTHON, "-m", "daphne", "-b", HOST, "-p", str(port), "backend.asgi:application"], env, log)
    server.processes.append(web)
    try:
        _wait_http(f"{server.base_url}/accounts/login/", web, log)
        _wait_worker_ready(worker, var_dir / "worker.log")
    except Exception:
        server.stop()
        raise
    return server


if __name__ == "__main__":
    chosen = int(sys.argv[1]) if len(sys.argv) > 1 else None
    running = start_embedded_server(port=chosen)
    print(
        f"PropLabel at {running.base_url}/app/  (annotator / {DEMO_PASSWORD}); var {running.var_dir}",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the cleanup below on kill <pid> too
    try:
        signal.pause()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        running.stop()
