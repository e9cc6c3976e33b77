"""A run's events as lines of text, for a run in another process (the window's torchrun runs).

Rank 0 of ``transferstudio run --event-stream CONTROL_DIR`` writes each engine event to stdout
as one line, :data:`PREFIX` followed by JSON; the window reads them back with :func:`decode`
into the same event objects a run in a thread emits, so curves, progress and the tree do not
know where the run is. The other direction is files in ``CONTROL_DIR``: ``stop``, ``pause`` and
``layer-stats`` exist while the window asks for them. Files, because every rank must see the
request (the engine then agrees on it across ranks) and torchrun gives the ranks no stdin.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from transferstudio.core.progress import events as E

PREFIX = "@transferstudio-event "
STOP_FILE = "stop"
PAUSE_FILE = "pause"
LAYER_STATS_FILE = "layer-stats"

_EVENT_TYPES = {
    cls.__name__: cls
    for cls in (
        E.RunStarted,
        E.BatchEnded,
        E.EpochEnded,
        E.LayerStats,
        E.CheckpointSaved,
        E.LogMessage,
        E.RunFinished,
        E.RunFailed,
    )
}


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """The end of a streamed run: what :class:`~transferstudio.core.training.engine.RunResult` holds,
    or ``status == "error"`` with the message of an error that prevented the run."""

    run_id: str
    folder: str
    status: str  # completed | cancelled | failed | error
    message: str = ""
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_done: int = 0
    report: dict[str, Any] = dataclasses.field(default_factory=dict)


def encode(event: Any) -> str:
    """One line (without the newline) for an engine event or a :class:`StreamResult`."""
    kind = type(event).__name__
    if kind not in _EVENT_TYPES and not isinstance(event, StreamResult):
        raise TypeError(f"not a streamable event: {kind}")
    payload = {"kind": kind, "data": dataclasses.asdict(event)}
    # NaN and infinity are kept (json writes NaN/Infinity): a diverging loss must show as such.
    return PREFIX + json.dumps(payload, default=str, separators=(",", ":"))


def decode(line: str) -> Any | None:
    """The event of a line written by :func:`encode`; ``None`` for any other line."""
    if not line.startswith(PREFIX):
        return None
    try:
        payload = json.loads(line[len(PREFIX) :])
        kind, data = payload["kind"], payload["data"]
        cls = StreamResult if kind == "StreamResult" else _EVENT_TYPES[kind]
        if cls is E.LayerStats:
            data["stats"] = {name: tuple(v) for name, v in data["stats"].items()}
        return cls(**data)
    except (ValueError, KeyError, TypeError):
        return None  # a torn or foreign line is shown as text, never raised in the window


class StreamState:
    """The engine's :class:`~transferstudio.core.training.engine.RunState` for a streamed run: events
    go to ``stream`` as lines (rank 0 only, when ``writes`` is true); stop, pause and layer
    statistics are read from the control folder."""

    def __init__(self, control_dir: Path, stream: TextIO | None = None, writes: bool = True):
        self.control_dir = Path(control_dir)
        self.stream = stream or sys.stdout
        self.writes = writes
        self.stop = False  # set by Ctrl+C in the terminal that started the run

    def stop_requested(self) -> bool:
        return self.stop or (self.control_dir / STOP_FILE).exists()

    def pause_requested(self) -> bool:
        return (self.control_dir / PAUSE_FILE).exists()

    @property
    def wants_layer_stats(self) -> bool:
        return (self.control_dir / LAYER_STATS_FILE).exists()

    def emit(self, event: Any) -> None:
        if self.writes and type(event).__name__ in _EVENT_TYPES:
            self.write(event)

    def write(self, event: Any) -> None:
        self.stream.write(encode(event) + "\n")
        self.stream.flush()


def set_flag(control_dir: Path, name: str, on: bool) -> None:
    """Create or remove one control file (the window's side of :class:`StreamState`)."""
    path = Path(control_dir) / name
    if on:
        path.touch()
    else:
        path.unlink(missing_ok=True)
