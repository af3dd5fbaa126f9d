"""`seed_demo` (offline: the generated phantom) gives the demo annotator a case that lists and renders."""

from __future__ import annotations

import pytest
from django.core.management import call_command


@pytest.fixture
def seeded(db, settings, tmp_path, capsys):
    settings.PROPLABEL_DEMO_CACHE_DIR = tmp_path / "demo-cache"
    call_command("seed_demo", offline=True)
    return capsys.readouterr().out


def test_the_demo_annotator_sees_a_case_that_renders(seeded, settings):
    from rest_framework.test import APIClient

    passwords = dict(
        line.split(": ", 1) for line in (settings.VAR_DIR / "demo-credentials.txt").read_text().splitlines()
    )
    client = APIClient()
    token = client.post(
        "/api/auth/token/", {"username": "annotator", "password": passwords["annotator"]}
    ).json()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token['token']}")

    cases = client.get("/api/cases/").json()

    assert len(cases) == 1
    case = cases[0]
    assert (case["assignee"]["username"], case["reviewer"]["username"]) == ("annotator", "reviewer")
    assert case["current_revision"] is not None
    png = client.get(f"/api/cases/{case['id']}/slices/20.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert f"annotator  password: {passwords['annotator']}" in seeded


def test_demo_label_classes_are_consecutive_and_the_phantom_labels_are_remapped(seeded):
    from annotator.models import Case, Project

    project = Project.objects.get()
    classes = dict(project.label_classes.values_list("name", "value"))
    assert classes == {
        "liver": 1,
        "spleen": 2,
        "kidney right": 3,
        "kidney left": 4,
        "aorta": 5,
        "vertebrae L1": 6,
    }
    counts = Case.objects.get().current_revision.label_counts
    assert set(counts) == {"1", "2", "3", "4", "5", "6"}


def test_seeding_twice_changes_nothing(seeded, settings):
    from django.contrib.auth import get_user_model

    from annotator.models import Case, ImportJob, LabelClass

    before = (Case.objects.count(), ImportJob.objects.count(), LabelClass.objects.count())
    passwords = (settings.VAR_DIR / "demo-credentials.txt").read_text()

    call_command("seed_demo", offline=True)

    assert (Case.objects.count(), ImportJob.objects.count(), LabelClass.objects.count()) == before
    assert (settings.VAR_DIR / "demo-credentials.txt").read_text() == passwords
    assert get_user_model().objects.count() == 3


def test_the_demo_password_can_be_set_by_environment(db, settings, tmp_path, monkeypatch):
    from django.contrib.auth import get_user_model

    settings.PROPLABEL_DEMO_CACHE_DIR = tmp_path / "demo-cache"
    monkeypatch.setenv("DEMO_PASSWORD", "correct horse battery")

    call_command("seed_demo", offline=True)

    assert get_user_model().objects.get(username="reviewer").check_password("correct horse battery")
