"""Input checks of propagation requests: prompts, bounds, clicks, edited slices, who may edit what."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from annotator.maskcodec import decode_rle
from annotator.models import Case, CaseStatus, LabelClass
from annotator.services import access, workflow
from annotator.services.access import AnyUser
from annotator.services.errors import Conflict, Forbidden, InvalidInput

EDITABLE_STATUSES = (CaseStatus.NEW, CaseStatus.IN_PROGRESS, CaseStatus.CHANGES_REQUESTED)
"""Statuses in which the case belongs to its annotator (outside them, a refusal is a 409, not a 403)."""


MAX_CLICKS = 256


@dataclass(frozen=True)
class EditTarget:
    """A case the user may change, its label class and the image shape, all checked."""

    case: Case
    label: LabelClass
    shape: tuple[int, int, int]


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be an integer.", code="invalid_prompt")
    return value


def _check_index(value: Any, size: int, what: str) -> int:
    index = _int(value, what)
    if not 0 <= index < size:
        raise InvalidInput(f"{what}={index} lies outside the volume (0..{size - 1}).", code="outside_volume")
    return index


def _check_mask_rle(rle: Any, shape: tuple[int, int, int], what: str, allow_empty: bool) -> np.ndarray:
    if not isinstance(rle, list):
        raise InvalidInput(f"{what} rle must be a list of run lengths.", code="invalid_rle")
    try:
        mask = decode_rle(rle, (shape[1], shape[2]))
    except ValueError as exc:
        raise InvalidInput(f"{what}: {exc}.", code="invalid_rle") from None
    if not allow_empty and not mask.any():
        raise InvalidInput(f"{what} is empty.", code="empty_mask")
    return mask


def check_prompt(prompt: Any, shape: tuple[int, int, int]) -> dict[str, Any]:
    """A clean copy of a prompt of the contract (box / mask / point); 400 when malformed or outside."""
    if not isinstance(prompt, dict):
        raise InvalidInput("prompt must be an object with a type.", code="invalid_prompt")
    kind = prompt.get("type")
    z = _check_index(prompt.get("z"), shape[0], "prompt z")
    if kind == "box":
        y0, x0, y1, x1 = (_int(prompt.get(key), f"box {key}") for key in ("y0", "x0", "y1", "x1"))
        if y1 < y0 or x1 < x0:
            raise InvalidInput("The box is empty: need y0 <= y1 and x0 <= x1.", code="empty_box")
        if y0 < 0 or x0 < 0 or y1 >= shape[1] or x1 >= shape[2]:
            raise InvalidInput(
                f"The box reaches outside the slice (rows 0..{shape[1] - 1}, columns 0..{shape[2] - 1}).",
                code="outside_volume",
            )
        return {"type": "box", "z": z, "y0": y0, "x0": x0, "y1": y1, "x1": x1}
    if kind == "mask":
        _check_mask_rle(prompt.get("rle"), shape, "mask prompt", allow_empty=False)
        return {"type": "mask", "z": z, "rle": [int(run) for run in prompt["rle"]]}
    if kind == "point":
        y = _check_index(prompt.get("y"), shape[1], "point y")
        x = _check_index(prompt.get("x"), shape[2], "point x")
        return {"type": "point", "z": z, "y": y, "x": x}
    raise InvalidInput("prompt type must be box, mask or point.", code="invalid_prompt")


def check_bounds(z_min: Any, z_max: Any, prompt_z: int, depth: int) -> dict[str, int]:
    bounds: dict[str, int] = {}
    if z_min is not None:
        bounds["z_min"] = _check_index(z_min, depth, "z_min")
        if bounds["z_min"] > prompt_z:
            raise InvalidInput("z_min must not lie above the prompt slice.", code="invalid_bounds")
    if z_max is not None:
        bounds["z_max"] = _check_index(z_max, depth, "z_max")
        if bounds["z_max"] < prompt_z:
            raise InvalidInput("z_max must not lie below the prompt slice.", code="invalid_bounds")
    return bounds


def check_clicks(clicks: Any, shape: tuple[int, int, int]) -> list[dict[str, Any]]:
    if clicks is None:
        return []
    if not isinstance(clicks, list) or len(clicks) > MAX_CLICKS:
        raise InvalidInput(f"clicks must be a list of at most {MAX_CLICKS} clicks.", code="invalid_clicks")
    clean = []
    for click in clicks:
        if not isinstance(click, dict):
            raise InvalidInput("Each click is {z, y, x, positive}.", code="invalid_clicks")
        positive = click.get("positive", True)
        if not isinstance(positive, bool):
            raise InvalidInput("click positive must be true or false.", code="invalid_clicks")
        clean.append(
            {
                "z": _check_index(click.get("z"), shape[0], "click z"),
                "y": _check_index(click.get("y"), shape[1], "click y"),
                "x": _check_index(click.get("x"), shape[2], "click x"),
                "positive": positive,
            }
        )
    return clean


def check_edited_slices(edited: Any, shape: tuple[int, int, int]) -> dict[int, np.ndarray]:
    if edited is None:
        return {}
    if not isinstance(edited, list) or len(edited) > shape[0]:
        raise InvalidInput("edited_slices must be a list of {z, rle}.", code="invalid_edit")
    masks: dict[int, np.ndarray] = {}
    for item in edited:
        if not isinstance(item, dict):
            raise InvalidInput("Each edited slice is {z, rle}.", code="invalid_edit")
        z = _check_index(item.get("z"), shape[0], "edited slice z")
        if z in masks:
            raise InvalidInput(f"Slice {z} is edited twice.", code="invalid_edit")
        masks[z] = _check_mask_rle(item.get("rle"), shape, f"edited slice {z}", allow_empty=True)
    return masks


def check_can_edit(
    user: AnyUser, case_id: int, label_id: Any | None, *, label_required: bool = True
) -> EditTarget:
    """The case (404 if invisible), edit right (403), editable status (409), label (400), unlocked (409).

    ``label_required=False`` (undo/redo: whole revisions) accepts ``label_id=None`` and leaves
    ``EditTarget.label`` None.
    """
    case = access.get_visible_case(user, case_id)
    if not workflow.may_edit_labels(user, case):
        if case.status in EDITABLE_STATUSES:
            # The case is open for editing, just not by this user (e.g. its reviewer before the review).
            raise Forbidden("You may view this case but not change its segmentation.", code="cannot_edit")
        raise Conflict(
            f"The case is {case.get_status_display().lower()}; you cannot change its segmentation now.",
            code="case_not_editable",
            extra={"status": case.status},
        )
    volume = getattr(case, "volume", None)
    if volume is None:
        raise Conflict("The case has no image yet.", code="no_volume")
    label = None
    if label_id is None and label_required:
        raise InvalidInput("label is required.", code="unknown_label")
    if label_id is not None:
        label = LabelClass.objects.filter(project_id=case.project_id, pk=_int(label_id, "label")).first()
        if label is None:
            raise InvalidInput("Unknown label class for this project.", code="unknown_label")
        if label.value in (case.locked_labels or []):
            raise Conflict(f"The label {label.name} is locked on this case.", code="label_locked")
    return EditTarget(case=case, label=label, shape=volume.shape_zyx)  # type: ignore[arg-type]


def check_base_revision(case: Case, base_revision: Any) -> None:
    """409 unless ``base_revision`` is the case's current revision (None = the case has none yet)."""
    if base_revision is not None:
        base_revision = _int(base_revision, "base_revision")
    if base_revision != case.current_revision_id:
        raise Conflict(
            "The case changed since you loaded it; reload the current revision and try again.",
            code="revision_conflict",
            extra={"current_revision": case.current_revision_id},
        )


def locked_case(case: Case) -> Case:
    """Re-read the case under a row lock, so the base-revision check and the write are atomic."""
    # of=("self",): PostgreSQL refuses FOR UPDATE on the nullable side of the outer join to the volume.
    return Case.objects.select_for_update(of=("self",)).select_related("project", "volume").get(pk=case.pk)
