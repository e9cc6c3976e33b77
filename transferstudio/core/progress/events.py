"""Events the engine emits while a run progresses. Consumers: the console progress bar, the GUI
worker (which coalesces them for drawing) and tests. Names say what happened, in past tense."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunStarted:
    run_id: str
    folder: str
    device: str
    device_detail: str
    precision: str
    epochs: int
    start_epoch: int
    batches_per_epoch: int
    classes: list[str]
    counts: dict[str, dict[str, int]]
    skipped: int
    counted: str = "images"
    """What ``counts`` counts per class: ``images``, or ``boxes`` for a detection run."""


@dataclass(frozen=True)
class BatchEnded:
    epoch: int
    batch: int
    batches: int
    loss: float
    lr: float
    images: int
    logs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EpochEnded:
    epoch: int
    epochs: int
    train: dict[str, float]
    val: dict[str, float]
    lr: float
    seconds: float
    improved: bool
    best_metric: float | None
    best_epoch: int | None


@dataclass(frozen=True)
class LayerStats:
    """How far each parameter tensor moved from its value at the start of the run, and its
    latest gradient: ``stats[name] = (sum((w - w0)^2), sum(w0^2), sum(grad^2))``. Sums of
    squares, so a viewer can aggregate any subtree exactly (norm = sqrt of the sum)."""

    epoch: int
    batch: int
    stats: dict[str, tuple[float, float, float]]


@dataclass(frozen=True)
class CheckpointSaved:
    kind: str
    path: str
    epoch: int


@dataclass(frozen=True)
class LogMessage:
    text: str


@dataclass(frozen=True)
class RunFinished:
    run_id: str
    status: str  # completed | cancelled
    report: dict[str, Any]


@dataclass(frozen=True)
class RunFailed:
    run_id: str | None
    message: str
    traceback: str = ""
