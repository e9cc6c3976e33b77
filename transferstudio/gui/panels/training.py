"""The training view (the window's centre): Start / Pause / Stop, the number of processes,
progress bars with an ETA, the live curves and the run's log.

Its slots take the run worker's signals (:class:`~transferstudio.gui.worker.RunSignals`);
curves repaint at most once every :data:`CURVE_REFRESH_MS`.
"""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from transferstudio.core.progress import events as E
from transferstudio.core.progress.eta import EtaEstimator, format_duration
from transferstudio.gui.plots import TrainingCurves
from transferstudio.gui.widgets import named

CURVE_REFRESH_MS = 1000
"""Curves repaint at most once a second while a run trains: each repaint of a pyqtgraph plot
costs the GUI thread about 6 ms of Python (it holds the GIL the training thread needs), and on
a 2-core machine every wake-up of the GUI thread stalls one of torch's two threads (issue 18's
measurement, docs/benchmarks.md 3e)."""
EPOCH_CURVES = ("train_loss", "val_loss", "train_acc", "val_acc", "val_map50", "val_map")
PROCESSES_TIP = (
    "More than 1 runs the experiment under torchrun with DistributedDataParallel: one process "
    "per GPU (NCCL), or CPU processes (Gloo). The batch size stays the global batch and must be "
    "a multiple of this number."
)


class TrainingPanel(QWidget):
    """Buttons for the window's ``actions`` (Start, Pause, Stop) and what a run shows."""

    def __init__(self, actions: list[QAction], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.eta = EtaEstimator()
        self.epochs = 1
        self.start_epoch = 0
        self.run_started_at = 0.0
        self.run_began = True  # False from begin() until the run's first event
        self._dirty_curves: set[str] = set()
        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.setInterval(CURVE_REFRESH_MS)
        self._redraw_timer.timeout.connect(self.redraw_curves)
        layout = QVBoxLayout(self)
        buttons = QHBoxLayout()
        for action in actions:
            button = named(
                QPushButton(action.text().replace("&", "")), f"button.{action.objectName()[7:]}"
            )
            button.clicked.connect(action.trigger)
            action.changed.connect(lambda b=button, a=action: b.setEnabled(a.isEnabled()))
            buttons.addWidget(button)
        buttons.addWidget(QLabel("processes / GPUs:"))
        self.processes = named(QSpinBox(), "training.processes", "processes or GPUs")
        self.processes.setRange(1, _max_processes())
        buttons.addWidget(self.processes)
        self.device_label = named(QLabel("device: -"), "training.device")
        buttons.addWidget(self.device_label, 1)
        layout.addLayout(buttons)
        self.epoch_bar = named(QProgressBar(), "training.epoch_progress", "epoch progress")
        self.batch_bar = named(QProgressBar(), "training.batch_progress", "batch progress")
        bars = QHBoxLayout()
        for text, bar in (("Run:", self.epoch_bar), ("Epoch:", self.batch_bar)):
            bars.addWidget(QLabel(text))
            bars.addWidget(bar, 1)
        self.reset_progress()
        layout.addLayout(bars)
        self.eta_label = named(QLabel(""), "training.eta")
        layout.addWidget(self.eta_label)
        self.curves = TrainingCurves()
        self.log_view = named(QPlainTextEdit(), "training.log", "run log")
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        # The curves get the height; the log a few lines, more by dragging the handle.
        split = named(QSplitter(Qt.Orientation.Vertical), "training.split")
        split.addWidget(self.curves)
        split.addWidget(self.log_view)
        split.setStretchFactor(0, 4)
        split.setStretchFactor(1, 1)
        split.setChildrenCollapsible(False)
        self.log_view.setMinimumHeight(48)
        layout.addWidget(split, 1)

    def set_processes_allowed(self, allowed: bool, distributed: bool, method: str) -> None:
        """The processes box: enabled when ``allowed`` and the method is ``distributed``."""
        self.processes.setEnabled(allowed and distributed)
        self.processes.setToolTip(
            PROCESSES_TIP
            if distributed
            else f"{method} does not support training in several processes "
            "(docs/distributed.md); it runs in one."
        )

    # ------------------------------------------------------------------ a run's life

    def begin(self) -> None:
        """A run is being started: nothing of the last one is left on show."""
        self.curves.clear()
        self.log_view.clear()
        self.reset_progress()
        self.eta_label.setText("starting ...")
        self.run_started_at = time.monotonic()
        self.run_began = False

    def reset_progress(self) -> None:
        """Empty, labelled progress bars: nothing of the last run is left on them."""
        self.epoch_bar.setRange(0, 1)
        self.epoch_bar.setValue(0)
        self.epoch_bar.setFormat("no run")
        self.batch_bar.setRange(0, 1)
        self.batch_bar.setValue(0)
        self.batch_bar.setFormat("")

    def show_earlier_epochs(self, metrics: dict) -> None:
        """A resumed run's curves start with the epochs it had already done (``metrics`` as
        ``RunStore.epoch_metrics`` gives them)."""
        for split, prefix in (("train", "train"), ("val", "val")):
            for name, key in (("loss", "loss"), ("accuracy", "acc"), ("map50", "map50")):
                for epoch, value in metrics.get(split, {}).get(name, []):
                    self.curves.append(f"{prefix}_{key}", epoch + 1, value)
        for epoch, value in metrics.get("val", {}).get("map", []):
            self.curves.append("val_map", epoch + 1, value)
        self.schedule_redraw(*EPOCH_CURVES)

    def on_run_started(self, event: E.RunStarted) -> None:
        self.run_began = True
        self.epochs, self.start_epoch = event.epochs, event.start_epoch
        self.run_started_at = time.monotonic()
        self.device_label.setText(f"device: {event.device_detail} ({event.precision})")
        self.epoch_bar.setRange(0, event.epochs)
        self.epoch_bar.setValue(event.start_epoch)
        self.epoch_bar.setFormat("epoch %v of %m done")
        self.batch_bar.setRange(0, event.batches_per_epoch)
        self.batch_bar.setFormat("training batch %v of %m")
        self.curves.set_epochs(event.epochs)
        self.eta.started(
            self.run_started_at,
            event.epochs,
            event.start_epoch,
            sum(event.counts.get("train", {}).values()),
            sum(event.counts.get("val", {}).values()),
        )

    def on_batches(self, events: list) -> None:
        for ev in events:
            x = ev.epoch + (ev.batch + 1) / max(ev.batches, 1)
            self.curves.append("batch_loss", x, ev.loss)
            self.curves.append("lr", x, ev.lr)
            for key, value in ev.logs.items():
                self.curves.append_diagnostic(key, x, value)
        last = events[-1]
        self.batch_bar.setRange(0, last.batches)
        self.batch_bar.setValue(last.batch + 1)
        now = time.monotonic()
        self.eta.batch(now, last.epoch, last.batch, last.batches)
        if self.eta.validating:
            self.batch_bar.setFormat("validating ...")
        self._show_eta(
            f"epoch {last.epoch + 1}/{self.epochs}, batch {last.batch + 1}/{last.batches}, "
            f"loss {last.loss:.4f}",
            now,
        )
        self.schedule_redraw("batch_loss", "lr", *self.curves.diagnostic_keys())

    def on_epoch(self, ev: E.EpochEnded) -> None:
        x = ev.epoch + 1
        self.curves.append("train_loss", x, ev.train["loss"])
        self.curves.append("val_loss", x, ev.val.get("loss", float("nan")))
        self.curves.append("train_acc", x, ev.train.get("accuracy", float("nan")))
        self.curves.append("val_acc", x, ev.val.get("accuracy", float("nan")))
        if "map50" in ev.val:  # a detector: mean average precision in place of accuracy
            self.curves.append("val_map50", x, ev.val["map50"])
            self.curves.append("val_map", x, ev.val.get("map", float("nan")))
            self.curves.show_map(True)
        for key, value in ev.val.items():
            if key.startswith("diag_"):
                self.curves.append_diagnostic(f"val {key[len('diag_') :]}", x, value)
        self.schedule_redraw(*EPOCH_CURVES, *self.curves.diagnostic_keys())
        self.epoch_bar.setValue(ev.epoch + 1)
        self.batch_bar.setValue(0)
        self.batch_bar.setFormat("training batch %v of %m")
        now = time.monotonic()
        self.eta.epoch_ended(now, ev.epoch)
        self.log_view.appendPlainText(epoch_line(ev))
        self._show_eta(f"epoch {ev.epoch + 1}/{ev.epochs} done", now)

    def _show_eta(self, where: str, now: float) -> None:
        phase = ", validating" if self.eta.validating else ""
        left = self.eta.remaining(now)
        eta = f", about {format_duration(left)} left" if left is not None else ""
        elapsed = format_duration(now - self.run_started_at)
        self.eta_label.setText(f"{where}{phase}{eta} (elapsed {elapsed})")

    def show_not_started(self) -> None:
        """Refused before its first epoch (settings, data, weights): no run to speak of."""
        self.reset_progress()
        self.eta_label.setText("not started: see the message")

    def show_run_end(self, what: str) -> None:
        """The progress area after a run: what happened, nothing left ticking."""
        self.batch_bar.setRange(0, 1)
        self.batch_bar.setValue(0)
        self.batch_bar.setFormat("")
        self.epoch_bar.setFormat(f"{what}: epoch %v of %m")
        elapsed = format_duration(time.monotonic() - self.run_started_at)
        self.eta_label.setText(f"run {what} after {elapsed}")

    # ------------------------------------------------------------------ curves

    def schedule_redraw(self, *keys: str) -> None:
        # Curves repaint at most every CURVE_REFRESH_MS: pyqtgraph paints in Python and holds
        # the GIL the training thread needs, so on small machines each repaint slows training.
        self._dirty_curves.update(keys)
        if not self._redraw_timer.isActive():
            self._redraw_timer.start()

    def redraw_curves(self) -> None:
        keys, self._dirty_curves = self._dirty_curves, set()
        self.curves.redraw(sorted(keys))

    def redraw_now(self) -> None:
        """Draw what is pending at once (the run ended: no later tick)."""
        self._redraw_timer.stop()
        self.redraw_curves()


def epoch_line(ev: E.EpochEnded) -> str:
    """The window log's line for an ended epoch: its figures at a glance."""

    def figures(split: dict[str, float]) -> str:
        keys = ("loss", "accuracy", "map50", "map")  # detectors report mAP, not accuracy
        shown = [f"{k} {split[k]:.4f}" for k in keys if k in split]
        return ", ".join(shown) or "-"

    best = " (best so far)" if ev.improved else ""
    return (
        f"epoch {ev.epoch + 1}/{ev.epochs}: train {figures(ev.train)} | "
        f"val {figures(ev.val)}{best} | lr {ev.lr:.3g} | {ev.seconds:.1f} s"
    )


def _max_processes() -> int:
    """One process per GPU when CUDA is there, else one per CPU core."""
    import os

    import torch

    return max(torch.cuda.device_count() if torch.cuda.is_available() else os.cpu_count() or 1, 1)
