"""Generated training volumes: rib-like tubes move fast between axial slices and are cut as stretched ellipses."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from ml import train
from ml.data import synthetic_case

RIB_DRIFT_MM_PER_MM = 1.5


def _drift_and_shape(labels: np.ndarray, value: int, spacing: tuple[float, float, float]) -> list[tuple]:
    """Per pair of neighbouring slices of one object: (drift mm per mm of z, drift direction, cross-section
    long-axis direction, long / short axis ratio), directions as unit ``(y, x)`` vectors."""
    sz, sy, _ = spacing
    mask = labels == value
    rows = []
    slices = [z for z in range(mask.shape[0]) if mask[z].sum() >= 30]
    for z, z_next in pairwise(slices):
        if z_next != z + 1:
            continue
        points = np.argwhere(mask[z]).astype(float)
        centre, centre_next = points.mean(0), np.argwhere(mask[z_next]).mean(0)
        step = (centre_next - centre) * sy
        if np.linalg.norm(step) == 0:
            continue
        eigenvalues, eigenvectors = np.linalg.eigh(np.cov((points - centre).T))
        rows.append(
            (
                float(np.linalg.norm(step) / sz),
                step / np.linalg.norm(step),
                eigenvectors[:, 1],
                float(np.sqrt(eigenvalues[1] / max(eigenvalues[0], 1e-6))),
            )
        )
    return rows


def test_rib_like_tubes_move_fast_between_slices_and_are_stretched_along_their_path() -> None:
    rng = np.random.default_rng(11)
    steep = []
    for index in range(12):
        case = synthetic_case(rng, f"rib{index}", rib_like_tubes=1.0)
        for value in np.unique(case.labels)[1:]:
            rows = _drift_and_shape(case.labels, int(value), case.spacing)
            if len(rows) >= 2 and np.median([row[0] for row in rows]) >= RIB_DRIFT_MM_PER_MM:
                steep.extend(rows)
    assert len(steep) >= 5, "no generated tube ran close to the axial plane"
    # An oblique cylinder's axial cut is an ellipse whose long axis follows the direction it moves in.
    aligned = [abs(float(drift @ axis)) for _, drift, axis, ratio in steep if ratio >= 1.3]
    assert len(aligned) >= 0.6 * len(steep)
    assert np.median(aligned) > np.cos(np.deg2rad(30))


def test_without_rib_like_tubes_a_seed_gives_the_volumes_it_gave_before() -> None:
    before = synthetic_case(np.random.default_rng(5), "s")
    now = synthetic_case(np.random.default_rng(5), "s", rib_like_tubes=0.0)
    assert np.array_equal(before.image, now.image) and np.array_equal(before.labels, now.labels)


def test_training_refuses_a_rib_like_share_outside_zero_to_one() -> None:
    with pytest.raises(SystemExit):
        train.parse_args(["--rib-like-tubes", "1.5"])
    assert train.parse_args(["--rib-like-tubes", "0.7"]).rib_like_tubes == 0.7
