"""Fixtures for live propagation: a cross-thread channel layer, an in-process worker, WebSocket clients,
a case whose object spans many slices, and (for the killed-worker test) real Celery worker processes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from annotator.services import propagation
from tests.live.helpers import object_volume


@pytest.fixture
def engine_name(request: pytest.FixtureRequest, settings: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """The engine jobs run with (``classical`` unless a test is parametrised otherwise)."""
    name = getattr(request, "param", "classical")
    settings.PROPLABEL_ENGINE = name
    monkeypatch.setattr(propagation.runner, "_engine", None)
    return name


@pytest.fixture
def live_layer(settings: Any, tmp_path: Path) -> Path:
    """The SQLite channel layer in a temp file: it carries events between threads, loops and processes."""
    path = tmp_path / "channels.sqlite3"
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "backend.sqlite_channel_layer.SQLiteChannelLayer",
            "CONFIG": {"path": str(path)},
        }
    }
    return path


class ThreadWorker:
    """Stands in for a gpu worker: each dispatched job runs in its own thread, with its own DB connection."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.results: dict[int, str] = {}
        self.hold = threading.Event()
        self.hold.set()

    def enqueue(self, job_id: int) -> None:
        def run() -> None:
            try:
                self.hold.wait(30)
                self.results[job_id] = propagation.run_job(job_id, f"thread-worker-{job_id}")
            finally:
                connection.close()

        thread = threading.Thread(target=run, name=f"job-{job_id}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self, timeout: float = 60) -> None:
        for thread in list(self.threads):
            thread.join(timeout)
            assert not thread.is_alive(), f"{thread.name} did not finish"


@pytest.fixture
def thread_worker(monkeypatch: pytest.MonkeyPatch, engine_name: str) -> Iterator[ThreadWorker]:
    worker = ThreadWorker()
    monkeypatch.setattr(propagation.queue, "_enqueue", worker.enqueue)
    yield worker
    worker.hold.set()
    worker.join()


@pytest.fixture
def object_case(make_case: Callable[..., Any], team: Any) -> Any:
    return make_case(team.project, name="blob", assignee=team.annotator, array=object_volume())


@pytest.fixture
def session_cookie() -> Callable[[Any], bytes]:
    """``session_cookie(user)`` -> the Cookie header of a logged-in browser session."""
    from django.test import Client

    def build(user: Any) -> bytes:
        client = Client()
        client.force_login(user)
        return f"sessionid={client.cookies['sessionid'].value}".encode()

    return build


@pytest.fixture
def ws_connect(session_cookie: Callable[[Any], bytes]) -> Callable[..., Any]:
    """``await ws_connect(user, case_id)`` -> (communicator, connected, first message or close code).

    A refused socket is accepted and closed at once with a reason code (4401/4403/4404): that counts as not
    connected, with the code. A socket refused in the handshake gives ``("handshake", code)``: a browser
    sees only 1006 then, never the code.
    """
    from channels.testing import WebsocketCommunicator

    from backend.asgi import application

    async def connect(user: Any, case_id: int, path: str | None = None) -> tuple[Any, bool, Any]:
        from asgiref.sync import sync_to_async

        headers = [(b"origin", b"http://testserver"), (b"host", b"testserver")]
        if user is not None:
            headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
        communicator = WebsocketCommunicator(application, path or f"/ws/cases/{case_id}/", headers=headers)
        connected, detail = await communicator.connect(timeout=10)
        if not connected:
            return communicator, False, ("handshake", detail)
        first = await communicator.receive_output(timeout=10)
        if first["type"] == "websocket.close":
            return communicator, False, first.get("code")
        return communicator, True, json.loads(first["text"])

    return connect


_file_db: dict[str, str] = {}


@pytest.fixture(autouse=True)
def file_database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Django tests here run on a migrated SQLite *file* (WAL, busy timeout) instead of the in-memory one.

    Worker threads and processes write concurrently, as in embedded mode; the shared in-memory test
    database locks whole tables and cannot be opened by another process. The switch happens once per
    session and stays (every later test is isolated by the usual flush/rollback, on the file); keeping one
    path means no thread can hold a connection to a stale file.
    """
    if not request.node.get_closest_marker("django_db"):
        return
    from django.core.management import call_command
    from django.db import connections

    request.getfixturevalue("transactional_db")
    if connections["default"].vendor != "sqlite":
        return  # PostgreSQL (DATABASE_URL): other threads and processes can use the test database as it is
    settings_dict = connections["default"].settings_dict
    if settings_dict["NAME"] == _file_db.get("path"):
        return
    path = str(tmp_path_factory.mktemp("live-db") / "proplabel.sqlite3")
    settings_dict["NAME"] = path
    connections.close_all()
    call_command("migrate", verbosity=0)
    _file_db["path"] = path
