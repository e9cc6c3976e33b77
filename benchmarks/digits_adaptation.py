"""Domain adaptation on digits: MNIST <-> USPS with ``lenet`` from scratch, source-only vs DAN vs
DANN.

What it measures
    The Transfer-Learning-Library (TLL) digits experiment, run by TransferStudio in both
    directions, MNIST -> USPS and USPS -> MNIST: a ``lenet`` (``model.weights = "none"``) is
    trained on the labeled source domain while unlabeled target-domain images are fed beside
    it, and its accuracy on labeled target images it never trained on is measured after every
    epoch (the methods' ``diag_target_accuracy``). Three methods, one network, one budget:

    source-only  method ``dan`` with ``mmd_weight = 0``: the very same network (lenet, the
                 Linear-BatchNorm-ReLU bottleneck, the classifier), the same paired source/target
                 batches and the same target evaluation, but no adaptation loss. (``fine-tune``
                 does not take ``data.target_eval_path``, so it cannot report target accuracy.)
                 The target batches still pass through the network with the source's, so the
                 bottleneck's BatchNorm statistics mix both domains, as they do in ``dan``/``dann``.
    dan          ``mmd_weight = 1`` (MK-MMD, 5 kernels, unbiased estimator) on the bottleneck.
    dann         gradient reversal, progressive schedule (gamma 10), ``domain_weight = 1``.
    fine-tune    (opt-in, ``--methods ... fine-tune``) a check of that baseline: plain lenet +
                 linear head (no bottleneck) on the source alone, target images never seen;
                 this script measures the target accuracy of its last and best checkpoints.

    Shared settings: bottleneck 64, ``backbone_lr_mult = 1`` (from scratch), discriminator 2 x 256
    hidden units (dann; the docs' advice for lenet), no augmentation, batch 64 source + 64
    target, SGD (momentum 0.9, nesterov) lr 0.01, weight decay 5e-4, cosine schedule, source
    val split 0.1 (split seed 0), ``train.seed`` = the run's seed, CPU, one thread,
    ``num_workers = 0``.

    Data, from ``../shared/data/digits`` (converted once into PNG class folders in the cache):
    MNIST is its official 10k test split (the 60k train split is not available); USPS is
    ``usps.h5`` (7291 train, 2007 test, 16x16). Every image is written 32x32 grey with a 2-pixel
    black border around a 28x28 digit (MNIST as it is, USPS upscaled bilinearly from 16 to 28),
    so lenet's own preprocessing (resize 32, centre crop 28, mean/std 0.5) hands the network
    exactly the 28x28 inputs of TLL's digits setup.

    MNIST -> USPS  source ``mnist`` (10,000, 10% held out for source val), unlabeled target
                   ``usps_train`` (7291), target evaluation ``usps_test`` (2007).
    USPS -> MNIST  source ``usps_train`` (7291, 10% val), unlabeled target ``mnist_target``
                   (8000 of the 10k, fixed random draw), target evaluation ``mnist_eval`` (the
                   other 2000: disjoint from the images adapted to).

    Reported per direction and method, over the seeds: final-epoch target accuracy (mean +- sample
    std), the best target accuracy over the epochs (an oracle: it peeks at target labels), the
    target accuracy at the epoch with the best source val accuracy (what a user without target
    labels would pick), the final source val accuracy, and TLL's published figure (trained on the
    60k MNIST split, batch 128, 2,500 iterations x 20 epochs, so expect lower absolute numbers
    here; compare methods within this table). Seeds run in rounds (every cell once per round); with ``--budget-min``
    a new round starts only if the previous round's time still fits in the budget.

How to run
    .venv/bin/python benchmarks/digits_adaptation.py --quick      # 1 epoch, 1 seed: smoke/timing
    .venv/bin/python benchmarks/digits_adaptation.py              # full: 6 epochs, 3 seeds, ~30 min
    .venv/bin/python benchmarks/digits_adaptation.py --json out.json --cache /tmp/digits
    .venv/bin/python benchmarks/digits_adaptation.py --first-seed 2 --seeds 1 --budget-min 0 \
        --methods source-only dan dann fine-tune                  # one more seed + the check

Needs ``h5py`` the first time (to read ``usps.h5``; an optional benchmark dependency, not one of
TransferStudio's); once the cache is written it is not imported. Exits 0 with a message when
``../shared/data`` (beside the project) is absent. Prints the machine, per-run lines and markdown
tables (paste them into docs/benchmarks.md); ``--json`` writes every figure, per epoch, to a file.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DIGITS = SHARED_DATA / "digits"
USPS_H5 = DIGITS / "usps.h5"
MNIST_IMAGES = DIGITS / "t10k-images-idx3-ubyte.gz"
MNIST_LABELS = DIGITS / "t10k-labels-idx1-ubyte.gz"
DEFAULT_CACHE = Path.home() / ".cache" / "transferstudio-bench" / "digits_adaptation"
CACHE_VERSION = 1
MNIST_EVAL = 2000  # MNIST images held out as the target evaluation set of USPS -> MNIST

# direction -> (source folder, unlabeled target folder, labeled target evaluation folder)
DIRECTIONS = {
    "mnist->usps": ("mnist", "usps_train", "usps_test"),
    "usps->mnist": ("usps_train", "mnist_target", "mnist_eval"),
}
METHODS = ("source-only", "dan", "dann")
# Opt-in extra baseline: plain fine-tune (lenet + linear head, no bottleneck), target never seen.
EXTRA_METHODS = ("fine-tune",)
# Transfer-Learning-Library, LeNet from scratch, target accuracy % (see ../shared/data/README.md)
PUBLISHED = {
    "mnist->usps": {"source-only": 82.1, "fine-tune": 82.1, "dan": 86.0, "dann": 91.7},
    "usps->mnist": {"source-only": 74.6, "fine-tune": 74.6, "dan": 89.5, "dann": 95.2},
}


# --------------------------------------------------------------------------- data conversion


def read_idx(path: Path):
    """An IDX file (MNIST's format) as a numpy array."""
    import numpy as np

    raw = gzip.decompress(path.read_bytes())
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def framed(digit28) -> object:
    """A 28x28 uint8 digit as a 32x32 grey PIL image with a 2-pixel black border, so that
    lenet's resize 32 / centre crop 28 gives back exactly the 28x28 digit."""
    import numpy as np
    from PIL import Image

    canvas = np.zeros((32, 32), dtype=np.uint8)
    canvas[2:30, 2:30] = digit28
    return Image.fromarray(canvas, "L")


def write_folder(root: Path, images, labels) -> None:
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        framed(image).save(root / str(int(label)) / f"{i:05d}.png")


def prepare_data(cache: Path) -> dict[str, int]:
    """Convert MNIST (10k test split) and USPS once into PNG class folders under ``cache``;
    returns the image count of each folder."""
    marker = cache / "done.json"
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("version") == CACHE_VERSION:
            return done["counts"]
    import numpy as np
    from PIL import Image

    try:
        import h5py
    except ImportError:
        raise SystemExit(
            "reading usps.h5 needs h5py (an optional benchmark dependency): "
            ".venv/bin/pip install -e '.[bench]' (or: .venv/bin/pip install h5py)"
        ) from None
    t0 = time.perf_counter()
    print(f"converting the digits into PNG folders under {cache} (once) ...", flush=True)
    mnist_x, mnist_y = read_idx(MNIST_IMAGES), read_idx(MNIST_LABELS)
    with h5py.File(USPS_H5, "r") as f:
        usps = {s: (f[f"{s}/data"][:], f[f"{s}/target"][:]) for s in ("train", "test")}

    def usps28(rows):
        out = []
        for row in rows:
            small = Image.fromarray(np.clip(row.reshape(16, 16) * 255 + 0.5, 0, 255).astype("u1"))
            out.append(np.asarray(small.resize((28, 28), Image.BILINEAR)))
        return out

    order = np.random.default_rng(0).permutation(len(mnist_y))
    target_idx, eval_idx = order[:-MNIST_EVAL], order[-MNIST_EVAL:]
    folders = {
        "mnist": (mnist_x, mnist_y),
        "mnist_target": (mnist_x[target_idx], mnist_y[target_idx]),
        "mnist_eval": (mnist_x[eval_idx], mnist_y[eval_idx]),
        "usps_train": (usps28(usps["train"][0]), usps["train"][1]),
        "usps_test": (usps28(usps["test"][0]), usps["test"][1]),
    }
    import shutil

    for name, (images, labels) in folders.items():
        shutil.rmtree(cache / name, ignore_errors=True)
        write_folder(cache / name, images, labels)
    counts = {name: len(labels) for name, (_, labels) in folders.items()}
    marker.write_text(json.dumps({"version": CACHE_VERSION, "counts": counts}))
    print(f"  done in {time.perf_counter() - t0:.0f} s: {counts}", flush=True)
    return counts


# --------------------------------------------------------------------------- runs


def experiment_raw(args, cache: Path, direction: str, method: str, seed: int) -> dict:
    source, target, target_eval = DIRECTIONS[direction]
    shared = {"bottleneck": args.bottleneck, "backbone_lr_mult": 1.0}
    if method == "fine-tune":
        name, params = "fine-tune", {"backbone_lr_mult": 1.0}
    elif method == "source-only":
        name, params = "dan", shared | {"mmd_weight": 0.0}
    elif method == "dan":
        name, params = "dan", shared | {"mmd_weight": args.mmd_weight}
    else:
        name, params = (
            "dann",
            shared
            | {"domain_weight": args.domain_weight, "discriminator_hidden": args.disc_hidden},
        )
    data = {"target_path": str(cache / target), "target_eval_path": str(cache / target_eval)}
    if method == "fine-tune":
        data = {}  # fine-tune takes no target data; the script measures target accuracy itself
    return {
        "schema_version": 1,
        "name": f"bench-digits-{direction.replace('->', '2')}-{method}-s{seed}",
        "data": {
            "path": str(cache / source),
            **data,
            "val_split": 0.1,
            "split_seed": 0,
            "batch_size": args.batch_size,
            "num_workers": 0,
        },
        "augment": {"random_resized_crop": False, "hflip": False},
        "model": {"backbone": "lenet", "weights": "none"},
        "train": {
            "epochs": args.epochs,
            "device": "cpu",
            "optimizer": args.optimizer,
            "lr": args.lr,
            "momentum": 0.9,
            "nesterov": args.optimizer == "sgd",
            "weight_decay": args.weight_decay,
            "schedule": "cosine",
            "seed": seed,
        },
        "method": {"name": name, "params": params},
    }


def run_one(args, cache: Path, direction: str, method: str, seed: int, workspace: Path) -> dict:
    from _common import OtherLoad, fmt_cores, own_cpu_seconds

    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.progress import events as E
    from transferstudio.core.settings.experiment import from_mapping
    from transferstudio.core.training.engine import PlainState, run_experiment

    host = load_plugins(autoload=False)
    exp = from_mapping(experiment_raw(args, cache, direction, method, seed), host.method_params)
    epochs: list[dict] = []
    counts: dict = {}
    tag = f"{direction} {method} seed {seed}"

    def on_event(ev):
        if isinstance(ev, E.EpochEnded):
            row = {
                "epoch": ev.epoch + 1,
                "seconds": ev.seconds,
                "source_val_accuracy": ev.val.get("accuracy"),
                "target_accuracy": ev.val.get("diag_target_accuracy"),
                "train_loss": ev.train.get("loss"),
            }
            row |= {k: v for k, v in ev.val.items() if k.startswith("diag_") and k not in row}
            epochs.append(row)
            extra = "".join(
                f", {k[5:]} {v:.4f}"
                for k, v in ev.val.items()
                if k in ("diag_mmd", "diag_domain_acc")
            )
            target = row["target_accuracy"]
            print(
                f"    [{tag}] epoch {ev.epoch + 1}/{ev.epochs}: {ev.seconds:5.1f} s, source val "
                f"{row['source_val_accuracy']:.4f}, target "
                f"{'n/a' if target is None else f'{target:.4f}'}{extra}",
                flush=True,
            )
        elif isinstance(ev, E.RunStarted):
            counts.update({s: sum(c.values()) for s, c in ev.counts.items()})

    with OtherLoad() as other:
        t0, cpu0 = time.perf_counter(), own_cpu_seconds()
        result = run_experiment(exp, host, PlainState(on_event=on_event), workspace)
        wall, cpu = time.perf_counter() - t0, own_cpu_seconds() - cpu0
    if result.status != "completed" or not epochs:
        raise SystemExit(f"run {tag} {result.status}: {result.message}")
    final = epochs[-1]
    by_val = max(epochs, key=lambda e: (e["source_val_accuracy"], -e["epoch"]))
    if method == "fine-tune":
        # Not measured per epoch: evaluate the last and the best (source-val) checkpoints here.
        eval_folder = cache / DIRECTIONS[direction][2]
        final["target_accuracy"] = checkpoint_accuracy(result.folder, "last", eval_folder, host)
        by_val["target_accuracy"] = checkpoint_accuracy(result.folder, "best", eval_folder, host)
        best = {"target_accuracy": None, "epoch": None}  # only two checkpoints were measured
    else:
        best = max(epochs, key=lambda e: e["target_accuracy"])
    out = {
        "direction": direction,
        "method": method,
        "seed": seed,
        "wall_s": wall,
        "cpu_s": cpu,
        "other_load_cores": other.cores,
        "images": counts,
        "final_target_accuracy": final["target_accuracy"],
        "best_target_accuracy": best["target_accuracy"],
        "best_target_epoch": best["epoch"],
        "target_accuracy_at_best_source_val": by_val["target_accuracy"],
        "best_source_val_epoch": by_val["epoch"],
        "final_source_val_accuracy": final["source_val_accuracy"],
        "epochs": epochs,
    }
    print(
        f"  {tag}: {wall:.0f} s ({cpu:.0f} CPU s); target final {final['target_accuracy']:.4f}, "
        + (
            "best n/a"
            if best["epoch"] is None
            else f"best {best['target_accuracy']:.4f} (epoch {best['epoch']})"
        )
        + f"; source val "
        f"{final['source_val_accuracy']:.4f}; other processes {fmt_cores(other.cores)} cores",
        flush=True,
    )
    return out


def checkpoint_accuracy(run_folder: Path, kind: str, eval_folder: Path, host) -> float:
    """Accuracy on ``eval_folder`` (class folders) of a run's ``kind`` checkpoint, rebuilt as the
    engine's own predictor loader does (backbone + head from the stored recipe)."""
    import torch

    from transferstudio.api import Sample
    from transferstudio.core.data.loaders import ImageDataset, build_transform
    from transferstudio.core.data.roles import list_images
    from transferstudio.core.models.build import ClassifierModel, build_backbone, head_from_recipe
    from transferstudio.core.runs.checkpoint import CheckpointStore

    checkpoint = CheckpointStore(run_folder / "checkpoints").load(kind, with_state=False)
    meta, prefix = checkpoint.meta, checkpoint.meta["predictor_module"] + "."
    spec = host.backbone(meta["backbone"])
    model = ClassifierModel(build_backbone(spec, None), head_from_recipe(meta["head_recipe"]))
    model.load_state_dict(
        {k[len(prefix) :]: v for k, v in checkpoint.weights.items() if k.startswith(prefix)}
    )
    paths, _ = list_images(eval_folder)
    samples = [Sample(p, Path(p).parent.name) for p in paths]
    dataset = ImageDataset(samples, meta["class_names"], build_transform(spec.preprocessing, None))
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=0)
    correct = 0
    model.eval()
    with torch.no_grad():
        for images, targets in loader:
            correct += int((model(images).argmax(1) == targets).sum())
    return correct / len(dataset)


# --------------------------------------------------------------------------- report


def mean_std(values: list[float], scale: float = 100.0) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    m = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{m:.1f}"
    return f"{m:.1f} ± {statistics.stdev(values) * scale:.1f}"


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for direction in DIRECTIONS:
        for method in (*METHODS, *EXTRA_METHODS):
            rs = [r for r in runs if r["direction"] == direction and r["method"] == method]
            if not rs:
                continue

            def values(key, rs=rs):
                return [r[key] for r in rs]

            rows.append(
                {
                    "direction": direction,
                    "method": method,
                    "seeds": values("seed"),
                    "final_target": values("final_target_accuracy"),
                    "best_target": values("best_target_accuracy"),
                    "target_at_best_source_val": values("target_accuracy_at_best_source_val"),
                    "final_source_val": values("final_source_val_accuracy"),
                    "published": PUBLISHED[direction][method],
                    "mean_wall_s": statistics.fmean(values("wall_s")),
                }
            )
    return rows


def print_tables(rows: list[dict], runs: list[dict]) -> None:
    print(
        "| direction | method | seeds | target acc., final epoch (%) | target acc., best epoch "
        "(%, oracle) | target acc. at best source-val epoch (%) | source val acc. (%) | "
        "TLL published (%) | time per run (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['direction'].replace('->', ' → ').upper()} "
            f"| {r['method']} | {len(r['seeds'])} | **{mean_std(r['final_target'])}** "
            f"| {mean_std(r['best_target'])} | {mean_std(r['target_at_best_source_val'])} "
            f"| {mean_std(r['final_source_val'])} | {r['published']:.1f} "
            f"| {r['mean_wall_s']:.0f} |"
        )
    print()
    print("Per run (final-epoch target accuracy %, by seed):")
    print()
    seeds = sorted({r["seed"] for r in runs})
    print("| direction | method | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---|---|" + "---|" * len(seeds))
    for r in rows:
        cells = []
        for s in seeds:
            match = [
                x["final_target_accuracy"]
                for x in runs
                if x["direction"] == r["direction"]
                and x["method"] == r["method"]
                and x["seed"] == s
            ]
            cells.append(f"{100 * match[0]:.1f}" if match and match[0] is not None else "-")
        print(f"| {r['direction']} | {r['method']} | " + " | ".join(cells) + " |")


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds, run in rounds")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds are FIRST..FIRST+N-1")
    ap.add_argument(
        "--budget-min",
        type=float,
        default=30.0,
        help="start another round of seeds only if the last round's time still fits in this "
        "many minutes since the start (0: run every seed)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--bottleneck", type=int, default=64)
    ap.add_argument("--mmd-weight", type=float, default=1.0)
    ap.add_argument("--domain-weight", type=float, default=1.0)
    ap.add_argument("--disc-hidden", type=int, default=256)
    ap.add_argument("--directions", nargs="+", choices=list(DIRECTIONS), default=list(DIRECTIONS))
    ap.add_argument(
        "--methods",
        nargs="+",
        choices=(*METHODS, *EXTRA_METHODS),
        default=list(METHODS),
        help="fine-tune (opt-in): plain lenet + linear head on the source alone, target "
        "accuracy of its last and best checkpoints measured by this script",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 1 seed")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="converted PNG folders")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds = 1, 1

    missing = [p for p in (USPS_H5, MNIST_IMAGES, MNIST_LABELS) if not p.exists()]
    if missing:
        print(
            f"SKIPPED: the shared reference data is not available ({missing[0]} is missing; "
            f"expected under {SHARED_DATA}, beside the project). Nothing was measured."
        )
        return 0

    import torch

    torch.set_num_threads(1)
    from _common import describe_machine, machine

    info = machine()
    print(describe_machine(info))
    counts = prepare_data(args.cache)
    settings = {
        k: getattr(args, k)
        for k in (
            "epochs",
            "seeds",
            "first_seed",
            "batch_size",
            "optimizer",
            "lr",
            "weight_decay",
            "bottleneck",
            "mmd_weight",
            "domain_weight",
            "disc_hidden",
        )
    }
    print(f"data: {args.cache} {counts}")
    print(f"settings: {settings}; cosine schedule, no augmentation, num_workers 0, 1 thread")
    print()

    runs: list[dict] = []
    rounds: list[float] = []
    t_start = time.perf_counter()

    def dump() -> None:
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": info,
                        "settings": settings,
                        "data_counts": counts,
                        "published": PUBLISHED,
                        "rounds_s": rounds,
                        "total_s": time.perf_counter() - t_start,
                        "summary": summarise(runs),
                        "runs": runs,
                    },
                    indent=2,
                )
            )

    with tempfile.TemporaryDirectory(prefix="ts-bench-digits-") as tmp:
        for i, seed in enumerate(range(args.first_seed, args.first_seed + args.seeds)):
            elapsed = time.perf_counter() - t_start
            if rounds and args.budget_min and elapsed + rounds[-1] > args.budget_min * 60:
                print(
                    f"stopping after {i} seed(s): another round (~{rounds[-1]:.0f} s) would "
                    f"pass the {args.budget_min:g}-minute budget ({elapsed:.0f} s used)\n"
                )
                break
            t_round = time.perf_counter()
            print(f"round {i + 1}/{args.seeds} (seed {seed})", flush=True)
            for direction in args.directions:
                for method in args.methods:
                    ws = Path(tmp) / f"ws-{direction.replace('->', '2')}-{method}-{seed}"
                    runs.append(run_one(args, args.cache, direction, method, seed, ws))
                    dump()
            rounds.append(time.perf_counter() - t_round)
            print(f"round {i + 1} took {rounds[-1]:.0f} s\n", flush=True)

    total = time.perf_counter() - t_start
    rows = summarise(runs)
    print_tables(rows, runs)
    epoch_s = [e["seconds"] for r in runs for e in r["epochs"]]
    loads = [r["other_load_cores"] for r in runs if r["other_load_cores"] is not None]
    print()
    print(
        f"total {total / 60:.1f} min for {len(runs)} runs; epoch time {min(epoch_s):.1f}-"
        f"{max(epoch_s):.1f} s (mean {statistics.fmean(epoch_s):.1f}); other processes used "
        + (f"{statistics.fmean(loads):.2f} cores on average" if loads else "n/a")
    )
    dump()
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
