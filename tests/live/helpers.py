"""Shared data of the live-propagation tests: a generated volume with one object, its box, engine choice."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# PROPLABEL_WEIGHTS_DIR (as for the server) lets the suite run against a candidate model.
WEIGHTS_DIR = Path(
    os.environ.get("PROPLABEL_WEIGHTS_DIR") or Path(__file__).resolve().parents[2] / "ml" / "weights"
)
WEIGHTS = WEIGHTS_DIR / "proplabel_learned.pt"


def object_volume(shape: tuple[int, int, int] = (24, 40, 40)) -> np.ndarray:
    """int16 ``(Z, Y, X)``: -1000 HU air, a 40 HU body and a 150 HU ellipsoid spanning the middle slices."""
    z, y, x = np.indices(shape, dtype=np.float32)
    body = ((y - 20) / 17) ** 2 + ((x - 20) / 17) ** 2 <= 1
    blob = ((z - 12) / 8) ** 2 + ((y - 20) / 8) ** 2 + ((x - 19) / 9) ** 2 <= 1
    volume = np.full(shape, -1000, dtype=np.int16)
    volume[body] = 40
    volume[blob] = 150
    noise = np.random.default_rng(3).integers(-4, 5, size=shape)
    return (volume + noise).astype(np.int16)


BOX = {"type": "box", "z": 12, "y0": 13, "x0": 11, "y1": 27, "x1": 27}


def engine_params() -> list[Any]:
    learned = pytest.param(
        "learned",
        marks=pytest.mark.skipif(not WEIGHTS.exists(), reason="no shipped weights (ml/weights) yet"),
    )
    return ["classical", learned]


def reference_engine(name: str) -> Any:
    """The engine a job with ``PROPLABEL_ENGINE=name`` runs, loaded here to compute the expected result."""
    from ml.engine import load_engine

    return load_engine(name, weights_dir=WEIGHTS_DIR) if name == "learned" else load_engine(name)
