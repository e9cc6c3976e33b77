"""Raccoon detection: what transfer brings to a detector, and what the engine costs.

What it measures
    The Raccoon set (``../shared/data/raccoon``: Pascal VOC, one class, the author's 160 train
    and 40 test images; validation is carved out of train by ``data.val_split``) through the
    ``detect`` method: torchvision's Faster R-CNN with a feature pyramid on MobileNetV2.

    1. Transfer gain, over ``--seeds``: test mAP@0.5 and mAP@[.5:.95] (pycocotools through
       torchmetrics, the best-validation-mAP@0.5 checkpoint) of
       * transfer: the backbone from the shared ImageNet MobileNetV2 file
         (``weights/mobilenet_v2_imagenet.pth``, BatchNorm folded into the convolutions, so
         ``bn_mode = "frozen"``), its last three stages trainable (torchvision's default);
       * random init: the same detector, data, epochs, batch and augmentation from a randomly
         initialised backbone, trained whole with BatchNorm training, as torchvision trains a
         detector without pretrained weights (with the folded-BN settings of the transfer run
         a random backbone has no normalisation at all, which would not be a fair baseline).
    2. Engine cost: training images/s of ``run_experiment`` against a plain torchvision loop
       written here (same detector, images, transform, batch, optimizer), one epoch each,
       alternated over ``--rounds``; target engine/reference >= 0.95.

How to run
    .venv/bin/python benchmarks/raccoon_detection.py                # 2 seeds, 12 epochs
    .venv/bin/python benchmarks/raccoon_detection.py --quick        # smoke run
    .venv/bin/python benchmarks/raccoon_detection.py --json out.json

It prints the machine and markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import SHARED_DATA, OtherLoad, describe_machine, machine, missing_shared_data

from transferstudio.api import TransferStudioError
from transferstudio.core.plugins.host import load_plugins
from transferstudio.core.progress import events as E
from transferstudio.core.settings.experiment import from_mapping
from transferstudio.core.training.engine import PlainState, run_experiment

RACCOON = SHARED_DATA / "raccoon"
WEIGHTS = SHARED_DATA / "weights" / "mobilenet_v2_imagenet.pth"


def experiment(args, seed: int, transfer: bool, epochs: int):
    """The benchmark's experiment: transfer (shared MobileNetV2 file) or random init."""
    host = load_plugins(autoload=False)
    spec = host.backbone("mobilenet_v2")
    from transferstudio.core.models.detector import freeze_up_to_for

    raw = {
        "schema_version": 1,
        "name": f"raccoon-{'transfer' if transfer else 'random'}-{seed}",
        "task": "detection",
        "data": {
            "path": str(RACCOON),
            "val_split": 0.2,
            "split_seed": 0,  # the same validation images in every run
            "batch_size": args.batch,
            "num_workers": args.workers,
        },
        "augment": {"hflip": True, "random_resized_crop": False, "color_jitter": 0.0},
        "model": {"backbone": "mobilenet_v2", "weights": str(WEIGHTS) if transfer else "none"},
        "train": {
            "epochs": epochs,
            "device": "cpu",
            "optimizer": "sgd",
            "lr": args.lr,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "warmup_epochs": 1.0,
            "schedule": "cosine",
            "seed": seed,
            "early_stopping_metric": "map50",
        },
        "method": {
            "name": "detect",
            "params": {
                "min_size": args.min_size,
                "max_size": args.max_size,
                "scale_jitter": False,
                "bn_mode": "frozen" if transfer else "train",
                "freeze_up_to": freeze_up_to_for(spec) if transfer else "",
            },
        },
    }
    return from_mapping(raw, host.method_params), host


def train_and_test(args, seed: int, transfer: bool, workspace: Path) -> dict:
    exp, host = experiment(args, seed, transfer, args.epochs)
    started = time.monotonic()
    result = run_experiment(exp, host, PlainState(), workspace)
    if result.status != "completed":
        raise SystemExit(f"run {exp.name} {result.status}: {result.message}")
    report = json.loads((result.folder / "report.json").read_text())
    test = report["test"]["metrics"]
    return {
        "seed": seed,
        "transfer": transfer,
        "run": result.run_id,
        "folder": str(result.folder),
        "best_epoch": report["best_epoch"] + 1,
        "val_map50": report["best_metric"],
        "test_map50": test["map50"],
        "test_map": test["map"],
        "test_mar100": test["mar100"],
        "minutes": (time.monotonic() - started) / 60,
    }


def engine_epoch(args, workspace: Path) -> tuple[float, int]:
    """Seconds of the engine's training batches of one epoch (first to last BatchEnded)."""
    exp, host = experiment(args, 0, True, 1)
    stamps: list[float] = []
    images = [0]

    def on_event(event):
        if isinstance(event, E.BatchEnded):
            stamps.append(time.perf_counter())
            images[0] += event.images if event.batch else 0

    state = PlainState(on_event=on_event)
    batch_start = [0.0]
    original = state.emit

    def emit(event):  # the first batch's start: when the run announces its epochs
        if isinstance(event, E.RunStarted):
            batch_start[0] = time.perf_counter()
        original(event)

    state.emit = emit
    result = run_experiment(exp, host, state, workspace)
    assert result.status == "completed", result.message
    # From the end of batch 1 to the end of the last: warm-up (first batch) excluded, as in
    # the reference, which times the same span.
    return stamps[-1] - stamps[0], images[0]


def reference_epoch(args) -> tuple[float, int]:
    """The same epoch as a plain torchvision loop: the run's split and images, the same
    detector, transform, batch and SGD; seconds from the end of batch 1 to the last."""
    from torch.utils.data import DataLoader

    from transferstudio.core.data.detection_loader import (
        DetectionDataset,
        collate_detection,
        detection_transform,
    )
    from transferstudio.core.data.detection_scan import choose_detection_source, scan_detection
    from transferstudio.core.models.detector import DetectorRecipe, build_detector

    exp, host = experiment(args, 0, True, 1)
    spec = host.backbone("mobilenet_v2")
    scan = scan_detection(
        choose_detection_source(host.datasets, exp.data, RACCOON), exp.data, RACCOON
    )
    dataset = DetectionDataset(scan.splits["train"], scan.classes, detection_transform(exp.augment))
    torch.manual_seed(0)
    loader = DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        collate_fn=collate_detection,
    )
    recipe = DetectorRecipe(
        "mobilenet_v2", 1, min_size=(args.min_size,), max_size=args.max_size, score_threshold=0.05
    )
    model = build_detector(spec, WEIGHTS, recipe)
    # The transfer run's plan: the first stages frozen, BatchNorm fixed.
    frozen_until = f"backbone.body.{spec.stages[-4]}."
    names = [n for n, _ in model.named_parameters()]
    last = max(i for i, n in enumerate(names) if n.startswith(frozen_until))
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i > last)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            for p in module.parameters():
                p.requires_grad_(False)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=args.lr,
        momentum=0.9,
        weight_decay=1e-4,
    )
    stamps, images = [], 0
    for i, (batch, targets) in enumerate(loader):
        losses = model(batch, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stamps.append(time.perf_counter())
        images += len(batch) if i else 0
    return stamps[-1] - stamps[0], images


def onnx_agreement(host, detector, images, recipe: dict, workspace: Path) -> dict:
    """Where the export check refuses the ONNX file, how far it agrees: its detections compared
    with the detector's on every test image (not stopping at the first difference), and with
    the detector running the non-maximum suppression ONNX runs. torchvision's ``batched_nms``
    offsets each level's boxes by a multiple of the largest coordinate and suppresses once (the
    "coordinate trick") whenever it is traced, as for ONNX; run in Python (or TorchScript) on
    more than 1000 boxes, as the RPN does, it loops over levels instead. The offset coordinates
    lose float32 precision, so an overlap near the 0.7 threshold can be decided the other way,
    which changes a proposal and the detection built on it. Patched here for the comparison
    only (this script is single-threaded)."""
    from torchvision.ops import boxes as box_ops

    from transferstudio.core.inference import detection_check as DC
    from transferstudio.core.inference.detection_export import reload_export, write_detector

    spec = host.exporters["onnx"]
    path = workspace / "agreement.onnx"
    write_detector(spec, detector, images[0][1], path, {})
    exported = reload_export(spec, detector, path)
    onnx_outputs = []
    with torch.no_grad():
        onnx_outputs = [exported([image])[0] for _, image in images]
    row: dict = {"format": "onnx (every test image, no stop)"}
    original = box_ops.batched_nms
    for reference, nms in (
        ("detector", original),
        ("detector with ONNX's NMS", box_ops._batched_nms_coordinate_trick),
    ):
        box_ops.batched_nms = nms
        try:
            check, differing = DC.BoxCheck(), []
            for (name, image), found in zip(images, onnx_outputs, strict=True):
                with torch.no_grad():
                    expected = detector([image])[0]
                problem = DC.compare_image(
                    expected,
                    found,
                    recipe["score_threshold"],
                    recipe["detections_per_image"],
                    check,
                )
                if problem:
                    differing.append(f"{name}: {problem}")
        finally:
            box_ops.batched_nms = original
        row[reference] = {
            "images": len(images),
            "images_that_differ": len(differing),
            "detections_matched": check.boxes_compared,
            "min_iou": check.min_iou,
            "max_score_diff": check.max_score_diff,
            "differences": differing,
        }
    return row


def export_agreement(folder: str, workspace: Path) -> list[dict]:
    """The run's detector exported as TorchScript and ONNX, each checked box by box against
    the PyTorch detector on the 40 test images (the export's own check, on test images)."""
    from torchvision.transforms.v2 import functional as F

    from transferstudio.core.data.detection_scan import scan_from_dict
    from transferstudio.core.data.images import load_rgb
    from transferstudio.core.inference.detection_export import export_detector
    from transferstudio.core.runs.finished import detector_from_checkpoint, load_best_checkpoint

    host = load_plugins(autoload=False)
    ck = load_best_checkpoint(Path(folder))
    detector = detector_from_checkpoint(ck, host, folder)
    scan = scan_from_dict(json.loads((Path(folder) / "splits.json").read_text()))
    images = [
        (
            Path(s.path).name,
            F.to_dtype(F.pil_to_tensor(load_rgb(s.path)), torch.float32, scale=True),
        )
        for s in scan.splits["test"]
    ]
    recipe = ck.record.detector_recipe
    rows = []
    for fmt in ("torchscript", "onnx"):
        target = workspace / f"raccoon.{fmt}"
        started = time.monotonic()
        try:
            result, check = export_detector(
                host.exporters[fmt],
                detector,
                target,
                {},
                images,
                recipe["score_threshold"],
                recipe["detections_per_image"],
            )
        except TransferStudioError as exc:  # the check refused the file: a finding to report
            rows.append({"format": fmt, "refused": str(exc)})
            if fmt == "onnx":
                rows.append(onnx_agreement(host, detector, images, recipe, workspace))
            continue
        rows.append(
            {
                "format": fmt,
                "test_images": check.images,
                "detections_matched": result.boxes_compared,
                "min_iou": result.min_iou,
                "max_score_diff": result.max_score_diff,
                "max_box_diff_px": result.max_abs_diff,
                "excused": len(check.unverified),
                "seconds": time.monotonic() - started,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="engine/reference rounds")
    parser.add_argument("--skip-training", action="store_true", help="throughput only")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--transfer-only", action="store_true", help="no random-init runs (export figures)"
    )
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, 1 round")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.rounds = [0], 2, 1
    if missing_shared_data(RACCOON, WEIGHTS):
        return
    info = machine()
    print(describe_machine(info))
    out: dict = {"machine": info, "args": vars(args), "runs": [], "throughput": []}
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "ws"
        if not args.skip_throughput:
            for r in range(args.rounds):
                with OtherLoad() as ref_load:
                    ref_s, ref_n = reference_epoch(args)
                with OtherLoad() as eng_load:
                    eng_s, eng_n = engine_epoch(args, workspace)
                row = {
                    "round": r + 1,
                    "reference_images_per_s": ref_n / ref_s,
                    "engine_images_per_s": eng_n / eng_s,
                    "other_load_reference": ref_load.cores,
                    "other_load_engine": eng_load.cores,
                }
                out["throughput"].append(row)
                print(json.dumps(row), flush=True)
        if not args.skip_training:
            for seed in args.seeds:
                for transfer in (True, False)[: 1 if args.transfer_only else 2]:
                    row = train_and_test(args, seed, transfer, workspace)
                    out["runs"].append(row)
                    print(json.dumps(row), flush=True)
        transfer_runs = [r for r in out["runs"] if r["transfer"]]
        if transfer_runs:
            best = max(transfer_runs, key=lambda r: r["val_map50"])
            out["exports"] = export_agreement(best["folder"], workspace)
            for row in out["exports"]:
                print(json.dumps(row), flush=True)
        print_tables(out)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))


def print_tables(out: dict) -> None:
    if out.get("exports"):
        print("\n| format | test images | detections matched | min IoU | max score diff |")
        print("|---|---|---|---|---|")
        for r in out["exports"]:
            if "detector" in r:  # onnx_agreement
                for reference in ("detector", "detector with ONNX's NMS"):
                    a = r[reference]
                    print(
                        f"| onnx against the {reference} | {a['images']} "
                        f"({a['images_that_differ']} differ) | {a['detections_matched']} | "
                        f"{a['min_iou'] or 0:.6f} | {a['max_score_diff'] or 0:.2g} |"
                    )
                continue
            if "refused" in r:
                print(f"| {r['format']} | refused: {r['refused']} | | | |")
                continue
            print(
                f"| {r['format']} | {r['test_images']} | {r['detections_matched']} | "
                f"{r['min_iou']:.6f} | {r['max_score_diff']:.2g} |"
            )
    if out["throughput"]:
        ratios = [r["engine_images_per_s"] / r["reference_images_per_s"] for r in out["throughput"]]
        print("\n| round | reference img/s | engine img/s | ratio | other load (ref / eng) |")
        print("|---|---|---|---|---|")
        for r, ratio in zip(out["throughput"], ratios, strict=True):
            print(
                f"| {r['round']} | {r['reference_images_per_s']:.2f} | "
                f"{r['engine_images_per_s']:.2f} | {ratio:.3f} | "
                f"{r['other_load_reference']} / {r['other_load_engine']} |"
            )
        print(f"median ratio engine/reference: {statistics.median(ratios):.3f} (target >= 0.95)")
    if out["runs"]:
        print(
            "\n| backbone | seed | best epoch | val mAP@0.5 | test mAP@0.5 | test mAP | minutes |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in out["runs"]:
            kind = "ImageNet MobileNetV2 (transfer)" if r["transfer"] else "random init"
            print(
                f"| {kind} | {r['seed']} | {r['best_epoch']} | {r['val_map50']:.3f} | "
                f"{r['test_map50']:.3f} | {r['test_map']:.3f} | {r['minutes']:.1f} |"
            )
        for transfer in (True, False):
            values = [r["test_map50"] for r in out["runs"] if r["transfer"] == transfer]
            if not values:
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            name = "transfer" if transfer else "random init"
            print(f"{name}: test mAP@0.5 {statistics.mean(values):.3f} +- {spread:.3f}")


if __name__ == "__main__":
    main()
