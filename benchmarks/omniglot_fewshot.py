"""Few-shot: protonet and maml on the Omniglot small background sets, scored on the 20 official
20-way 1-shot runs.

What it measures
    The built-in few-shot methods ``protonet`` and ``maml``, trained by TransferStudio's engine
    from scratch (backbone ``conv4``, ``model.weights = "none"``, 28 px: ``data.image_size =
    28``) on the two Omniglot *small* background sets (``../shared/data/omniglot/
    images_background_small{1,2}.zip``), then evaluated on the 20 official Omniglot one-shot
    classification runs (``all_runs.zip``: each run is 20 support images of 20 new characters,
    one each, and 20 query images, one per character, to classify; 400 queries in all).

    Data: the zips are unzipped once into a cache folder (default
    ``~/.cache/transferstudio-bench/omniglot_fewshot``), one class folder per character
    (``<alphabet>__<character>/``, the ``episodes`` data role's layout). The two small sets share
    two alphabets (Greek and Latin, byte-identical files), so their union is 8 alphabets, 242
    characters, 4840 images. The engine splits the characters *by class* (``data.val_split =
    data.test_split = 0.1``: 24 val and 24 test characters, 194 for training, ``split_seed``
    0). No 90-degree-rotation classes are added: the engine draws the val/test characters at
    random among the class folders, so rotated copies of a held-out character would land in
    training and leak into the in-run val/test figures.

    Training (sized to fit about 30 minutes on 2 shared cores, one seed each; pilot runs scored
    on the val characters chose 60-way over 20-way for protonet at equal compute, 400 60-way
    against 1200 20-way episodes: val 0.900 against 0.894, and kept MAML's meta learning rate at
    0.001, 0.003 being no better after 900 tasks):
    - protonet: 60-way 1-shot episodes with 5 queries per class, as in the paper (it trains
      with more ways than it tests), 7 epochs x 100 episodes = 700 episodes (the paper: tens of
      thousands, with rotations); validation and test episodes are 20-way 1-shot (``eval_way = 20``).
    - maml: 20-way 1-shot, first order (FOMAML: second order costs about 4x per task on CPU),
      the paper's 20-way inner loop (5 steps of 0.1 in training and evaluation), 1 query per
      class (as the paper's code), 4 tasks per meta-update, 8 epochs x 400 tasks = 3200 tasks,
      800 meta-updates (the paper: tens of thousands of second-order updates of 16 tasks).
    Both: AdamW lr 0.001 without weight decay, cosine schedule, seed 0; the best checkpoint by
    validation accuracy (20-way 1-shot episodes of the 24 val characters) is kept, and each run
    reports its in-run test accuracy: 600 20-way 1-shot episodes of the 24 held-out test
    characters (mean and 95% interval).

    Official runs: the best checkpoint is loaded with ``CheckpointStore`` and rebuilt (protonet:
    the ``encoder``; maml: the ``meta_model``, BatchNorm on batch statistics); every run image is
    read with the engine's loader (``load_rgb``) and the run's stored ``preprocessing`` (the
    evaluation transform training episodes use too). The training PNGs and the run PNGs have the
    same format (1-bit, 105x105, black strokes on white): the script checks that and treats both
    identically (no inversion). protonet classifies with
    ``transferstudio_builtins.protonet.predict_with_support`` (cross-checked against
    ``prototype_classifier`` on a per-run support folder); maml with
    ``transferstudio_builtins.maml.adapt_and_predict`` (eval_inner_steps steps of inner_lr).
    Baselines on the same 400 queries: 1-nearest-neighbour in pixel space (at 28 px after the
    same preprocessing, and on the raw 105x105 images) and an untrained conv4 used as a
    prototype encoder. The pixel baseline is also scored on the very episodes of the in-run test
    (replicated outside the engine; the script checks the replica against protonet's figure).

    Protocols differ: Lake's official runs are *within-alphabet* 20-way tasks (each run's 20
    characters come from one of 10 evaluation alphabets, two runs per alphabet), which is much
    harder than 20 characters drawn across alphabets. The published figures (Prototypical
    Networks 96.0%, MAML 95.8%, 20-way 1-shot) use cross-alphabet episodes of the Vinyals test
    alphabets, after training on about 1200 characters x 4 rotations for far longer. So the
    script also scores every model on ``--unstructured-episodes`` (300) cross-alphabet 20-way
    1-shot episodes built from the runs' own images (a character's run training image is its
    support, its run test image the query; see :func:`unstructured_episodes`): new alphabets, the
    published protocol, less data.

How to run
    .venv/bin/python benchmarks/omniglot_fewshot.py                # about 20-30 min on 2 cores
    .venv/bin/python benchmarks/omniglot_fewshot.py --quick        # smoke run, about 1-2 min
    .venv/bin/python benchmarks/omniglot_fewshot.py --seeds 0 1 --json out.json

Exits 0 with a message when ``../shared/data`` (beside the project) is absent. Prints the
machine and markdown tables (paste them into docs/benchmarks.md); ``--json`` also writes every
figure to a file.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OMNIGLOT = SHARED_DATA / "omniglot"
BACKGROUND_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
RUNS_ZIP = "all_runs.zip"
DEFAULT_CACHE = Path("~/.cache/transferstudio-bench/omniglot_fewshot").expanduser()
PUBLISHED = {"protonet": 0.960, "maml": 0.958}
WAY = 20  # the official runs are 20-way 1-shot


# --------------------------------------------------------------------------- data


def prepare_data(cache: Path) -> dict:
    """Unzip once: ``cache/background/<alphabet>__<character>/*.png`` and ``cache/all_runs/``.

    Each part is written to a temporary folder and renamed into place, so an interrupted
    extraction is redone rather than reused."""
    cache.mkdir(parents=True, exist_ok=True)
    background, runs = cache / "background", cache / "all_runs"
    duplicates = 0
    if not background.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".background-", dir=cache))
        for name in BACKGROUND_ZIPS:
            with zipfile.ZipFile(OMNIGLOT / name) as archive:
                for member in archive.namelist():
                    parts = member.split("/")  # images_background_smallN/alphabet/character/x
                    if len(parts) != 4 or not parts[3].lower().endswith(".png"):
                        continue
                    target = tmp / f"{parts[1]}__{parts[2]}" / parts[3]
                    data = archive.read(member)
                    if target.exists():
                        # Greek and Latin are in both small sets; keep one copy, same bytes.
                        if target.read_bytes() != data:
                            raise SystemExit(f"{member}: differs from the other set's copy")
                        duplicates += 1
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
        tmp.rename(background)
    if not runs.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".all_runs-", dir=cache))
        with zipfile.ZipFile(OMNIGLOT / RUNS_ZIP) as archive:
            archive.extractall(tmp)
        tmp.rename(runs)
    classes = sorted(p for p in background.iterdir() if p.is_dir())
    return {
        "background": str(background),
        "runs": str(runs),
        "characters": len(classes),
        "alphabets": len({p.name.split("__")[0] for p in classes}),
        "images": sum(len(list(p.glob("*.png"))) for p in classes),
        "duplicates_skipped_this_time": duplicates,
    }


def read_runs(runs_root: Path) -> list[dict]:
    """The 20 official runs: support files (``training/classNN.png``, sorted), query files and
    the index of each query's class among the support files (from ``class_labels.txt``)."""
    runs = []
    for folder in sorted(p for p in runs_root.iterdir() if p.name.startswith("run")):
        support = sorted((folder / "training").glob("*.png"))
        index = {f"{folder.name}/training/{p.name}": i for i, p in enumerate(support)}
        queries, labels = [], []
        for line in (folder / "class_labels.txt").read_text().split("\n"):
            if not line.strip():
                continue
            test, train = line.split()
            queries.append(runs_root / test)
            labels.append(index[train])
        runs.append({"name": folder.name, "support": support, "queries": queries, "labels": labels})
    if len(runs) != 20 or any(len(r["support"]) != WAY or len(r["queries"]) != WAY for r in runs):
        raise SystemExit(f"{runs_root}: expected 20 runs of 20 support and 20 query images")
    return runs


def image_format(paths: list[Path]) -> dict:
    """Mode, size and polarity of images: the share of dark pixels (< 128) and the value of
    the border pixels (the background)."""
    import numpy as np
    from PIL import Image

    modes, sizes, dark, border = set(), set(), [], []
    for path in paths:
        with Image.open(path) as image:
            modes.add(image.mode)
            sizes.add(image.size)
            a = np.asarray(image.convert("L"), dtype=np.float32)
        dark.append(float((a < 128).mean()))
        border.append(float(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).mean()))
    return {
        "images": len(paths),
        "modes": sorted(modes),
        "sizes": sorted(f"{w}x{h}" for w, h in sizes),
        "dark_pixel_share": statistics.mean(dark),
        "border_mean": statistics.mean(border),
        "polarity": "dark strokes on white" if statistics.mean(border) > 128 else "light on dark",
    }


# --------------------------------------------------------------------------- experiments


def experiment_raw(method: str, data: Path, args, seed: int) -> dict:
    if method == "protonet":
        params = {
            "n_way": args.proto_way,
            "k_shot": 1,
            "queries": args.proto_queries,
            "episodes_per_epoch": args.proto_episodes,
            "eval_way": WAY,
            "eval_shot": 1,
            "val_episodes": args.proto_val_episodes,
            "test_episodes": 600,
        }
        epochs = args.proto_epochs
    else:
        params = {
            "n_way": WAY,
            "k_shot": 1,
            "queries": args.maml_queries,
            "episodes_per_epoch": args.maml_tasks,
            "eval_way": 0,
            "eval_shot": 0,
            "val_episodes": args.maml_val_episodes,
            "test_episodes": 600,
            "inner_steps": args.maml_inner_steps,
            "eval_inner_steps": args.maml_eval_inner_steps,
            "inner_lr": args.maml_inner_lr,
            "meta_batch": args.maml_meta_batch,
            "first_order": not args.maml_second_order,
        }
        epochs = args.maml_epochs
    return {
        "schema_version": 1,
        "name": f"bench-omniglot-{method}-seed{seed}",
        "data": {
            "path": str(data),
            "val_split": 0.1,
            "test_split": 0.1,
            "split_seed": 0,
            "image_size": 28,
            "batch_size": 128,
            "num_workers": 0,
        },
        "augment": {"random_resized_crop": False, "hflip": False},
        "model": {"backbone": "conv4", "weights": "none"},
        "train": {
            "epochs": epochs,
            "device": "cpu",
            "optimizer": "adamw",
            "lr": args.lr,
            "weight_decay": 0.0,
            "schedule": "cosine",
            "seed": seed,
        },
        "method": {"name": method, "params": params},
    }


def train(method: str, data: Path, args, seed: int, workspace: Path) -> dict:
    from _common import OtherLoad, fmt_cores, own_cpu_seconds

    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.progress import events as E
    from transferstudio.core.settings.experiment import from_mapping
    from transferstudio.core.training.engine import PlainState, run_experiment

    host = load_plugins(autoload=False)
    raw = experiment_raw(method, data, args, seed)
    exp = from_mapping(raw, host.method_params)
    epochs: list[dict] = []
    counts: dict = {}

    def on_event(ev):
        if isinstance(ev, E.RunStarted):
            counts.update(ev.counts)
        elif isinstance(ev, E.EpochEnded):
            epochs.append(
                {
                    "epoch": ev.epoch + 1,
                    "seconds": ev.seconds,
                    "train_loss": ev.train.get("loss"),
                    "train_episode_acc": ev.train.get("episode_acc", ev.train.get("accuracy")),
                    "val_accuracy": ev.val.get("accuracy"),
                    "val_ci95": ev.val.get("accuracy_ci95"),
                }
            )
            print(
                f"    [{method} seed {seed}] epoch {ev.epoch + 1}/{ev.epochs}: {ev.seconds:6.1f} s, "
                f"train loss {ev.train.get('loss', float('nan')):.3f}, val accuracy "
                f"{ev.val.get('accuracy', float('nan')):.4f} "
                f"+- {ev.val.get('accuracy_ci95', float('nan')):.4f}",
                flush=True,
            )

    with OtherLoad() as other:
        t0, cpu0 = time.perf_counter(), own_cpu_seconds()
        result = run_experiment(exp, host, PlainState(on_event=on_event), workspace)
        wall, cpu = time.perf_counter() - t0, own_cpu_seconds() - cpu0
    if result.status != "completed":
        raise SystemExit(f"{method} seed {seed} {result.status}: {result.message}")
    test = result.report["test"]["metrics"]
    print(
        f"  {method} seed {seed}: {wall:.0f} s ({cpu:.0f} CPU s), best val accuracy "
        f"{result.best_metric:.4f} (epoch {(result.best_epoch or 0) + 1}); in-run test "
        f"{test['accuracy']:.4f} +- {test['accuracy_ci95']:.4f} ({int(test['episodes'])} "
        f"episodes); other processes {fmt_cores(other.cores)} cores",
        flush=True,
    )
    return {
        "method": method,
        "seed": seed,
        "params": raw["method"]["params"],
        "epochs": epochs,
        "train_wall_s": wall,
        "train_cpu_s": cpu,
        "other_load_cores": other.cores,
        "best_val_accuracy": result.best_metric,
        "best_epoch": (result.best_epoch or 0) + 1,
        "in_run_test": test,
        "classes_per_split": {s: sum(n > 0 for n in c.values()) for s, c in counts.items()},
        "images_per_split": {s: sum(c.values()) for s, c in counts.items()},
        "folder": str(result.folder),
    }


_SCANS: dict = {}


def _scan(exp, host):
    """The engine's class split of the data (``split_classes``: same settings, same split)."""
    from transferstudio.core.data import loaders as D
    from transferstudio.core.data.roles import split_classes

    key = (exp.data.path, exp.data.val_split, exp.data.test_split, exp.data.split_seed)
    if key not in _SCANS:
        root = Path(exp.data.path)
        _SCANS[key] = split_classes(D.choose_source(host.datasets, exp.data, root), root, exp.data)
    return _SCANS[key]


# --------------------------------------------------------------------------- evaluation


def load_best(folder: Path, host):
    """The best checkpoint of a run: ``(module, meta)``, the module rebuilt as the method
    builds it and in eval mode (protonet: the encoder; maml: backbone + head, BatchNorm on batch
    statistics)."""
    from collections import OrderedDict

    from torch import nn
    from transferstudio_builtins.maml import use_batch_statistics

    from transferstudio.core.models.build import build_backbone
    from transferstudio.core.runs.checkpoint import CheckpointStore, load_module_weights

    ck = CheckpointStore(folder / "checkpoints").load("best", with_state=False)
    meta = ck.meta
    spec = host.backbone(meta["backbone"])
    backbone = build_backbone(spec, None)
    if meta["method"] == "protonet":
        modules = {"encoder": backbone}
    else:
        n_way = int(meta["experiment"]["method"]["params"]["n_way"])
        model = nn.Sequential(
            OrderedDict(backbone=backbone, head=nn.Linear(spec.feature_dim, n_way))
        )
        use_batch_statistics(model)
        modules = {"meta_model": model}
    load_module_weights(modules, ck.weights)  # strict
    module = next(iter(modules.values()))
    return module.eval(), meta


def load_images(paths, preprocessing):
    """Images as the engine prepares evaluation (and episode) images: ``load_rgb`` and the
    evaluation transform of ``preprocessing``."""
    import torch

    from transferstudio.core.data.images import load_rgb
    from transferstudio.core.data.loaders import build_transform

    transform = build_transform(preprocessing, None)
    return torch.stack([transform(load_rgb(str(p))) for p in paths])


def runs_tensors(runs: list[dict], preprocessing) -> list[dict]:
    import torch

    return [
        {
            "support": load_images(r["support"], preprocessing),
            "queries": load_images(r["queries"], preprocessing),
            "labels": torch.tensor(r["labels"]),
        }
        for r in runs
    ]


def score_runs(predict, tensors: list[dict]) -> dict:
    """``predict(support, support_labels, queries) -> predicted index`` on every run: accuracy
    over the 400 queries, per-run accuracies, their spread and a 95% interval across runs."""
    import torch

    per_run = []
    for t in tensors:
        predicted = predict(t["support"], torch.arange(WAY), t["queries"])
        per_run.append(float((predicted == t["labels"]).float().mean()))
    return summarise_runs(per_run)


def unstructured_episodes(count: int, seed: int = 600) -> list[list[tuple[int, int]]]:
    """20-way 1-shot episodes across alphabets, made of the official runs' images: each episode
    is 20 ``(run index, class index)`` characters drawn at random from one pool, the odd runs
    (run01, run03, ...) or the even runs, alternately. The runs come in pairs per alphabet
    (run01/run02 Atlantean, ..., run19/run20 Tibetan: 10 evaluation alphabets; Lake's runs, as
    listed in jvlmdr/omniglot-eval ``lake-evaluation/run_alphabets.txt``), so each pool is 200
    distinct characters of 10 alphabets the networks never saw, and no character appears twice
    in an episode."""
    import random

    pools = [[(r, c) for r in range(start, 20, 2) for c in range(WAY)] for start in (0, 1)]
    rng = random.Random(seed)
    return [rng.sample(pools[i % 2], WAY) for i in range(count)]


def score_unstructured(predict, tensors: list[dict], episodes) -> dict:
    """Mean accuracy of ``predict`` over the cross-alphabet episodes (support: each character's
    run training image; query: its run test image), with the 95% interval over episodes."""
    import torch
    from transferstudio_builtins.fewshot import confidence_interval95

    query_of = [{int(c): i for i, c in enumerate(t["labels"])} for t in tensors]
    accuracies = []
    for episode in episodes:
        support = torch.stack([tensors[r]["support"][c] for r, c in episode])
        queries = torch.stack([tensors[r]["queries"][query_of[r][c]] for r, c in episode])
        predicted = predict(support, torch.arange(WAY), queries)
        accuracies.append(float((predicted == torch.arange(WAY)).float().mean()))
    return {
        "accuracy": statistics.mean(accuracies),
        "ci95": confidence_interval95(accuracies),
        "episodes": len(accuracies),
    }


def summarise_runs(per_run: list[float]) -> dict:
    correct = round(sum(per_run) * WAY)
    return {
        "accuracy": correct / (WAY * len(per_run)),
        "correct": correct,
        "queries": WAY * len(per_run),
        "ci95_runs": 1.96 * statistics.stdev(per_run) / math.sqrt(len(per_run)),
        "per_run": per_run,
        "min_run": min(per_run),
        "max_run": max(per_run),
    }


def pixel_predict(support, support_labels, queries):
    """1-nearest-neighbour on pixel vectors (euclidean)."""
    import torch

    distances = torch.cdist(queries.flatten(1), support.flatten(1))
    return support_labels[distances.argmin(dim=1)]


def raw_pixel_tensors(runs: list[dict]) -> list[dict]:
    """The run images as 105x105 grey arrays in 0..1, no resizing."""
    import numpy as np
    import torch
    from PIL import Image

    def read(paths):
        arrays = []
        for p in paths:
            with Image.open(p) as image:
                arrays.append(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
        return torch.from_numpy(np.stack(arrays))

    return [
        {
            "support": read(r["support"]),
            "queries": read(r["queries"]),
            "labels": torch.tensor(r["labels"]),
        }
        for r in runs
    ]


def protonet_cross_check(encoder, runs: list[dict], preprocessing, tensors, scratch: Path):
    """Predictions of ``prototype_classifier`` (support read by ``read_support_folder``, the
    reader of ``transferstudio predict --support``, from a class-folder copy of each run's
    training images) against those of ``predict_with_support``: how many agree."""
    import torch
    from transferstudio_builtins.protonet import predict_with_support, prototype_classifier

    from transferstudio.core.models.support_set import read_support_folder

    agree = total = 0
    for r, t in zip(runs, tensors, strict=True):
        folder = scratch / r["name"]
        for path in r["support"]:  # classNN.png -> classNN/classNN.png (sorted names = index)
            (folder / path.stem).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / path.stem / path.name)
        support = read_support_folder(folder, preprocessing)
        assert support.class_names == [p.stem for p in r["support"]]
        classifier = prototype_classifier(encoder, support.images, support.targets, WAY)
        with torch.no_grad():
            from_folder = classifier(t["queries"]).argmax(dim=1)
        direct, _ = predict_with_support(encoder, t["support"], torch.arange(WAY), t["queries"])
        agree += int((from_folder == direct).sum())
        total += len(direct)
    return agree, total


def in_run_test(exp_raw: dict, host, preprocessing, encode) -> dict:
    """Prototype (1-shot: nearest support image) scoring of ``encode(images)`` on the in-run
    test episodes: the engine's class split, the test split's images in the engine's order, the
    episode sizes of ``exp_raw`` and the engine's evaluation seed, so the episodes are those the
    methods were scored on (``fewshot.evaluate_episodes``). With a trained protonet encoder this
    reproduces the engine's own test figure (a check of the replication); with ``flatten`` it is
    the pixel 1-NN baseline on those episodes."""
    import torch
    from transferstudio_builtins.fewshot import evaluate_episodes
    from transferstudio_builtins.protonet import class_prototypes, prototype_logits

    from transferstudio.core.settings.experiment import from_mapping

    exp = from_mapping(exp_raw, host.method_params)
    params = exp_raw["method"]["params"]
    way = params["eval_way"] or params["n_way"]
    shot = params["eval_shot"] or params["k_shot"]
    scan = _scan(exp, host)
    samples = scan.splits["test"]
    index = {c: i for i, c in enumerate(scan.classes)}
    with torch.no_grad():
        bank = encode(load_images([s.path for s in samples], preprocessing)).float()
    targets = torch.tensor([index[s.label] for s in samples])

    def score(support, support_targets, query):
        return prototype_logits(query, class_prototypes(support, support_targets, way))

    return evaluate_episodes(bank, targets, way, shot, params["queries"], 600, score, split="test")


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="converted image folders")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed of each run")
    ap.add_argument("--methods", nargs="+", default=["protonet", "maml"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--proto-way", type=int, default=60)
    ap.add_argument("--proto-queries", type=int, default=5)
    ap.add_argument("--proto-episodes", type=int, default=100, help="episodes per epoch")
    ap.add_argument("--proto-epochs", type=int, default=7)
    ap.add_argument("--proto-val-episodes", type=int, default=300)
    ap.add_argument("--maml-tasks", type=int, default=400, help="tasks per epoch")
    ap.add_argument("--maml-epochs", type=int, default=8)
    ap.add_argument("--maml-queries", type=int, default=1)
    ap.add_argument("--maml-meta-batch", type=int, default=4)
    ap.add_argument("--maml-inner-steps", type=int, default=5)
    ap.add_argument("--maml-eval-inner-steps", type=int, default=5)
    ap.add_argument("--maml-inner-lr", type=float, default=0.1)
    ap.add_argument("--maml-val-episodes", type=int, default=60)
    ap.add_argument(
        "--maml-second-order", action="store_true", help="second-order MAML (about 4x per task)"
    )
    ap.add_argument(
        "--unstructured-episodes",
        type=int,
        default=300,
        help="cross-alphabet 20-way 1-shot episodes drawn from the official runs' images",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: a few episodes each")
    ap.add_argument("--keep", type=Path, help="keep the run folders in this workspace")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.proto_episodes, args.proto_epochs, args.proto_val_episodes = 20, 1, 20
        args.maml_tasks, args.maml_epochs, args.maml_val_episodes = 8, 1, 5
        args.maml_eval_inner_steps, args.unstructured_episodes = 1, 50

    missing = [p for p in (OMNIGLOT / z for z in (*BACKGROUND_ZIPS, RUNS_ZIP)) if not p.exists()]
    if missing:
        print(
            f"SKIPPED: the shared reference data is not available ({missing[0]} is missing; "
            f"expected under {SHARED_DATA}, beside the project). Nothing was measured."
        )
        return 0

    import torch

    torch.set_num_threads(1)
    from _common import describe_machine, fmt_cores, machine
    from transferstudio_builtins.maml import adapt_and_predict
    from transferstudio_builtins.protonet import predict_with_support

    from transferstudio.api import Preprocessing
    from transferstudio.core.plugins.host import load_plugins

    t_start = time.perf_counter()
    info = machine()
    print(describe_machine(info))
    data_info = prepare_data(args.cache)
    background, runs_root = Path(data_info["background"]), Path(data_info["runs"])
    runs = read_runs(runs_root)
    train_files = sorted(background.glob("*/*.png"))
    formats = {
        "background": image_format(train_files[::10]),
        "runs": image_format([p for r in runs for p in (*r["support"], *r["queries"])]),
    }
    print(
        f"data: {background} ({data_info['characters']} characters of "
        f"{data_info['alphabets']} alphabets, {data_info['images']} images); official runs: "
        f"{runs_root} ({len(runs)} runs x {WAY} queries)"
    )
    for name, f in formats.items():
        print(
            f"  {name} images: mode {f['modes']}, size {f['sizes']}, {f['polarity']} (border "
            f"mean {f['border_mean']:.0f}/255, dark pixels {100 * f['dark_pixel_share']:.1f}%; "
            f"{f['images']} checked)"
        )
    same = all(
        formats["background"][k] == formats["runs"][k] for k in ("modes", "sizes", "polarity")
    )
    print(
        "  same format and polarity: "
        + ("yes, both are prepared identically (no inversion)" if same else "NO")
    )
    if not same:
        raise SystemExit("training and run images differ in format; convert them alike first")

    host = load_plugins(autoload=False)
    episodes = unstructured_episodes(args.unstructured_episodes)
    results: list[dict] = []
    workspace_ctx = (
        tempfile.TemporaryDirectory(prefix="ts-bench-omniglot-") if args.keep is None else None
    )
    workspace = Path(workspace_ctx.name) if workspace_ctx else args.keep
    preprocessing = None
    try:
        for method in args.methods:
            for seed in args.seeds:
                print(f"training {method}, seed {seed}", flush=True)
                r = train(method, background, args, seed, workspace)
                t0 = time.perf_counter()
                module, meta = load_best(Path(r["folder"]), host)
                preprocessing = Preprocessing.from_dict(meta["preprocessing"])
                tensors = runs_tensors(runs, preprocessing)
                if method == "protonet":

                    def predict(support, labels, queries, module=module):
                        return predict_with_support(module, support, labels, queries)[0]

                    agree, total = protonet_cross_check(
                        module, runs, preprocessing, tensors, workspace / f"support-{seed}"
                    )
                    r["prototype_classifier_agrees"] = f"{agree}/{total}"
                    replica = in_run_test(
                        experiment_raw(method, background, args, seed), host, preprocessing, module
                    )
                    r["in_run_test_replicated"] = replica
                    print(
                        f"  protonet seed {seed}: in-run test replicated outside the engine "
                        f"{replica['accuracy']:.4f} (engine {r['in_run_test']['accuracy']:.4f}): "
                        "the pixel baseline below uses the same episodes",
                        flush=True,
                    )
                else:
                    p = r["params"]

                    def predict(support, labels, queries, module=module, p=p):
                        return adapt_and_predict(
                            module,
                            support,
                            labels,
                            queries,
                            p["eval_inner_steps"],
                            p["inner_lr"],
                        )[0]

                r["official"] = score_runs(predict, tensors)
                r["unstructured"] = score_unstructured(predict, tensors, episodes)
                r["official_eval_s"] = time.perf_counter() - t0
                r["preprocessing"] = meta["preprocessing"]
                o, u = r["official"], r["unstructured"]
                print(
                    f"  {method} seed {seed}: official runs {o['correct']}/{o['queries']} = "
                    f"{o['accuracy']:.4f} (+- {o['ci95_runs']:.4f} across runs; runs "
                    f"{o['min_run']:.2f}..{o['max_run']:.2f}); cross-alphabet episodes of the "
                    f"runs' images {u['accuracy']:.4f} +- {u['ci95']:.4f}"
                    + (
                        f"; prototype_classifier agrees with predict_with_support on "
                        f"{r['prototype_classifier_agrees']} queries"
                        if method == "protonet"
                        else ""
                    ),
                    flush=True,
                )
                results.append(r)
    finally:
        if workspace_ctx:
            workspace_ctx.cleanup()

    # Baselines on the same 400 queries (and the pixel one on the in-run test episodes).
    from transferstudio.core.models.build import build_backbone

    pre = preprocessing or Preprocessing(resize=28, crop=28, mean=(0.5,) * 3, std=(0.5,) * 3)
    tensors = runs_tensors(runs, pre)
    raw_tensors = raw_pixel_tensors(runs)
    torch.manual_seed(0)
    untrained = build_backbone(host.backbone("conv4"), None).eval()

    def untrained_predict(support, labels, queries):
        return predict_with_support(untrained, support, labels, queries)[0]

    baselines = {}
    for name, predict, images in (
        ("pixel 1-NN, 28 px (the networks' input)", pixel_predict, tensors),
        ("pixel 1-NN, 105 px raw", pixel_predict, raw_tensors),
        ("untrained conv4 as prototype encoder (seed 0)", untrained_predict, tensors),
    ):
        baselines[name] = score_runs(predict, images)
        baselines[name]["unstructured"] = score_unstructured(predict, images, episodes)
    in_run_pixel = {}
    for method in args.methods:
        q = args.proto_queries if method == "protonet" else args.maml_queries
        if q not in in_run_pixel:
            in_run_pixel[q] = in_run_test(
                experiment_raw(method, background, args, 0), host, pre, lambda x: x.flatten(1)
            )
    total_s = time.perf_counter() - t_start

    print()
    split_text = (
        ", ".join(f"{n} {s}" for s, n in results[0]["classes_per_split"].items())
        if results
        else "-"
    )
    print(
        f"Omniglot 20-way 1-shot, trained on the small background sets ({data_info['characters']}"
        f" characters: {split_text})"
    )
    print()
    print(
        "| method | seed | training | train time (s) | best val acc (epoch) | in-run test acc "
        "(600 episodes) | official runs acc (400 queries) | per-run range | cross-alphabet "
        f"episodes of the runs' images ({args.unstructured_episodes}) | published |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        p, o, t = r["params"], r["official"], r["in_run_test"]
        episodes = p["episodes_per_epoch"] * len(r["epochs"])
        if r["method"] == "protonet":
            how = f"{p['n_way']}-way {p['queries']}q, {episodes} episodes"
        else:
            order = "1st" if p["first_order"] else "2nd"
            how = (
                f"{order}-order, {p['queries']}q, {episodes} tasks / {p['meta_batch']}, "
                f"{p['inner_steps']}x{p['inner_lr']:g} (eval {p['eval_inner_steps']})"
            )
        print(
            f"| {r['method']} | {r['seed']} | {how} | {r['train_wall_s']:.0f} | "
            f"{r['best_val_accuracy']:.4f} ({r['best_epoch']}) | {t['accuracy']:.4f} +- "
            f"{t['accuracy_ci95']:.4f} | {o['accuracy']:.4f} +- {o['ci95_runs']:.4f} | "
            f"{o['min_run']:.2f}-{o['max_run']:.2f} | {r['unstructured']['accuracy']:.4f} +- "
            f"{r['unstructured']['ci95']:.4f} | {PUBLISHED[r['method']]:.3f} |"
        )
    for name, b in baselines.items():
        in_run = (
            " / ".join(
                f"{v['accuracy']:.4f} +- {v['accuracy_ci95']:.4f} ({q}q)"
                for q, v in in_run_pixel.items()
            )
            if name.startswith("pixel 1-NN, 28")
            else "-"
        )
        print(
            f"| {name} | - | none | - | - | {in_run} | {b['accuracy']:.4f} +- "
            f"{b['ci95_runs']:.4f} | {b['min_run']:.2f}-{b['max_run']:.2f} | "
            f"{b['unstructured']['accuracy']:.4f} +- {b['unstructured']['ci95']:.4f} | - |"
        )
    print()
    print(
        "accuracy +- : in-run test and cross-alphabet episodes, half the 95% interval over "
        "episodes; official runs, half the 95% interval across the 20 runs (1.96 x sd / sqrt(20))"
    )
    print(
        "official runs: 20-way *within-alphabet* (each run's 20 characters are from one "
        "evaluation alphabet); in-run test: 20-way episodes of held-out characters of the training "
        "alphabets, mixed; cross-alphabet episodes: 20 characters drawn across the 10 evaluation "
        "alphabets of the runs (the protocol of the published figures, on new alphabets)"
    )
    for method in args.methods:
        mine = [r["official"]["accuracy"] for r in results if r["method"] == method]
        if len(mine) > 1:
            print(
                f"{method}: official-runs accuracy over {len(mine)} seeds "
                f"{statistics.mean(mine):.4f} (sd {statistics.stdev(mine):.4f})"
            )
    print(
        f"total wall time {total_s / 60:.1f} min; other processes' CPU during training: "
        + ", ".join(
            f"{r['method']} seed {r['seed']} {fmt_cores(r['other_load_cores'])} cores"
            for r in results
        )
    )

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "data": data_info,
                    "formats": formats,
                    "settings": {
                        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                    },
                    "results": results,
                    "baselines": baselines,
                    "pixel_in_run_test": {str(q): v for q, v in in_run_pixel.items()},
                    "published": PUBLISHED,
                    "total_wall_s": total_s,
                },
                indent=2,
            )
        )
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
