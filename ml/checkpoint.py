"""Checkpoints that rebuild their own networks (config stored next to the weights).

Two kinds of file:

* **Training state** (``ml/runs/<name>/last.pt``, ``best.pt``): both networks in float32 with their
  configs, optimizer states, step, elapsed training seconds, RNG states, validation history. Resumable.
* **Shipped weights** (``ml/weights/proplabel_learned.pt``): both networks' configs and float16 state
  dicts plus training metadata; nothing else. ``load_weights`` rebuilds float32 networks from it.

Command line: ``python -m ml.checkpoint export ml/runs/<name>/best.pt [ml/weights]`` turns a training
state into shipped weights (float16), and ``python -m ml.checkpoint info FILE`` prints what a file holds.
"""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Any

import torch

from ml.config import Box2MaskConfig, PropMaskConfig
from ml.networks import Box2Mask, PropMask

WEIGHTS_FILE = "proplabel_learned.pt"
WEIGHTS_FORMAT = "proplabel-weights-v1"
TRAINING_FORMAT = "proplabel-training-v1"
DEFAULT_WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent / "weights"


def _atomic_save(payload: dict[str, Any], path: pathlib.Path) -> None:
    """Write via a temporary file + rename so a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def network_entry(network: Box2Mask | PropMask, half: bool = False) -> dict[str, Any]:
    """``{"config": dict, "state": state_dict}`` (float16 tensors when ``half``)."""
    state = {
        key: (
            value.detach().cpu().half()
            if half and value.is_floating_point()
            else value.detach().cpu().clone()
        )
        for key, value in network.state_dict().items()
    }
    return {"config": network.config.to_dict(), "state": state}


def build_box2mask(entry: dict[str, Any]) -> Box2Mask:
    network = Box2Mask(Box2MaskConfig.from_dict(entry["config"]))
    network.load_state_dict(
        {key: value.float() if value.is_floating_point() else value for key, value in entry["state"].items()}
    )
    return network


def build_propmask(entry: dict[str, Any]) -> PropMask:
    network = PropMask(PropMaskConfig.from_dict(entry["config"]))
    network.load_state_dict(
        {key: value.float() if value.is_floating_point() else value for key, value in entry["state"].items()}
    )
    return network


def save_training_state(
    path: pathlib.Path,
    box2mask: Box2Mask,
    propmask: PropMask,
    optimizers: dict[str, torch.optim.Optimizer],
    step: int,
    metadata: dict[str, Any],
    rng_state: dict[str, Any],
) -> None:
    """Everything needed to resume training at ``step`` (atomic write)."""
    _atomic_save(
        {
            "format": TRAINING_FORMAT,
            "box2mask": network_entry(box2mask),
            "propmask": network_entry(propmask),
            "optimizers": {name: optimizer.state_dict() for name, optimizer in optimizers.items()},
            "step": step,
            "metadata": metadata,
            "rng": rng_state,
        },
        pathlib.Path(path),
    )


def load_training_state(path: pathlib.Path) -> dict[str, Any]:
    """The raw training-state dict (see ``save_training_state``); networks rebuilt under ``"networks"``."""
    state = torch.load(pathlib.Path(path), map_location="cpu", weights_only=False)
    if state.get("format") != TRAINING_FORMAT:
        raise ValueError(f"{path} is not a PropLabel training checkpoint (format {state.get('format')!r})")
    state["networks"] = (build_box2mask(state["box2mask"]), build_propmask(state["propmask"]))
    return state


def save_weights(
    path: pathlib.Path, box2mask: Box2Mask, propmask: PropMask, metadata: dict[str, Any], half: bool = True
) -> None:
    """Shipped weights: configs + (float16) state dicts + metadata."""
    _atomic_save(
        {
            "format": WEIGHTS_FORMAT,
            "box2mask": network_entry(box2mask, half=half),
            "propmask": network_entry(propmask, half=half),
            "metadata": metadata,
        },
        pathlib.Path(path),
    )


def load_weights(path: pathlib.Path) -> tuple[Box2Mask, PropMask, dict[str, Any]]:
    """Rebuild float32 ``(Box2Mask, PropMask, metadata)`` from a shipped-weights or training-state file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("format") not in (WEIGHTS_FORMAT, TRAINING_FORMAT):
        raise ValueError(f"{path} is not a PropLabel checkpoint (format {payload.get('format')!r})")
    metadata = dict(payload.get("metadata", {}))
    if payload["format"] == TRAINING_FORMAT:
        metadata["step"] = payload["step"]
    return build_box2mask(payload["box2mask"]), build_propmask(payload["propmask"]), metadata


def export_weights(
    training_state: pathlib.Path, weights_dir: pathlib.Path = DEFAULT_WEIGHTS_DIR
) -> pathlib.Path:
    """Training state -> ``weights_dir/proplabel_learned.pt`` in float16; returns the written path."""
    box2mask, propmask, metadata = load_weights(training_state)
    metadata["exported_from"] = str(training_state)
    target = pathlib.Path(weights_dir) / WEIGHTS_FILE
    save_weights(target, box2mask, propmask, metadata)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.checkpoint", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="training state -> shipped float16 weights")
    export.add_argument("training_state", type=pathlib.Path)
    export.add_argument("weights_dir", type=pathlib.Path, nargs="?", default=DEFAULT_WEIGHTS_DIR)
    info = commands.add_parser("info", help="print a checkpoint's configs and metadata")
    info.add_argument("path", type=pathlib.Path)
    args = parser.parse_args(argv)
    if args.command == "export":
        target = export_weights(args.training_state, args.weights_dir)
        print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")
    else:
        box2mask, propmask, metadata = load_weights(args.path)
        print("box2mask", box2mask.config)
        print("propmask", propmask.config)
        for key, value in metadata.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
