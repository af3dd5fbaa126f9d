"""Fixtures shared by every Django test area (api, live, workflow, e2e, distributed).

The standing cast (healthchecks style): a project with a manager, an annotator and a reviewer; a second
project with its own three members; an outsider who belongs to no project. ``make_case`` builds a case with
a small generated volume through the same service the importer uses, so no shared data is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The SQLite test database is a file, not Django's in-memory default.

    Embedded mode shares one SQLite file between threads and processes, and tests do the same (WebSocket
    consumers, worker threads, worker processes). An in-memory database can never be closed in a thread
    that touched it, so a later test could read a stale database there; a file can.
    """
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("database") / "test.sqlite3")


@pytest.fixture(autouse=True)
def _isolated_files(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """Media, work folders and password hashing per test: nothing touches var/ and logins are fast."""
    if "settings" not in request.fixturenames and not _uses_django(request):
        yield
        return
    settings = request.getfixturevalue("settings")
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.VAR_DIR = tmp_path / "var"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    yield


def _uses_django(request: pytest.FixtureRequest) -> bool:
    names = set(request.fixturenames)
    return bool(
        request.node.get_closest_marker("django_db")
        or names & {"db", "transactional_db", "client", "admin_client", "team", "other_team", "make_case"}
    )


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


# --- actors -----------------------------------------------------------------------------------------------


@dataclass
class Team:
    project: Any
    manager: Any
    annotator: Any
    reviewer: Any

    def member(self, role: str) -> Any:
        return {"manager": self.manager, "annotator": self.annotator, "reviewer": self.reviewer}[role]


def make_user(username: str, *, can_create_projects: bool = False) -> Any:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username=username, password=f"{username}-password")
    if can_create_projects:
        user.user_permissions.add(Permission.objects.get(codename="add_project"))
    return user


def make_team(prefix: str, project_name: str) -> Team:
    from annotator.models import Membership, Project, Role

    manager = make_user(f"{prefix}manager", can_create_projects=True)
    annotator = make_user(f"{prefix}annotator")
    reviewer = make_user(f"{prefix}reviewer")
    project = Project.objects.create(name=project_name, created_by=manager)
    for user, role in ((manager, Role.MANAGER), (annotator, Role.ANNOTATOR), (reviewer, Role.REVIEWER)):
        Membership.objects.create(project=project, user=user, role=role)
    project.label_classes.create(name="liver", value=1, color="#e6194b")
    project.label_classes.create(name="spleen", value=2, color="#3cb44b")
    return Team(project=project, manager=manager, annotator=annotator, reviewer=reviewer)


@pytest.fixture
def team(db: None) -> Team:
    return make_team("", "Liver study")


@pytest.fixture
def other_team(db: None) -> Team:
    return make_team("other_", "Other hospital")


@pytest.fixture
def outsider(db: None) -> Any:
    return make_user("outsider")


@pytest.fixture
def api_client() -> Callable[[Any], Any]:
    """``api_client(user)`` -> an APIClient authenticated as ``user`` (``None``: anonymous)."""
    from rest_framework.test import APIClient

    def build(user: Any) -> Any:
        client = APIClient()
        if user is not None:
            client.force_authenticate(user)
        return client

    return build


# --- volumes and cases ------------------------------------------------------------------------------------


def phantom_volume(shape: tuple[int, int, int] = (6, 20, 24), seed: int = 0) -> np.ndarray:
    """int16 CT-like ``(Z, Y, X)`` volume: -1000 air, a 40 HU body, a 120 HU ellipsoid in the middle."""
    z, y, x = np.indices(shape, dtype=np.float32)
    centre = [(size - 1) / 2 for size in shape]
    radius = [max(size / 3, 1.0) for size in shape]
    distance = sum(((axis - c) / r) ** 2 for axis, c, r in zip((z, y, x), centre, radius, strict=True))
    volume = np.full(shape, -1000, dtype=np.int16)
    volume[distance <= 2.0] = 40
    volume[distance <= 1.0] = 120
    noise = np.random.default_rng(seed).integers(-5, 6, size=shape)
    return (volume + noise).astype(np.int16)


def loaded_volume(
    array: np.ndarray, spacing: tuple[float, float, float] = (2.5, 0.8, 0.8), name: str = "case"
) -> Any:
    from annotator.imaging import LoadedVolume

    # (z, y, x, 1) -> RAS: x runs right, y anterior, z superior (the NIfTI i, j, k order reversed).
    affine = np.array(
        [
            [0.0, 0.0, spacing[2], -100.0],
            [0.0, spacing[1], 0.0, -50.0],
            [spacing[0], 0.0, 0.0, 20.0],
            [0, 0, 0, 1],
        ]
    )
    return LoadedVolume(
        array=array,
        spacing=spacing,
        affine=affine,
        modality="CT",
        name=name,
        source_format="nifti",
        source_meta={"nifti_affine": affine.tolist()},
    )


@pytest.fixture
def make_case(db: None) -> Callable[..., Any]:
    """``make_case(project, name=..., assignee=..., reviewer=..., array=..., label=...)`` -> Case."""
    from annotator.models import Case
    from annotator.services import cases

    def build(
        project: Any,
        *,
        name: str = "case",
        assignee: Any = None,
        reviewer: Any = None,
        array: np.ndarray | None = None,
        spacing: tuple[float, float, float] = (2.5, 0.8, 0.8),
        label: np.ndarray | None = None,
    ) -> Any:
        volume = phantom_volume() if array is None else array
        case = cases.create_case_with_volume(
            project, loaded_volume(volume, spacing, name), actor=None, name=name, label=label
        )
        Case.objects.filter(pk=case.pk).update(assignee=assignee, reviewer=reviewer)
        case.refresh_from_db()
        return case

    return build


@pytest.fixture(scope="session", autouse=True)
def _test_broker_folders(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Messages sent by tests land in a temporary filesystem broker, never in the repository's var/."""
    from backend.celery import app, ensure_embedded_broker_folders

    if str(app.conf.broker_url or "").startswith("filesystem"):
        root = tmp_path_factory.mktemp("celery")
        # The Django-namespaced key is the one Celery reads (config_from_object(namespace="CELERY")).
        app.conf.CELERY_BROKER_TRANSPORT_OPTIONS = {
            "data_folder_in": str(root / "queue"),
            "data_folder_out": str(root / "queue"),
            "control_folder": str(root / "control"),
            "processed_folder": str(root / "processed"),
            "store_processed": False,
        }
        ensure_embedded_broker_folders()


@pytest.fixture
def celery_eager() -> Iterator[None]:
    """Run ``.delay()`` in-process. Only for flow tests of the io path (see tests/api/test_imports.py)."""
    from backend.celery import app

    previous = app.conf.CELERY_TASK_ALWAYS_EAGER, app.conf.get("CELERY_TASK_EAGER_PROPAGATES", False)
    app.conf.CELERY_TASK_ALWAYS_EAGER, app.conf.CELERY_TASK_EAGER_PROPAGATES = True, True
    try:
        yield
    finally:
        app.conf.CELERY_TASK_ALWAYS_EAGER, app.conf.CELERY_TASK_EAGER_PROPAGATES = previous


@pytest.fixture
def stored_files(settings: Any) -> Callable[[], list[str]]:
    """``stored_files()`` -> storage-relative names of every file under MEDIA_ROOT."""

    def collect() -> list[str]:
        root = Path(settings.MEDIA_ROOT)
        if not root.exists():
            return []
        return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())

    return collect


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser (e2e) tests run last: Playwright's sync API keeps an event loop running in the main thread
    after its session, which would make every later asyncio test fail with "cannot be called from a running
    event loop"."""
    browser = [item for item in items if item.get_closest_marker("e2e")]
    if browser:
        others = [item for item in items if not item.get_closest_marker("e2e")]
        items[:] = others + browser
