"""Create the demo users, a demo project with label classes, and import real demo cases (idempotent).

Cases go through the same import service as browser uploads (stored upload -> ImportJob -> run_import),
run synchronously here so the demo is ready before the server starts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.files import File
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from annotator.imaging.demo import prepare_demo_cases
from annotator.models import Case, ImportJob, ImportStatus, Membership, Project, Role
from annotator.services import cases, imports, projects

DEMO_PROJECT_NAME = "Demo: abdominal CT and MR"
DEMO_USERS = (("manager", Role.MANAGER), ("annotator", Role.ANNOTATOR), ("reviewer", Role.REVIEWER))
# Structures worth annotating first, in the order they get label values 1, 2, 3...
PREFERRED_STRUCTURES = (
    "liver",
    "spleen",
    "kidney_right",
    "kidney_left",
    "aorta",
    "pancreas",
    "stomach",
    "gallbladder",
    "vertebrae_L1",
)
MAX_CLASSES = 8


def _credentials_file() -> Path:
    return Path(settings.VAR_DIR) / "demo-credentials.txt"


def _known_passwords() -> dict[str, str]:
    path = _credentials_file()
    if not path.is_file():
        return {}
    pairs = (line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
    return {name.strip(): password.strip() for name, password in pairs}


def _ensure_users() -> dict[str, tuple[Any, str]]:
    """Demo users with working passwords: DEMO_PASSWORD if set, else the stored or a fresh random one."""
    user_model = get_user_model()
    fixed = os.environ.get("DEMO_PASSWORD", "")
    known = _known_passwords()
    result: dict[str, tuple[Any, str]] = {}
    for username, _role in DEMO_USERS:
        user, _ = user_model.objects.get_or_create(
            username=username, defaults={"first_name": username.title()}
        )
        password = fixed or known.get(username) or secrets.token_urlsafe(9)
        if not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
        result[username] = (user, password)
    manager = result["manager"][0]
    manager.user_permissions.add(
        Permission.objects.get(codename="add_project", content_type__app_label="annotator")
    )
    path = _credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}: {password}\n" for name, (_, password) in result.items()))
    path.chmod(0o600)
    return result


def _choose_structures(label_names: list[dict[int, str]]) -> list[str]:
    present = {name for names in label_names for name in names.values()}
    chosen = [name for name in PREFERRED_STRUCTURES if name in present]
    return (chosen or sorted(present))[:MAX_CLASSES]


def _ensure_project(manager: Any, users: dict[str, tuple[Any, str]], structures: list[str]) -> Project:
    project = Project.objects.filter(name=DEMO_PROJECT_NAME).first()
    if project is None:
        project = projects.create_project(
            manager,
            DEMO_PROJECT_NAME,
            "Demo cases: TotalSegmentator reference CT/MR (or a generated phantom).",
        )
    for username, role in DEMO_USERS:
        user = users[username][0]
        if not Membership.objects.filter(project=project, user=user).exists():
            projects.add_member(manager, project, role, user_id=user.pk)
    existing = set(project.label_classes.values_list("name", flat=True))
    for structure in structures:
        name = structure.replace("_", " ")
        if name not in existing:
            projects.create_label_class(manager, project, name)
    return project


class Command(BaseCommand):
    help = "Create demo users, a demo project and demo cases (safe to run again)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--offline", action="store_true", help="never download; use the cache or the generated phantom"
        )
        parser.add_argument(
            "--cache-dir", type=Path, default=None, help="where demo files are kept between runs"
        )

    def handle(
        self, *args: Any, offline: bool = False, cache_dir: Path | None = None, **options: Any
    ) -> None:
        demo_cases = prepare_demo_cases(
            cache_dir or settings.PROPLABEL_DEMO_CACHE_DIR, allow_download=not offline
        )
        with transaction.atomic():
            users = _ensure_users()
            manager, annotator, reviewer = (users[name][0] for name, _ in DEMO_USERS)
            structures = _choose_structures([case.label_names for case in demo_cases])
            project = _ensure_project(manager, users, structures)
        value_of = {label.name: label.value for label in project.label_classes.all()}

        for demo in demo_cases:
            already = ImportJob.objects.filter(
                project=project, status=ImportStatus.SUCCEEDED, upload_names=[demo.image_path.name]
            ).exists()
            if already:
                self.stdout.write(f"  {demo.name}: already imported")
                continue
            value_map = {
                str(source): value_of[name.replace("_", " ")]
                for source, name in demo.label_names.items()
                if name.replace("_", " ") in value_of
            }
            label_handle = demo.label_path.open("rb") if demo.label_path else contextlib.nullcontext()
            with demo.image_path.open("rb") as image, label_handle as label:
                job = imports.create_import_job(
                    manager,
                    project,
                    [File(image, name=demo.image_path.name)],
                    label_file=File(label, name=demo.label_path.name) if label else None,
                    label_value_map=value_map or None,
                    drop_unmapped_labels=True,
                    enqueue=False,
                )
            # The worker may not run yet: the same task body runs here, synchronously.
            imports.run_import_job(job.pk)
            job.refresh_from_db()
            if job.status != ImportStatus.SUCCEEDED:
                self.stderr.write(f"  {demo.name}: import {job.status}: {job.error}")
                continue
            for case in Case.objects.filter(imported_from=job):
                cases.update_case(manager, case, {"assignee": annotator.pk, "reviewer": reviewer.pk})
            self.stdout.write(f"  {demo.name}: imported ({demo.source})")

        self.stdout.write(self.style.SUCCESS(f"Demo project: {project.name} ({project.cases.count()} cases)"))
        self.stdout.write(f"Demo users (also in {_credentials_file()}):")
        for username, (_, password) in users.items():
            self.stdout.write(f"  {username:10s} password: {password}")
