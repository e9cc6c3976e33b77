"""The hyperparameter sweep as a panel: :func:`~transferstudio.core.studies.sweep.run_sweep` runs in a
QThread, and after every trial the table, the best-so-far curve and the parameter importances
are redrawn from the sweep's summary.

A sweep is named: Start with a new name starts one over the window's current experiment, Start
with an existing name (typed, or chosen in the list of the workspace's sweeps) continues it with
its own experiment and space. Stop ends the current trial, which the next Start tries again.
Closing the window must call :meth:`SweepPanel.stop_and_wait`: a QThread destroyed while
running would abort the process.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from transferstudio.api import TransferStudioError
from transferstudio.core.progress import events as E
from transferstudio.core.runs.workspace import RunStore
from transferstudio.core.studies.sweep import (
    SweepSummary,
    load_sweep,
    parse_space,
    run_sweep,
    summarize,
    sweep_names,
)
from transferstudio.gui.widgets import named
from transferstudio.gui.worker import StopButtonOwner, Worker, WorkerThread

NEW_SWEEP = "(new sweep)"
BAR_WIDTH = 20  # characters of the importance bars


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class SweepWorker(Worker):
    """Runs :func:`run_sweep` with ``kwargs`` in its QThread. ``progress`` is sent for run
    starts and epoch ends only (batch events are dropped: they would flood the GUI thread)."""

    trial_done = Signal(object)  # SweepSummary after each trial
    progress = Signal(str)  # "trial #3 running, epoch 2/5"
    # finished(SweepSummary at the end), errored(message, details): WorkerSignals

    def __init__(self, host, workspace, stop: threading.Event, **kwargs) -> None:
        super().__init__(stop)  # the panel's: it may be set while this object is deleted
        self.host, self.workspace, self.kwargs = host, Path(workspace), kwargs
        self._trial = "?"

    def work(self) -> SweepSummary:
        return run_sweep(
            host=self.host,
            workspace=self.workspace,
            on_event=self._on_event,
            on_trial=self.trial_done.emit,
            should_stop=self.stop_requested,
            **self.kwargs,
        )

    def _on_event(self, event) -> None:
        if isinstance(event, E.RunStarted):
            # The engine tags a trial's run as it creates it; RunStarted has no trial number.
            self._trial = RunStore(self.workspace).tags(event.run_id).get("trial", "?")
            self.progress.emit(f"trial #{self._trial} running, {event.epochs} epochs")
        elif isinstance(event, E.EpochEnded):
            self.progress.emit(
                f"trial #{self._trial} running, epoch {event.epoch + 1}/{event.epochs}"
            )


class SweepPanel(StopButtonOwner, QWidget):
    """Starts, stops and shows sweeps of ``workspace``. ``experiment_provider()`` gives the
    window's current experiment (or raises TransferStudioError) for a new sweep.

    ``open_experiment(path, params)`` carries the best trial's ``experiment.toml`` and the
    values the sweep chose for it (``{"train.lr": ...}``); ``sweep_ended`` fires once the
    sweep's thread is gone. ``summary`` is the summary shown (or None)."""

    open_experiment = Signal(str, object)
    sweep_ended = Signal()

    def __init__(self, host, workspace, experiment_provider, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("sweep")
        self.host, self.workspace = host, Path(workspace)
        self.experiment_provider = experiment_provider
        self.summary: SweepSummary | None = None
        self.runner = WorkerThread("transferstudio-sweep", self)
        self.runner.ended.connect(self._on_ended)
        self._stop = threading.Event()
        self._progress = ""

        self.name = named(QLineEdit(), "sweep.name", "sweep name")
        self.name.setPlaceholderText("the experiment's name")
        self.existing = named(QComboBox(), "sweep.existing", "existing sweeps")
        self.trials = named(QSpinBox(), "sweep.trials", "number of trials")
        self.trials.setRange(1, 1000)
        self.trials.setValue(20)
        self.timeout_min = named(QSpinBox(), "sweep.timeout_min", "time budget in minutes")
        self.timeout_min.setRange(0, 100_000)
        self.timeout_min.setSpecialValueText("none")
        self.timeout_min.setSuffix(" min")
        self.sampler = named(QComboBox(), "sweep.sampler", "sampler")
        self.sampler.addItems(["tpe", "random"])
        self.pruner = named(QComboBox(), "sweep.pruner", "pruner")
        self.pruner.addItems(["median", "none"])
        self.space = named(QLineEdit(), "sweep.space", "searched settings")
        self.space.setPlaceholderText("default: train.lr; train.weight_decay=1e-6:1e-2:log; ...")
        self.start_button = named(QPushButton("Start"), "sweep.start", "start or continue")
        self.stop_button = named(QPushButton("Stop"), "sweep.stop", "stop the sweep")
        self.open_best = named(
            QPushButton("Open best as experiment"), "sweep.open_best", "open the best trial"
        )
        self.status = named(QLabel("no sweep running"), "sweep.status", "sweep status")
        self.status.setWordWrap(True)
        self.table = named(QTableWidget(0, 5), "sweep.trials_table", "trials")
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.plot = named(pg.PlotWidget(), "sweep.best_plot", "best value so far by trial")
        self.plot.setBackground("w")
        self.plot.setLabel("bottom", "trial")
        self.best_curve = self.plot.plot(pen=pg.mkPen("b", width=2))
        self.trial_points = pg.ScatterPlotItem(size=7, brush=pg.mkBrush(150, 150, 150))
        self.plot.addItem(self.trial_points)
        # A text bar per parameter: legible, copyable and read by screen readers.
        self.importances = named(QTableWidget(0, 2), "sweep.importances", "parameter importance")
        self.importances.setHorizontalHeaderLabels(["parameter", "importance"])
        self.importances.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.importances.horizontalHeader().setStretchLastSection(True)
        self._set_headers("metric")

        # The form fields, disabled while a sweep runs.
        self.fields = (self.name, self.existing, self.trials, self.timeout_min, self.sampler,
                       self.pruner, self.space)  # fmt: skip
        # "in total": a continued sweep counts the trials it already finished.
        labels = ("Sweep", "Existing sweeps", "Trials (in total)", "Time budget", "Sampler",
                  "Pruner", "Searched settings")  # fmt: skip
        form = QFormLayout()
        for label, widget in zip(labels, self.fields, strict=True):
            form.addRow(label, widget)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.stop_button, self.open_best):
            buttons.addWidget(button)
        buttons.addStretch(1)
        # Three columns: settings, trials, curve over importances. The dock is wide and short;
        # stacked, the form alone filled its height.
        settings = QVBoxLayout()
        settings.addLayout(form)
        settings.addLayout(buttons)
        settings.addWidget(self.status)
        settings.addStretch(1)
        results = QVBoxLayout()
        results.addWidget(self.plot, 2)
        results.addWidget(self.importances, 1)
        layout = QHBoxLayout(self)
        layout.addLayout(settings, 2)
        layout.addWidget(self.table, 4)
        layout.addLayout(results, 3)

        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.open_best.clicked.connect(self._open_best)
        self.existing.currentIndexChanged.connect(self._choose_existing)
        self._set_running(False)
        self.refresh_sweeps()

    def refresh_sweeps(self) -> None:
        """Refill the list of the workspace's sweeps, keeping the chosen one."""
        current = self.existing.currentText()
        # No signal: refilling is not the user choosing a sweep.
        self.existing.blockSignals(True)
        self.existing.clear()
        self.existing.addItems([NEW_SWEEP, *sweep_names(self.workspace)])
        self.existing.setCurrentIndex(max(0, self.existing.findText(current)))
        self.existing.blockSignals(False)

    @Slot()
    def start(self) -> None:
        """Start a new sweep, or continue the one named, in a new thread."""
        if self.running:
            return
        try:
            name = self.name.text().strip()
            exp = None if name else self.experiment_provider()
            name = name or exp.name
            kwargs = {"name": name, "trials": self.trials.value()}
            kwargs["timeout_s"] = self.timeout_min.value() * 60 or None
            if name in sweep_names(self.workspace):  # continued with its own experiment
                kwargs["exp"] = None
                action = f"continuing sweep {name!r}"
            else:
                exp = exp or self.experiment_provider()
                items = [s.strip() for s in self.space.text().split(";") if s.strip()]
                kwargs |= {"exp": exp, "space": parse_space(exp, items)}
                kwargs |= {"sampler": self.sampler.currentText()}
                kwargs |= {"pruner": self.pruner.currentText()}
                action = f"starting sweep {name!r}"
        except TransferStudioError as exc:
            self.status.setText(str(exc))
            return
        self.name.setText(name)
        self._stop = threading.Event()  # a fresh one: the last sweep's stays set
        self._progress = ""
        worker = SweepWorker(self.host, self.workspace, self._stop, **kwargs)
        worker.trial_done.connect(self._on_trial)
        worker.progress.connect(self._on_progress)
        self.start_worker(worker, f"{action}...")  # Stop interrupts the trial; it runs again later
        self._set_running(True)

    def _set_running(self, running: bool) -> None:
        for widget in (*self.fields, self.start_button):
            widget.setEnabled(not running)
        self.stop_button.setEnabled(running)
        best = self.summary.best if self.summary else None
        self.open_best.setEnabled(best is not None and best.run_id is not None)

    def _set_headers(self, metric: str) -> None:
        self.table.setHorizontalHeaderLabels(
            ["trial", "state", f"val {metric}", "parameters", "run"]
        )
        self.plot.setLabel("left", f"best val {metric}")

    def _best_text(self) -> str:
        s = self.summary
        finished = sum(t.state in ("COMPLETE", "PRUNED") for t in s.trials) if s else 0
        best = f", best val {s.metric} {s.best.value:.4f}" if s and s.best else ""
        return f"{finished} finished{best}"

    def show_summary(self, summary: SweepSummary) -> None:
        """Fill the table, the best-so-far curve and the importances from ``summary``."""
        self.summary = summary
        self._set_headers(summary.metric)
        self.table.setRowCount(len(summary.trials))
        for row, t in enumerate(summary.trials):
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
            cells = [
                str(t.number),
                t.state,
                "" if t.value is None else f"{t.value:.4f}",
                params,
                t.run_id or "",
            ]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(t.message or text)
                self.table.setItem(row, column, item)
        curve = summary.best_so_far()
        self.best_curve.setData([n for n, _ in curve], [v for _, v in curve])
        done = [t for t in summary.trials if t.state == "COMPLETE" and t.value is not None]
        self.trial_points.setData([t.number for t in done], [t.value for t in done])
        ranked = sorted(summary.importances.items(), key=lambda kv: -kv[1])
        self.importances.setRowCount(len(ranked))
        for row, (key, value) in enumerate(ranked):
            bar = "█" * round(value * BAR_WIDTH)
            self.importances.setItem(row, 0, QTableWidgetItem(key))
            self.importances.setItem(row, 1, QTableWidgetItem(f"{bar} {value:.2f}"))
        self._set_running(self.running)

    @Slot(int)
    def _choose_existing(self, index: int) -> None:
        if index <= 0:
            return
        name = self.existing.itemText(index)
        try:
            study, _ = load_sweep(self.workspace, name, self.host)
        except TransferStudioError as exc:
            self.status.setText(str(exc))
            return
        self.name.setText(name)
        # A sweep continues with its own sampler, pruner and space: show them.
        attrs = study.user_attrs
        self.sampler.setCurrentText(attrs.get("sampler", "tpe"))
        self.pruner.setCurrentText(attrs.get("pruner", "median"))
        self.space.setText("; ".join(attrs.get("space", [])))
        self.show_summary(summarize(study))
        self.status.setText(
            f"sweep {name!r}: {self._best_text()}; Start continues it (with its own "
            "experiment, sampler, pruner and space)"
        )

    @Slot(object)
    def _on_trial(self, summary: SweepSummary) -> None:
        self.show_summary(summary)
        self._progress = f"trial #{summary.trials[-1].number} {summary.trials[-1].state.lower()}"
        if not self._stop.is_set():
            self.status.setText(f"{self._progress}; {self._best_text()}")

    @Slot(str)
    def _on_progress(self, text: str) -> None:
        self._progress = text
        if not self._stop.is_set():
            self.status.setText(f"{text}; {self._best_text()}")

    @Slot(object)
    def _on_finished(self, summary: SweepSummary) -> None:
        self.show_summary(summary)
        if self._stop.is_set():
            ended = f"stopped; Start continues sweep {summary.name!r}"
        else:
            ended = f"sweep ended: {summary.stopped_because}"
        self.status.setText(f"{ended}; {self._best_text()}")

    @Slot(str, str)
    def _on_errored(self, message: str, details: str) -> None:
        self.status.setText(f"the sweep failed: {message}")

    @Slot()
    def _on_ended(self) -> None:
        self._set_running(False)
        self.refresh_sweeps()
        self.sweep_ended.emit()

    @Slot()
    def _open_best(self) -> None:
        best = self.summary.best if self.summary else None
        if best is None or best.run_id is None:
            return
        try:
            folder = RunStore(self.workspace).get(best.run_id).folder
        except TransferStudioError as exc:
            self.status.setText(str(exc))
            return
        self.open_experiment.emit(str(Path(folder) / "experiment.toml"), dict(best.params))
