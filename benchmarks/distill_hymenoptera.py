"""Distillation on hymenoptera (ants/bees): a student trained alone against the same student
distilled from a pretrained teacher.

What it measures
    The teacher is a ``feature-extract`` run (linear head) on ``mobilenet_v2`` with the
    ImageNet weights file ``../shared/data/weights/mobilenet_v2_imagenet.pth`` (BatchNorm folded:
    feature-extract keeps the backbone in eval mode), trained on
    ``../shared/data/hymenoptera_data/train`` (244 photos and one GIF placeholder). The student
    is the same architecture from random initialisation (``model.weights = "none"``: 2.2 M
    parameters, no ImageNet knowledge). Both work at 112 px (``data.image_size``; 4x cheaper
    than 224 on this 2-core machine) with ImageNet normalisation, so that teacher and student
    see the same preprocessed images. (``mobilenet_v3_small`` was tried first as the student:
    its BatchNorm momentum of 0.01 leaves the running statistics near their initial values
    after the ~200 steps this data allows, so in eval mode it predicted one class whatever it
    learned, alone or distilled.)

    For each seed, with the same data, epochs, optimizer, learning rate and seed:
    (a) *alone*: ``fine-tune`` of the student (backbone learning-rate multiplier 1.0);
    (b) *distilled*: ``distill`` with ``teacher_run`` = the teacher, ``alpha = 0.5`` and
        ``temperature = 4`` (the defaults; ``--alpha``, ``--temperature``). Without augmentation
        the teacher's outputs are computed once per image (teacher cache); ``--augment`` trains
        both students on random resized crops and flips, and the teacher labels every
        augmented batch ("consistent teaching", Beyer et al. 2022).
    Reported: the teacher's val accuracy; per seed the best and final val accuracy (153 val
    photos) of (a) and (b) and the final teacher/student agreement of (b); mean and std over
    seeds. Accuracy, not time, is the figure here; wall times are printed for planning.

How to run
    .venv/bin/python benchmarks/distill_hymenoptera.py             # 3 seeds, ~15-30 min on 2 cores
    .venv/bin/python benchmarks/distill_hymenoptera.py --quick     # smoke run: 1 seed, 2 epochs
    .venv/bin/python benchmarks/distill_hymenoptera.py --json out.json

Exits 0 with a message when ``../shared/data`` (beside the project) is absent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = SHARED_DATA / "hymenoptera_data"
WEIGHTS = SHARED_DATA / "weights" / "mobilenet_v2_imagenet.pth"
STUDENT = "mobilenet_v2"
IMAGE_SIZE = 112


def experiment_raw(
    name: str, backbone: str, weights: str, method: dict, epochs: int, seed: int, augment=False
):
    return {
        "schema_version": 1,
        "name": name,
        "data": {
            "path": str(DATA),
            "batch_size": 32,
            "num_workers": 0,
            "image_size": IMAGE_SIZE,
        },
        "augment": {"random_resized_crop": augment, "hflip": augment},
        "model": {"backbone": backbone, "weights": weights},
        "train": {
            "epochs": epochs,
            "device": "cpu",
            "lr": 1e-3,
            "optimizer": "adamw",
            "seed": seed,
        },
        "method": method,
    }


def run(raw: dict, workspace: Path) -> dict:
    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.progress import events as E
    from transferstudio.core.settings.experiment import from_mapping
    from transferstudio.core.training.engine import PlainState, run_experiment

    host = load_plugins(autoload=False)
    exp = from_mapping(raw, host.method_params)
    epochs: list = []

    def on_event(ev):
        if isinstance(ev, E.EpochEnded):
            epochs.append(ev)

    t0 = time.perf_counter()
    result = run_experiment(exp, host, PlainState(on_event=on_event), workspace)
    wall = time.perf_counter() - t0
    if result.status != "completed":
        raise SystemExit(f"{raw['name']}: {result.status}: {result.message}")
    last = epochs[-1].val
    out = {
        "name": raw["name"],
        "folder": str(result.folder),
        "wall_s": wall,
        "best_val_accuracy": max(e.val["accuracy"] for e in epochs),
        "final_val_accuracy": last["accuracy"],
        "final_agreement": last.get("diag_agreement"),
        "teacher_accuracy": last.get("diag_teacher_accuracy"),
        "curve": [round(e.val["accuracy"], 4) for e in epochs],
    }
    print(
        f"  {raw['name']}: best val accuracy {out['best_val_accuracy']:.4f}, final "
        f"{out['final_val_accuracy']:.4f}"
        + (
            f", agreement {out['final_agreement']:.3f}"
            if out["final_agreement"] is not None
            else ""
        )
        + f" ({wall:.0f} s)",
        flush=True,
    )
    return out


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=25, help="student epochs")
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.5, help="distill: weight of the labels")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument(
        "--augment",
        action="store_true",
        help="students train on random resized crops and flips (the teacher then sees every "
        "augmented batch: no teacher cache)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 epochs")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.teacher_epochs, args.seeds = 2, 2, 1

    from _common import describe_machine, machine, missing_shared_data

    if missing_shared_data(DATA / "train", DATA / "val", WEIGHTS):
        return 0
    import torch

    # Small networks on a shared 2-core machine: one intra-op thread is as fast and steadier.
    torch.set_num_threads(1)
    info = machine()
    print(describe_machine(info))
    print(
        f"teacher: feature-extract mobilenet_v2 ({WEIGHTS.name}), {args.teacher_epochs} epochs; "
        f"student: {STUDENT} from random init, {args.epochs} epochs, seeds 0..{args.seeds - 1}; "
        f"{IMAGE_SIZE} px, batch 32, AdamW lr 1e-3, "
        + (
            "student augmentation: random resized crop + flip"
            if args.augment
            else "no augmentation"
        )
        + f", distill alpha {args.alpha}, T {args.temperature}; no early stopping",
        flush=True,
    )
    results: dict = {"machine": info, "args": vars(args) | {"json": str(args.json)}}
    with tempfile.TemporaryDirectory(prefix="ts-bench-distill-") as tmp:
        ws = Path(tmp) / "ws"
        teacher = run(
            experiment_raw(
                "teacher",
                "mobilenet_v2",
                str(WEIGHTS),
                {"name": "feature-extract", "params": {"head": "linear"}},
                args.teacher_epochs,
                0,
            ),
            ws,
        )
        results["teacher"] = teacher
        rows = []
        for seed in range(args.seeds):
            alone = run(
                experiment_raw(
                    f"alone-seed{seed}",
                    STUDENT,
                    "none",
                    {"name": "fine-tune", "params": {"backbone_lr_mult": 1.0}},
                    args.epochs,
                    seed,
                    args.augment,
                ),
                ws,
            )
            distilled = run(
                experiment_raw(
                    f"distilled-seed{seed}",
                    STUDENT,
                    "none",
                    {
                        "name": "distill",
                        "params": {
                            "teacher_run": teacher["folder"],
                            "alpha": args.alpha,
                            "temperature": args.temperature,
                        },
                    },
                    args.epochs,
                    seed,
                    args.augment,
                ),
                ws,
            )
            rows.append({"seed": seed, "alone": alone, "distilled": distilled})
        results["rows"] = rows

    print()
    print(
        f"teacher (mobilenet_v2 ImageNet, linear head): val accuracy {teacher['best_val_accuracy']:.4f}"
    )
    print()
    print(
        "| seed | alone: best val acc | alone: final | distilled: best val acc | distilled: final "
        "| distilled: teacher agreement |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        a, d = r["alone"], r["distilled"]
        print(
            f"| {r['seed']} | {a['best_val_accuracy']:.3f} | {a['final_val_accuracy']:.3f} "
            f"| {d['best_val_accuracy']:.3f} | {d['final_val_accuracy']:.3f} "
            f"| {d['final_agreement']:.3f} |"
        )
    summary = {
        key: {kind: [r[kind][key] for r in rows] for kind in ("alone", "distilled")}
        for key in ("best_val_accuracy", "final_val_accuracy")
    }
    print(
        f"| mean ± std | {_mean_std(summary['best_val_accuracy']['alone'])} "
        f"| {_mean_std(summary['final_val_accuracy']['alone'])} "
        f"| {_mean_std(summary['best_val_accuracy']['distilled'])} "
        f"| {_mean_std(summary['final_val_accuracy']['distilled'])} | |"
    )
    results["summary"] = summary
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
