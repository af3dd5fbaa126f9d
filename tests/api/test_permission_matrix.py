"""Every endpoint x every actor: the status code each one gets (issue 2, "object-level permissions").

Actors: the three roles of project A, the three roles of project B acting on project A's objects, an
outsider with no project, and an anonymous client. Objects: project A, its assigned case (annotator +
reviewer set) and an unassigned case. Reads and writes are both covered; a write that succeeds is checked
by its status only here (behaviour tests live next to each feature).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

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


@dataclass
class World:
    team: Any
    other: Any
    outsider: Any
    assigned_case: Any
    unassigned_case: Any
    revision: Any
    label: Any
    annotator_membership: Any
    import_job: Any

    def actor(self, name: str) -> Any:
        if name == "anonymous":
            return None
        if name == "outsider":
            return self.outsider
        if name.startswith("other_"):
            return self.other.member(name.removeprefix("other_"))
        return self.team.member(name)


@pytest.fixture
def world(team, other_team, outsider, make_case) -> World:
    from annotator.models import ImportJob, ImportStatus

    label = np.zeros((6, 20, 24), dtype=np.uint8)
    label[2:4, 5:10, 5:10] = 1
    assigned = make_case(
        team.project, name="assigned", assignee=team.annotator, reviewer=team.reviewer, label=label
    )
    unassigned = make_case(team.project, name="unassigned")
    job = ImportJob.objects.create(
        project=team.project, created_by=team.manager, status=ImportStatus.SUCCEEDED
    )
    return World(
        team=team,
        other=other_team,
        outsider=outsider,
        assigned_case=assigned,
        unassigned_case=unassigned,
        revision=assigned.current_revision,
        label=team.project.label_classes.get(value=1),
        annotator_membership=team.project.memberships.get(user=team.annotator),
        import_job=job,
    )


def _tiny_nifti() -> io.BytesIO:
    import nibabel as nib

    buffer = io.BytesIO(nib.Nifti1Image(np.zeros((8, 8, 4), dtype=np.int16), np.eye(4)).to_bytes())
    buffer.name = "tiny.nii"
    return buffer


# Expected statuses. Shorthands: which actors get the "ok" code; members of A without the right get
# "member_denied"; everybody else authenticated gets 404 (their existence is not revealed); anonymous 401.
MANAGERS = {"manager"}
MEMBERS = {"manager", "annotator", "reviewer"}
CASE_PEOPLE = {"manager", "annotator", "reviewer"}


def expect(
    ok: set[str], ok_code: int, member_denied: int = 403, hidden: set[str] = frozenset()
) -> dict[str, int]:
    result = {}
    for actor in ACTORS:
        if actor == "anonymous":
            result[actor] = 401
        elif actor in ok:
            result[actor] = ok_code
        elif actor in MEMBERS and actor not in hidden:
            result[actor] = member_denied
        else:
            result[actor] = 404
    return result


def everyone(code: int) -> dict[str, int]:
    return {actor: (401 if actor == "anonymous" else code) for actor in ACTORS}


# (name, method, url(world), body(world) | None, format, expected statuses)
ENDPOINTS: list[tuple[str, str, Any, Any, str, dict[str, int]]] = [
    ("me", "get", lambda w: "/api/me/", None, "json", everyone(200)),
    ("list projects", "get", lambda w: "/api/projects/", None, "json", everyone(200)),
    (
        "create project",
        "post",
        lambda w: "/api/projects/",
        lambda w: {"name": "New"},
        "json",
        # Only users with the add_project permission (both managers here) may create projects.
        {**everyone(403), "manager": 201, "other_manager": 201},
    ),
    (
        "read project",
        "get",
        lambda w: f"/api/projects/{w.team.project.pk}/",
        None,
        "json",
        expect(MEMBERS, 200),
    ),
    (
        "rename project",
        "patch",
        lambda w: f"/api/projects/{w.team.project.pk}/",
        lambda w: {"name": "Renamed"},
        "json",
        expect(MANAGERS, 200),
    ),
    (
        "delete project",
        "delete",
        lambda w: f"/api/projects/{w.team.project.pk}/",
        None,
        "json",
        expect(MANAGERS, 204),
    ),
    (
        "list members",
        "get",
        lambda w: f"/api/projects/{w.team.project.pk}/members/",
        None,
        "json",
        expect(MEMBERS, 200),
    ),
    (
        "add member",
        "post",
        lambda w: f"/api/projects/{w.team.project.pk}/members/",
        lambda w: {"user_id": w.outsider.pk, "role": "annotator"},
        "json",
        expect(MANAGERS, 201),
    ),
    (
        "change member role",
        "patch",
        lambda w: f"/api/projects/{w.team.project.pk}/members/{w.annotator_membership.pk}/",
        lambda w: {"role": "reviewer"},
        "json",
        expect(MANAGERS, 200),
    ),
    (
        "remove member",
        "delete",
        lambda w: f"/api/projects/{w.team.project.pk}/members/{w.annotator_membership.pk}/",
        None,
        "json",
        expect(MANAGERS, 204),
    ),
    (
        "list labels",
        "get",
        lambda w: f"/api/projects/{w.team.project.pk}/labels/",
        None,
        "json",
        expect(MEMBERS, 200),
    ),
    (
        "create label",
        "post",
        lambda w: f"/api/projects/{w.team.project.pk}/labels/",
        lambda w: {"name": "aorta", "value": 3, "color": "#ff0000"},
        "json",
        expect(MANAGERS, 201),
    ),
    (
        "recolour label",
        "patch",
        lambda w: f"/api/projects/{w.team.project.pk}/labels/{w.label.pk}/",
        lambda w: {"color": "#00ff00"},
        "json",
        expect(MANAGERS, 200),
    ),
    (
        "delete label",
        "delete",
        lambda w: f"/api/projects/{w.team.project.pk}/labels/{w.label.pk}/",
        None,
        "json",
        expect(MANAGERS, 204),
    ),
    (
        "list imports",
        "get",
        lambda w: f"/api/projects/{w.team.project.pk}/imports/",
        None,
        "json",
        expect(MANAGERS, 200),
    ),
    (
        "upload import",
        "post",
        lambda w: f"/api/projects/{w.team.project.pk}/imports/",
        lambda w: {"files": [_tiny_nifti()]},
        "multipart",
        expect(MANAGERS, 202),
    ),
    (
        "read import job",
        "get",
        lambda w: f"/api/imports/{w.import_job.pk}/",
        None,
        "json",
        # Import jobs are a manager tool: other members are told it does not exist.
        expect(MANAGERS, 200, member_denied=404),
    ),
    ("list cases", "get", lambda w: "/api/cases/", None, "json", everyone(200)),
    (
        "read assigned case",
        "get",
        lambda w: f"/api/cases/{w.assigned_case.pk}/",
        None,
        "json",
        expect(CASE_PEOPLE, 200),
    ),
    (
        "read unassigned case",
        "get",
        lambda w: f"/api/cases/{w.unassigned_case.pk}/",
        None,
        "json",
        expect(MANAGERS, 200, member_denied=404),
    ),
    (
        "assign case",
        "patch",
        lambda w: f"/api/cases/{w.assigned_case.pk}/",
        lambda w: {"assignee": w.team.manager.pk},
        "json",
        expect(MANAGERS, 200),
    ),
    (
        "lock labels",
        "patch",
        lambda w: f"/api/cases/{w.assigned_case.pk}/",
        lambda w: {"locked_labels": [1]},
        "json",
        expect({"manager", "annotator"}, 200),
    ),
    (
        "assign unassigned case",
        "patch",
        lambda w: f"/api/cases/{w.unassigned_case.pk}/",
        lambda w: {"assignee": w.team.annotator.pk},
        "json",
        expect(MANAGERS, 200, member_denied=404),
    ),
    (
        "delete case",
        "delete",
        lambda w: f"/api/cases/{w.assigned_case.pk}/",
        None,
        "json",
        expect(MANAGERS, 204),
    ),
    (
        "volume metadata",
        "get",
        lambda w: f"/api/cases/{w.assigned_case.pk}/volume/",
        None,
        "json",
        expect(CASE_PEOPLE, 200),
    ),
    (
        "volume voxels",
        "get",
        lambda w: f"/api/cases/{w.assigned_case.pk}/volume/voxels/",
        None,
        "json",
        expect(CASE_PEOPLE, 200),
    ),
    (
        "unassigned voxels",
        "get",
        lambda w: f"/api/cases/{w.unassigned_case.pk}/volume/voxels/",
        None,
        "json",
        expect(MANAGERS, 200, member_denied=404),
    ),
    (
        "slice png",
        "get",
        lambda w: f"/api/cases/{w.assigned_case.pk}/slices/2.png",
        None,
        "json",
        expect(CASE_PEOPLE, 200),
    ),
    (
        "list revisions",
        "get",
        lambda w: f"/api/cases/{w.assigned_case.pk}/revisions/",
        None,
        "json",
        expect(CASE_PEOPLE, 200),
    ),
    (
        "read revision",
        "get",
        lambda w: f"/api/cases/{w.assigned_case.pk}/revisions/{w.revision.pk}/",
        None,
        "json",
        expect(CASE_PEOPLE, 200),
    ),
    (
        "revision labels",
        "get",
        lambda w: f"/api/cases/{w.assigned_case.pk}/revisions/{w.revision.pk}/labels/",
        None,
        "json",
        expect(CASE_PEOPLE, 200),
    ),
    (
        "revision nifti",
        "get",
        lambda w: f"/api/cases/{w.assigned_case.pk}/revisions/{w.revision.pk}/nifti/",
        None,
        "json",
        expect(CASE_PEOPLE, 200),
    ),
    (
        "edit revision",
        "patch",
        lambda w: f"/api/cases/{w.assigned_case.pk}/revisions/{w.revision.pk}/",
        lambda w: {"message": "changed"},
        "json",
        # Revisions are immutable: nobody may edit one, whoever asks.
        everyone(405),
    ),
]


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize(
    ("name", "method", "url", "body", "fmt", "expected"),
    ENDPOINTS,
    ids=[endpoint[0] for endpoint in ENDPOINTS],
)
def test_each_actor_gets_the_expected_status(
    world, api_client, actor, name, method, url, body, fmt, expected
):
    client = api_client(world.actor(actor))
    kwargs: dict[str, Any] = {}
    if body is not None:
        kwargs = {"data": body(world), "format": fmt}
    response = getattr(client, method)(url(world), **kwargs)
    assert response.status_code == expected[actor], (name, actor, getattr(response, "data", None))


def test_lists_show_each_user_only_what_they_may_see(world, api_client):
    def case_names(user: Any) -> set[str]:
        return {case["name"] for case in api_client(user).get("/api/cases/").json()}

    def project_names(user: Any) -> set[str]:
        return {project["name"] for project in api_client(user).get("/api/projects/").json()}

    assert case_names(world.team.manager) == {"assigned", "unassigned"}
    assert case_names(world.team.annotator) == {"assigned"}
    assert case_names(world.team.reviewer) == {"assigned"}
    assert case_names(world.other.manager) == set()
    assert case_names(world.outsider) == set()
    assert project_names(world.team.annotator) == {"Liver study"}
    assert project_names(world.other.reviewer) == {"Other hospital"}
    assert project_names(world.outsider) == set()
