"""Prompts and correction clicks of the public engine API (re-exported by ``ml/engine.py``).

All coordinates are voxel indices of the canonical ``(Z, Y, X)`` volume: ``z`` is the slice, ``y`` the row
and ``x`` the column on that slice. Construction never fails (so a server can build them from JSON first);
``validate`` checks one against a volume shape and raises ``ValueError`` naming the problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.volume_checks import check_integer, check_mask_2d, check_slice_index


@dataclass(frozen=True)
class BoxPrompt:
    """A 2D box on slice ``z``; ``y0..y1`` and ``x0..x1`` are inclusive voxel bounds."""

    z: int
    y0: int
    x0: int
    y1: int
    x1: int

    def validate(self, shape: tuple[int, int, int]) -> BoxPrompt:
        """A copy with plain ints, checked against the volume ``shape`` ``(Z, Y, X)``.

        Raises:
            ValueError: slice outside the volume, empty box (``y1 < y0`` or ``x1 < x0``), or a box that
                reaches outside the slice.
        """
        z = check_slice_index(self.z, shape[0], "box z")
        y0, x0, y1, x1 = (check_integer(value, f"box {name}") for name, value in self._bounds())
        if y1 < y0 or x1 < x0:
            raise ValueError(f"box is empty: need y0 <= y1 and x0 <= x1, got y {y0}..{y1}, x {x0}..{x1}")
        height, width = shape[1], shape[2]
        if y0 < 0 or x0 < 0 or y1 >= height or x1 >= width:
            raise ValueError(
                f"box y {y0}..{y1}, x {x0}..{x1} reaches outside the slice (rows 0..{height - 1}, "
                f"columns 0..{width - 1})"
            )
        return BoxPrompt(z, y0, x0, y1, x1)

    def _bounds(self) -> tuple[tuple[str, object], ...]:
        return (("y0", self.y0), ("x0", self.x0), ("y1", self.y1), ("x1", self.x1))

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Inclusive ``(y0, x0, y1, x1)`` as the ``SlicePredictor`` expects it."""
        return (int(self.y0), int(self.x0), int(self.y1), int(self.x1))


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    """A 2D mask (bool ``(Y, X)``) drawn on slice ``z``."""

    z: int
    mask: np.ndarray

    def validate(self, shape: tuple[int, int, int]) -> MaskPrompt:
        """A copy with a bool mask, checked against the volume ``shape``.

        Raises:
            ValueError: slice outside the volume, mask of the wrong shape, or an empty mask.
        """
        z = check_slice_index(self.z, shape[0], "mask prompt z")
        mask = check_mask_2d(self.mask, (shape[1], shape[2]), "mask prompt", allow_empty=False)
        return MaskPrompt(z, mask)


@dataclass(frozen=True)
class PointPrompt:
    """A single click inside the object on slice ``z`` at row ``y``, column ``x``."""

    z: int
    y: int
    x: int

    def validate(self, shape: tuple[int, int, int]) -> PointPrompt:
        """A copy with plain ints, checked against the volume ``shape``.

        Raises:
            ValueError: the point lies outside the volume.
        """
        z, y, x = _check_point(self.z, self.y, self.x, shape, "point prompt")
        return PointPrompt(z, y, x)


@dataclass(frozen=True)
class Click:
    """A correction click at voxel ``(z, y, x)``: positive = "this belongs to the object", negative = "not"."""

    z: int
    y: int
    x: int
    positive: bool = True

    def validate(self, shape: tuple[int, int, int]) -> Click:
        """A copy with plain ints, checked against the volume ``shape``.

        Raises:
            ValueError: the click lies outside the volume.
        """
        z, y, x = _check_point(self.z, self.y, self.x, shape, "click")
        return Click(z, y, x, bool(self.positive))


Prompt = BoxPrompt | MaskPrompt | PointPrompt


def validate_prompt(prompt: object, shape: tuple[int, int, int]) -> Prompt:
    """Check any prompt against a volume shape.

    Raises:
        ValueError: not a prompt type, or invalid for this volume.
    """
    if not isinstance(prompt, BoxPrompt | MaskPrompt | PointPrompt):
        raise ValueError(
            f"prompt must be a BoxPrompt, MaskPrompt or PointPrompt, got {type(prompt).__name__}"
        )
    return prompt.validate(shape)


def _check_point(
    z: object, y: object, x: object, shape: tuple[int, int, int], what: str
) -> tuple[int, int, int]:
    values = (
        check_integer(z, f"{what} z"),
        check_integer(y, f"{what} y"),
        check_integer(x, f"{what} x"),
    )
    if not all(0 <= value < size for value, size in zip(values, shape, strict=True)):
        raise ValueError(
            f"{what} (z={values[0]}, y={values[1]}, x={values[2]}) lies outside the volume of shape {tuple(shape)}"
        )
    return values
