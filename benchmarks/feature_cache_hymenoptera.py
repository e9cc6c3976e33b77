"""Feature cache: feature extraction on hymenoptera (ants/bees) with and without the cache.

What it measures
    The PyTorch tutorial's "ConvNet as fixed feature extractor" task, run by TransferStudio:
    method ``feature-extract`` (linear head), backbone ``mobilenet_v2`` with the ImageNet weights
    file ``../shared/data/weights/mobilenet_v2_imagenet.pth`` (BatchNorm folded: the backbone
    must stay in eval mode, which feature-extract does), 224 px (the backbone's own
    preprocessing), no augmentation, 25 epochs, batch 32, AdamW lr 0.001, ``num_workers = -1``
    (auto), CPU, on ``../shared/data/hymenoptera_data`` (train: 244 photos plus one GIF
    placeholder, which the data scan loads as an image; val: 153 photos).

    (a) ``cache = "auto"``: backbone features are computed once per split and the head trains on
        them for 25 epochs.
    (b) ``cache = "off"``: every epoch decodes every image and runs it through the backbone
        (the tutorial's way).

    The runs go auto, off, auto (the cheap cached run brackets the long one, so a change of load
    during the session weighs on both sides); the speed-up uses the mean of the two auto runs.
    Each run gets a fresh workspace folder (so (a)'s disk cache cannot help (b) and vice versa)
    and ``transferstudio.core.models.features.clear_memory()`` is called before each. Reported: wall
    time of each ``run_experiment`` call (data scan, model build, 25 epochs, checkpoints), the
    speed-up off/auto (target >= 5x) and the best validation accuracy of each (target >= 0.93).
    The process's own CPU time (with its DataLoader workers) is reported too, and its ratio
    off/auto: it depends less on other load than wall time does. Shared machines: before each run
    the script waits (up to ``--max-wait`` s) for other processes to go quiet, and it measures
    from /proc/stat how much CPU other processes used during each run and prints it, since a
    busy machine slows a run down (on 2 cores, several times over).

How to run
    .venv/bin/python benchmarks/feature_cache_hymenoptera.py            # about 5-10 min on 2 cores
    .venv/bin/python benchmarks/feature_cache_hymenoptera.py --quick    # smoke run, 2 epochs
    .venv/bin/python benchmarks/feature_cache_hymenoptera.py --json out.json

Exits 0 with a message when ``../shared/data`` (beside the project) is absent. Prints the
machine and a markdown table (paste it into docs/benchmarks.md); ``--json`` also writes every
figure to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = SHARED_DATA / "hymenoptera_data"
WEIGHTS = SHARED_DATA / "weights" / "mobilenet_v2_imagenet.pth"
SPEEDUP_TARGET = 5.0
ACCURACY_TARGET = 0.93


def experiment_raw(cache: str, epochs: int, lr: float) -> dict:
    return {
        "schema_version": 1,
        "name": f"bench-feature-cache-{cache}",
        "data": {"path": str(DATA), "batch_size": 32, "num_workers": -1},
        "augment": {"random_resized_crop": False, "hflip": False},
        "model": {"backbone": "mobilenet_v2", "weights": str(WEIGHTS)},
        "train": {"epochs": epochs, "device": "cpu", "lr": lr, "optimizer": "adamw", "seed": 0},
        "method": {"name": "feature-extract", "params": {"head": "linear", "cache": cache}},
    }


def run_one(cache: str, epochs: int, lr: float, workspace: Path) -> dict:
    from _common import OtherLoad, fmt_cores, own_cpu_seconds

    from transferstudio.core.models.features import clear_memory
    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.progress import events as E
    from transferstudio.core.settings.experiment import from_mapping
    from transferstudio.core.training.engine import PlainState, run_experiment

    clear_memory()
    host = load_plugins(autoload=False)
    exp = from_mapping(experiment_raw(cache, epochs, lr), host.method_params)
    epoch_events: list[E.EpochEnded] = []
    started: list[E.RunStarted] = []
    logs: list[str] = []

    def on_event(ev):
        if isinstance(ev, E.EpochEnded):
            epoch_events.append(ev)
            print(
                f"    [{cache}] epoch {ev.epoch + 1}/{ev.epochs}: {ev.seconds:6.2f} s, val accuracy "
                f"{ev.val.get('accuracy', float('nan')):.4f}",
                flush=True,
            )
        elif isinstance(ev, E.RunStarted):
            started.append(ev)
        elif isinstance(ev, E.LogMessage):
            logs.append(ev.text)

    with OtherLoad() as other:
        t0, cpu0 = time.perf_counter(), own_cpu_seconds()
        result = run_experiment(exp, host, PlainState(on_event=on_event), workspace)
        wall, cpu = time.perf_counter() - t0, own_cpu_seconds() - cpu0
    if result.status != "completed":
        raise SystemExit(f"run with cache={cache} {result.status}: {result.message}")
    counts = started[0].counts if started else {}
    print(
        f"  cache={cache}: {wall:.1f} s ({cpu:.0f} CPU s), best val accuracy {result.best_metric:.4f} (epoch "
        f"{(result.best_epoch or 0) + 1}); other processes {fmt_cores(other.cores)} cores",
        flush=True,
    )
    return {
        "cache": cache,
        "wall_s": wall,
        "cpu_s": cpu,
        "epochs_s": [e.seconds for e in epoch_events],
        "best_val_accuracy": result.best_metric,
        "best_epoch": (result.best_epoch or 0) + 1,
        "final_val_accuracy": epoch_events[-1].val.get("accuracy") if epoch_events else None,
        "other_load_cores": other.cores,
        "images": {s: sum(c.values()) for s, c in counts.items()},
        "skipped_files": started[0].skipped if started else None,
        "feature_passes": sum("features once" in t for t in logs),
        "cache_log": [t for t in logs if "feature" in t],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 epochs")
    ap.add_argument("--only", choices=["auto", "off"], help="run one setting only, once")
    ap.add_argument(
        "--max-wait",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for other processes to go "
        "quiet (shared machines)",
    )
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs = 2

    from _common import describe_machine, fmt_cores, machine, missing_shared_data, wait_quiet

    if missing_shared_data(DATA / "train", DATA / "val", WEIGHTS):
        return 0

    info = machine()
    print(describe_machine(info))
    from transferstudio.core.data.loaders import default_workers

    workers = default_workers(-1)
    print(
        f"data: {DATA}; weights: {WEIGHTS}; {args.epochs} epochs, batch 32, lr {args.lr}, "
        f"num_workers -1 -> {workers}"
    )

    # auto, off, auto: the cheap cached run brackets the long uncached one, so that a change of
    # load on a shared machine during the session weighs on both sides alike.
    order = [c for c in ("auto", "off", "auto") if not args.only or c == args.only]
    if args.only:
        order = order[:1]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ts-bench-featcache-") as tmp:
        for i, cache in enumerate(order, 1):
            waited, _ = wait_quiet(0.15, args.max_wait)
            print(
                f"run {i}/{len(order)}: cache={cache} (fresh workspace"
                + (f"; waited {waited:.0f} s for a quiet machine)" if waited >= 1 else ")"),
                flush=True,
            )
            r = run_one(cache, args.epochs, args.lr, Path(tmp) / f"ws-{i}-{cache}")
            r.update(run=i, waited_s=waited)
            runs.append(r)

    from transferstudio.core.models.features import clear_memory

    clear_memory()
    print()
    print(
        "| run | cache | wall time (s) | CPU time (s) | first epoch (s) | later epochs, mean (s) "
        "| backbone passes over the data | best val accuracy (epoch) | other processes' CPU "
        "(cores) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        later = r["epochs_s"][1:]
        passes = (
            f"{r['feature_passes']} (once per split)"
            if r["cache"] == "auto"
            else f"{2 * len(r['epochs_s'])} ({len(r['epochs_s'])} epochs x train + val)"
        )
        print(
            f"| {r['run']} | {r['cache']} | {r['wall_s']:.1f} | {r['cpu_s']:.0f} "
            f"| {r['epochs_s'][0]:.2f} "
            f"| {(sum(later) / len(later)) if later else float('nan'):.2f} | {passes} | "
            f"{r['best_val_accuracy']:.4f} ({r['best_epoch']}) | "
            f"{fmt_cores(r['other_load_cores'])} |"
        )
    print()

    def mean(cache: str, key: str) -> float | None:
        values = [r[key] for r in runs if r["cache"] == cache]
        return sum(values) / len(values) if values else None

    rows = []
    summary: dict[str, float] = {}
    if mean("auto", "wall_s") and mean("off", "wall_s"):
        summary["speedup_wall"] = mean("off", "wall_s") / mean("auto", "wall_s")
        summary["speedup_cpu"] = mean("off", "cpu_s") / mean("auto", "cpu_s")
        n_auto = sum(r["cache"] == "auto" for r in runs)
        label = "mean of the auto runs" if n_auto > 1 else "auto"
        rows.append(
            (
                f"speed-up, wall time: off / {label}",
                f"{summary['speedup_wall']:.1f}x",
                f">= {SPEEDUP_TARGET:g}x",
                summary["speedup_wall"] >= SPEEDUP_TARGET,
            )
        )
        rows.append(
            (
                f"CPU time: off / {label} (less sensitive to other load)",
                f"{summary['speedup_cpu']:.1f}x",
                f">= {SPEEDUP_TARGET:g}x",
                summary["speedup_cpu"] >= SPEEDUP_TARGET,
            )
        )
    for r in runs:
        rows.append(
            (
                f"best val accuracy, run {r['run']} (cache {r['cache']})",
                f"{r['best_val_accuracy']:.4f}",
                f">= {ACCURACY_TARGET}",
                r["best_val_accuracy"] >= ACCURACY_TARGET,
            )
        )
    print("| figure | measured | target | result |")
    print("|---|---|---|---|")
    for name, value, target, ok in rows:
        print(f"| {name} | {value} | {target} | {'met' if ok else 'NOT met'} |")
    print()
    print(
        f"images used: {runs[0]['images']}; files skipped by the scan: {runs[0]['skipped_files']}"
    )

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "epochs": args.epochs,
                    "lr": args.lr,
                    "num_workers": workers,
                    "runs": runs,
                    "summary": summary,
                },
                indent=2,
            )
        )
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
