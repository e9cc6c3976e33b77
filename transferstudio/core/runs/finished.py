"""A finished run's model, rebuilt from its own folder: for distillation teachers and as a
weights source for later runs.

A run folder holds ``experiment.toml`` and ``checkpoints/`` (see ``core.checkpoint``). Methods
that store their classifier as the module ``model`` (backbone + head, as ``fine-tune``,
``feature-extract`` and most built-ins do) can be reloaded as a predictor here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from transferstudio.api import TransferStudioError, WeightsError
from transferstudio.core.models.build import classifier_from_recipe
from transferstudio.core.runs.checkpoint import Checkpoint, CheckpointStore


def run_folder(ref: str | Path, workspace: str | Path) -> Path:
    """The folder of a run given as a folder path or a run id (or unique prefix)."""
    path = Path(ref).expanduser()
    if (path / "checkpoints").is_dir():
        return path
    from transferstudio.core.runs.workspace import RunStore

    try:
        return Path(RunStore(workspace).get(str(ref)).folder)
    except TransferStudioError as exc:
        raise TransferStudioError(
            f"{ref!r} is neither a run folder (with checkpoints/) nor a run id of the workspace "
            f"{workspace}: {exc}"
        ) from None


def best_weights_file(folder: Path) -> Path:
    """The weights file of a run's best checkpoint (else its last)."""
    store = CheckpointStore(folder / "checkpoints")
    for kind in ("best", "last"):
        if store.exists(kind):
            return store.folder / store.record(kind).weights_file
    raise WeightsError(f"run {folder} has no checkpoint yet; let it finish an epoch")


def load_best_checkpoint(folder: Path) -> Checkpoint:
    """A run folder's best checkpoint (else its last): weights and metadata, no training
    state."""
    store = CheckpointStore(folder / "checkpoints")
    for kind in ("best", "last"):
        if store.exists(kind):
            return store.load(kind, with_state=False)
    raise WeightsError(f"run {folder} has no checkpoint yet; let it finish an epoch")


def load_run_classifier(
    ref: str | Path, host, workspace: str | Path
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The classifier (``backbone`` + ``head``) of a finished run's best checkpoint (else its
    last), eval mode, frozen, and that checkpoint's metadata (see
    :func:`classifier_from_checkpoint`)."""
    folder = run_folder(ref, workspace)
    ck = load_best_checkpoint(folder)
    return classifier_from_checkpoint(ck, host, f"run {folder}"), ck.meta


def classifier_from_checkpoint(ck: Checkpoint, host, source: str) -> torch.nn.Module:
    """A checkpoint's classifier, eval mode, frozen. Its head is rebuilt from the recipe the
    engine stores in every checkpoint whose method predicts with such a classifier
    (``head_recipe``, see ``core.models.describe_head``); a run of a method that learns no
    fixed classes (few-shot) is refused."""
    from transferstudio.core.models.support_set import predicts_from_support

    record = ck.record
    if predicts_from_support(ck.meta, host):
        raise WeightsError(
            f"{source} (method {record.method!r}) learns no fixed classes: it "
            "classifies the classes of a support set given when predicting (transferstudio "
            "predict --support FOLDER), so it cannot serve as a classifier of its training "
            "classes (a teacher, say)"
        )
    name, recipe = record.predictor_module, record.head_recipe
    if not name or not recipe:
        raise WeightsError(
            f"{source} (method {record.method!r}) does not predict with a backbone + "
            "head classifier, so it cannot serve as a teacher or be reloaded as a predictor"
        )
    prefix = name + "."
    state = {k[len(prefix) :]: v for k, v in ck.weights.items() if k.startswith(prefix)}
    model = classifier_from_recipe(host.backbone(record.backbone), recipe, state, source)
    model.class_names = list(record.class_names)  # type: ignore[assignment]
    return model.eval().requires_grad_(False)


def detector_from_checkpoint(ck: Checkpoint, host, source: str) -> torch.nn.Module:
    """A detection run's detector (eval mode, frozen) with its class names, rebuilt from the
    recipe the engine stores in its checkpoints (``detector_recipe``)."""
    from transferstudio.core.models.detector import detector_from_recipe

    record = ck.record
    if not record.detector_recipe or not record.predictor_module:
        raise WeightsError(f"{source} (method {record.method!r}) holds no detector")
    prefix = record.predictor_module + "."
    state = {k[len(prefix) :]: v for k, v in ck.weights.items() if k.startswith(prefix)}
    model = detector_from_recipe(
        host.backbone(record.backbone), record.detector_recipe, state, source
    )
    model.class_names = list(record.class_names)  # type: ignore[assignment]
    return model


def load_run_predictor(ref: str | Path, host, workspace: str | Path) -> torch.nn.Module:
    """The classifier of :func:`load_run_classifier` alone (teachers, ``ctx.load_run_model``)."""
    return load_run_classifier(ref, host, workspace)[0]
