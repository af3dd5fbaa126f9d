"""Checkpoints that rebuild their own networks (config stored next to the weights).

Two kinds of file:

* **Training state** (``ml/runs/<name>/last.pt``, ``best.pt``): both networks in float32 with their
  configs, optimizer states, step, elapsed training seconds, RNG states, validation history. Resumable.
* **Shipped weights** (``ml/weights/proplabel_learned.pt``): both networks' configs and float16 state
  dicts plus training metadata, and optionally a **corrections Box2Mask**: Box2Mask fine-tuned on
  correction samples (``python -m ml.train --networks box2mask``), possibly blended with the shipped
  Box2Mask, which the predictor uses whenever it corrects an existing mask; first prompts keep the Box2Mask
  trained with PropMask; and optionally a **slice refiner** (``python -m ml.train_refiner``) that re-draws
  a finished propagation slice by slice; and optionally a **small-crop PropMask**, which answers the
  propagation calls whose crop is at its smallest side (objects a few voxels across) when the main PropMask
  is a cheaper, smaller-input one. ``load_all_weights``, ``load_refiner`` and ``load_small_crop_propmask``
  rebuild float32 networks from it.

Command line: ``python -m ml.checkpoint export ml/runs/<name>/best.pt [ml/weights]`` turns a training
state into shipped weights (float16); ``python -m ml.checkpoint attach-corrections WEIGHTS_FILE STATE
[--blend B]`` stores the Box2Mask of a training state (blended with the file's own) as the file's corrections
network; ``python -m ml.checkpoint replace-box2mask WEIGHTS_FILE STATE [--blend B]`` does the same for the
first-prompt Box2Mask; ``python -m ml.checkpoint attach-refiner WEIGHTS_FILE REFINER_STATE`` stores a
trained slice refiner in it; ``python -m ml.checkpoint replace-propmask WEIGHTS_FILE STATE
[--keep-for-small-crops]`` swaps in a PropMask fine-tune (optionally keeping the file's PropMask for the
small crops); ``python -m ml.checkpoint info FILE`` prints what a file holds.
"""

from __future__ import annotations

import argparse
import os
import pathlib
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ml.config import Box2MaskConfig, PropMaskConfig, RefinerConfig
from ml.networks import Box2Mask, PropMask, SliceRefiner

WEIGHTS_FILE = "proplabel_learned.pt"
WEIGHTS_FORMAT = "proplabel-weights-v1"
TRAINING_FORMAT = "proplabel-training-v1"
REFINER_TRAINING_FORMAT = "proplabel-refiner-training-v1"
DEFAULT_WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent / "weights"


def _atomic_save(payload: dict[str, Any], path: pathlib.Path) -> None:
    """Write via a temporary file + rename so a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def network_entry(network: Box2Mask | PropMask | SliceRefiner, half: bool = False) -> dict[str, Any]:
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


def build_refiner(entry: dict[str, Any]) -> SliceRefiner:
    network = SliceRefiner(RefinerConfig.from_dict(entry["config"]))
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
    path: pathlib.Path,
    box2mask: Box2Mask,
    propmask: PropMask,
    metadata: dict[str, Any],
    half: bool = True,
    corrections_box2mask: Box2Mask | None = None,
    refiner: SliceRefiner | None = None,
    small_crop_propmask: PropMask | None = None,
) -> None:
    """Shipped weights: configs + (float16) state dicts + metadata (+ the optional corrections Box2Mask,
    slice refiner and small-crop PropMask)."""
    payload: dict[str, Any] = {
        "format": WEIGHTS_FORMAT,
        "box2mask": network_entry(box2mask, half=half),
        "propmask": network_entry(propmask, half=half),
        "metadata": metadata,
    }
    if corrections_box2mask is not None:
        if corrections_box2mask.config != box2mask.config:
            raise ValueError("the corrections Box2Mask must have the same configuration as Box2Mask")
        payload["corrections_box2mask"] = network_entry(corrections_box2mask, half=half)
    if refiner is not None:
        payload["refiner"] = network_entry(refiner, half=half)
    if small_crop_propmask is not None:
        payload["small_crop_propmask"] = network_entry(small_crop_propmask, half=half)
    _atomic_save(payload, pathlib.Path(path))


def _load_payload(path: pathlib.Path) -> dict[str, Any]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("format") not in (WEIGHTS_FORMAT, TRAINING_FORMAT):
        raise ValueError(f"{path} is not a PropLabel checkpoint (format {payload.get('format')!r})")
    return payload


def load_all_weights(
    path: pathlib.Path,
) -> tuple[Box2Mask, PropMask, Box2Mask | None, dict[str, Any]]:
    """Rebuild float32 ``(Box2Mask, PropMask, corrections Box2Mask or None, metadata)`` from a
    shipped-weights or training-state file (a training state never holds a corrections network)."""
    networks = load_shipped_networks(path)
    return networks.box2mask, networks.propmask, networks.corrections_box2mask, networks.metadata


@dataclass
class ShippedNetworks:
    """Everything a weights file holds, rebuilt in float32 from one read of the file (a training state
    holds only Box2Mask and PropMask; its ``metadata`` gets its ``step``)."""

    box2mask: Box2Mask
    propmask: PropMask
    corrections_box2mask: Box2Mask | None
    refiner: SliceRefiner | None
    small_crop_propmask: PropMask | None
    metadata: dict[str, Any]


def load_shipped_networks(path: pathlib.Path) -> ShippedNetworks:
    """All networks of a shipped-weights or training-state file (what the predictor starts from)."""
    payload = _load_payload(path)
    metadata = dict(payload.get("metadata", {}))
    if payload["format"] == TRAINING_FORMAT:
        metadata["step"] = payload["step"]
    corrections, refiner, small_crop = (
        payload.get(key) for key in ("corrections_box2mask", "refiner", "small_crop_propmask")
    )
    return ShippedNetworks(
        box2mask=build_box2mask(payload["box2mask"]),
        propmask=build_propmask(payload["propmask"]),
        corrections_box2mask=build_box2mask(corrections) if corrections is not None else None,
        refiner=build_refiner(refiner) if refiner is not None else None,
        small_crop_propmask=build_propmask(small_crop) if small_crop is not None else None,
        metadata=metadata,
    )


def load_refiner(path: pathlib.Path) -> SliceRefiner | None:
    """The float32 slice refiner stored in a shipped-weights file, or None when it holds none."""
    entry = _load_payload(path).get("refiner")
    return build_refiner(entry) if entry is not None else None


def load_small_crop_propmask(path: pathlib.Path) -> PropMask | None:
    """The float32 small-crop PropMask stored in a shipped-weights file, or None when it holds none."""
    entry = _load_payload(path).get("small_crop_propmask")
    return build_propmask(entry) if entry is not None else None


def load_weights(path: pathlib.Path) -> tuple[Box2Mask, PropMask, dict[str, Any]]:
    """Rebuild float32 ``(Box2Mask, PropMask, metadata)`` (what training resumes from and exports)."""
    box2mask, propmask, _, metadata = load_all_weights(path)
    return box2mask, propmask, metadata


BlendedNetwork = TypeVar("BlendedNetwork", Box2Mask, PropMask)


def _blended(base: BlendedNetwork, tuned: BlendedNetwork, blend: float) -> BlendedNetwork:
    """``tuned`` with its weights set to ``(1 - blend) * base + blend * tuned`` (weight-space interpolation,
    as in WiSE-FT: it keeps more of the base network's behaviour on data the fine-tune never saw)."""
    if not 0.0 < blend <= 1.0:
        raise ValueError(f"blend must be in (0, 1], got {blend}")
    if tuned.config != base.config:
        kind = type(base).__name__
        raise ValueError(
            f"the fine-tuned {kind} must have the same configuration as the {kind} it is blended with"
        )
    if blend < 1.0:
        base_state, tuned_state = base.state_dict(), tuned.state_dict()
        tuned.load_state_dict(
            {
                key: (1.0 - blend) * base_state[key] + blend * value if value.is_floating_point() else value
                for key, value in tuned_state.items()
            }
        )
    return tuned


def _fine_tune_record(training_state: pathlib.Path, metadata: dict[str, Any], blend: float) -> dict[str, Any]:
    return {
        "from": str(training_state),
        "step": metadata.get("step"),
        "trained_seconds": metadata.get("trained_seconds"),
        "command": metadata.get("command"),
        "blend": blend,
    }


def _resave(weights_file: pathlib.Path, networks: ShippedNetworks) -> None:
    """Rewrite ``weights_file`` with every network of ``networks`` (float16)."""
    save_weights(
        weights_file,
        networks.box2mask,
        networks.propmask,
        networks.metadata,
        corrections_box2mask=networks.corrections_box2mask,
        refiner=networks.refiner,
        small_crop_propmask=networks.small_crop_propmask,
    )


def attach_corrections(weights_file: pathlib.Path, training_state: pathlib.Path, blend: float = 1.0) -> None:
    """Store the Box2Mask of ``training_state`` in ``weights_file`` as its corrections network (float16);
    everything else in the file stays as it was.

    ``blend`` < 1 stores ``(1 - blend) * file's Box2Mask + blend * fine-tuned Box2Mask`` instead (see
    ``_blended``).
    """
    networks = load_shipped_networks(weights_file)
    tuned, _, tuned_metadata = load_weights(training_state)
    networks.corrections_box2mask = _blended(networks.box2mask, tuned, blend)
    networks.metadata["corrections_box2mask"] = _fine_tune_record(training_state, tuned_metadata, blend)
    _resave(weights_file, networks)


def replace_box2mask(weights_file: pathlib.Path, training_state: pathlib.Path, blend: float = 1.0) -> None:
    """Replace the first-prompt Box2Mask of ``weights_file`` by the Box2Mask of ``training_state`` (a
    ``python -m ml.train --networks box2mask`` fine-tune), blended with the file's own like
    ``attach_corrections``; PropMask, the corrections network and the slice refiner stay as they were."""
    networks = load_shipped_networks(weights_file)
    tuned, _, tuned_metadata = load_weights(training_state)
    networks.box2mask = _blended(networks.box2mask, tuned, blend)
    networks.metadata["box2mask_fine_tune"] = _fine_tune_record(training_state, tuned_metadata, blend)
    _resave(weights_file, networks)


def replace_propmask(
    weights_file: pathlib.Path,
    training_state: pathlib.Path,
    keep_for_small_crops: bool = False,
    blend: float = 1.0,
) -> None:
    """Replace the PropMask of ``weights_file`` by the PropMask of ``training_state`` (a ``python -m
    ml.train --networks propmask`` fine-tune, possibly at another input size: its config comes with it);
    Box2Mask, the corrections network and the slice refiner stay as they were.

    ``keep_for_small_crops``: the file's PropMask becomes its small-crop PropMask (see
    ``LearnedPredictor``) instead of being dropped; otherwise the file's small-crop PropMask stays as it was
    and the replaced PropMask's ``propmask_fine_tune`` record moves to ``propmask_history``.

    ``blend`` < 1 stores ``(1 - blend) * file's PropMask + blend * fine-tuned PropMask`` instead (see
    ``_blended``; both must have the same configuration, input size included).
    """
    networks = load_shipped_networks(weights_file)
    metadata = networks.metadata
    _, tuned, tuned_metadata = load_weights(training_state)
    # At blend 1 the fine-tune may bring its own configuration (another input size); a blend needs the same.
    blended = tuned if blend == 1.0 else _blended(networks.propmask, tuned, blend)
    if keep_for_small_crops:
        networks.small_crop_propmask = networks.propmask
        # Where the kept network came from, written out now: "the previous PropMask" would name another
        # network once a later replace-propmask overwrites propmask_fine_tune.
        metadata["small_crop_propmask"] = {
            "propmask_fine_tune": metadata.get("propmask_fine_tune"),
            "step": metadata.get("step") if "propmask_fine_tune" not in metadata else None,
        }
    elif "propmask_fine_tune" in metadata:
        metadata.setdefault("propmask_history", []).append(metadata["propmask_fine_tune"])
    metadata["propmask_fine_tune"] = _fine_tune_record(training_state, tuned_metadata, blend)
    networks.propmask = blended
    _resave(weights_file, networks)


def attach_refiner(weights_file: pathlib.Path, refiner_state: pathlib.Path) -> None:
    """Store the slice refiner of a ``python -m ml.train_refiner`` state in ``weights_file`` (float16);
    everything else in the file stays as it was."""
    state = torch.load(pathlib.Path(refiner_state), map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != REFINER_TRAINING_FORMAT:
        raise ValueError(
            f"{refiner_state} is not a slice-refiner training state (python -m ml.train_refiner)"
        )
    networks = load_shipped_networks(weights_file)
    networks.refiner = build_refiner(state)
    networks.metadata["refiner"] = {
        "from": str(refiner_state),
        "step": state.get("step"),
        "trained_seconds": state.get("trained_seconds"),
        "command": state.get("command"),
    }
    _resave(weights_file, networks)


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
    box2mask_commands = {
        "attach-corrections": (attach_corrections, "the corrections network"),
        "replace-box2mask": (replace_box2mask, "the first-prompt Box2Mask"),
    }
    for name, (_, target) in box2mask_commands.items():
        command = commands.add_parser(name, help=f"a training state's Box2Mask -> {target} of a weights file")
        command.add_argument("weights_file", type=pathlib.Path)
        command.add_argument("training_state", type=pathlib.Path)
        command.add_argument(
            "--blend",
            type=float,
            default=1.0,
            help="share of the fine-tuned weights; the rest is the file's own Box2Mask (default 1.0)",
        )
    replace_propmask_command = commands.add_parser(
        "replace-propmask", help="a training state's PropMask -> the PropMask of a weights file"
    )
    replace_propmask_command.add_argument("weights_file", type=pathlib.Path)
    replace_propmask_command.add_argument("training_state", type=pathlib.Path)
    replace_propmask_command.add_argument(
        "--keep-for-small-crops",
        action="store_true",
        help="keep the file's PropMask for the calls whose crop is at its smallest side (tiny objects)",
    )
    replace_propmask_command.add_argument(
        "--blend",
        type=float,
        default=1.0,
        help="share of the fine-tuned weights; the rest is the file's own PropMask (default 1.0)",
    )
    attach_refiner_command = commands.add_parser(
        "attach-refiner", help="a trained slice refiner -> the refiner of a weights file"
    )
    attach_refiner_command.add_argument("weights_file", type=pathlib.Path)
    attach_refiner_command.add_argument("refiner_state", type=pathlib.Path)
    info = commands.add_parser("info", help="print a checkpoint's configs and metadata")
    info.add_argument("path", type=pathlib.Path)
    args = parser.parse_args(argv)
    if args.command == "export":
        target = export_weights(args.training_state, args.weights_dir)
        print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")
    elif args.command in box2mask_commands:
        if not 0.0 < args.blend <= 1.0:
            parser.error(f"--blend must be in (0, 1], got {args.blend}")
        store, _ = box2mask_commands[args.command]
        store(args.weights_file, args.training_state, args.blend)
        print(f"wrote {args.weights_file} ({args.weights_file.stat().st_size / 1e6:.1f} MB)")
    elif args.command == "replace-propmask":
        if not 0.0 < args.blend <= 1.0:
            parser.error(f"--blend must be in (0, 1], got {args.blend}")
        replace_propmask(args.weights_file, args.training_state, args.keep_for_small_crops, args.blend)
        print(f"wrote {args.weights_file} ({args.weights_file.stat().st_size / 1e6:.1f} MB)")
    elif args.command == "attach-refiner":
        attach_refiner(args.weights_file, args.refiner_state)
        print(f"wrote {args.weights_file} ({args.weights_file.stat().st_size / 1e6:.1f} MB)")
    else:
        networks = load_shipped_networks(args.path)
        print("box2mask", networks.box2mask.config)
        print("propmask", networks.propmask.config)
        corrections = networks.corrections_box2mask
        print("corrections box2mask", "yes" if corrections is not None else "none (Box2Mask corrects too)")
        refiner, small_crop = networks.refiner, networks.small_crop_propmask
        print("slice refiner", refiner.config if refiner is not None else "none")
        print("small-crop propmask", small_crop.config if small_crop is not None else "none")
        for key, value in networks.metadata.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
