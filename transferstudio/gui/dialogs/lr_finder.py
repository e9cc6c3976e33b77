"""The learning-rate range test as a dialog: the sweep of :func:`~transferstudio.core.training.lr_finder.
find_lr` runs in a QThread and its loss curve is drawn live over a log learning-rate axis.

The constructor builds the dialog but does not start the sweep; the caller calls :meth:`start`
(so tests decide exactly when the thread runs). Closing the dialog while the sweep runs stops it
and waits for its thread: a QThread destroyed while running would abort the process.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout

from transferstudio.core.training.lr_finder import STOPPED_BY_USER, LrFinderResult, find_lr
from transferstudio.gui.widgets import named
from transferstudio.gui.worker import EventCoalescer, StopButtonOwner, Worker, WorkerThread

START_LR = 1e-7
END_LR = 10.0


class LrSweepWorker(Worker):
    """Runs one sweep in its QThread. Points are coalesced (:class:`EventCoalescer`): at most
    one ``point_batch`` per ``EMIT_INTERVAL_S`` carries every ``(step, lr, loss, smoothed)``
    since the last one, and the last points are always flushed before ``finished``/``errored``."""

    point_batch = Signal(list)  # [(step, lr, loss, smoothed), ...]
    # finished(LrFinderResult), errored(message, details): WorkerSignals

    def __init__(self, experiment, host, workspace, steps: int, stop: threading.Event) -> None:
        super().__init__(stop)  # the dialog's: it may be set while this object is deleted
        self.experiment, self.host, self.workspace = experiment, host, Path(workspace)
        self.steps = steps
        self._points = EventCoalescer(self.point_batch.emit)

    def work(self) -> LrFinderResult:
        try:
            return find_lr(
                self.experiment,
                self.host,
                self.workspace,
                START_LR,
                END_LR,
                self.steps,
                on_point=self._on_point,
                should_stop=self.stop_requested,
            )
        finally:
            self._points.flush()

    def _on_point(self, step: int, lr: float, loss: float, smoothed: float) -> None:
        self._points.add((step, lr, loss, smoothed), last=step + 1 == self.steps)


class LrFinderDialog(StopButtonOwner, QDialog):
    """Runs the range test on ``experiment`` (nothing is saved) and offers its suggestion.

    ``applied(lr)`` carries the suggestion rounded to 3 significant digits when Apply is
    clicked. ``sweep_ended`` fires once the sweep's thread is gone (finished, failed or
    stopped). ``result`` and ``error`` hold the outcome; ``points`` the points drawn so far."""

    applied = Signal(float)
    sweep_ended = Signal()

    def __init__(self, experiment, host, workspace, parent=None, steps: int = 100) -> None:
        super().__init__(parent)
        self.setObjectName("lr_finder")
        self.setWindowTitle("Learning-rate range test")
        self.experiment, self.host, self.workspace, self.steps = experiment, host, workspace, steps
        self.result: LrFinderResult | None = None
        self.error: str | None = None
        self.points: list[tuple[int, float, float, float]] = []
        self.runner = WorkerThread("transferstudio-lr-finder", self)
        self.runner.ended.connect(self._on_ended)
        self.suggestion_line: pg.InfiniteLine | None = None
        self._stop = threading.Event()
        self._started = False

        self.plot = named(pg.PlotWidget(), "lr_finder.plot", "loss against learning rate")
        self.plot.setBackground("w")
        self.plot.setLabel("bottom", "learning rate")
        self.plot.setLabel("left", "loss")
        # Log mode maps x through log10 itself: curves get raw rates, ranges and lines log10.
        self.plot.plotItem.setLogMode(x=True, y=False)
        # A fixed x axis: the curve fills in from the left without rescaling on every batch.
        self.plot.setXRange(math.log10(START_LR), math.log10(END_LR), padding=0.02)
        self.raw_curve = self.plot.plot(pen=pg.mkPen((190, 190, 190), width=1))
        self.smoothed_curve = self.plot.plot(pen=pg.mkPen("b", width=2))
        self.progress = named(QProgressBar(), "lr_finder.progress", "sweep progress")
        self.progress.setRange(0, steps)
        self.progress.setValue(0)
        self.status = named(QLabel("not started"), "lr_finder.status", "sweep status")
        self.status.setWordWrap(True)
        self.stop_button = named(QPushButton("Stop"), "lr_finder.stop", "stop the sweep")
        self.apply_button = named(
            QPushButton("Apply"), "lr_finder.apply", "use the suggested learning rate"
        )
        self.close_button = named(QPushButton("Close"), "lr_finder.close")
        self.stop_button.setEnabled(False)
        self.apply_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.apply_button.clicked.connect(self._apply)
        self.close_button.clicked.connect(self.reject)

        buttons = QHBoxLayout()
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        buttons.addWidget(self.apply_button)
        buttons.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self.resize(640, 480)

    def start(self) -> None:
        """Start the sweep in a new thread (once per dialog)."""
        if self._started:
            raise RuntimeError("this dialog has already run its sweep")
        self._started = True
        worker = LrSweepWorker(self.experiment, self.host, self.workspace, self.steps, self._stop)
        worker.point_batch.connect(self._add_points)
        self.stop_button.setEnabled(True)
        self.start_worker(worker, f"sweeping {self.steps} learning rates; nothing is saved")

    @Slot(list)
    def _add_points(self, points: list) -> None:
        self.points.extend(points)
        lrs = [p[1] for p in self.points]
        smoothed = [p[3] for p in self.points]
        self.raw_curve.setData(lrs, [p[2] for p in self.points])
        self.smoothed_curve.setData(lrs, smoothed)
        # Readable y range: from the lowest smoothed loss to a bit above the first, so a
        # diverging tail runs off the top instead of squashing the valley flat.
        low, high = min(smoothed), max(smoothed[0], min(smoothed))
        span = (high - low) or abs(high) or 1.0
        self.plot.setYRange(low - 0.05 * span, high + 0.15 * span, padding=0)
        step, lr, loss, _ = self.points[-1]
        self.progress.setValue(step + 1)
        if not self._stop.is_set():
            self.status.setText(f"step {step + 1}/{self.steps}: lr {lr:.1e}, loss {loss:.4f}")

    @Slot(object)
    def _on_finished(self, result: LrFinderResult) -> None:
        self.result = result
        if result.suggestion is None:
            why = (
                f"the sweep was stopped at step {len(result.lrs)} of {self.steps}, before the "
                "loss could turn; run it to the end for a suggestion"
                if result.stopped_because == STOPPED_BY_USER
                else "the loss did not fall steadily over the sweep; "
                f"sweep ended: {result.stopped_because}"
            )
            self.status.setText(f"no suggestion: {why}")
            return
        self.suggestion_line = pg.InfiniteLine(
            pos=math.log10(result.suggestion), angle=90, pen=pg.mkPen("r", width=1)
        )
        self.plot.addItem(self.suggestion_line)
        self.status.setText(
            f"suggested learning rate {result.suggestion:.1e} (the minimum was at "
            f"{result.min_loss_lr:.1e}); sweep ended: {result.stopped_because}"
        )
        self.apply_button.setEnabled(True)

    @Slot(str, str)
    def _on_errored(self, message: str, details: str) -> None:
        self.error = message
        self.status.setText(f"the sweep failed: {message}")

    @Slot()
    def _on_ended(self) -> None:
        self.stop_button.setEnabled(False)
        self.sweep_ended.emit()

    @Slot()
    def _apply(self) -> None:
        if self.result is not None and self.result.suggestion is not None:
            self.applied.emit(float(f"{self.result.suggestion:.3g}"))
            self.accept()

    def done(self, code: int) -> None:
        """Accept/reject (Close, Escape, the window's close button): stop the sweep first."""
        self.stop_and_wait()
        super().done(code)

    def closeEvent(self, event) -> None:
        # QDialog only rejects (and so reaches done()) when visible; a hidden one still stops.
        self.stop_and_wait()
        super().closeEvent(event)
