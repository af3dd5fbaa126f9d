"""``python -m ml.train_refiner``: train the slice refiner on the shipped engine's own propagations.

Two steps:

    python -m ml.train_refiner samples --out ml/runs/refiner_samples [--datasets ...] [--synthetic 60]
    python -m ml.train_refiner train --samples ml/runs/refiner_samples --run ml/runs/refiner --minutes 60

``samples`` runs the shipped engine (``load_engine()``) on the **training** cases of ``ml/splits.json`` (and
on generated volumes) from three prompts per object: the evaluation's box and point on the largest slice,
and a jittered box on a random slice of the object's middle half. Each propagation is stored as one
``.npz`` (image, propagated mask, true mask, spacing, prompt slice), cut to the slices around the object.
With ``--split val`` it stores the evaluation's box prompt on the validation cases instead (what ``train``
validates on; never trained on).

``train`` fits a ``SliceRefiner`` (``ml/refiner.py``): a random visited slice of a random stored
propagation, with crop, window, flip/rotation, gamma and mask-neighbourhood jitter, against the true mask;
Dice + BCE on both heads. Resumable (``last.pt`` every 5 minutes), bounded by ``--minutes``; ``best.pt``
is the state with the best validation score (mean 3D Dice of the refined propagations over the validation
samples, per data set, then averaged).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ml.checkpoint import REFINER_TRAINING_FORMAT
from ml.config import CROP_SCALE, RefinerConfig
from ml.networks import SliceRefiner
from ml.predictor import Window
from ml.preprocess import masks_to_network
from ml.refiner import refine_mask, refiner_input, refiner_window, slices_to_refine

DATASET_WEIGHTS = {"Dataset001_Hippocampus": 0.4, "Dataset002_LeftAtrium": 0.35, "synthetic": 0.25}
"""How often each source is drawn (sources absent from the samples are dropped and the rest renormalised)."""
CHECKPOINT_SECONDS = 300.0
HEAD_WEIGHTS = (1.0, 0.5)


# ------------------------------------------------------------------------------------------------ samples


@dataclass
class Propagation:
    """One stored propagation: float32 ``image``, bool ``pred`` and ``truth``, all ``(Z, Y, X)``."""

    source: str
    name: str
    image: np.ndarray
    pred: np.ndarray
    truth: np.ndarray
    prompt_z: int
    kind: str


def _source_of(name: str) -> str:
    return name.split("__", 1)[0]


def save_propagation(
    out_dir: pathlib.Path,
    name: str,
    image: np.ndarray,
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    kind: str,
    prompt_z: int,
) -> None:
    """Store the slices from 3 before to 3 after the object (predicted or true) of one propagation."""
    filled = np.flatnonzero((pred | truth).any(axis=(1, 2)))
    if filled.size == 0:
        return
    z0, z1 = max(0, int(filled[0]) - 3), min(image.shape[0], int(filled[-1]) + 4)
    np.savez_compressed(
        out_dir / f"{name}.npz",
        image=image[z0:z1].astype(np.float32),
        pred=pred[z0:z1],
        truth=truth[z0:z1],
        spacing=np.asarray(spacing, dtype=np.float32),
        kind=kind,
        prompt_z=prompt_z - z0,
    )


def load_propagations(sample_dir: pathlib.Path) -> list[Propagation]:
    items = []
    for path in sorted(pathlib.Path(sample_dir).glob("*.npz")):
        with np.load(path) as data:
            items.append(
                Propagation(
                    _source_of(path.stem),
                    path.stem,
                    data["image"],
                    data["pred"].astype(bool),
                    data["truth"].astype(bool),
                    int(data["prompt_z"]),
                    str(data["kind"]),
                )
            )
    return items


def _sample_prompts(obj: Any, spacing: tuple[float, float, float], rng: np.random.Generator) -> Iterator:
    from ml.objects import make_prompt
    from ml.prompts import BoxPrompt

    yield "box", make_prompt(obj, "box", spacing)
    yield "point", make_prompt(obj, "point", spacing)
    filled = np.flatnonzero(obj.mask.any(axis=(1, 2)))
    low, high = int(filled[0]), int(filled[-1])
    quarter = (high - low) // 4
    z = int(rng.integers(low + quarter, high - quarter + 1))
    rows = np.flatnonzero(obj.mask[z].any(axis=1))
    cols = np.flatnonzero(obj.mask[z].any(axis=0))
    if rows.size == 0:
        return
    height, width = obj.mask.shape[1:]
    pad = rng.integers(0, 3, size=4)
    yield (
        "box_off_centre",
        BoxPrompt(
            z,
            max(0, int(rows[0] - pad[0])),
            max(0, int(cols[0] - pad[1])),
            min(height - 1, int(rows[-1] + pad[2])),
            min(width - 1, int(cols[-1] + pad[3])),
        ),
    )


def make_samples(
    out_dir: pathlib.Path, datasets: Sequence[pathlib.Path], split: str, synthetic: int, seed: int
) -> int:
    """Run the shipped engine and store its propagations; returns how many were stored."""
    from ml.data import synthetic_case
    from ml.engine import load_engine
    from ml.evaluate import select_cases
    from ml.objects import find_objects, load_case, make_prompt

    out_dir.mkdir(parents=True, exist_ok=True)
    engine = load_engine()
    rng = np.random.default_rng(seed)
    stored = 0

    def propagations(image: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float], stem: str):
        nonlocal stored
        for obj in find_objects(labels):
            prompts = (
                _sample_prompts(obj, spacing, rng)
                if split == "train"
                else iter([("box", make_prompt(obj, "box", spacing))])
            )
            for kind, prompt in prompts:
                pred = np.zeros(image.shape, dtype=bool)
                for step in engine.propagate(image, spacing, prompt):
                    pred[step.z] = step.mask
                name = f"{stem}_{obj.label}_{obj.index}_{kind}"
                save_propagation(out_dir, name, image, pred, obj.mask, spacing, kind, prompt.z)
                stored += 1

    for dataset_dir in datasets:
        cases, note = select_cases(dataset_dir, split, None)
        print(f"{dataset_dir.name}: {note}", flush=True)
        for case in cases:
            loaded = load_case(case)
            propagations(loaded.image, loaded.labels, loaded.spacing, f"{dataset_dir.name}__{case.case_id}")
    for index in range(synthetic):
        case = synthetic_case(rng, f"synthetic{index}")
        propagations(case.image, case.labels, case.spacing, f"synthetic__{seed}_{index}")
    return stored


# ------------------------------------------------------------------------------------------------ training


def _jittered_window(window: Window, rng: np.random.Generator) -> Window:
    width = window.high - window.low
    return Window(
        window.low + rng.uniform(-0.05, 0.05) * width, window.high + rng.uniform(-0.05, 0.05) * width
    )


def _perturbed_masks(pred: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Now and then grow or shrink the propagated masks by a pixel or two (other organs, other errors)."""
    if rng.random() >= 0.25:
        return pred
    iterations = int(rng.integers(1, 3))
    structure = ndimage.generate_binary_structure(3, 1)
    structure[0] = structure[2] = False  # in-plane only
    if rng.random() < 0.5:
        return ndimage.binary_dilation(pred, structure, iterations=iterations)
    return ndimage.binary_erosion(pred, structure, iterations=iterations)


def training_example(
    item: Propagation, config: RefinerConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, S, S)`` input and ``(1, S, S)`` target for a random visited slice of ``item``."""
    pred = _perturbed_masks(item.pred, rng)
    if not pred.any():
        pred = item.pred
    z = int(rng.choice(slices_to_refine(pred, config)))
    window = _jittered_window(refiner_window(item.image, pred), rng)
    example = refiner_input(
        item.image,
        pred,
        z,
        window,
        config,
        crop_scale=CROP_SCALE * float(rng.uniform(0.8, 1.25)),
        shift=(float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08))),
    )
    inputs = example.inputs
    target = masks_to_network(item.truth[z][None], example.crop, config.input_size)
    images = 2 * config.image_context + 1
    stretched = (inputs[:images] + 1.0) / 2.0
    stretched = stretched.clamp(0.0, 1.0) ** float(np.exp(rng.normal(0.0, 0.25)))
    if rng.random() < 0.1:
        stretched = 1.0 - stretched
    inputs = torch.cat([stretched * 2.0 - 1.0, inputs[images:]])
    turns = int(rng.integers(0, 4))
    inputs, target = torch.rot90(inputs, turns, (1, 2)), torch.rot90(target, turns, (1, 2))
    if rng.random() < 0.5:
        inputs, target = inputs.flip(-1), target.flip(-1)
    return inputs, target


def _loss(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(())
    for weight, logits in zip(HEAD_WEIGHTS, outputs, strict=False):
        scaled = (
            target
            if logits.shape[-1] == target.shape[-1]
            else F.adaptive_max_pool2d(target, logits.shape[-2:])
        )
        probabilities = torch.sigmoid(logits)
        intersection = (probabilities * scaled).sum()
        dice = 1.0 - (2.0 * intersection + 1.0) / (probabilities.sum() + scaled.sum() + 1.0)
        total = total + weight * (dice + F.binary_cross_entropy_with_logits(logits, scaled))
    return total


def dice_3d(first: np.ndarray, second: np.ndarray) -> float:
    total = int(first.sum()) + int(second.sum())
    return 1.0 if total == 0 else 2.0 * int((first & second).sum()) / total


def validation_scores(refiner: SliceRefiner, items: Sequence[Propagation]) -> dict[str, dict[str, float]]:
    """Mean 3D Dice per source before and after refinement (the prompt slice of mask prompts is kept)."""
    refiner.eval()
    scores: dict[str, dict[str, list[float]]] = {}
    for item in items:
        refined = refine_mask(refiner, item.image, item.pred)
        entry = scores.setdefault(item.source, {"before": [], "after": []})
        entry["before"].append(dice_3d(item.pred, item.truth))
        entry["after"].append(dice_3d(refined, item.truth))
    refiner.train()
    return {
        source: {key: float(np.mean(values)) for key, values in entry.items()}
        | {"objects": len(entry["after"])}
        for source, entry in scores.items()
    }


def _score(scores: dict[str, dict[str, float]]) -> float:
    """What ``best.pt`` maximises: the mean over sources of the Dice gain from refinement."""
    return float(np.mean([entry["after"] - entry["before"] for entry in scores.values()])) if scores else 0.0


def train(
    sample_dir: pathlib.Path,
    val_dir: pathlib.Path | None,
    run_dir: pathlib.Path,
    minutes: float,
    *,
    resume: bool,
    lr: float,
    batch_size: int,
    val_minutes: float,
    seed: int,
    config: RefinerConfig,
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    items = load_propagations(sample_dir)
    if not items:
        raise SystemExit(
            f"no samples (*.npz) in {sample_dir}: run 'python -m ml.train_refiner samples' first"
        )
    items = [item for item in items if item.pred.any()]
    val_items = load_propagations(val_dir) if val_dir is not None else []
    by_source: dict[str, list[Propagation]] = {}
    for item in items:
        by_source.setdefault(item.source, []).append(item)
    weights = np.array([DATASET_WEIGHTS.get(source, 0.2) for source in by_source], dtype=float)
    weights /= weights.sum()
    sources = list(by_source)
    print({source: len(by_source[source]) for source in sources}, "val", len(val_items), flush=True)

    state_path = run_dir / "last.pt"
    refiner = SliceRefiner(config)
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=lr, weight_decay=1e-4)
    step, trained_seconds, best = 0, 0.0, -np.inf
    history: list[dict[str, Any]] = []
    rng = np.random.default_rng(seed)
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        refiner = SliceRefiner(RefinerConfig.from_dict(state["config"]))
        refiner.load_state_dict(state["state"])
        optimizer = torch.optim.AdamW(refiner.parameters(), lr=lr, weight_decay=1e-4)
        optimizer.load_state_dict(state["optimizer"])
        step, trained_seconds, best, history = (
            state["step"],
            state["trained_seconds"],
            state["best"],
            state["history"],
        )
        rng = np.random.default_rng(seed + step)
        print(f"resumed at step {step}", flush=True)
    budget = minutes * 60.0
    total_seconds = trained_seconds + budget

    started = time.monotonic()

    def save(path: pathlib.Path) -> None:
        """Atomic write; ``trained_seconds`` counts earlier sittings plus this one so far."""
        payload = {
            "format": REFINER_TRAINING_FORMAT,
            "config": refiner.config.to_dict(),
            "state": refiner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "trained_seconds": trained_seconds + time.monotonic() - started,
            "best": best,
            "history": history,
            "command": " ".join(sys.argv),
        }
        temporary = path.with_suffix(".tmp")
        torch.save(payload, temporary)
        temporary.replace(path)

    refiner.train()
    last_save = last_val = started
    losses: list[float] = []
    while time.monotonic() - started < budget:
        progress = min((trained_seconds + time.monotonic() - started) / total_seconds, 1.0)
        for group in optimizer.param_groups:  # warm-up, then cosine to 5 %
            group["lr"] = (
                lr * min(1.0, (step + 1) / 200) * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * progress)))
            )
        batch = []
        for _ in range(batch_size):
            source = sources[int(rng.choice(len(sources), p=weights))]
            batch.append(
                training_example(by_source[source][int(rng.integers(len(by_source[source])))], config, rng)
            )
        inputs = torch.stack([example[0] for example in batch])
        targets = torch.stack([example[1] for example in batch])
        loss = _loss(refiner(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(refiner.parameters(), 12.0)
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        now = time.monotonic()
        if step % 50 == 0:
            print(
                f"step {step} loss {np.mean(losses[-50:]):.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                f"{step / max(now - started, 1e-6):.2f} steps/s",
                flush=True,
            )
        finished = now - started >= budget
        if val_items and (now - last_val >= val_minutes * 60.0 or finished):
            scores = validation_scores(refiner, val_items)
            history.append({"step": step, "scores": scores})
            print(f"step {step} validation {json.dumps(scores)}", flush=True)
            last_val = time.monotonic()
            if _score(scores) > best:
                best = _score(scores)
                save(run_dir / "best.pt")
        if now - last_save >= CHECKPOINT_SECONDS:
            save(state_path)
            last_save = now
    save(state_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ml.train_refiner", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    samples = commands.add_parser("samples", help="store the shipped engine's propagations")
    samples.add_argument("--out", type=pathlib.Path, required=True)
    samples.add_argument("--datasets", type=pathlib.Path, nargs="*", default=[])
    samples.add_argument("--split", choices=("train", "val"), default="train")
    samples.add_argument("--synthetic", type=int, default=0, help="generated volumes to add")
    samples.add_argument("--seed", type=int, default=0)
    samples.add_argument("--threads", type=int, default=0)
    fit = commands.add_parser("train", help="fit the slice refiner")
    fit.add_argument("--samples", type=pathlib.Path, required=True)
    fit.add_argument("--val-samples", type=pathlib.Path)
    fit.add_argument("--run", type=pathlib.Path, required=True)
    fit.add_argument("--minutes", type=float, required=True)
    fit.add_argument("--val-minutes", type=float, default=10.0)
    fit.add_argument("--resume", action="store_true")
    fit.add_argument("--lr", type=float, default=1e-3)
    fit.add_argument("--batch-size", type=int, default=32)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "samples":
        count = make_samples(args.out, args.datasets, args.split, args.synthetic, args.seed)
        print(f"stored {count} propagations in {args.out}")
    else:
        if args.minutes <= 0:
            parser.error("--minutes must be > 0")
        train(
            args.samples,
            args.val_samples,
            args.run,
            args.minutes,
            resume=args.resume,
            lr=args.lr,
            batch_size=args.batch_size,
            val_minutes=args.val_minutes,
            seed=args.seed,
            config=RefinerConfig(),
        )


if __name__ == "__main__":
    main()
