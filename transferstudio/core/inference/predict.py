"""Prediction on new images with a model bundle or a finished run: batched, top-k labels with
confidence; an image that cannot be read is reported with its reason and skipped. Few-shot
models predict the classes of a support folder (see ``core.support``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from transferstudio.api import (
    TASK_CLASSIFICATION,
    TASK_DETECTION,
    Preprocessing,
    TransferStudioError,
)
from transferstudio.core.data.images import ImageProblem, image_files, load_rgb
from transferstudio.core.data.loaders import build_transform


@dataclass
class Predictor:
    """A classifier ready to predict: eval mode, its class names and preprocessing."""

    model: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing
    source: str
    support_skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of support-folder files that were not used (few-shot models)."""
    task: str = TASK_CLASSIFICATION
    """``detection``: ``model`` is a detector (``core.inference.detection_predict``)."""


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


def open_predictor(ref: str, host, workspace: Path, support: str | Path | None = None) -> Predictor:
    """A bundle file (``.tsmodel``), or a finished run (id, unique prefix or folder). Models of
    methods that learn no fixed classes (few-shot) need ``support``: a folder with one subfolder
    of example images per class, whose classes they then predict."""
    from transferstudio.core.models.bundle import (
        BUNDLE_SUFFIX,
        bundle_backbone,
        bundle_from,
        bundle_meta,
        read_bundle,
    )
    from transferstudio.core.models.support_set import predicts_from_support
    from transferstudio.core.runs.finished import (
        classifier_from_checkpoint,
        detector_from_checkpoint,
        load_best_checkpoint,
        run_folder,
    )

    if Path(ref).suffix == BUNDLE_SUFFIX:
        manifest, weights = read_bundle(ref)
        bundle_backbone(manifest, host, Path(ref))  # a missing plugin named before anything else
        if manifest.get("support_set"):
            module = manifest.get("predictor_module") or ""
            prefixed = {f"{module}.{k}": v for k, v in weights.items()}
            return _support_predictor(bundle_meta(manifest), host, prefixed, str(ref), support)
        _refuse_support(support, str(ref))
        bundle = bundle_from(manifest, weights, host, Path(ref))
        if manifest.get("detector_recipe"):
            return Predictor(
                bundle.model, bundle.class_names, bundle.preprocessing, str(ref), [], TASK_DETECTION
            )
        if not bundle.class_names:
            raise TransferStudioError(
                f"{ref} holds a feature extractor ({bundle.manifest.get('module')!r}), not a "
                "classifier: it has no classes to predict"
            )
        return Predictor(bundle.model, bundle.class_names, bundle.preprocessing, str(ref))
    folder = run_folder(ref, workspace)
    ck = load_best_checkpoint(folder)
    if predicts_from_support(ck.meta, host):
        return _support_predictor(ck.meta, host, ck.weights, f"run {folder}", support)
    _refuse_support(support, f"run {folder}")
    if ck.record.detector_recipe:
        model = detector_from_checkpoint(ck, host, f"run {folder}")
        pre = Preprocessing.from_dict(ck.record.preprocessing)
        return Predictor(model, list(ck.record.class_names), pre, str(folder), [], TASK_DETECTION)
    model = classifier_from_checkpoint(ck, host, f"run {folder}")
    pre = Preprocessing.from_dict(ck.record.preprocessing)
    return Predictor(model, list(ck.record.class_names), pre, str(folder))


def _refuse_support(support, source: str) -> None:
    if support is not None:
        raise TransferStudioError(
            f"{source} predicts the classes it was trained on; a support folder applies only "
            "to few-shot models (protonet, maml): leave it out (--support, or Clear in the "
            "Predict panel)"
        )


def _support_predictor(meta, host, weights, source: str, support) -> Predictor:
    from transferstudio.core.models.support_set import (
        read_support_folder,
        rebuild_method,
        support_classifier,
    )

    if support is None:
        raise TransferStudioError(
            f"{source} (method {meta.get('method')!r}) learns no fixed classes: give a support "
            "folder with one subfolder of example images per class (--support FOLDER, or "
            "Support... in the Predict panel)"
        )
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    support_set = read_support_folder(support, preprocessing)
    method = rebuild_method(meta, host, weights, source)
    model = support_classifier(method, support_set, str(meta.get("method")), host)
    return Predictor(
        model,
        support_set.class_names,
        preprocessing,
        f"{source}, support {support} ({len(support_set.targets)} images)",
        support_set.skipped,
    )


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
            except (MemoryError, RuntimeError, ValueError) as exc:
                # One image that the transform cannot prepare (out of memory, a shape torch
                # refuses) is reported like an unreadable one: the rest of the call goes on.
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                report.skipped.append((path, f"cannot prepare the image ({reason})"))
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
