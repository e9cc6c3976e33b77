"""Engine overhead: images/s of ``run_experiment`` against a minimal hand-written PyTorch loop.

What it measures
    One epoch of fine-tuning (training split) plus one validation pass (validation split) of a
    ResNet-18 (random init, new 4-class head) at 64x64 px, batch 32, AdamW, no augmentation,
    ``num_workers = 0``, on the CPU, on the procedural demo dataset
    (``transferstudio.core.data.demo.generate_demo_data``, 4 classes).

    * engine: ``transferstudio.core.training.engine.run_experiment`` with method ``fine-tune``
      (``backbone_lr_mult = 1``). Its train+validation time is the ``seconds`` of its
      ``EpochEnded`` event (the engine starts that clock just before the training epoch and stops
      it after validation, before writing checkpoints). The whole ``run_experiment`` call
      (data scan, model build, checkpoint and report writing) is reported too, for information,
      with a breakdown from the arrival times of its events.
    * reference: the same files (the engine's own split), the same decoding (PIL) and transform
      (``transferstudio.core.data.loaders.build_transform(preprocessing, None)``), a plain
      ``torch.utils.data.DataLoader`` with the same batch size and workers,
      ``torchvision.models.resnet18(num_classes=4)``, ``torch.optim.AdamW`` (same lr and weight
      decay), a training epoch then a validation pass computing loss and accuracy.

    images/s = (training images + validation images) / (train+validation wall time).
    After one warm-up run of each, engine and reference runs alternate in rounds (ref, engine,
    ref, engine, ...) so that slow drifts in background load affect both alike; the medians over
    the rounds and their ratio are reported. Target: engine/reference >= 0.95.

    Shared machines: on 2 cores, one busy process elsewhere makes torch's two intra-op threads
    wait on each other and a run 5-15x slower, which no alternation can average out. So the
    script measures, from /proc/stat, how much CPU other processes used during each run; before
    each run it waits (up to ``--max-wait`` s) for the machine to be quiet, and a round in which
    other processes used more than ``--max-other`` cores is reported but not used (it runs
    another round instead, up to 3x ``--rounds`` rounds or ``--budget-s`` seconds).

How to run
    .venv/bin/python benchmarks/engine_overhead.py            # 5 rounds, 150 images per class
    .venv/bin/python benchmarks/engine_overhead.py --quick    # smoke run (1 round, 25 per class)
    .venv/bin/python benchmarks/engine_overhead.py --rounds 5 --per-class 150 --json out.json

It prints the machine and a markdown table (paste it into docs/benchmarks.md); ``--json``
also writes every measured figure to a file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import OtherLoad, alternate_rounds, describe_machine, machine, wait_quiet
from _common import fmt_cores as _fmt

from transferstudio.core.data import loaders as D
from transferstudio.core.data.demo import generate_demo_data
from transferstudio.core.plugins.host import load_plugins
from transferstudio.core.progress import events as E
from transferstudio.core.settings.experiment import from_mapping
from transferstudio.core.training.engine import PlainState, run_experiment

BATCH = 32
IMAGE_SIZE = 64
LR = 1e-3
TARGET = 0.95


def experiment_raw(data: Path) -> dict:
    return {
        "schema_version": 1,
        "name": "bench-overhead",
        "data": {
            "path": str(data),
            "val_split": 0.2,
            "batch_size": BATCH,
            "image_size": IMAGE_SIZE,
            "num_workers": 0,
        },
        "augment": {"random_resized_crop": False, "hflip": False},
        "model": {"backbone": "resnet18", "weights": "none"},
        "train": {"epochs": 1, "device": "cpu", "lr": LR, "seed": 0},
        "method": {"name": "fine-tune", "params": {"backbone_lr_mult": 1.0}},
    }


# --------------------------------------------------------------------------- engine side


def run_engine(exp, host, workspace: Path) -> dict:
    epochs: list[E.EpochEnded] = []
    arrivals: dict[str, float] = {}

    def on_event(ev) -> None:
        arrivals[type(ev).__name__] = time.perf_counter()  # the last arrival of each kind
        if isinstance(ev, E.EpochEnded):
            epochs.append(ev)

    t0 = time.perf_counter()
    result = run_experiment(exp, host, PlainState(on_event=on_event), workspace)
    end = time.perf_counter()
    if result.status != "completed":
        raise SystemExit(f"engine run {result.status}: {result.message}")
    train_val = sum(e.seconds for e in epochs)
    return {
        "train_val_s": train_val,
        "total_s": end - t0,
        # Where the rest of the call goes, from event arrival times: before RunStarted (data
        # scan, method setup, model build), between RunStarted and the last EpochEnded outside
        # the train+val clock (optimizer build, best/last checkpoints, metrics.csv, run index),
        # and after the last EpochEnded (report.json, run status).
        "setup_s": arrivals["RunStarted"] - t0,
        "epoch_outside_s": arrivals["EpochEnded"] - arrivals["RunStarted"] - train_val,
        "finish_s": end - arrivals["EpochEnded"],
        "val_accuracy": epochs[-1].val.get("accuracy"),
        "train_loss": epochs[-1].train["loss"],
    }


# --------------------------------------------------------------------------- reference side


class RefDataset(torch.utils.data.Dataset):
    """Plain PIL decoding + the engine's transform."""

    def __init__(self, samples, classes, transform) -> None:
        index = {c: i for i, c in enumerate(classes)}
        self.items = [(s.path, index[s.label]) for s in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        path, target = self.items[i]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), target


def run_reference(train_ds, val_ds, num_classes: int, weight_decay: float, seed: int) -> dict:
    import torchvision

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    loader = torch.utils.data.DataLoader(
        train_ds, batch_size=BATCH, shuffle=True, num_workers=0, generator=generator
    )
    loss_sum, n_seen = 0.0, 0
    for images, targets in loader:
        logits = model(images)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * targets.numel()
        n_seen += targets.numel()
    model.eval()
    correct, n_val, val_loss = 0, 0, 0.0
    with torch.no_grad():
        for images, targets in torch.utils.data.DataLoader(
            val_ds, batch_size=BATCH, shuffle=False, num_workers=0
        ):
            logits = model(images)
            val_loss += F.cross_entropy(logits, targets).item() * targets.numel()
            correct += int((logits.argmax(1) == targets).sum())
            n_val += targets.numel()
    end = time.perf_counter()
    return {
        "train_val_s": end - t0,
        "total_s": end - start,
        "val_accuracy": correct / n_val,
        "train_loss": loss_sum / n_seen,
    }


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="measured rounds (each: ref, engine)")
    ap.add_argument("--per-class", type=int, default=150, help="demo images per class (4 classes)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 25 images per class")
    ap.add_argument(
        "--max-other",
        type=float,
        default=0.25,
        help="discard a round when other processes used more CPU than this many cores "
        "during either of its runs (shared machines); 99 keeps every round",
    )
    ap.add_argument(
        "--max-wait",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for the machine to be quiet",
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="stop starting new rounds after this many seconds",
    )
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.per_class = 1, 25

    info = machine()
    print(describe_machine(info))

    host = load_plugins(autoload=False)
    with tempfile.TemporaryDirectory(prefix="ts-bench-overhead-") as tmp:
        tmp = Path(tmp)
        data = generate_demo_data(tmp / "data", per_class=args.per_class)
        exp = from_mapping(experiment_raw(data), host.method_params)

        # The reference trains on exactly the engine's split and transform.
        source = D.choose_source(host.datasets, exp.data, data)
        scan = D.scan(source, exp.data, data)
        pre = host.backbone(exp.model.backbone).preprocessing.resized_for(IMAGE_SIZE)
        transform = D.build_transform(pre, None)
        train_ds = RefDataset(scan.splits["train"], scan.classes, transform)
        val_ds = RefDataset(scan.splits["val"], scan.classes, transform)
        n_images = len(train_ds) + len(val_ds)
        print(
            f"data: {len(train_ds)} train + {len(val_ds)} val images, {len(scan.classes)} "
            f"classes, {IMAGE_SIZE}px, batch {BATCH}, num_workers 0; preprocessing {pre}"
        )

        def ref():
            return run_reference(
                train_ds, val_ds, len(scan.classes), exp.train.weight_decay, exp.train.seed
            )

        counter = iter(range(10_000))

        def eng():
            return run_engine(exp, host, tmp / f"ws{next(counter)}")

        def measure(kind: str, round_no: int) -> dict:
            waited, before = wait_quiet(args.max_other / 2, args.max_wait)
            with OtherLoad() as other:
                r = ref() if kind == "reference" else eng()
            r.update(
                kind=kind,
                round=round_no,
                other_load_cores=other.cores,
                waited_s=waited,
                other_load_before=before,
                images_per_s=n_images / r["train_val_s"],
            )
            print(
                f"  {'warm-up' if round_no == 0 else f'round {round_no}':<8} {kind:<9} "
                f"train+val {r['train_val_s']:6.2f} s = {r['images_per_s']:6.1f} img/s, "
                f"whole call {r['total_s']:.2f} s; other processes {_fmt(other.cores)} cores"
                + (f" (waited {waited:.0f} s for a quiet machine)" if waited >= 1 else ""),
                flush=True,
            )
            return r

        measure("reference", 0)
        measure("engine", 0)
        rounds = alternate_rounds(
            measure,
            "reference",
            "engine",
            args.rounds,
            args.max_other,
            args.budget_s,
            lambda n: print(
                f"    round {n} discarded: other processes used more than "
                f"{args.max_other} cores during it",
                flush=True,
            ),
        )

    clean = [r for r in rounds if r["clean"]]
    used = clean or rounds
    med = {
        k: statistics.median(r[k]["images_per_s"] for r in used) for k in ("reference", "engine")
    }
    med_total = {
        k: statistics.median(r[k]["total_s"] for r in used) for k in ("reference", "engine")
    }
    ratio = med["engine"] / med["reference"]

    print()
    if not clean:
        print(
            f"WARNING: no round ran on a quiet machine (other processes > {args.max_other} "
            "cores); the figures below use every round and are unreliable."
        )
    print(
        "| round | reference images/s | engine images/s | engine/reference | other processes' "
        "CPU, ref / engine (cores) | used |"
    )
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rounds, 1):
        print(
            f"| {i} | {r['reference']['images_per_s']:.1f} | {r['engine']['images_per_s']:.1f} "
            f"| {r['ratio']:.3f} | {_fmt(r['reference']['other_load_cores'])} / "
            f"{_fmt(r['engine']['other_load_cores'])} | {'yes' if (r['clean'] or not clean) else 'no (contended)'} |"
        )
    print()
    print("| | reference | engine | ratio engine/reference | target | result |")
    print("|---|---|---|---|---|---|")
    print(
        f"| median images/s, train+val of {n_images} images ({len(used)} rounds) "
        f"| {med['reference']:.1f} | {med['engine']:.1f} | {ratio:.3f} | >= {TARGET} "
        f"| {'met' if ratio >= TARGET else 'NOT met'} |"
    )
    print(
        f"| median wall time of the whole call (s) | {med_total['reference']:.2f} "
        f"| {med_total['engine']:.2f} | {med_total['reference'] / med_total['engine']:.3f} "
        "| (information) | |"
    )
    parts = {
        k: statistics.median(r["engine"][k] for r in used)
        for k in ("setup_s", "train_val_s", "epoch_outside_s", "finish_s")
    }
    print()
    print(
        "whole call: reference = model build + train + val; engine = run_experiment: "
        f"median {parts['setup_s']:.2f} s before the first epoch (data scan, method setup, model "
        f"build), {parts['train_val_s']:.2f} s train + val, {parts['epoch_outside_s']:.2f} s in "
        f"the epoch outside train + val (optimizer, best/last checkpoints, metrics.csv), "
        f"{parts['finish_s']:.2f} s after it (report.json, run status)"
    )

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "per_class": args.per_class,
                    "rounds_asked": args.rounds,
                    "max_other_cores": args.max_other,
                    "n_images": n_images,
                    "rounds": rounds,
                    "clean_rounds": len(clean),
                    "median_images_per_s": med,
                    "median_total_s": med_total,
                    "ratio": ratio,
                    "target": TARGET,
                    "engine_whole_call_parts_median_s": parts,
                },
                indent=2,
            )
        )
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
