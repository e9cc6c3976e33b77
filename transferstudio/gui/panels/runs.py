"""The Runs panel: the workspace's run history (with transfer gains), the validation curves of
the selected runs, and the actions on a selected run.

Runs started elsewhere (the CLI, a sweep, another window) appear without a click: the index is
polled every :data:`RUNS_POLL_MS` while this window trains nothing.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QItemSelectionModel, Qt, QTimer, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QMenu,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from transferstudio.api import TransferStudioError
from transferstudio.core.runs.workspace import RunStore
from transferstudio.gui.widgets import named

RUNS_POLL_MS = 3000
LEGEND_BRUSH = (255, 255, 255, 210)  # legends stay readable where they cover a curve
COLUMNS = ["date", "name", "backbone", "method", "best val", "duration", "status", "transfer gain"]


class RunsPanel(QWidget):
    """``run_records`` (newest first) and ``run_gains`` are what the table shows.

    Signals: ``selection_changed`` (also when a selected run went away), ``refreshed`` after
    each read of the index, and the user's requests ``open_requested(experiment_file)``,
    ``resume_requested``, ``baseline_requested`` (the transfer gain of the selected run). ``resume_action`` is the
    window's Resume action, offered on the run's menu and as a button."""

    selection_changed = Signal()
    refreshed = Signal()
    open_requested = Signal(str)
    resume_requested = Signal()
    baseline_requested = Signal()

    def __init__(self, workspace: Path, resume_action: QAction, parent=None) -> None:
        super().__init__(parent)
        self.workspace = Path(workspace)
        self.resume_action = resume_action
        self.run_records: list = []
        self.run_gains: dict = {}
        self.polling = True  # False while this window trains (see _refresh_if_changed)
        table_side = QWidget()
        layout = QVBoxLayout(table_side)
        layout.setContentsMargins(0, 0, 0, 0)
        self.table = named(QTableWidget(0, len(COLUMNS)), "runs.table", "run history")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 8)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemSelectionChanged.connect(self._overlay_selected_runs)
        self.table.itemSelectionChanged.connect(self.selection_changed)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._menu)
        self.table.doubleClicked.connect(lambda _index: self.open_selected())
        layout.addWidget(self.table)
        row = QHBoxLayout()
        for name, text, slot in (
            ("runs.refresh", "Refresh", self.refresh),
            ("runs.open", "Open experiment", self.open_selected),
            ("runs.resume", "Resume", self.resume_requested.emit),
            ("runs.baseline", "Transfer gain", self.baseline_requested.emit),
            ("runs.delete", "Delete...", self.delete_selected),
        ):
            button = named(QPushButton(text), name)
            button.clicked.connect(slot)
            row.addWidget(button)
            if name == "runs.resume":
                button.setToolTip(resume_action.toolTip())
                resume_action.changed.connect(
                    lambda b=button: b.setEnabled(self.resume_action.isEnabled())
                )
        layout.addLayout(row)
        self._seen: tuple = ()
        self._poll = QTimer(self)
        self._poll.setInterval(RUNS_POLL_MS)
        self._poll.timeout.connect(self._refresh_if_changed)
        self._poll.start()
        import pyqtgraph as pg

        self.overlay_plot = pg.PlotWidget(title="val accuracy of selected runs")
        self.overlay_plot.setObjectName("runs.overlay")
        self.overlay_plot.setBackground("w")
        self.overlay_plot.setLabel("bottom", "epoch")
        self.overlay_plot.addLegend(brush=LEGEND_BRUSH)
        # Side by side: the dock is wide and short, and stacked, the table showed one row.
        split = named(QSplitter(Qt.Orientation.Horizontal), "runs.split")
        split.addWidget(table_side)
        split.addWidget(self.overlay_plot)
        # the table gets two thirds: its transfer-gain column is a sentence
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 1)
        split.setChildrenCollapsible(False)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(split)

    # ------------------------------------------------------------------ the selection

    def selected_ids(self) -> list[str]:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        return [self.run_records[r].id for r in rows]

    def record(self, run_id: str):
        return next(r for r in self.run_records if r.id == run_id)

    def selected_resumable(self) -> bool:
        from transferstudio.core.runs.resume import is_resumable

        ids = self.selected_ids()
        return len(ids) == 1 and is_resumable(self.record(ids[0]))

    def _overlay_selected_runs(self) -> None:
        import pyqtgraph as pg

        self.overlay_plot.clear()
        store = RunStore(self.workspace)
        metrics = set()
        for k, run_id in enumerate(self.selected_ids()):
            val = store.epoch_metrics(run_id).get("val", {})
            # A detection run has no accuracy: its curve is validation mAP@0.5.
            metric = "accuracy" if "accuracy" in val or "map50" not in val else "map50"
            points = val.get(metric, [])
            if points:
                metrics.add("mAP@0.5" if metric == "map50" else metric)
                xs, ys = zip(*points, strict=True)
                self.overlay_plot.plot(
                    [x + 1 for x in xs],
                    list(ys),
                    name=run_id,
                    pen=pg.mkPen(pg.intColor(k), width=2),
                    # A one-epoch run is a single point: without a symbol it draws nothing.
                    symbol="o",
                    symbolSize=6,
                    symbolBrush=pg.intColor(k),
                )
        shown = " / ".join(sorted(metrics)) or "accuracy"
        self.overlay_plot.setTitle(f"val {shown} of selected runs")

    def _menu(self, position) -> None:
        menu = QMenu(self)
        menu.setObjectName("menu.runs")
        menu.addAction(self.resume_action)
        for text, slot in (
            ("Open experiment", self.open_selected),
            ("Measure transfer gain", self.baseline_requested.emit),
            ("Delete...", self.delete_selected),
        ):
            menu.addAction(text, slot)
        menu.popup(self.table.viewport().mapToGlobal(position))

    def open_selected(self) -> None:
        ids = self.selected_ids()
        if ids:
            self.open_requested.emit(str(Path(self.record(ids[0]).folder) / "experiment.toml"))

    def delete_selected(self) -> None:
        """Delete the selected runs and their folders (after asking); a run another process
        is training is refused by :meth:`RunStore.delete`, and said so."""
        ids = self.selected_ids()
        if not ids:
            return
        answer = QMessageBox.question(
            self,
            "Delete runs",
            f"Delete {len(ids)} run(s) and their folders? This cannot be undone.",
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        store = RunStore(self.workspace)
        refused = []
        for run_id in ids:
            try:
                store.delete(run_id)
            except TransferStudioError as exc:  # a run another process is training
                refused.append(str(exc))
        self.refresh()
        if refused:
            QMessageBox.warning(self, "Some runs were not deleted", "\n\n".join(refused))

    # ------------------------------------------------------------------ reading the index

    def _signature(self) -> tuple:
        """Changes whenever the table would: the index was written, or a run shown as
        running lost its process (it then reads "interrupted")."""
        files = [self.workspace / f"runs.sqlite{suffix}" for suffix in ("", "-wal")]
        stamps = tuple(
            (f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None for f in files
        )
        store = RunStore(self.workspace)
        running = tuple(store.is_active(r.id) for r in self.run_records if r.status == "running")
        return stamps, running

    def _refresh_if_changed(self) -> None:
        if not self.polling:
            # This window's own run rewrites the index every epoch; the table is refreshed
            # when it ends. Polling meanwhile cost the training thread for nothing it shows.
            return
        try:
            changed = self._signature() != self._seen
        except OSError:  # the workspace went away (an unplugged drive): keep what is shown
            return
        if changed:
            self.refresh()

    def refresh(self) -> None:
        """Read the run index again; the same runs stay selected."""
        from transferstudio.core.studies.baseline import gains

        store = RunStore(self.workspace)
        selected = set(self.selected_ids())
        self.run_records = store.list()
        self.run_gains = gains(store)
        self._seen = self._signature()
        # Rows move when a run is added (newest first): keep the same runs selected, by id.
        self.table.blockSignals(True)
        self.table.clearSelection()
        self.table.setRowCount(len(self.run_records))
        for r, rec in enumerate(self.run_records):
            best = f"{rec.best_metric:.4f}" if rec.best_metric is not None else "-"
            gain = self.run_gains.get(rec.id)
            values = [
                rec.created.replace("T", " "),
                rec.name,
                rec.backbone,
                rec.method,
                best,
                f"{rec.duration_s:.0f} s",
                rec.status,
                gain.describe() if gain is not None else "",
            ]
            for c, value in enumerate(values):
                item = QTableWidgetItem(value)
                item.setData(Qt.ItemDataRole.UserRole, rec.id)
                self.table.setItem(r, c, item)
            if rec.id in selected:
                self.table.selectionModel().select(
                    self.table.model().index(r, 0),
                    QItemSelectionModel.SelectionFlag.Select
                    | QItemSelectionModel.SelectionFlag.Rows,
                )
        self.table.blockSignals(False)
        if set(self.selected_ids()) != selected:  # a selected run was deleted elsewhere
            self.table.itemSelectionChanged.emit()
        self.refreshed.emit()
