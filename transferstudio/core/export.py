"""Exporting a module (the whole model or any sub-module) through an exporter plugin, atomically,
then verifying the written file against the module on a sample batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    metadata: dict[str, str] | None = None,
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
