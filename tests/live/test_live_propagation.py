"""Live propagation through the real ASGI app: REST prompt -> streamed slices over the WebSocket -> revision.

Jobs run in a thread standing in for the gpu worker (``thread_worker``); events travel through the SQLite
channel layer, as they do between the worker and web processes in embedded mode.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from annotator import events
from annotator.maskcodec import decode_rle, encode_rle
from annotator.models import Case, CaseStatus, JobStatus, PropagationJob, SegmentationRevision
from annotator.services import propagation, revisions
from tests.live.helpers import BOX, engine_params, object_volume, reference_engine

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

SPACING = (2.5, 0.8, 0.8)


@pytest.fixture
def liver(team: Any) -> int:
    return team.project.label_classes.get(name="liver").pk


@pytest.fixture
def spleen(team: Any) -> int:
    return team.project.label_classes.get(name="spleen").pk


async def post(client: Any, url: str, data: dict[str, Any] | None = None) -> Any:
    return await sync_to_async(client.post)(url, data or {}, format="json")


async def get(client: Any, url: str) -> Any:
    return await sync_to_async(client.get)(url)


async def events_until(
    ws: Any, last_types: set[str], timeout: float = 60, match: int | None = None
) -> list[dict[str, Any]]:
    """Every event up to and including the first one whose type is in ``last_types`` (and, given ``match``,
    whose ``current_revision`` is ``match``)."""
    received = []
    deadline = time.monotonic() + timeout
    while True:
        event = await ws.receive_json_from(timeout=max(0.1, deadline - time.monotonic()))
        received.append(event)
        if event["type"] in last_types and (match is None or event.get("current_revision") == match):
            return received


@sync_to_async
def labels_of(revision_id: int) -> np.ndarray:
    return revisions.read_label_volume(
        SegmentationRevision.objects.select_related("case__volume").get(pk=revision_id)
    )


@sync_to_async
def current_revision(case: Any) -> int | None:
    return Case.objects.get(pk=case.pk).current_revision_id


class SlowEngine:
    """The real engine, but every streamed slice takes ``delay`` seconds (so a job can be caught mid-run)."""

    def __init__(self, engine: Any, delay: float) -> None:
        self.engine, self.delay = engine, delay

    def propagate(self, *args: Any, **kwargs: Any) -> Any:
        for step in self.engine.propagate(*args, **kwargs):
            time.sleep(self.delay)
            yield step

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


@pytest.fixture
def slow_engine(monkeypatch: pytest.MonkeyPatch, engine_name: str) -> None:
    real = propagation.get_engine()
    slow = propagation.LoadedEngine(SlowEngine(real.engine, 0.15), real.name, real.note)
    monkeypatch.setattr(propagation, "get_engine", lambda: slow)


@pytest.mark.parametrize("engine_name", engine_params(), indirect=True)
async def test_a_box_prompt_streams_slices_outward_then_saves_what_segment_returns(
    engine_name, live_layer, thread_worker, object_case, team, ws_connect, api_client, liver
):
    from ml.engine import BoxPrompt

    ws, connected, state = await ws_connect(team.annotator, object_case.pk)
    assert connected
    assert state["type"] == "state" and state["job"] is None and state["current_revision"] is None

    started = time.monotonic()
    response = await post(
        api_client(team.annotator),
        f"/api/cases/{object_case.pk}/propagations/",
        {"label": liver, "prompt": BOX, "base_revision": None},
    )
    assert response.status_code == 202, response.content
    job = response.json()
    assert job["status"] == "queued" and job["queue_position"] == 0 and job["id"]

    events = await events_until(ws, {"job.done", "job.failed"})
    first_slice_after = time.monotonic() - started
    await ws.disconnect()
    types = [event["type"] for event in events]
    assert types[-1] == "job.done", events[-1]
    assert "job.started" in types and types.index("job.started") < types.index("slice")
    slices = [event for event in events if event["type"] == "slice"]
    assert all(event["job"] == job["id"] and event["label_value"] == 1 for event in slices)

    # The prompt slice first, then each direction strictly outward; the slice refiner's re-drawn slices (the
    # learned engine's) come only after both directions ended.
    assert (slices[0]["z"], slices[0]["direction"]) == (BOX["z"], "prompt")
    directions = [event["direction"] for event in slices]
    if "refined" in directions:
        assert set(directions[directions.index("refined") :]) == {"refined"}
    ups = [event["z"] for event in slices if event["direction"] == "up"]
    downs = [event["z"] for event in slices if event["direction"] == "down"]
    assert ups == list(range(BOX["z"] + 1, BOX["z"] + 1 + len(ups))) and len(ups) >= 4
    assert downs == list(range(BOX["z"] - 1, BOX["z"] - 1 - len(downs), -1)) and len(downs) >= 4
    assert [event["done"] for event in slices] == list(range(1, len(slices) + 1))
    assert (slices[-1]["done_up"], slices[-1]["done_down"]) == (len(ups), len(downs))

    # The saved revision is engine.segment for the same prompt, and matches what was streamed.
    expected = reference_engine(engine_name).segment(object_volume(), SPACING, BoxPrompt(12, 13, 11, 27, 27))
    saved = await labels_of(events[-1]["revision"])
    assert np.array_equal(saved == 1, expected)
    assert set(np.unique(saved)) <= {0, 1}
    latest = {event["z"]: event for event in slices}  # a refined slice replaces its earlier event
    for z, event in latest.items():
        assert np.array_equal(decode_rle(event["rle"], tuple(event["shape"])), expected[z])
    assert await current_revision(object_case) == events[-1]["revision"]
    job_row = await sync_to_async(PropagationJob.objects.get)(pk=job["id"])
    assert job_row.status == JobStatus.SUCCEEDED and job_row.options["engine"] == engine_name
    assert job_row.first_slice_at is not None and first_slice_after < 30


async def test_a_refinement_makes_a_new_revision_and_undo_redo_move_between_them(
    live_layer, thread_worker, object_case, team, ws_connect, api_client, liver
):
    client = api_client(team.annotator)
    ws, connected, _ = await ws_connect(team.annotator, object_case.pk)
    assert connected
    await post(
        client,
        f"/api/cases/{object_case.pk}/propagations/",
        {"label": liver, "prompt": BOX, "base_revision": None},
    )
    first = (await events_until(ws, {"job.done", "job.failed"}))[-1]
    assert first["type"] == "job.done"
    first_labels = await labels_of(first["revision"])

    # The annotator erases the left half of the object on slice 12 and re-propagates from there.
    edited = first_labels[12] == 1
    edited[:, :19] = False
    response = await post(
        client,
        f"/api/cases/{object_case.pk}/refinements/",
        {
            "label": liver,
            "base_revision": first["revision"],
            "edited_slices": [{"z": 12, "rle": encode_rle(edited)}],
        },
    )
    assert response.status_code == 202, response.content
    events = await events_until(ws, {"job.done", "job.failed"})
    assert events[-1]["type"] == "job.done", events[-1]
    refined_slices = [event for event in events if event["type"] == "slice"]
    assert refined_slices[0]["z"] == 12 and refined_slices[0]["direction"] == "prompt"
    second = events[-1]["revision"]
    second_labels = await labels_of(second)
    assert np.array_equal(second_labels[12] == 1, edited)
    assert not np.array_equal(second_labels, first_labels)

    undo = await post(client, f"/api/cases/{object_case.pk}/undo/", {"base_revision": second})
    assert undo.status_code == 200 and undo.json()["current_revision"] == first["revision"]
    revision_event = await events_until(ws, {"revision"}, match=first["revision"])
    assert revision_event[-1]["current_revision"] == first["revision"]
    redo = await post(client, f"/api/cases/{object_case.pk}/redo/")
    assert redo.status_code == 200 and redo.json()["current_revision"] == second
    assert await current_revision(object_case) == second
    assert (await post(client, f"/api/cases/{object_case.pk}/redo/")).status_code == 409
    await ws.disconnect()


async def test_refused_sockets_are_told_why_and_never_get_events(
    live_layer, object_case, team, other_team, ws_connect, make_case
):
    # A case of the same project that is not assigned to this annotator is not theirs.
    unassigned = await sync_to_async(make_case)(team.project, name="not mine")
    refusals = [
        (None, object_case.pk, 4401),  # not signed in
        (other_team.manager, object_case.pk, 4404),  # another project: existence does not leak
        (team.annotator, 999_999, 4404),  # no such case
        (team.annotator, unassigned.pk, 4403),  # their project, not their case
    ]
    refused = []
    for user, case_id, expected in refusals:
        ws, connected, code = await ws_connect(user, case_id)
        assert (connected, code) == (False, expected), (user, case_id)
        refused.append(ws)
    # The project's manager may watch; what the browser sends is ignored (push only).
    ws, connected, state = await ws_connect(team.manager, object_case.pk)
    assert connected and state["type"] == "state"
    await ws.send_to(text_data="not json {")
    await ws.send_json_to({"type": "propagate", "prompt": BOX})
    assert await ws.receive_nothing(timeout=0.3)

    # An event for both cases reaches the watching manager and none of the refused sockets.
    layer = get_channel_layer()
    for case_id in (object_case.pk, unassigned.pk):
        await layer.group_send(
            events.case_group(case_id),
            {"type": events.CONSUMER_HANDLER, "event": {"type": "comment", "case": case_id}},
        )
    assert (await ws.receive_json_from(timeout=10))["type"] == "comment"
    for socket in refused:
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()
    await ws.disconnect()


async def test_a_new_prompt_for_the_same_label_supersedes_the_running_job(
    live_layer, thread_worker, slow_engine, object_case, team, ws_connect, api_client, liver
):
    client = api_client(team.annotator)
    ws, connected, _ = await ws_connect(team.annotator, object_case.pk)
    assert connected
    url = f"/api/cases/{object_case.pk}/propagations/"
    first = (await post(client, url, {"label": liver, "prompt": BOX, "base_revision": None})).json()
    await events_until(ws, {"slice"})
    second_prompt = {"type": "point", "z": 10, "y": 20, "x": 19}
    response = await post(client, url, {"label": liver, "prompt": second_prompt, "base_revision": None})
    assert response.status_code == 202
    second = response.json()

    events = await events_until(ws, {"job.done", "job.failed"})
    cancelled = [event for event in events if event["type"] == "job.cancelled"]
    assert [event["job"]["id"] for event in cancelled] == [first["id"]]
    assert (
        cancelled[0]["job"]["status"] == "superseded" and cancelled[0]["job"]["superseded_by"] == second["id"]
    )
    assert events[-1]["type"] == "job.done" and events[-1]["job"]["id"] == second["id"]
    first_row = await sync_to_async(PropagationJob.objects.get)(pk=first["id"])
    assert first_row.status == JobStatus.SUPERSEDED and first_row.result_revision_id is None
    assert await sync_to_async(SegmentationRevision.objects.filter(case=object_case).count)() == 1
    await ws.disconnect()


async def test_cancel_stops_a_running_job_between_slices_and_saves_nothing(
    live_layer, thread_worker, slow_engine, object_case, team, ws_connect, api_client, liver
):
    client = api_client(team.annotator)
    ws, connected, _ = await ws_connect(team.annotator, object_case.pk)
    assert connected
    job = (
        await post(
            client,
            f"/api/cases/{object_case.pk}/propagations/",
            {"label": liver, "prompt": BOX, "base_revision": None},
        )
    ).json()
    await events_until(ws, {"slice"})
    response = await post(client, f"/api/jobs/{job['id']}/cancel/")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    events = await events_until(ws, {"job.cancelled", "job.done", "job.failed"})
    assert events[-1]["type"] == "job.cancelled" and events[-1]["job"]["status"] == "cancelled"
    row = await sync_to_async(PropagationJob.objects.get)(pk=job["id"])
    assert row.status == JobStatus.CANCELLED and row.slices_done < 17
    assert await current_revision(object_case) is None
    assert (await post(client, f"/api/jobs/{job['id']}/cancel/")).status_code == 409
    await ws.disconnect()


async def test_a_reconnecting_browser_gets_the_slices_already_streamed(
    live_layer, thread_worker, slow_engine, object_case, team, ws_connect, api_client, liver
):
    client = api_client(team.annotator)
    ws, connected, _ = await ws_connect(team.annotator, object_case.pk)
    job = (
        await post(
            client,
            f"/api/cases/{object_case.pk}/propagations/",
            {"label": liver, "prompt": BOX, "base_revision": None},
        )
    ).json()
    seen = [event for event in await events_until(ws, {"slice"}) if event["type"] == "slice"]
    seen += [event for event in await events_until(ws, {"slice"}) if event["type"] == "slice"]
    await ws.disconnect()

    late, connected, state = await ws_connect(team.annotator, object_case.pk)
    assert connected and state["job"]["id"] == job["id"] and state["job"]["status"] == "running"
    caught_up = {item["z"]: item["rle"] for item in state["slices"]}
    assert all(caught_up[event["z"]] == event["rle"] for event in seen)
    events = await events_until(late, {"job.done", "job.failed"})
    assert events[-1]["type"] == "job.done"
    await late.disconnect()


async def test_a_write_on_a_stale_revision_gets_409_and_loses_nothing(
    live_layer, thread_worker, object_case, team, api_client, liver
):
    client = api_client(team.annotator)
    mask = np.zeros((40, 40), dtype=bool)
    mask[15:25, 15:25] = True
    saved = await post(
        client,
        f"/api/cases/{object_case.pk}/revisions/",
        {
            "label": liver,
            "base_revision": None,
            "edited_slices": [{"z": 5, "rle": encode_rle(mask)}],
        },
    )
    assert saved.status_code == 201, saved.content
    revision = saved.json()["id"]

    # A second editor still looking at the empty case.
    other = api_client(team.manager)
    stale_prompt = await post(
        other,
        f"/api/cases/{object_case.pk}/propagations/",
        {"label": liver, "prompt": BOX, "base_revision": None},
    )
    assert stale_prompt.status_code == 409 and stale_prompt.json()["current_revision"] == revision
    stale_save = await post(
        other,
        f"/api/cases/{object_case.pk}/revisions/",
        {
            "label": liver,
            "base_revision": None,
            "edited_slices": [{"z": 6, "rle": encode_rle(mask)}],
        },
    )
    assert stale_save.status_code == 409
    assert await current_revision(object_case) == revision
    assert await sync_to_async(PropagationJob.objects.count)() == 0
    labels = await labels_of(revision)
    assert np.array_equal(labels[5] == 1, mask) and labels.sum() == mask.sum()


async def test_locked_labels_are_never_overwritten(
    live_layer, thread_worker, make_case, team, ws_connect, api_client, liver, spleen
):
    # given: spleen (2) already drawn over part of the object, and locked
    base = np.zeros((24, 40, 40), dtype=np.uint8)
    base[8:16, 14:26, 10:18] = 2
    case = await sync_to_async(make_case)(
        team.project, name="locked", assignee=team.annotator, array=object_volume(), label=base
    )
    await sync_to_async(Case.objects.filter(pk=case.pk).update)(locked_labels=[2])
    client = api_client(team.annotator)
    ws, connected, state = await ws_connect(team.annotator, case.pk)
    assert connected
    # when: the liver (1) is propagated over the same place
    response = await post(
        client,
        f"/api/cases/{case.pk}/propagations/",
        {"label": liver, "prompt": BOX, "base_revision": state["current_revision"]},
    )
    assert response.status_code == 202
    done = (await events_until(ws, {"job.done", "job.failed"}))[-1]
    assert done["type"] == "job.done"
    # then: every spleen voxel is still spleen, liver only went where there was background
    labels = await labels_of(done["revision"])
    assert np.array_equal(labels == 2, base == 2)
    assert (labels == 1).sum() > 100
    # and the locked label itself cannot be propagated
    refused = await post(
        client,
        f"/api/cases/{case.pk}/propagations/",
        {"label": spleen, "prompt": BOX, "base_revision": done["revision"]},
    )
    assert refused.status_code == 409 and refused.json()["code"] == "label_locked"
    await ws.disconnect()


@pytest.mark.parametrize(
    ("who", "change", "status_code"),
    [
        ("annotator", {"prompt": {**BOX, "z": 24}}, 400),
        ("annotator", {"prompt": {**BOX, "x1": 40}}, 400),
        ("annotator", {"prompt": {"type": "point", "z": 3, "y": -1, "x": 2}}, 400),
        ("annotator", {"prompt": {"type": "mask", "z": 3, "rle": [10, 5]}}, 400),
        ("annotator", {"label": 999_999}, 400),
        ("annotator", {"z_min": 13}, 400),
        ("reviewer", {}, 403),
        ("outsider", {}, 404),
        ("annotator", {"case_status": CaseStatus.IN_REVIEW}, 409),
    ],
)
async def test_bad_prompts_and_forbidden_cases_get_4xx_and_no_job(
    live_layer, thread_worker, object_case, team, outsider, api_client, who, change, status_code, liver
):
    await sync_to_async(Case.objects.filter(pk=object_case.pk).update)(
        reviewer=team.reviewer, status=change.pop("case_status", CaseStatus.IN_PROGRESS)
    )
    user = outsider if who == "outsider" else team.member(who)
    body = {"label": liver, "prompt": BOX, "base_revision": None, **change}
    response = await post(api_client(user), f"/api/cases/{object_case.pk}/propagations/", body)
    assert response.status_code == status_code, response.content
    assert response.json()["detail"]
    assert await sync_to_async(PropagationJob.objects.count)() == 0
    assert not thread_worker.threads


async def test_one_user_cannot_flood_the_workers(
    live_layer, thread_worker, make_case, team, other_team, api_client, liver
):
    thread_worker.hold.clear()  # workers busy: nothing finishes while the queue builds up
    flooder = api_client(team.manager)
    flood = []
    for index in range(3):
        case = await sync_to_async(make_case)(team.project, name=f"flood {index}", array=object_volume())
        response = await post(
            flooder,
            f"/api/cases/{case.pk}/propagations/",
            {"label": liver, "prompt": BOX, "base_revision": None},
        )
        flood.append(response.json()["id"])
    other_case = await sync_to_async(make_case)(other_team.project, name="other", array=object_volume())
    other = (
        await post(
            api_client(other_team.manager),
            f"/api/cases/{other_case.pk}/propagations/",
            {
                "label": await sync_to_async(lambda: other_team.project.label_classes.get(name="liver").pk)(),
                "prompt": BOX,
                "base_revision": None,
            },
        )
    ).json()["id"]

    # Only one job per user is handed to the workers; the other user's job comes right after the first.
    assert len(thread_worker.threads) == 2
    positions = {
        job: (
            await get(flooder if job in flood else api_client(other_team.manager), f"/api/jobs/{job}/")
        ).json()["queue_position"]
        for job in [*flood, other]
    }
    assert positions == {flood[0]: 0, other: 1, flood[1]: 2, flood[2]: 3}

    thread_worker.hold.set()
    deadline = time.monotonic() + 120
    while await sync_to_async(PropagationJob.objects.filter(status__in=["queued", "running"]).count)():
        assert time.monotonic() < deadline, "jobs did not drain"
        await sync_to_async(time.sleep)(0.1)
    statuses = await sync_to_async(lambda: set(PropagationJob.objects.values_list("status", flat=True)))()
    assert statuses == {JobStatus.SUCCEEDED}


async def test_missing_learned_weights_fall_back_to_classical_and_the_job_says_so(
    live_layer, thread_worker, object_case, team, liver, ws_connect, api_client, settings, tmp_path
):
    settings.PROPLABEL_ENGINE = "learned"
    settings.PROPLABEL_WEIGHTS_DIR = str(tmp_path / "no-weights-here")
    ws, connected, _ = await ws_connect(team.annotator, object_case.pk)
    assert connected
    job = (
        await post(
            api_client(team.annotator),
            f"/api/cases/{object_case.pk}/propagations/",
            {"label": liver, "prompt": BOX, "base_revision": None},
        )
    ).json()
    events = await events_until(ws, {"job.done", "job.failed"})
    assert events[-1]["type"] == "job.done"
    started = next(event for event in events if event["type"] == "job.started")
    assert started["job"]["engine"] == "classical" and "weights" in started["job"]["engine_note"]
    row = await sync_to_async(PropagationJob.objects.get)(pk=job["id"])
    assert row.options["engine"] == "classical" and "learned weights missing" in row.options["engine_note"]
    await ws.disconnect()


async def test_an_engine_that_cannot_load_fails_the_job_with_the_reason(
    live_layer, thread_worker, object_case, team, liver, ws_connect, api_client, monkeypatch
):
    def broken() -> Any:
        raise ValueError("weights file is corrupt")

    monkeypatch.setattr(propagation, "get_engine", broken)
    ws, connected, _ = await ws_connect(team.annotator, object_case.pk)
    assert connected
    job = (
        await post(
            api_client(team.annotator),
            f"/api/cases/{object_case.pk}/propagations/",
            {"label": liver, "prompt": BOX, "base_revision": None},
        )
    ).json()
    failed = (await events_until(ws, {"job.done", "job.failed"}))[-1]
    assert failed["type"] == "job.failed" and "weights file is corrupt" in failed["error"]
    row = await sync_to_async(PropagationJob.objects.get)(pk=job["id"])
    assert row.status == JobStatus.FAILED and "could not be loaded" in row.error
    assert await current_revision(object_case) is None
    await ws.disconnect()


async def test_scripts_connect_with_a_token_and_the_case_reviewer_may_watch(
    live_layer, object_case, team, ws_connect
):
    from rest_framework.authtoken.models import Token

    await sync_to_async(Case.objects.filter(pk=object_case.pk).update)(reviewer=team.reviewer)
    # The reviewer of this case, with a session cookie.
    ws, connected, state = await ws_connect(team.reviewer, object_case.pk)
    assert connected and state["type"] == "state" and state["case"] == object_case.pk
    await ws.disconnect()
    # A script with a token and no cookie; a wrong token is anonymous.
    token = await sync_to_async(lambda: Token.objects.create(user=team.annotator).key)()
    ws, connected, state = await ws_connect(
        None, object_case.pk, path=f"/ws/cases/{object_case.pk}/?token={token}"
    )
    assert connected and state["type"] == "state"
    await ws.disconnect()
    _, connected, code = await ws_connect(
        None, object_case.pk, path=f"/ws/cases/{object_case.pk}/?token=not-a-token"
    )
    assert (connected, code) == (False, 4401)
