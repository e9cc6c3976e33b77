"""Exporting a module (the whole model or any sub-module) through an exporter plugin, atomically,
then verifying the written file against the module on a sample batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferstudio.api import ExporterSpec, TransferStudioError
from transferstudio.core.atomic import atomic_path

DEFAULT_TOLERANCE = 1e-4


@dataclass
class ExportResult:
    """Where the file went and how closely it reproduces the module."""

    path: Path
    format: str
    max_abs_diff: float | None


def sample_input(model: nn.Module, module_path: str, batch: torch.Tensor) -> torch.Tensor:
    """The tensor ``module_path`` receives when ``model`` runs on ``batch`` (the example input of
    a sub-module, whose shape depends on where it sits)."""
    if not module_path:
        return batch
    target = model.get_submodule(module_path)
    captured: list[torch.Tensor] = []

    def grab(module, inputs):
        captured.append(inputs[0].detach())

    handle = target.register_forward_pre_hook(grab)
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(batch)
        model.train(was_training)
    finally:
        handle.remove()
    if not captured:
        raise TransferStudioError(
            f"module {module_path!r} is not used in the forward pass, so it "
            "has no example input to export with"
        )
    return captured[0]


def export_module(
    spec: ExporterSpec,
    module: nn.Module,
    example: torch.Tensor,
    target: Path,
    metadata: dict[str, Any] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Write ``module`` with exporter ``spec`` to ``target`` (atomically), then reload it and
    compare outputs on ``example``; a difference above ``tolerance`` removes nothing already
    there and raises with the figures."""
    module = module.eval()
    target = Path(target)
    with atomic_path(target) as tmp:
        spec.export(module, example, tmp, dict(metadata or {}))
        diff = spec.verify(module, example, tmp) if spec.verify is not None else None
        if diff is not None and not diff <= tolerance:
            raise TransferStudioError(
                f"the {spec.format} export does not reproduce the module: max abs difference "
                f"{diff:.3g} > tolerance {tolerance:g}; {target} was not written"
            )
    return ExportResult(target, spec.format, diff)


def export_run(
    ref: str | Path,
    fmt: str,
    target: Path,
    host,
    workspace: Path,
    module_path: str = "",
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Export a finished run's classifier (its best checkpoint), or one of its sub-modules, with
    exporter ``fmt``; provenance (see :func:`transferstudio.core.bundle.provenance`) goes into the
    file's metadata. An existing ``target`` is only replaced with ``force``."""
    from transferstudio.core.bundle import bundle_manifest
    from transferstudio.core.checkpoint import CheckpointStore
    from transferstudio.core.run_models import load_run_predictor, run_folder

    target = Path(target)
    if target.exists() and not force:
        raise TransferStudioError(f"{target} already exists; pass --force to replace it")
    if fmt not in host.exporters:
        raise TransferStudioError(
            f"no exporter named {fmt!r}; available: {', '.join(sorted(host.exporters))}"
        )
    folder = run_folder(ref, workspace)
    store = CheckpointStore(folder / "checkpoints")
    meta = store.meta("best" if store.exists("best") else "last")
    model = load_run_predictor(folder, host, workspace)
    try:
        module = model.get_submodule(module_path) if module_path else model
    except AttributeError:
        raise TransferStudioError(
            f"the model has no module {module_path!r}; see the Model tree for the paths"
        ) from None
    crop = int(meta.get("preprocessing", {}).get("crop", 224))
    batch = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    example = sample_input(model, module_path, batch)
    with torch.no_grad():
        output_shape = list(module.eval()(example).shape[1:])
    metadata = bundle_manifest(meta, module_path, output_shape)
    return export_module(host.exporters[fmt], module, example, target, metadata, tolerance)
