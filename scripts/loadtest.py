"""Bounded load test of distributed mode, on 127.0.0.1 only: 20 simulated annotators against 1, then 2 gpu workers.

    .venv/bin/python scripts/loadtest.py [--annotators 20] [--rounds 2] [--slice-delay 0]

It starts its own stack (PostgreSQL, Redis, Daphne, Celery workers; tests/distributed/stack.py), creates a
project with one imported case per annotator, and then runs one phase per worker count. In a phase every
annotator, in its own thread with its own keep-alive HTTP connection and WebSocket, does ``--rounds`` times:

    browse   GET /api/cases/, GET /api/cases/{id}/, GET .../revisions/
    open     GET .../volume/, GET .../volume/voxels/, three slice PNGs
    prompt   POST .../propagations/ -> wait for job.done on the WebSocket
    refine   POST .../refinements/ (one negative click) -> wait for job.done

and the script prints REST latency (p50/p95/max, per kind of request), jobs per minute, and the checks:
no HTTP error, no failed job, and every finished job's revision present, downloadable and in the case's
history ("no lost revisions"). Exit status 1 when a check fails. Everything stops by itself: a fixed
number of rounds, and a deadline per phase (``--phase-timeout``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.distributed.flow import BOX, SHAPE, CaseSocket, nifti_bytes, object_volume  # noqa: E402
from tests.distributed.stack import HOST, Client, HttpError, Stack, wait_for  # noqa: E402


@dataclass
class Annotator:
    name: str
    client: Client
    case: int
    label: int


@dataclass
class PhaseResult:
    workers: int
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, kind: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - started
            with self.lock:
                self.latencies[kind].append(elapsed)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --- set-up ---------------------------------------------------------------------------------------------------


def prepare(stack: Stack, count: int) -> list[Annotator]:
    names = [f"annotator{index:02d}" for index in range(count)]
    stack.create_users("manager1", *names)
    manager = stack.login("manager1")
    project = manager.post("/api/projects/", {"name": "Load test"}, expect=201).json()["id"]
    label = manager.post(
        f"/api/projects/{project}/labels/", {"name": "tumour", "value": 1, "color": "#e6194b"}, expect=201
    ).json()["id"]
    data = nifti_bytes(object_volume())
    imports = []
    for name in names:
        manager.post(f"/api/projects/{project}/members/", {"username": name, "role": "annotator"}, expect=201)
        imports.append(
            manager.upload(f"/api/projects/{project}/imports/", {"files": (f"{name}.nii.gz", data)}).json()[
                "id"
            ]
        )
    annotators = []
    for name, import_id in zip(names, imports, strict=True):
        job = wait_for(
            lambda import_id=import_id: (row := manager.get(f"/api/imports/{import_id}/").json())["status"]
            not in ("queued", "running")
            and row,
            300,
            f"import {import_id}",
            stack.diagnostics,
        )
        if job["status"] != "succeeded":
            raise SystemExit(f"import failed: {job}")
        client = stack.login(name)
        user_id = client.get("/api/me/").json()["id"]
        case = job["cases"][0]["id"]
        manager.request("PATCH", f"/api/cases/{case}/", json_body={"assignee": user_id}, expect=200)
        annotators.append(Annotator(name, client, case, label))
    manager.close()
    return annotators


# --- one annotator's session ----------------------------------------------------------------------------------


def run_job(
    annotator: Annotator, socket: CaseSocket, result: PhaseResult, path: str, body: dict[str, Any]
) -> int:
    """POST a job, wait for its end on the WebSocket; returns the new current revision."""
    client = annotator.client
    job = result.timed("post job", client.post, f"/api/cases/{annotator.case}{path}", body, expect=202).json()
    started = time.perf_counter()
    end = wait_end(annotator, socket, result, job["id"])
    record = {
        "job": job["id"],
        "case": annotator.case,
        "type": end["type"],
        "seconds": time.perf_counter() - started,
    }
    if end["type"] != "job.done":
        record["error"] = end.get("error") or end["type"]
    else:
        record["revision"] = end["revision"]
    with result.lock:
        result.jobs.append(record)
    if end["type"] != "job.done":
        raise RuntimeError(f"job {job['id']} ended {end['type']}: {record.get('error')}")
    return int(end["revision"])


def wait_end(annotator: Annotator, socket: CaseSocket, result: PhaseResult, job_id: int) -> dict[str, Any]:
    """The job's end event from the WebSocket. A browser that hears nothing for a while asks the REST API;
    if the job had ended, its end event was lost on the way: counted as an error, not waited for forever."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            return socket.job_events(job_id, until={"job.done", "job.failed", "job.cancelled"}, timeout=20)[
                -1
            ]
        except AssertionError:
            job = result.timed("poll job", annotator.client.get, f"/api/jobs/{job_id}/").json()
            if job["status"] not in ("queued", "running"):
                # It may have ended between the wait and the poll: its event gets a grace period.
                try:
                    return socket.job_events(
                        job_id, until={"job.done", "job.failed", "job.cancelled"}, timeout=10
                    )[-1]
                except AssertionError:
                    pass
                with result.lock:
                    result.errors.append(
                        f"{annotator.name}: job {job_id} ended {job['status']} but no end event arrived"
                    )
                kind = "job.done" if job["status"] == "succeeded" else "job." + job["status"]
                return {"type": kind, "revision": job["result_revision"], "error": job["error"]}
    raise RuntimeError(f"job {job_id} did not end within 300 s")


def session(annotator: Annotator, rounds: int, result: PhaseResult, deadline: float) -> None:
    client, case = annotator.client, annotator.case
    socket = CaseSocket(client.port, case, str(client.token))
    try:
        state = socket.next(lambda event: event["type"] == "state", 30)
        current = state["current_revision"]
        for round_index in range(rounds):
            if time.monotonic() > deadline:
                raise RuntimeError("phase deadline reached")
            result.timed("browse", client.get, "/api/cases/")
            result.timed("browse", client.get, f"/api/cases/{case}/")
            result.timed("browse", client.get, f"/api/cases/{case}/revisions/")
            result.timed("open volume", client.get, f"/api/cases/{case}/volume/")
            result.timed("voxels", client.get, f"/api/cases/{case}/volume/voxels/")
            for z in (BOX["z"] - 10, BOX["z"], BOX["z"] + 10):
                result.timed("slice png", client.get, f"/api/cases/{case}/slices/{z}.png")
            box = dict(BOX, z=BOX["z"] + round_index)
            current = run_job(
                annotator, socket, result, "/propagations/",
                {"label": annotator.label, "prompt": box, "base_revision": current},
            )  # fmt: skip
            click = {"z": box["z"], "y": box["y0"] + 1, "x": box["x0"] + 1, "positive": False}
            current = run_job(
                annotator, socket, result, "/refinements/",
                {"label": annotator.label, "base_revision": current, "clicks": [click]},
            )  # fmt: skip
    except (HttpError, RuntimeError, AssertionError, OSError) as exc:
        with result.lock:
            result.errors.append(f"{annotator.name}: {type(exc).__name__}: {exc}")
    finally:
        socket.close()


def run_phase(
    stack: Stack, annotators: list[Annotator], workers: int, rounds: int, timeout: float
) -> PhaseResult:
    result = PhaseResult(workers)
    deadline = time.monotonic() + timeout
    threads = [
        threading.Thread(target=session, args=(a, rounds, result, deadline), name=a.name, daemon=True)
        for a in annotators
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, deadline - time.monotonic() + 30))
        if thread.is_alive():
            result.errors.append(f"{thread.name}: still running at the deadline")
    result.seconds = time.perf_counter() - started
    return result


# --- checks and report ----------------------------------------------------------------------------------------


def check_revisions(annotators: list[Annotator], results: list[PhaseResult]) -> list[str]:
    """Every finished job's revision exists, is downloadable and sits in its case's history."""
    problems = []
    by_case: dict[int, set[int]] = defaultdict(set)
    for result in results:
        for job in result.jobs:
            if "revision" in job:
                by_case[job["case"]].add(job["revision"])
    for annotator in annotators:
        history = {
            row["id"] for row in annotator.client.get(f"/api/cases/{annotator.case}/revisions/").json()
        }
        missing = by_case[annotator.case] - history
        if missing:
            problems.append(f"case {annotator.case}: revisions {sorted(missing)} are gone")
        for revision in sorted(by_case[annotator.case])[-2:]:
            response = annotator.client.get(
                f"/api/cases/{annotator.case}/revisions/{revision}/labels/", expect=None
            )
            if response.status != 200 or not response.body:
                problems.append(f"case {annotator.case}: revision {revision} labels -> {response.status}")
    return problems


def report(results: list[PhaseResult], annotators: int, rounds: int, slice_delay: float, engine: str) -> None:
    print()
    print(
        f"PropLabel load test: {annotators} annotators x {rounds} rounds (browse, open volume, prompt, refine)"
    )
    print(
        f"volume {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, engine {engine}, extra model time per slice {slice_delay * 1000:.0f} ms"
    )
    print(
        f"all traffic on {HOST}; this machine: {__import__('os').cpu_count()} CPU cores shared by every process"
    )
    header = f"{'gpu workers':>11} | {'requests':>8} | {'REST p50 ms':>11} | {'REST p95 ms':>11} | {'REST max ms':>11} | {'jobs':>4} | {'jobs/min':>8} | {'job p50 s':>9} | {'errors':>6}"
    print(header)
    print("-" * len(header))
    for r in results:
        rest = [v for kind, values in r.latencies.items() if kind != "voxels" for v in values]
        done = [j for j in r.jobs if j["type"] == "job.done"]
        rate = len(done) / (r.seconds / 60) if r.seconds else 0.0
        job_p50 = statistics.median([j["seconds"] for j in done]) if done else float("nan")
        failed = len(r.errors) + sum(1 for j in r.jobs if j["type"] != "job.done")
        print(
            f"{r.workers:>11} | {len(rest):>8} | {percentile(rest, 0.5) * 1000:>11.1f} | "
            f"{percentile(rest, 0.95) * 1000:>11.1f} | {max(rest, default=0) * 1000:>11.1f} | {len(done):>4} | "
            f"{rate:>8.1f} | {job_p50:>9.2f} | {failed:>6}"
        )
    print()
    print("per request kind, p95 ms:")
    kinds = sorted({kind for r in results for kind in r.latencies})
    for kind in kinds:
        cells = "  ".join(
            f"{r.workers} worker(s): {percentile(r.latencies[kind], 0.95) * 1000:7.1f}" for r in results
        )
        print(f"  {kind:<12} {cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="gpu worker counts, one phase each"
    )
    parser.add_argument("--slice-delay", type=float, default=0.0,
                        help="seconds added per streamed slice in the workers (simulates a slower model)")  # fmt: skip
    parser.add_argument("--engine", default="classical", choices=["classical", "learned"])
    parser.add_argument("--phase-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if not 1 <= args.annotators <= 100 or not 1 <= args.rounds <= 10 or max(args.workers) > 4:
        parser.error("bounded on purpose: 1-100 annotators, 1-10 rounds, at most 4 workers")

    # Jobs wait their turn in the broker for minutes under this load: no "lost message" re-sends meanwhile
    # (the stack's default is short, for the fault tests).
    stack = Stack(
        engine=args.engine,
        gpu_workers=max(args.workers),
        slice_delay=args.slice_delay,
        extra_env={"PROPLABEL_JOB_REDISPATCH_SECONDS": "600"},
    )
    results: list[PhaseResult] = []
    try:
        print(
            f"starting PostgreSQL, Redis, Daphne and {max(args.workers)} gpu workers on {HOST} ...",
            flush=True,
        )
        stack.start()
        annotators = prepare(stack, args.annotators)
        gpu = sorted(name for name in stack.workers if name.startswith("gpu"))
        for count in sorted(args.workers):
            for index, name in enumerate(gpu):
                worker = stack.workers[name]
                if index < count and not worker.alive:
                    stack.start_worker(name, "gpu")
                elif index >= count and worker.alive:
                    worker.stop()
            stack.wait_gpu_workers(count)
            print(f"phase: {count} gpu worker(s) ...", flush=True)
            results.append(run_phase(stack, annotators, count, args.rounds, args.phase_timeout))
        problems = check_revisions(annotators, results)
        # channels_redis drops a message for a browser whose channel is full, and says so at INFO.
        dropped = sum(
            log.read_text(errors="replace").count("over capacity in group")
            for log in (stack.root / "logs").glob("*.log")
        )
        report(results, args.annotators, args.rounds, args.slice_delay, args.engine)
        errors = [e for r in results for e in r.errors] + problems
        failed_jobs = [j for r in results for j in r.jobs if j["type"] != "job.done"]
        print()
        print(f"checks: HTTP/session errors {sum(len(r.errors) for r in results)}, failed jobs {len(failed_jobs)}, "
              f"lost revisions {len(problems)}, WebSocket messages dropped for a full channel {dropped}")  # fmt: skip
        for line in errors[:20]:
            print("  ", line)
        return 1 if errors or failed_jobs else 0
    finally:
        for annotator in locals().get("annotators", []):
            annotator.client.close()
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
