"""Prediction on new images with a model bundle or a finished run: batched, top-k labels with
confidence; an image that cannot be read is reported with its reason and skipped."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from transferstudio.api import Preprocessing, TransferStudioError
from transferstudio.core.data import build_transform
from transferstudio.core.images import ImageProblem, image_files, load_rgb


@dataclass
class Predictor:
    """A classifier ready to predict: eval mode, its class names and preprocessing."""

    model: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing
    source: str


@dataclass
class Prediction:
    """The top-k ``(label, probability)`` pairs of one image, best first."""

    path: str
    top: list[tuple[str, float]]


@dataclass
class PredictionReport:
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of every input that was not predicted."""


def open_predictor(ref: str, host, workspace: Path) -> Predictor:
    """A bundle file (``.tsmodel``), or a finished run (id, unique prefix or folder)."""
    if Path(ref).suffix == ".tsmodel":
        from transferstudio.core.bundle import load_bundle

        bundle = load_bundle(ref, host)
        if not bundle.class_names:
            raise TransferStudioError(
                f"{ref} holds a feature extractor ({bundle.manifest.get('module')!r}), not a "
                "classifier: it has no classes to predict"
            )
        return Predictor(bundle.model, bundle.class_names, bundle.preprocessing, str(ref))
    from transferstudio.core.run_models import load_run_classifier, run_folder

    folder = run_folder(ref, workspace)
    model, meta = load_run_classifier(folder, host, workspace)
    pre = Preprocessing.from_dict(meta["preprocessing"])
    return Predictor(model, list(meta["class_names"]), pre, str(folder))


def gather_images(inputs: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files named or found (recursively, sorted) under the given folders; names
    that do not exist or are not images are returned as skipped, with the reason."""
    paths: list[str] = []
    skipped: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            images, others = image_files(path)
            paths += images
            skipped += others
        elif path.is_file():
            paths.append(str(path))
        else:
            skipped.append((str(path), "no such file or folder"))
    return paths, skipped


def predict(
    predictor: Predictor,
    paths: Sequence[str],
    top_k: int = 3,
    batch_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
) -> PredictionReport:
    """Top-``top_k`` predictions for every readable image of ``paths``, in order, in batches;
    ``on_progress(done, total)`` after each batch."""
    transform = build_transform(predictor.preprocessing, None)
    device = next(predictor.model.parameters()).device
    k = max(1, min(top_k, len(predictor.class_names)))
    report = PredictionReport()
    total = len(paths)
    for start in range(0, total, batch_size):
        batch_paths, tensors = [], []
        for path in paths[start : start + batch_size]:
            try:
                tensors.append(transform(load_rgb(path)))
                batch_paths.append(path)
            except ImageProblem as exc:
                report.skipped.append((path, str(exc)))
        if tensors:
            with torch.no_grad():
                probs = predictor.model(torch.stack(tensors).to(device)).float().softmax(1)
            values, indices = probs.topk(k, dim=1)
            for path, v, i in zip(batch_paths, values.tolist(), indices.tolist(), strict=True):
                top = [(predictor.class_names[c], p) for c, p in zip(i, v, strict=True)]
                report.predictions.append(Prediction(path, top))
        if on_progress is not None:
            on_progress(min(start + batch_size, total), total)
    return report
