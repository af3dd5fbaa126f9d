"""Every workflow endpoint x every actor: the status code each one gets.

Actors: the three roles of project A (the annotator and reviewer are the case's), the three roles of project
B acting on project A's objects, an outsider, and an anonymous client. Successful writes are only checked by
their status here; their effects are tested next to each feature.
"""

from __future__ import annotations

from typing import Any

import pytest

from annotator.models import Case, CaseStatus
from annotator.services import exports

ACTORS = [
    "manager",
    "annotator",
    "reviewer",
    "other_manager",
    "other_annotator",
    "other_reviewer",
    "outsider",
    "anonymous",
]
FOREIGN = {
    "other_manager": 404,
    "other_annotator": 404,
    "other_reviewer": 404,
    "outsider": 404,
    "anonymous": 401,
}


def _codes(manager: int, annotator: int, reviewer: int) -> dict[str, int]:
    return {"manager": manager, "annotator": annotator, "reviewer": reviewer, **FOREIGN}


# (name, method, url template, body, expected per actor)
ENDPOINTS: list[tuple[str, str, str, Any, dict[str, int]]] = [
    ("workflow state", "get", "/api/cases/{case}/transitions/", None, _codes(200, 200, 200)),
    ("start", "post", "/api/cases/{case}/transitions/", {"action": "start"}, _codes(403, 200, 403)),
    ("comments", "get", "/api/cases/{case}/comments/", None, _codes(200, 200, 200)),
    ("comment", "post", "/api/cases/{case}/comments/", {"text": "ok", "slice_z": 1}, _codes(201, 201, 201)),
    (
        "bulk assign",
        "post",
        "/api/projects/{project}/assignments/",
        {"case_ids": ["{case}"], "reviewer": "{reviewer}"},
        _codes(200, 403, 403),
    ),
    (
        "round-robin",
        "post",
        "/api/projects/{project}/assignments/round-robin/",
        {"case_ids": ["{case}"], "annotators": ["{annotator}"]},
        _codes(200, 403, 403),
    ),
    ("dashboard", "get", "/api/projects/{project}/dashboard/", None, _codes(200, 403, 403)),
    ("audit", "get", "/api/projects/{project}/audit/", None, _codes(200, 403, 403)),
    ("audit csv", "get", "/api/projects/{project}/audit.csv", None, _codes(200, 403, 403)),
    ("exports", "get", "/api/projects/{project}/exports/", None, _codes(200, 403, 403)),
    ("export create", "post", "/api/projects/{project}/exports/", {"format": "nifti"}, _codes(202, 403, 403)),
    # Export jobs are only known to the managers of their project: everyone else gets "not found".
    ("export status", "get", "/api/exports/{export}/", None, _codes(200, 404, 404)),
    ("export download", "get", "/api/exports/{export}/download/", None, _codes(200, 404, 404)),
    ("export delete", "delete", "/api/exports/{export}/", None, _codes(204, 404, 404)),
]


def _fill(value: Any, ids: dict[str, int]) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.endswith("}") and value[1:-1] in ids:
        return ids[value[1:-1]]
    if isinstance(value, list):
        return [_fill(item, ids) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, ids) for key, item in value.items()}
    return value


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize(
    ("name", "method", "url", "body", "expected"), ENDPOINTS, ids=[endpoint[0] for endpoint in ENDPOINTS]
)
def test_workflow_endpoint_answers_each_actor_as_the_matrix_says(
    team, other_team, outsider, make_case, api_client, actor, name, method, url, body, expected
):
    case = make_case(team.project, name="assigned", assignee=team.annotator, reviewer=team.reviewer)
    approved = make_case(team.project, name="approved")
    Case.objects.filter(pk=approved.pk).update(status=CaseStatus.APPROVED)
    job = exports.create_export_job(team.manager, team.project, "nifti", enqueue=False)
    exports.run_export_job(job.pk)
    ids = {
        "case": case.pk,
        "project": team.project.pk,
        "export": job.pk,
        "reviewer": team.reviewer.pk,
        "annotator": team.annotator.pk,
    }
    user = {"outsider": outsider, "anonymous": None}.get(actor)
    if actor not in ("outsider", "anonymous"):
        user = (other_team if actor.startswith("other_") else team).member(actor.removeprefix("other_"))
    client = api_client(user)

    kwargs = {"format": "json"} if body is not None else {}
    response = getattr(client, method)(url.format(**ids), _fill(body, ids), **kwargs)

    assert response.status_code == expected[actor], (name, actor, getattr(response, "content", b"")[:300])
