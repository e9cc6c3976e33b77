"""Console presentation: the one progress line every command draws through, and a run's
progress (batch line with ETA, epoch lines, the final table)."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from transferstudio.core.files.safe_text import printable
from transferstudio.core.progress import events as E


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def bar(done: int, total: int, width: int, empty: str = "-") -> str:
    """A text progress bar: ``done`` of ``total`` as ``width`` characters of ``#`` and ``empty``."""
    filled = int(width * done / max(total, 1))
    return "#" * filled + empty * (width - filled)


class ProgressLine:
    """One status line redrawn in place on a terminal, and the lines printed around it.

    The one progress renderer of the command line: a run's batch line, the learning-rate range
    test's steps and prediction's images all draw through it. On a terminal the line is redrawn
    at most 10 times a second (the last step always); elsewhere (CI logs, pipes) it draws
    nothing and only the printed lines appear.
    """

    def __init__(self, stream: TextIO | None = None, interval_s: float = 0.1) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.interval_s = interval_s
        self.last_draw = 0.0
        self.drawn = False

    def due(self, last: bool = False) -> bool:
        """Whether :meth:`draw` would draw now (so a caller can skip formatting the line)."""
        return self.tty and (last or time.monotonic() - self.last_draw >= self.interval_s)

    def draw(self, text: str, last: bool = False) -> None:
        """Redraw the line as ``text`` (our own numbers: not escaped), if :meth:`due`."""
        if not self.due(last):
            return
        self.last_draw = time.monotonic()
        self.stream.write(f"\r\033[K{text}")
        self.stream.flush()
        self.drawn = True

    def end(self) -> None:
        """Leave the drawn line on screen and move below it."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False

    def print(self, text: str) -> None:
        """Print ``text`` as a line of its own, in place of the status line."""
        # Class names, file names and messages quoting them come from the user's data: their
        # control characters are shown, never obeyed (only our own redraw codes reach the tty).
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(printable(text) + "\n")
        self.stream.flush()
        self.drawn = False


class ConsoleProgress:
    """A :class:`~transferstudio.core.training.engine.RunState` that draws to a terminal.

    On a terminal the batch line is redrawn at most 10 times a second; elsewhere (CI logs) only
    epoch lines are printed. ``stop`` (set by the command line's Ctrl+C handler) asks the engine
    to stop after the current batch.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.line = ProgressLine(stream)
        self.stop = False
        self.epochs = 1
        self.start_epoch = 0
        self.started = time.monotonic()
        self.run_id: str | None = None

    def stop_requested(self) -> bool:
        return self.stop

    def pause_requested(self) -> bool:
        return False

    def _print(self, text: str) -> None:
        self.line.print(text)

    def emit(self, event: Any) -> None:
        if isinstance(event, E.RunStarted):
            self.run_id = event.run_id
            self.epochs, self.start_epoch = event.epochs, event.start_epoch
            self.started = time.monotonic()
            self._print(
                f"run {event.run_id} on {event.device_detail} ({event.precision}); "
                f"{len(event.classes)} classes, "
                + ", ".join(
                    f"{s} {sum(c.values())}{' boxes' if event.counted == 'boxes' else ''}"
                    for s, c in event.counts.items()
                )
                + (f", {event.skipped} file(s) skipped" if event.skipped else "")
            )
        elif isinstance(event, E.BatchEnded):
            last = event.batch + 1 >= event.batches
            if not self.line.due(last):
                return
            done = (event.epoch - self.start_epoch) + (event.batch + 1) / max(event.batches, 1)
            total = max(self.epochs - self.start_epoch, 1)
            elapsed = time.monotonic() - self.started
            eta = elapsed * (total - done) / done if done > 0 else 0
            self.line.draw(
                f"epoch {event.epoch + 1}/{self.epochs} [{bar(event.batch + 1, event.batches, 24)}] "
                f"{event.batch + 1}/{event.batches} loss {event.loss:.4f} "
                f"lr {event.lr:.2e} ETA {_fmt_seconds(eta)}",
                last,
            )
        elif isinstance(event, E.EpochEnded):
            self._print(epoch_line(event))
        elif isinstance(event, E.LogMessage):
            self._print(event.text)
        elif isinstance(event, E.RunFinished) and event.status == "completed":
            self._print(final_table(event.report))
        elif isinstance(event, E.RunFailed):  # the engine writes this line to log.txt only
            self._print(f"run failed: {event.message}")


EPOCH_FIGURES = (
    ("loss", "loss"),
    ("accuracy", "acc"),
    ("f1_macro", "f1"),
    ("map50", "mAP@0.5"),
    ("map", "mAP"),
)
"""The figures an epoch line shows, where the run measures them (a detector has no accuracy, a
classifier no mAP), with their short names."""


def epoch_line(event: E.EpochEnded) -> str:
    """An epoch's one-line summary: its time, then the training and validation figures the run
    measures."""

    def figures(values: dict[str, float]) -> str:
        return " ".join(
            f"{short} {values[key]:.4f}" for key, short in EPOCH_FIGURES if key in values
        )

    return (
        f"epoch {event.epoch + 1}/{event.epochs} ({event.seconds:.1f} s): train "
        f"{figures(event.train)} | val {figures(event.val)}"
        + ("  *best*" if event.improved else "")
    )


def final_table(report: dict[str, Any]) -> str:
    """The final metrics of a run report as text (best validation epoch, then test)."""
    from transferstudio.core.training.metrics import (
        ClassificationReport,
        format_detection,
        format_report,
    )

    lines = []
    if report.get("best_epoch") is not None:
        lines.append(
            f"best epoch {report['best_epoch'] + 1}: val {report['metric']} "
            f"{report['best_metric']:.4f}"
        )
    for split, title in (("val", "validation (best epoch)"), ("test", "test (best checkpoint)")):
        data = report.get(split)
        if data and "pr_curves" in data:  # a detection run's report
            lines.append(format_detection(data["metrics"], data["per_class"], title))
        elif data:
            lines.append(format_report(ClassificationReport(**data), title))
    # Class names come from folder names or a CSV: `runs show` prints this table too.
    return printable("\n".join(lines))
