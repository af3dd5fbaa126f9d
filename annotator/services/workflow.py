"""Review workflow: the case state machine, comments and (bulk / round-robin) assignment.

State machine (issue 7)::

    new --start--> in_progress --submit--> submitted --start_review--> in_review --approve--> approved
                        ^                                                   |
                        +--start-- changes_requested <--request_changes-----+
    reopen (manager): submitted / in_review / changes_requested / approved --> in_progress

Who may act is decided by the actor's relation to the case, not only by their project role: the case's
assignee starts and submits, the case's reviewer starts a review, approves or requests changes (a comment
is required), a manager of the project reopens. A manager who is also the assignee or reviewer of a case
may act as such. Refusals: 404 when the case is not visible, 403 when the actor's relation to the case never
allows the action, 409 when it would be allowed but the case is in another state.

Every transition is validated, written with a conditional update (two reviewers clicking at once cannot both
win), audited, and announced to the case's WebSocket group after commit (``events.case_status_changed``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from annotator import events
from annotator.models import Case, CaseStatus, Comment, Membership, Project, Role
from annotator.services import audit
from annotator.services.access import AnyUser, is_manager
from annotator.services.errors import Conflict, Forbidden, InvalidInput, NotFound

# Relations an actor can have to a case.
ASSIGNEE = "assignee"
REVIEWER = "reviewer"
MANAGER = "manager"

COMMENT_MAX_LENGTH = 5000


@dataclass(frozen=True)
class Transition:
    """One action of the state machine."""

    action: str
    sources: tuple[str, ...]
    target: str
    relations: tuple[str, ...]
    verb: str
    comment_required: bool = False


TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        Transition(
            "start",
            (CaseStatus.NEW, CaseStatus.CHANGES_REQUESTED),
            CaseStatus.IN_PROGRESS,
            (ASSIGNEE,),
            "case.started",
        ),
        Transition("submit", (CaseStatus.IN_PROGRESS,), CaseStatus.SUBMITTED, (ASSIGNEE,), "case.submitted"),
        Transition(
            "start_review", (CaseStatus.SUBMITTED,), CaseStatus.IN_REVIEW, (REVIEWER,), "case.review_started"
        ),
        Transition("approve", (CaseStatus.IN_REVIEW,), CaseStatus.APPROVED, (REVIEWER,), "case.approved"),
        Transition(
            "request_changes",
            (CaseStatus.IN_REVIEW,),
            CaseStatus.CHANGES_REQUESTED,
            (REVIEWER,),
            "case.changes_requested",
            comment_required=True,
        ),
        Transition(
            "reopen",
            (CaseStatus.SUBMITTED, CaseStatus.IN_REVIEW, CaseStatus.CHANGES_REQUESTED, CaseStatus.APPROVED),
            CaseStatus.IN_PROGRESS,
            (MANAGER,),
            "case.reopened",
        ),
    )
}
ACTIONS: tuple[str, ...] = tuple(TRANSITIONS)


def relations_to(user: AnyUser, case: Case) -> set[str]:
    """How ``user`` relates to ``case``: a subset of {assignee, reviewer, manager}."""
    if not user.is_authenticated:
        return set()
    found: set[str] = set()
    if case.assignee_id == user.pk:
        found.add(ASSIGNEE)
    if case.reviewer_id == user.pk:
        found.add(REVIEWER)
    if is_manager(user, case.project):
        found.add(MANAGER)
    return found


def allowed_actions(user: AnyUser, case: Case) -> list[str]:
    """The actions ``user`` may take on ``case`` now (what the viewer shows as buttons)."""
    relations = relations_to(user, case)
    return [
        t.action for t in TRANSITIONS.values() if case.status in t.sources and relations & set(t.relations)
    ]


def may_edit_labels(user: AnyUser, case: Case) -> bool:
    """Whether the workflow lets ``user`` change the segmentation of ``case`` in its current status.

    The assignee edits while the case is theirs (new, in progress, changes requested); the reviewer edits
    during the review (small fixes instead of a round trip); a manager edits anything not yet approved.
    """
    relations = relations_to(user, case)
    if ASSIGNEE in relations and case.status in (
        CaseStatus.NEW,
        CaseStatus.IN_PROGRESS,
        CaseStatus.CHANGES_REQUESTED,
    ):
        return True
    if REVIEWER in relations and case.status == CaseStatus.IN_REVIEW:
        return True
    return MANAGER in relations and case.status != CaseStatus.APPROVED


def _check_comment_text(text: Any, *, required: bool) -> str:
    cleaned = str(text or "").strip()
    if required and not cleaned:
        raise InvalidInput("Say what needs to change: a comment is required.", code="comment_required")
    if len(cleaned) > COMMENT_MAX_LENGTH:
        raise InvalidInput(
            f"A comment may hold at most {COMMENT_MAX_LENGTH} characters.", code="comment_too_long"
        )
    return cleaned


def _check_slice(case: Case, slice_z: Any) -> int | None:
    if slice_z in (None, ""):
        return None
    if isinstance(slice_z, bool):
        raise InvalidInput("slice_z must be a slice index.", code="invalid_slice")
    try:
        z = int(slice_z)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("slice_z must be a slice index.", code="invalid_slice") from exc
    volume = getattr(case, "volume", None)
    depth = volume.shape_zyx[0] if volume is not None else None
    if z < 0 or (depth is not None and z >= depth):
        raise InvalidInput(
            f"Slice {z} is outside the case (0..{(depth or 1) - 1}).", code="slice_out_of_range"
        )
    return z


def _publish_status(case: Case) -> None:
    # The live helper's typed helper when present; the generic sender has the same wire format otherwise.
    publish = getattr(events, "case_status_changed", None)
    if publish is not None:
        publish(case)
    else:
        events.send_case_event(case.pk, "case.status", {"status": case.status})


def transition(
    actor: AnyUser,
    case: Case,
    action: str,
    *,
    comment: str | None = None,
    slice_z: int | None = None,
) -> Case:
    """Apply ``action`` to ``case`` as ``actor``; returns the updated case.

    Raises InvalidInput (unknown action, missing comment), Forbidden (relation never allows the action),
    Conflict (the case is not in a state the action starts from, including a concurrent change).
    """
    spec = TRANSITIONS.get(action)
    if spec is None:
        raise InvalidInput(
            f"Unknown action {action!r}; expected one of {', '.join(ACTIONS)}.", code="bad_action"
        )
    who = {ASSIGNEE: "the case's annotator", REVIEWER: "the case's reviewer", MANAGER: "a project manager"}
    with transaction.atomic():
        # Everything is decided on the row as it is under the lock: a reassignment or another transition that
        # committed a moment ago counts, not the caller's possibly stale copy.
        current = Case.objects.select_for_update().select_related("project").get(pk=case.pk)
        if not relations_to(actor, current) & set(spec.relations):
            raise Forbidden(
                f"Only {' or '.join(who[r] for r in spec.relations)} may {action.replace('_', ' ')} this case.",
                code="transition_forbidden",
            )
        text = _check_comment_text(comment, required=spec.comment_required)
        z = _check_slice(case, slice_z)
        if current.status not in spec.sources:
            raise Conflict(
                f"The case is {current.get_status_display().lower()}; "
                f"{action.replace('_', ' ')} needs it to be "
                f"{' or '.join(CaseStatus(s).label.lower() for s in spec.sources)}.",
                code="invalid_transition",
                extra={"status": current.status},
            )
        now = timezone.now()
        previous = current.status
        changes: dict[str, Any] = {"status": spec.target, "status_changed_at": now, "updated_at": now}
        if action == "start" and current.started_at is None:
            changes["started_at"] = now
        elif action == "submit":
            changes["submitted_at"] = now
        elif action == "approve":
            changes["approved_at"] = now
        elif action == "request_changes":
            changes["changes_requested_count"] = current.changes_requested_count + 1
        elif action == "reopen":
            changes["approved_at"] = None
        # Conditional on the status read under the lock: on databases without row locks (SQLite takes the
        # whole write lock instead) this still guarantees exactly one winner.
        if not Case.objects.filter(pk=current.pk, status=previous).update(**changes):
            raise Conflict("The case changed meanwhile; reload it.", code="invalid_transition")
        for key, value in changes.items():
            setattr(current, key, value)
        note = None
        if text:
            note = Comment.objects.create(case=current, author=_real(actor), text=text, slice_z=z)
        audit.record(
            actor,
            spec.verb,
            project=current.project,
            case=current,
            obj=current,
            data={
                "action": action,
                "from": previous,
                "to": spec.target,
                "comment": note.pk if note else None,
                "revision": current.current_revision_id,
            },
        )
        _publish_status(current)
    return current


def note_edit_started(actor: AnyUser, case: Case) -> Case:
    """Move a new / changes-requested case to in progress when its assignee first edits it.

    Called by the services that create revisions or propagation jobs; a no-op for anyone but the assignee
    and for any other status, so callers need no checks of their own.
    """
    if case.assignee_id != getattr(actor, "pk", None) or case.status not in TRANSITIONS["start"].sources:
        return case
    try:
        return transition(actor, case, "start")
    except Conflict:
        # Someone else moved it first (a concurrent start): nothing left to do.
        case.refresh_from_db()
        return case


def _real(actor: AnyUser) -> Any:
    return actor if actor.is_authenticated else None


# --- comments ---------------------------------------------------------------------------------------------


def comments_of(case: Case) -> QuerySet[Comment]:
    """The case's comments, oldest first (clients build the threads from ``parent``)."""
    return Comment.objects.filter(case=case).select_related("author").order_by("created_at", "id")


def add_comment(
    actor: AnyUser, case: Case, text: Any, *, parent_id: Any = None, slice_z: Any = None
) -> Comment:
    """Comment on a case (anyone who may see it); a reply names its ``parent`` comment of the same case."""
    cleaned = _check_comment_text(text, required=True)
    z = _check_slice(case, slice_z)
    parent = None
    if parent_id not in (None, ""):
        try:
            parent = Comment.objects.filter(case=case, pk=int(parent_id)).first()
        except (TypeError, ValueError):
            parent = None
        if parent is None:
            raise InvalidInput("The comment replied to is not a comment of this case.", code="bad_parent")
        if z is None:
            # A reply is about the same place unless it says otherwise.
            z = parent.slice_z
    with transaction.atomic():
        comment = Comment.objects.create(
            case=case, author=_real(actor), parent=parent, text=cleaned, slice_z=z
        )
        audit.record(
            actor,
            "comment.created",
            project=case.project,
            case=case,
            obj=comment,
            data={"parent": parent.pk if parent else None, "slice_z": z, "text": cleaned[:200]},
        )
        events.send_case_event(
            case.pk,
            "comment",
            {"comment": {"id": comment.pk, "parent": parent.pk if parent else None, "slice_z": z}},
        )
    return comment


# --- assignment -------------------------------------------------------------------------------------------


def _members(project: Project, user_ids: Iterable[Any], roles: tuple[str, ...], what: str) -> list[Any]:
    """Users of ``user_ids`` in the given order, each checked to be a member with one of ``roles``."""
    ids: list[int] = []
    for raw in user_ids:
        try:
            ids.append(int(raw))
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{what.capitalize()} ids must be numbers.", code="invalid_user") from exc
    ids = list(dict.fromkeys(ids))
    found = {
        m.user_id: m
        for m in Membership.objects.filter(project=project, user_id__in=ids).select_related("user")
    }
    for user_id in ids:
        membership = found.get(user_id)
        if membership is None:
            raise InvalidInput(f"User {user_id} is not a member of the project.", code=f"{what}_not_member")
        if membership.role not in roles:
            raise InvalidInput(
                f"{membership.user.get_username()} cannot be {what}: the role must be one of {', '.join(roles)}.",
                code=f"{what}_wrong_role",
            )
    return [found[user_id].user for user_id in ids]


def _project_cases(project: Project, case_ids: Sequence[Any]) -> list[Case]:
    try:
        ids = list(dict.fromkeys(int(value) for value in case_ids))
    except (TypeError, ValueError) as exc:
        raise InvalidInput("Case ids must be numbers.", code="invalid_case") from exc
    if not ids:
        raise InvalidInput("Select at least one case.", code="no_cases")
    found = {case.pk: case for case in Case.objects.filter(project=project, pk__in=ids).order_by("id")}
    missing = [case_id for case_id in ids if case_id not in found]
    if missing:
        raise NotFound(f"Cases {missing[:20]} are not cases of this project.", code="not_found")
    return [found[case_id] for case_id in ids]


_UNCHANGED = object()


def _require_manager(actor: AnyUser, project: Project) -> None:
    if not is_manager(actor, project):
        raise Forbidden("Only the project's managers may assign cases.", code="not_manager")


def _apply_assignments(
    actor: AnyUser, project: Project, plan: list[tuple[Case, Any, Any]], mode: str
) -> list[Case]:
    """Write ``(case, assignee|_UNCHANGED, reviewer|_UNCHANGED)`` rows, one audit event per changed case."""
    changed_cases: list[Case] = []
    with transaction.atomic():
        for case, assignee, reviewer in plan:
            changes: dict[str, Any] = {}
            if assignee is not _UNCHANGED and case.assignee_id != (assignee.pk if assignee else None):
                changes["assignee"] = assignee
            if reviewer is not _UNCHANGED and case.reviewer_id != (reviewer.pk if reviewer else None):
                changes["reviewer"] = reviewer
            if not changes:
                continue
            Case.objects.filter(pk=case.pk).update(**changes, updated_at=timezone.now())
            for key, value in changes.items():
                setattr(case, key, value)
            audit.record(
                actor,
                "case.assigned",
                project=project,
                case=case,
                obj=case,
                data={"mode": mode, **{key: (user.pk if user else None) for key, user in changes.items()}},
            )
            changed_cases.append(case)
    return changed_cases


def bulk_assign(
    actor: AnyUser,
    project: Project,
    case_ids: Sequence[Any],
    *,
    assignee: Any = _UNCHANGED,
    reviewer: Any = _UNCHANGED,
) -> list[Case]:
    """Give every selected case the same annotator and/or reviewer (``None`` unassigns; omitted: unchanged).

    Returns the cases that changed. The assignee must be an annotator or manager of the project, the
    reviewer a reviewer or manager, and nobody reviews a case they annotate.
    """
    _require_manager(actor, project)
    if assignee is _UNCHANGED and reviewer is _UNCHANGED:
        raise InvalidInput("Choose an annotator or a reviewer to assign.", code="nothing_to_assign")
    cases = _project_cases(project, case_ids)
    new_assignee: Any = _UNCHANGED
    new_reviewer: Any = _UNCHANGED
    if assignee is not _UNCHANGED:
        new_assignee = (
            None
            if assignee is None
            else _members(project, [assignee], (Role.ANNOTATOR, Role.MANAGER), "assignee")[0]
        )
    if reviewer is not _UNCHANGED:
        new_reviewer = (
            None
            if reviewer is None
            else _members(project, [reviewer], (Role.REVIEWER, Role.MANAGER), "reviewer")[0]
        )
    for case in cases:
        final_assignee = case.assignee_id if new_assignee is _UNCHANGED else getattr(new_assignee, "pk", None)
        final_reviewer = case.reviewer_id if new_reviewer is _UNCHANGED else getattr(new_reviewer, "pk", None)
        if final_assignee is not None and final_assignee == final_reviewer:
            raise InvalidInput(
                f"Case {case.name}: the annotator cannot also be its reviewer.", code="reviewer_is_assignee"
            )
    return _apply_assignments(actor, project, [(c, new_assignee, new_reviewer) for c in cases], "bulk")


def _open_load(project: Project, field: str, users: list[Any]) -> dict[int, int]:
    """Open (not approved) cases each user already holds in ``field`` (assignee / reviewer)."""
    rows = (
        Case.objects.filter(project=project, **{f"{field}__in": users})
        .exclude(status=CaseStatus.APPROVED)
        .values(field)
        .annotate(n=Count("id"))
    )
    load = {user.pk: 0 for user in users}
    for row in rows:
        load[row[field]] = row["n"]
    return load


def _round_robin_pick(users: list[Any], load: dict[int, int], avoid: int | None) -> Any:
    # Least-loaded first, ties in the order the manager chose: with equal loads this is plain round-robin,
    # and people who already hold many open cases are caught up on rather than buried further.
    candidates = [user for user in users if user.pk != avoid] or users
    order = {user.pk: index for index, user in enumerate(users)}
    choice = min(candidates, key=lambda user: (load[user.pk], order[user.pk]))
    load[choice.pk] += 1
    return choice


def round_robin_assign(
    actor: AnyUser,
    project: Project,
    case_ids: Sequence[Any],
    *,
    annotator_ids: Sequence[Any] = (),
    reviewer_ids: Sequence[Any] = (),
) -> list[Case]:
    """Spread the selected cases (in id order) over the chosen annotators and/or reviewers.

    Each case goes to the chosen person with the fewest open cases so far (ties: the order given), so equal
    starting loads give a plain round-robin. A case's reviewer is never its annotator when another reviewer
    was chosen. Returns the cases that changed.
    """
    _require_manager(actor, project)
    annotators = _members(project, annotator_ids, (Role.ANNOTATOR, Role.MANAGER), "assignee")
    reviewers = _members(project, reviewer_ids, (Role.REVIEWER, Role.MANAGER), "reviewer")
    if not annotators and not reviewers:
        raise InvalidInput("Choose at least one annotator or reviewer.", code="nothing_to_assign")
    cases = sorted(_project_cases(project, case_ids), key=lambda case: case.pk)
    annotator_load = _open_load(project, "assignee", annotators) if annotators else {}
    reviewer_load = _open_load(project, "reviewer", reviewers) if reviewers else {}
    # A case moved from one person to another leaves the first one's load.
    for case in cases:
        if annotators and case.assignee_id in annotator_load and case.status != CaseStatus.APPROVED:
            annotator_load[case.assignee_id] -= 1
        if reviewers and case.reviewer_id in reviewer_load and case.status != CaseStatus.APPROVED:
            reviewer_load[case.reviewer_id] -= 1
    plan: list[tuple[Case, Any, Any]] = []
    for case in cases:
        assignee: Any = _UNCHANGED
        if annotators:
            assignee = _round_robin_pick(annotators, annotator_load, avoid=None)
        reviewer: Any = _UNCHANGED
        if reviewers:
            annotating = assignee.pk if assignee is not _UNCHANGED else case.assignee_id
            reviewer = _round_robin_pick(reviewers, reviewer_load, avoid=annotating)
        plan.append((case, assignee, reviewer))
    return _apply_assignments(actor, project, plan, "round_robin")


def assignable_people(project: Project) -> dict[str, list[Any]]:
    """Members who can annotate / review in ``project`` (for the assignment forms)."""
    users = get_user_model().objects.filter(memberships__project=project)
    return {
        "annotators": list(
            users.filter(memberships__role__in=[Role.ANNOTATOR, Role.MANAGER]).order_by("username")
        ),
        "reviewers": list(
            users.filter(memberships__role__in=[Role.REVIEWER, Role.MANAGER]).order_by("username")
        ),
    }
