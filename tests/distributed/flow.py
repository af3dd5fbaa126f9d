"""Client-side helpers of the distributed tests: a generated NIfTI case, a WebSocket listener in a thread, label
volume download, and waiting for jobs. Everything goes over real sockets to 127.0.0.1."""

from __future__ import annotations

import gzip
import io
import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import nibabel as nib
import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.distributed.stack import HOST, Client

SHAPE = (96, 48, 48)
"""(Z, Y, X) of the generated case: an ellipsoid spanning about 80 slices, so a job streams for seconds."""
SPACING = (2.0, 1.0, 1.0)
CENTRE = (48, 24, 24)
BOX = {"type": "box", "z": 48, "y0": 14, "x0": 13, "y1": 34, "x1": 35}
TERMINAL = {"succeeded", "failed", "cancelled", "superseded"}


def object_volume() -> np.ndarray:
    """int16 ``(Z, Y, X)``: -1000 HU air, a 40 HU body cylinder, a 150 HU ellipsoid (z 8..88) inside it."""
    z, y, x = np.indices(SHAPE, dtype=np.float32)
    body = ((y - 24) / 21) ** 2 + ((x - 24) / 21) ** 2 <= 1
    blob = ((z - CENTRE[0]) / 40) ** 2 + ((y - CENTRE[1]) / 9) ** 2 + ((x - CENTRE[2]) / 10) ** 2 <= 1
    volume = np.full(SHAPE, -1000, dtype=np.int16)
    volume[body] = 40
    volume[blob] = 150
    noise = np.random.default_rng(8).integers(-4, 5, size=SHAPE)
    return (volume + noise).astype(np.int16)


def nifti_bytes(volume: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 file of a canonical ``(Z, Y, X)`` volume (NIfTI stores it as (i, j, k) = (X, Y, Z))."""
    affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
    image = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), affine)
    image.header.set_xyzt_units("mm", "sec")
    return gzip.compress(image.to_bytes())


def decode_rle(rle: list[int], shape: tuple[int, int]) -> np.ndarray:
    """The ARCHITECTURE.md mask codec, re-implemented here so the test checks the wire format itself."""
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    position, value = 0, False
    for run in rle:
        flat[position : position + run] = value
        position, value = position + run, not value
    assert position == flat.size, f"runs cover {position} of {flat.size} pixels"
    return flat.reshape(shape)


def encode_rle(mask: np.ndarray) -> list[int]:
    """Run lengths of a 2D bool mask in C order, starting with a (possibly empty) background run."""
    flat = mask.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    return ([0] if flat.size and flat[0] else []) + [int(run) for run in runs]


def label_volume(client: Client, case_id: int, revision_id: int) -> np.ndarray:
    response = client.get(f"/api/cases/{case_id}/revisions/{revision_id}/labels/")
    raw = response.body
    if response.headers.get("content-encoding") == "gzip" or raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return np.frombuffer(raw, dtype=np.uint8).reshape(SHAPE)


def wait_job(client: Client, job_id: int, timeout: float = 90) -> dict[str, Any]:
    """Poll ``GET /api/jobs/{id}/`` until the job ends (the view also sweeps jobs whose worker died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}/").json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end within {timeout}s: {job}")


class CaseSocket:
    """``/ws/cases/<id>/`` with token auth; a thread reads every event into a queue."""

    def __init__(self, port: int, case_id: int, token: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self.closed = threading.Event()
        self.ws: ClientConnection = connect(
            f"ws://{HOST}:{port}/ws/cases/{case_id}/?token={token}",
            origin=f"http://{HOST}:{port}",  # type: ignore[arg-type]
            open_timeout=10,
            max_size=2**24,
        )
        self._thread = threading.Thread(target=self._read, name=f"ws-case-{case_id}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self.ws:
                self._queue.put(json.loads(message))
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    def next(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        """The next event matching ``predicate`` (earlier non-matching ones are kept in ``events``)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [event.get("type") for event in self.events[-20:]]
                raise AssertionError(f"no matching WebSocket event within {timeout}s; last seen {seen}")
            try:
                event = self._queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            self.events.append(event)
            if predicate(event):
                return event

    def saw(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        """An event matching ``predicate``, among those already read or arriving within ``timeout``."""
        for event in self.events:
            if predicate(event):
                return event
        return self.next(predicate, timeout)

    def job_events(self, job_id: int, until: set[str], timeout: float = 90) -> list[dict[str, Any]]:
        """Every event of job ``job_id`` up to and including the first whose type is in ``until``."""
        collected: list[dict[str, Any]] = []

        def of_job(event: dict[str, Any]) -> bool:
            job = event.get("job")
            mine = (
                job == job_id if isinstance(job, int) else isinstance(job, dict) and job.get("id") == job_id
            )
            if mine:
                collected.append(event)
            return mine and event["type"] in until

        self.next(of_job, timeout)
        return collected

    def close(self) -> None:
        self.ws.close()
        self._thread.join(5)


def volume_stream(client: Client, case_id: int) -> bytes:
    """The voxel download, inflated (the server sends the stored gzip as Content-Encoding: gzip)."""
    response = client.get(f"/api/cases/{case_id}/volume/voxels/")
    return gzip.decompress(response.body) if response.body[:2] == b"\x1f\x8b" else response.body


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    buffer = io.BytesIO(data[16:24])
    width, height = int.from_bytes(buffer.read(4), "big"), int.from_bytes(buffer.read(4), "big")
    return width, height
