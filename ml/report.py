"""The model card's validation table in one command: ``python -m ml.report``.

Runs ``python -m ml.evaluate`` for every data set x engine x prompt (box with simulated corrections, mask,
point) on the validation split, keeps each run's JSON in ``--out``, and prints the markdown table that
``ml/weights/MODEL_CARD.md`` shows. Runs whose JSON already exists are reused (``--fresh`` re-runs them), so
an interrupted report resumes where it stopped.

Examples::

    python -m ml.report                                   # shipped weights, all four shared data sets
    python -m ml.report --weights ml/runs/lodo_no_la/export --datasets Dataset002_LeftAtrium \\
        --out ml/runs/report_lodo                         # leave-one-data-set-out check
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

from ml import evaluate
from ml.data import DEFAULT_DATA_DIR

DEFAULT_DATASETS = (
    "Dataset001_Hippocampus",
    "Dataset002_LeftAtrium",
    "Dataset003_TotalSegmentatorCT",
    "Dataset004_TotalSegmentatorMR",
)
ENGINES = ("learned", "classical")
PROMPTS = ("box", "mask", "point")


def run_name(dataset: str, engine: str, prompt: str) -> str:
    return f"{dataset}_{engine}_{prompt}.json"


def run_all(
    data_dir: pathlib.Path,
    datasets: Sequence[str],
    engines: Sequence[str],
    out: pathlib.Path,
    weights: pathlib.Path | None,
    corrections: int,
    fresh: bool,
) -> None:
    """Evaluate each combination whose JSON is missing (all of them with ``fresh``)."""
    for dataset in datasets:
        for engine in engines:
            for prompt in PROMPTS:
                target = out / run_name(dataset, engine, prompt)
                if target.exists() and not fresh:
                    continue
                argv = [str(data_dir / dataset), "--engine", engine, "--prompt", prompt, "--quiet"]
                argv += ["--json", str(target)]
                if prompt == "box" and corrections:
                    argv += ["--corrections", str(corrections)]
                if engine == "learned" and weights is not None:
                    argv += ["--weights", str(weights)]
                print(f"== {dataset} {engine} {prompt}", flush=True)
                status = evaluate.main(argv)
                if status != 0:
                    raise SystemExit(f"ml.evaluate failed ({status}) for {dataset} {engine} {prompt}")


def table(datasets: Sequence[str], engines: Sequence[str], out: pathlib.Path) -> str:
    """Markdown rows: data set, engine, Dice per prompt, box Dice after the last correction, ms per slice."""
    lines = [
        "| data set (objects) | engine | box | mask | point | box + corrections | ms/slice (box) |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset in datasets:
        for engine in engines:
            cells: list[str] = []
            objects, after, speed = "?", "n/a", "n/a"
            for prompt in PROMPTS:
                path = out / run_name(dataset, engine, prompt)
                if not path.exists():
                    cells.append("n/a")
                    continue
                summary = json.loads(path.read_text())["dataset"]
                cells.append(f"{summary['mean_dice']:.3f}")
                if prompt == "box":
                    objects = str(summary["objects"])
                    corrected = summary.get("mean_dice_after") or []
                    after = " -> ".join(f"{value:.3f}" for value in corrected) if corrected else "n/a"
                    speed = f"{summary['ms_per_slice']:.1f}"
            lines.append(
                f"| {dataset} ({objects}) | {engine} | " + " | ".join(cells) + f" | {after} | {speed} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.report", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=pathlib.Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS))
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--weights", type=pathlib.Path, default=None, help="learned weights folder")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("ml/runs/report"))
    parser.add_argument("--corrections", type=int, default=3, help="simulated clicks after the box prompt")
    parser.add_argument("--fresh", action="store_true", help="re-run combinations that already have a JSON")
    parser.add_argument("--table-only", action="store_true", help="print the table from existing JSONs")
    args = parser.parse_args(argv)
    missing = [name for name in args.datasets if not (args.data_dir / name).is_dir()]
    if missing:
        parser.error(f"no such data set under {args.data_dir}: {', '.join(missing)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        run_all(
            args.data_dir, args.datasets, args.engines, args.out, args.weights, args.corrections, args.fresh
        )
    print(table(args.datasets, args.engines, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
