"""What an export wrote and how closely the written file reproduces the model (its own module, so
that the classification and the detection exports both build it without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ExportResult:
    """Where the file went and how closely it reproduces the module."""

    path: Path
    format: str
    max_abs_diff: float | None
    """The largest difference between the module's outputs and the file's (a detector's: of a
    matched box's coordinates, in pixels); None: not checked."""
    val_images: int = 0
    """Validation images the reloaded file was checked on (0: not checked, see ``note``)."""
    val_top1_agreement: float | None = None
    """Fraction of those images whose top-1 class is the same from the file as from the model."""
    note: str = ""
    boxes_compared: int | None = None
    """A detector's export: detections matched box by box on those images (None: a classifier;
    see :mod:`transferstudio.core.inference.detection_export`)."""
    min_iou: float | None = None
    """The lowest IoU of a matched detection with its counterpart in the file."""
    max_score_diff: float | None = None
    """The largest score difference between a matched detection and its counterpart."""


def check_export_target(target: Path, force: bool, fmt: str, host) -> None:
    """Refuse, before any work, to replace an existing ``target`` without ``force`` and a
    format no exporter plugin provides."""
    from transferstudio.api import TransferStudioError

    if target.exists() and not force:
        raise TransferStudioError(f"{target} already exists; pass --force to replace it")
    if fmt not in host.exporters:
        raise TransferStudioError(
            f"no exporter named {fmt!r}; available: {', '.join(sorted(host.exporters))}"
        )
