"""``python -m ml.evaluate DATASET_DIR``: 3D Dice of an engine on an nnU-Net raw data set, from simulated prompts.

    python -m ml.evaluate ../shared/data/Dataset001_Hippocampus --engine classical --prompt box \
        [--corrections K] [--cases N] [--split val|train|all] [--orientation ORIENTATION] [--json OUT]

Objects, prompts and correction clicks are defined in ``ml/objects.py``. For every object the engine gets
one prompt on the object's largest slice and ``segment`` runs; then ``K`` times a simulated click on the
worst slice and ``refine``, handed that click with the earlier ones on its slice (``correction_clicks``).
Reported: 3D Dice per object (after the prompt and after each correction), mean per label and per data set,
propagated slices, seconds and ms per slice (the ``segment`` call, prompt slice included). ``--split val``
takes the validation case list of ``ml/splits.json`` (never the training cases); when the data set has no
entry there, it says so and evaluates all cases. A case that cannot be read or that the engine refuses (NaN
voxels, a 4D image, a label map with negative or fractional values) is skipped with its reason on stderr;
the others are reported and the command then exits 1.
``--orientation`` hands the engine every case flipped top-bottom (``flip-y``) or left-right (``flip-x``),
or with rows and columns swapped (``swap-yx``), as files from another scanner or exporter may come.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ml.engine import Engine, load_engine
from ml.objects import (
    PROMPT_KINDS,
    CaseFiles,
    LoadedCase,
    correction_click,
    correction_clicks,
    dice_3d,
    find_objects,
    label_names,
    list_cases,
    load_case,
    make_prompt,
)
from ml.prompts import Click

SPLITS_PATH = pathlib.Path(__file__).resolve().parent / "splits.json"
ORIENTATIONS = ("stored", "flip-y", "flip-x", "swap-yx")


@dataclass
class ObjectResult:
    """One evaluated object (``dice_after[k]`` = Dice after ``k + 1`` corrections)."""

    case: str
    label: int
    label_name: str
    object_index: int
    voxels: int
    truth_slices: list[int]
    prompt_z: int
    dice: float
    slices: int
    seconds: float
    ms_per_slice: float
    dice_after: list[float] = field(default_factory=list)
    refine_seconds: list[float] = field(default_factory=list)


def read_split(dataset_name: str, split: str, splits_path: pathlib.Path = SPLITS_PATH) -> list[str] | None:
    """Case ids of ``split`` for a data set, or None when ``splits.json`` has no usable entry.

    Accepts ``{"datasets": {name: {"train": [...], "val": [...]}}}`` and the flat ``{name: {...}}``.
    """
    if not splits_path.is_file():
        return None
    try:
        content = json.loads(splits_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(content, dict):
        return None
    table = content.get("datasets", content)
    entry = table.get(dataset_name) if isinstance(table, dict) else None
    if not isinstance(entry, dict):
        return None
    ids = entry.get(split)
    if not isinstance(ids, list) or not all(isinstance(case_id, str) for case_id in ids):
        return None
    return ids


def select_cases(
    dataset_dir: pathlib.Path, split: str, limit: int | None, splits_path: pathlib.Path = SPLITS_PATH
) -> tuple[list[CaseFiles], str]:
    """The cases to evaluate and a note saying where the list came from."""
    cases = list_cases(dataset_dir)
    note = f"all {len(cases)} labelled cases"
    if split != "all":
        wanted = read_split(pathlib.Path(dataset_dir).name, split, splits_path)
        if wanted is None:
            note = f"no '{split}' list for {pathlib.Path(dataset_dir).name} in {splits_path.name}: all {len(cases)} cases"
        else:
            wanted_set = set(wanted)
            cases = [case for case in cases if case.case_id in wanted_set]
            note = f"'{split}' split: {len(cases)} cases"
    if limit is not None:
        cases = cases[:limit]
        note += f", first {len(cases)}"
    return cases, note


def reorient(loaded: LoadedCase, orientation: str) -> LoadedCase:
    """The case as another scanner might store it: image and labels flipped or transposed in-plane alike
    (``ORIENTATIONS``; spacing follows a swap). ``"stored"`` returns it unchanged."""
    if orientation == "stored":
        return loaded
    if orientation == "flip-y":
        image, labels, spacing = loaded.image[:, ::-1], loaded.labels[:, ::-1], loaded.spacing
    elif orientation == "flip-x":
        image, labels, spacing = loaded.image[:, :, ::-1], loaded.labels[:, :, ::-1], loaded.spacing
    elif orientation == "swap-yx":
        image, labels = loaded.image.transpose(0, 2, 1), loaded.labels.transpose(0, 2, 1)
        spacing = (loaded.spacing[0], loaded.spacing[2], loaded.spacing[1])
    else:
        raise ValueError(f"unknown orientation {orientation!r}; choose one of {ORIENTATIONS}")
    return LoadedCase(loaded.case_id, np.ascontiguousarray(image), np.ascontiguousarray(labels), spacing)


def evaluate_case(
    engine: Engine,
    case: CaseFiles,
    prompt_kind: str,
    corrections: int,
    names: dict[int, str],
    orientation: str = "stored",
) -> list[ObjectResult]:
    """Evaluate every object of one case (handed to the engine in ``orientation``, see ``reorient``)."""
    loaded = reorient(load_case(case), orientation)
    results: list[ObjectResult] = []
    for obj in find_objects(loaded.labels):
        prompt = make_prompt(obj, prompt_kind, loaded.spacing)
        started = time.perf_counter()
        prediction = np.zeros(loaded.image.shape, dtype=bool)
        slices = 0
        for step in engine.propagate(loaded.image, loaded.spacing, prompt):
            prediction[step.z] = step.mask
            slices += 1
        seconds = time.perf_counter() - started
        z_first, z_last = obj.slice_range
        result = ObjectResult(
            case=case.case_id,
            label=obj.label,
            label_name=names.get(obj.label, str(obj.label)),
            object_index=obj.index,
            voxels=int(obj.mask.sum()),
            truth_slices=[z_first, z_last],
            prompt_z=prompt.z,
            dice=dice_3d(prediction, obj.mask),
            slices=slices,
            seconds=seconds,
            ms_per_slice=1000.0 * seconds / max(slices, 1),
        )
        earlier_clicks: list[Click] = []
        for _ in range(corrections):
            click = correction_click(prediction, obj.mask, loaded.spacing)
            if click is None:  # already perfect: further corrections change nothing
                result.dice_after.append(result.dice_after[-1] if result.dice_after else result.dice)
                result.refine_seconds.append(0.0)
                continue
            started = time.perf_counter()
            clicks = correction_clicks(earlier_clicks, click)
            earlier_clicks.append(click)
            prediction = engine.refine(
                loaded.image, loaded.spacing, prediction, clicks=clicks, anchor_z=prompt.z
            )
            result.refine_seconds.append(time.perf_counter() - started)
            result.dice_after.append(dice_3d(prediction, obj.mask))
        results.append(result)
    return results


def summarise(results: Sequence[ObjectResult], corrections: int) -> dict:
    """Means per label and over all objects of the data set."""

    def block(group: Sequence[ObjectResult]) -> dict:
        seconds = sum(result.seconds for result in group)
        slices = sum(result.slices for result in group)
        summary = {
            "objects": len(group),
            "mean_dice": float(np.mean([result.dice for result in group])) if group else float("nan"),
            "median_dice": float(np.median([result.dice for result in group])) if group else float("nan"),
            "seconds": seconds,
            "slices": slices,
            "ms_per_slice": 1000.0 * seconds / max(slices, 1),
        }
        if corrections:
            summary["mean_dice_after"] = [
                float(np.mean([result.dice_after[k] for result in group])) if group else float("nan")
                for k in range(corrections)
            ]
        return summary

    per_label: dict[str, dict] = {}
    for label in sorted({result.label for result in results}):
        group = [result for result in results if result.label == label]
        per_label[f"{label} {group[0].label_name}"] = block(group)
    return {"per_label": per_label, "dataset": block(results)}


def format_table(summary: dict, corrections: int) -> str:
    """A plain-text table: one row per label and one for the whole data set."""
    header = f"{'label':<28}{'objects':>8}{'Dice':>8}{'median':>8}"
    if corrections:
        header += "".join(f"{f'+{k + 1} click':>10}" for k in range(corrections))
    header += f"{'slices':>8}{'seconds':>9}{'ms/slice':>10}"
    lines = [header, "-" * len(header)]
    rows = [*summary["per_label"].items(), ("ALL", summary["dataset"])]
    for name, block in rows:
        line = f"{name[:27]:<28}{block['objects']:>8}{block['mean_dice']:>8.3f}{block['median_dice']:>8.3f}"
        for value in block.get("mean_dice_after", []):
            line += f"{value:>10.3f}"
        line += f"{block['slices']:>8}{block['seconds']:>9.1f}{block['ms_per_slice']:>10.1f}"
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ml.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", type=pathlib.Path, help="nnU-Net v2 raw data set folder")
    parser.add_argument("--engine", choices=("learned", "classical"), default="learned")
    parser.add_argument("--prompt", choices=PROMPT_KINDS, default="box")
    parser.add_argument("--corrections", type=int, default=0, metavar="K", help="simulated clicks per object")
    parser.add_argument(
        "--cases", type=int, default=None, metavar="N", help="evaluate only the first N cases"
    )
    parser.add_argument("--split", choices=("val", "train", "all"), default="val")
    parser.add_argument(
        "--json", type=pathlib.Path, default=None, metavar="OUT", help="write all figures here"
    )
    parser.add_argument(
        "--weights", type=pathlib.Path, default=None, help="learned weights folder (default ml/weights)"
    )
    parser.add_argument("--device", default=None, help="torch device for the learned engine")
    parser.add_argument(
        "--no-slice-refiner",
        action="store_true",
        help="learned engine without the weights' slice refiner (to measure what it adds)",
    )
    parser.add_argument(
        "--crop-aware-averaging",
        action="store_true",
        help="learned engine whose loop lets one guide answer alone past a crop that cut the other's object "
        "(measured in session 22, not shipped)",
    )
    parser.add_argument(
        "--focused-corrections",
        action="store_true",
        help="learned engine whose correction clicks change their slice only near the click "
        "(measured in session 23, not shipped)",
    )
    parser.add_argument(
        "--orientation",
        choices=ORIENTATIONS,
        default="stored",
        help="hand the engine every case flipped or with rows and columns swapped (labels alike)",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-object lines")
    args = parser.parse_args(argv)
    if args.corrections < 0:
        parser.error("--corrections must be >= 0")
    if args.cases is not None and args.cases < 1:
        parser.error("--cases must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    dataset_dir: pathlib.Path = args.dataset_dir
    try:
        names = label_names(dataset_dir)
        cases, note = select_cases(dataset_dir, args.split, args.cases)
        engine = (
            load_engine(
                "learned",
                weights_dir=args.weights,
                device=args.device,
                slice_refinement=not args.no_slice_refiner,
                crop_aware_averaging=True if args.crop_aware_averaging else None,
                focused_corrections=True if args.focused_corrections else None,
            )
            if args.engine == "learned"
            else load_engine("classical")
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    orientation = "" if args.orientation == "stored" else f", orientation {args.orientation}"
    print(
        f"{dataset_dir.name}: engine {engine.name}, prompt {args.prompt}, {args.corrections} corrections"
        f"{orientation}; {note}",
        flush=True,
    )
    results: list[ObjectResult] = []
    skipped: dict[str, str] = {}
    started = time.perf_counter()
    for number, case in enumerate(cases, start=1):
        try:
            case_results = evaluate_case(engine, case, args.prompt, args.corrections, names, args.orientation)
        # An unreadable file or a volume the engine refuses costs that case only: the others still count.
        except ValueError as error:
            reason = str(error).removeprefix(f"{case.case_id}: ")
            skipped[case.case_id] = reason
            print(f"[{number}/{len(cases)}] skipped {case.case_id}: {reason}", file=sys.stderr, flush=True)
            continue
        results.extend(case_results)
        if not args.quiet:
            for result in case_results:
                after = (
                    " -> " + " ".join(f"{value:.3f}" for value in result.dice_after)
                    if result.dice_after
                    else ""
                )
                print(
                    f"[{number}/{len(cases)}] {result.case} {result.label_name} #{result.object_index}: "
                    f"Dice {result.dice:.3f}{after}  {result.slices} slices (truth {result.truth_slices[0]}.."
                    f"{result.truth_slices[1]})  {result.ms_per_slice:.1f} ms/slice",
                    flush=True,
                )
    if not results:
        print("error: no objects found in the selected cases", file=sys.stderr)
        return 1
    summary = summarise(results, args.corrections)
    print(format_table(summary, args.corrections))
    print(f"total {time.perf_counter() - started:.1f} s")
    if skipped:
        print(
            f"error: {len(skipped)} of {len(cases)} cases skipped, the figures above leave them out: "
            + ", ".join(sorted(skipped)),
            file=sys.stderr,
        )
    if args.json is not None:
        report = {
            "dataset": dataset_dir.name,
            "engine": engine.name,
            "prompt": args.prompt,
            "corrections": args.corrections,
            "split": args.split,
            "orientation": args.orientation,
            "cases": [case.case_id for case in cases],
            "case_note": note,
            "skipped_cases": skipped,
            **summary,
            "objects": [asdict(result) for result in results],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
