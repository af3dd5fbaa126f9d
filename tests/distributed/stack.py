"""PropLabel's distributed mode as real processes on 127.0.0.1: PostgreSQL, Redis, Daphne, Celery workers.

Used by the distributed integration test (tests/distributed/) and the load test (scripts/loadtest.py).
Everything binds to 127.0.0.1 on free ports under one temporary folder, and ``Stack.stop`` removes every
process it started (each in its own session, so a SIGKILL takes a worker's pool children with it).

PostgreSQL and Redis come from the Debian packages (``postgresql``, ``redis-server``); ``find_binaries``
says what is missing. PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user that
the Debian package creates.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
HOST = "127.0.0.1"

T = TypeVar("T")


class StackError(RuntimeError):
    """A service did not come up (the message carries its log tail)."""


# --- binaries ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binaries:
    postgres_bindir: Path | None
    redis_server: Path | None

    def missing(self) -> list[str]:
        """Debian packages to install for what is absent."""
        missing = []
        if self.postgres_bindir is None:
            missing.append("postgresql")
        if self.redis_server is None:
            missing.append("redis-server")
        return missing


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in path.parent.name.split(".") if part.isdigit())


def find_binaries() -> Binaries:
    """PostgreSQL's bin folder (initdb, pg_ctl, createdb) and redis-server; env overrides first."""
    bindir: Path | None = None
    if override := os.environ.get("PROPLABEL_PG_BINDIR"):
        bindir = Path(override) if (Path(override) / "initdb").is_file() else None
    else:
        # Debian keeps the server binaries out of PATH, one folder per major version: take the newest.
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
        if which := shutil.which("initdb"):
            candidates.append(Path(which).resolve().parent)
        bindir = next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)
    redis = os.environ.get("PROPLABEL_REDIS_SERVER") or shutil.which("redis-server")
    if redis is None and Path("/usr/bin/redis-server").is_file():
        redis = "/usr/bin/redis-server"
    if redis is not None and not Path(redis).is_file():
        redis = None
    return Binaries(bindir, Path(redis) if redis else None)


# --- small helpers ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    diagnostics: Callable[[], str] = str,
    interval: float = 0.1,
) -> T:
    """Poll ``probe`` until it returns something other than None/False; StackError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
        except Exception as exc:  # the service is not up yet: keep polling
            last_error = exc
        time.sleep(interval)
    raise StackError(f"timed out after {timeout:.0f}s waiting for {what} ({last_error!r})\n{diagnostics()}")


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path.name}: no log)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last {len(text)} lines of {path.name} ---\n" + "\n".join(text)


# --- PostgreSQL and Redis --------------------------------------------------------------------------------------


class Postgres:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (trust auth, fsync off: test data, not durable)."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = free_port()
        self.database = "proplabel"
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{self.database}"

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        result = subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, timeout=120, check=False, cwd=self.root
        )
        if result.returncode != 0:
            raise StackError(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}\n{_tail(self.log)}")

    def start(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        if not self.data.exists():
            self._run(
                str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
        options = (
            f"-c listen_addresses={HOST} -p {self.port} -k {self.root} -c fsync=off -c max_connections=200"
        )
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")  # fmt: skip
        self._run(
            str(self.bindir / "createdb"), "-h", HOST, "-p", str(self.port), "-U", "postgres", self.database
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(StackError, subprocess.TimeoutExpired):
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")


class Redis:
    """redis-server on 127.0.0.1 with an append-only file fsynced on every write, so a restart (even after
    SIGKILL) keeps every queued message."""

    def __init__(self, binary: Path, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.log = root / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            str(self.binary), "--bind", HOST, "--port", str(self.port), "--dir", str(self.root),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
            "--protected-mode", "yes", "--logfile", str(self.log),
        ]  # fmt: skip
        self.process = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL)
        wait_for(self.ping, 20, "redis-server", lambda: _tail(self.log))

    def ping(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def command(self, *parts: str) -> bytes:
        """One raw RESP command (inline form): enough for LLEN/KEYS in tests without a client library."""
        with socket.create_connection((HOST, self.port), timeout=2) as sock:
            sock.sendall((" ".join(parts) + "\r\n").encode())
            return sock.recv(65536)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, so only the append-only file keeps the data."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()


# --- application processes ------------------------------------------------------------------------------------


@dataclass
class Service:
    """One application process (web server or worker) with its log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        handle = self.log.open("ab")
        # A new session per service: killing its process group reaches prefork pool children too.
        self.process = subprocess.Popen(
            self.argv, cwd=REPO, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        handle.close()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group, like a machine that lost power."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)

    def stop(self, timeout: float = 10) -> None:
        if not self.alive:
            return
        self.signal(signal.SIGTERM)
        try:
            assert self.process is not None
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        # Pool children may outlive a parent that ignored SIGTERM's grace period.
        self.signal(signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        return _tail(self.log, lines)


# --- a tiny HTTP client (stdlib only: also used by the load test with one connection per annotator) ----------


class HttpError(AssertionError):
    def __init__(self, method: str, path: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:500]!r}")
        self.status = status
        self.body = body


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Client:
    """A keep-alive HTTP/1.1 client for one user against 127.0.0.1 (token auth)."""

    port: int
    token: str | None = None
    timeout: float = 30
    _conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        content_type: str | None = None,
        expect: int | tuple[int, ...] | None = None,
    ) -> Response:
        headers = {"Host": f"{HOST}:{self.port}", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        if json_body is not None:
            body, content_type = json.dumps(json_body).encode(), "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                raw = self._conn.getresponse()
                response = Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read())
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
                # The server closed an idle keep-alive connection: reconnect once.
                self.close()
                if attempt == 2:
                    raise
        if expect is not None:
            allowed = (expect,) if isinstance(expect, int) else expect
            if response.status not in allowed:
                raise HttpError(method, path, response.status, response.body)
        return response

    def get(self, path: str, expect: int | tuple[int, ...] | None = 200) -> Response:
        return self.request("GET", path, expect=expect)

    def post(self, path: str, data: Any = None, expect: int | tuple[int, ...] | None = None) -> Response:
        return self.request("POST", path, json_body=data if data is not None else {}, expect=expect)

    def upload(self, path: str, files: dict[str, tuple[str, bytes]], expect: int = 202) -> Response:
        """multipart/form-data POST; ``files``: field name -> (file name, content)."""
        boundary = uuid.uuid4().hex
        parts = []
        for name, (filename, content) in files.items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n".encode()
                + content
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request(
            "POST", path, body=body, content_type=f"multipart/form-data; boundary={boundary}", expect=expect
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --- the whole stack ---------------------------------------------------------------------------------------------


SEED_USERS = """
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
User = get_user_model()
for name, manager in ((n, n.startswith("manager")) for n in {names!r}):
    user, _ = User.objects.get_or_create(username=name)
    user.set_password(name + "-password")
    user.save()
    if manager:
        user.user_permissions.add(Permission.objects.get(codename="add_project"))
"""


@dataclass
class Stack:
    """PostgreSQL + Redis + Daphne + Celery workers; ``start()`` then ``stop()`` (or use as a context manager).

    Args:
        engine: ``PROPLABEL_ENGINE`` of the gpu workers (``classical`` or ``learned``).
        gpu_workers: how many ``-Q gpu`` worker processes to start (each: prefork pool, one child).
        slice_delay: seconds every streamed slice is held in the gpu workers (tests/distributed/worker_main.py),
            so a job can be caught mid-run; 0 runs the engine at full speed.
        extra_env: added to every application process's environment.
    """

    engine: str = "classical"
    gpu_workers: int = 2
    slice_delay: float = 0.0
    extra_env: dict[str, str] = field(default_factory=dict)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="proplabel-stack-")))
    binaries: Binaries = field(default_factory=find_binaries)

    def __post_init__(self) -> None:
        self.root.chmod(0o755)  # the postgres user must reach its data folder below this one
        self.postgres: Postgres | None = None
        self.redis: Redis | None = None
        self.web: Service | None = None
        self.workers: dict[str, Service] = {}
        self.web_port = free_port()

    # -- environment --

    def env(self) -> dict[str, str]:
        assert self.postgres is not None and self.redis is not None
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DJANGO_", "PROPLABEL_", "CELERY_", "PYTEST_")) and key != "DATABASE_URL"
        }
        env.update(
            {
                "PYTHONPATH": str(REPO),
                "PYTHONUNBUFFERED": "1",
                "DJANGO_SETTINGS_MODULE": "backend.settings",
                "DATABASE_URL": self.postgres.url,
                "REDIS_URL": self.redis.url,
                "DJANGO_DEBUG": "false",
                "DJANGO_SECRET_KEY": "distributed-test-" + uuid.uuid4().hex,
                "DJANGO_ALLOWED_HOSTS": f"{HOST},localhost",
                "DJANGO_MEDIA_ROOT": str(self.root / "media"),
                "PROPLABEL_VAR_DIR": str(self.root / "var"),
                "PROPLABEL_ENGINE": self.engine,
                "PROPLABEL_TEST_SLICE_DELAY": str(self.slice_delay),
                # A lost worker is noticed within seconds here; production keeps the longer defaults.
                "PROPLABEL_JOB_HEARTBEAT_SECONDS": "0.5",
                "PROPLABEL_JOB_STALE_SECONDS": "4",
                "PROPLABEL_JOB_REDISPATCH_SECONDS": "20",
                "PROPLABEL_READYZ_WORKER_TIMEOUT": "1.0",
                "PROPLABEL_READYZ_WORKER_CACHE_SECONDS": "0",
                "LOG_LEVEL": "INFO",
                # Several processes share two CPU cores: one BLAS/torch thread each.
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
            }
        )
        env.update(self.extra_env)
        return env

    # -- lifecycle --

    def start_databases(self) -> None:
        missing = self.binaries.missing()
        if missing:
            raise StackError(f"missing Debian packages: {', '.join(missing)}")
        assert self.binaries.postgres_bindir is not None and self.binaries.redis_server is not None
        self.postgres = Postgres(self.binaries.postgres_bindir, self.root / "pg")
        (self.root / "pg").mkdir()
        self.postgres.start()
        self.redis = Redis(self.binaries.redis_server, self.root / "redis")
        self.redis.start()
        (self.root / "media").mkdir()
        (self.root / "var").mkdir()
        (self.root / "logs").mkdir()

    def manage(self, *args: str, timeout: float = 180) -> str:
        result = subprocess.run(
            [PYTHON, "manage.py", *args], cwd=REPO, env=self.env(), capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise StackError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def start_web(self) -> Service:
        argv = [PYTHON, "-m", "daphne", "-b", HOST, "-p", str(self.web_port), "backend.asgi:application"]
        self.web = Service("web", argv, self.env(), self.root / "logs" / "web.log").start()
        return self.web

    def start_worker(self, name: str, queue: str) -> Service:
        argv = [
            PYTHON, "-m", "tests.distributed.worker_main", "-Q", queue, "-n", f"{name}@{HOST}",
            "--pool", "prefork", "--concurrency", "1", "--without-gossip", "--without-mingle", "-l", "INFO",
        ]  # fmt: skip
        worker = Service(name, argv, self.env(), self.root / "logs" / f"{name}.log").start()
        self.workers[name] = worker
        return worker

    def start(self) -> Stack:
        self.start_databases()
        self.manage("migrate", "--noinput")
        self.start_web()
        for index in range(1, self.gpu_workers + 1):
            self.start_worker(f"gpu{index}", "gpu")
        self.start_worker("io1", "io")
        self.wait_healthy()
        self.wait_gpu_workers(self.gpu_workers)
        return self

    def wait_healthy(self, timeout: float = 90) -> None:
        def probe() -> bool:
            if self.web is not None and not self.web.alive:
                raise StackError("the web server exited\n" + self.web.tail())
            return Client(self.web_port, timeout=2).get("/healthz", expect=None).status == 200

        wait_for(probe, timeout, "the web server's /healthz", self.diagnostics)

    def readyz(self) -> Response:
        return Client(self.web_port, timeout=10).get("/readyz", expect=None)

    def wait_gpu_workers(self, count: int, timeout: float = 120) -> list[str]:
        """Wait until /readyz is 200 and lists ``count`` live gpu workers; returns their names."""

        def probe() -> list[str] | None:
            response = self.readyz()
            workers = response.json()["checks"].get("gpu_workers", {}).get("workers", [])
            return workers if response.status == 200 and len(workers) == count else None

        # Every failed probe is a logged 503 plus a broadcast to the workers: poll gently.
        return wait_for(
            probe, timeout, f"{count} live gpu workers in /readyz", self.diagnostics, interval=0.5
        )

    def diagnostics(self) -> str:
        services = [s for s in (self.web, *self.workers.values()) if s is not None]
        return "\n".join(f"[{s.name} alive={s.alive}]\n{s.tail(25)}" for s in services)

    def stop(self) -> None:
        for service in [*self.workers.values(), self.web]:
            if service is not None:
                service.stop()
        if self.redis is not None:
            self.redis.kill()
        if self.postgres is not None:
            self.postgres.stop()
        if os.environ.get("PROPLABEL_KEEP_STACK") != "1":
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- users --

    def create_users(self, *names: str) -> None:
        """Users ``<name>`` with password ``<name>-password``; names starting with ``manager`` may create
        projects."""
        self.manage("shell", "-c", SEED_USERS.format(names=list(names)))

    def login(self, username: str) -> Client:
        token = (
            Client(self.web_port)
            .post("/api/auth/token/", {"username": username, "password": f"{username}-password"}, expect=200)
            .json()["token"]
        )
        return Client(self.web_port, token=token)
