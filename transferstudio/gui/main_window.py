"""The main window: dock panels over one experiment, a run worker, live curves, a layer tree."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QItemSelectionModel, QSettings, Qt, QTimer, QUrl
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDockWidget,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTreeView,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from transferstudio import __version__
from transferstudio.api import API_VERSION, ExperimentError, TransferStudioError
from transferstudio.core.files.atomic import write_text_atomic
from transferstudio.core.plugins.host import PluginHost
from transferstudio.core.progress import events as E
from transferstudio.core.progress.eta import EtaEstimator, format_duration
from transferstudio.core.settings import experiment as X
from transferstudio.gui.gui_thread_gc import collect_garbage_on_gui_thread
from transferstudio.gui.layer_tree_model import QtLayerTreeModel
from transferstudio.gui.plots import TrainingCurves
from transferstudio.gui.settings_form import SettingsForm
from transferstudio.gui.widgets import fill_thumbnails, load_thumbnails, named, thumbnail_list
from transferstudio.gui.worker import RunController, RunWorker, run_in_background

MAX_RECENT = 8
THUMBNAILS_PER_CLASS = 4
CURVE_REFRESH_MS = 1000
"""Curves repaint at most once a second while a run trains: each repaint of a pyqtgraph plot
costs the GUI thread about 6 ms of Python (it holds the GIL the training thread needs), and on
a 2-core machine every wake-up of the GUI thread stalls one of torch's two threads (issue 18's
measurement, docs/benchmarks.md 3e)."""
RUNS_POLL_MS = 3000
LEGEND_BRUSH = (255, 255, 255, 210)  # legends stay readable where they cover a curve


class MainWindow(QMainWindow):
    """TransferStudio's window. ``experiment_path`` is the file Save writes to."""

    def __init__(
        self,
        host: PluginHost,
        workspace: Path,
        experiment: X.Experiment,
        experiment_path: Path | None = None,
        settings: QSettings | None = None,
    ) -> None:
        super().__init__()
        # Before any worker thread starts: cycles holding Qt objects must be freed on this thread.
        collect_garbage_on_gui_thread()
        self.host = host
        self.workspace = Path(workspace)
        self.settings = settings or QSettings("TransferStudio", "TransferStudio")
        self.experiment_path = experiment_path
        self.controller = RunController(self)
        self._dirty_curves: set[str] = set()
        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.setInterval(CURVE_REFRESH_MS)
        self._redraw_timer.timeout.connect(self._redraw_curves)
        self.controller.state_changed.connect(self._update_actions)
        self.tree_model: QtLayerTreeModel | None = None
        self._tree_model_for: tuple | None = None
        self._syncing = False
        self.last_error: tuple[str, str] | None = None
        self.error_box: QMessageBox | None = None
        self._run_started_at = 0.0
        self._tree_builds = 0  # layer-tree models being built in the background
        self._scanning = False
        self._start_pending = False  # Start pressed while one was (see model_ready)
        self._saved_text = ""
        self._scan_generation = 0
        self.data_error = ""
        """Why the scanned data cannot be used (one class, unreadable CSV); Start waits."""
        self._eta = EtaEstimator()
        self._epochs = 1
        self._start_epoch = 0
        self._last_result = None
        self.lr_dialog = None  # the learning-rate finder, while open
        self._shown_once = False
        self.setObjectName("MainWindow")
        self.setWindowTitle("TransferStudio")
        self.setDockNestingEnabled(True)
        self.setAcceptDrops(True)

        self._build_actions()
        self._build_data_dock()
        self._build_model_dock()
        self._build_method_dock()
        self._build_training_dock()
        self._build_runs_dock()
        self._build_evaluation_dock()
        self._build_predict_dock()
        self._build_sweeps_dock()
        self._arrange_default_layout()
        self._build_menus()
        self.statusBar().showMessage("ready")
        self.load_experiment(experiment, experiment_path)
        geometry = self.settings.value("window/geometry")
        if geometry is None or not self.restoreGeometry(geometry):
            self._fit_to_screen()
        state = self.settings.value("window/state")
        if state is not None:
            self.restoreState(state)
        self.refresh_runs()

    # ------------------------------------------------------------------ building

    def _action(self, name: str, text: str, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        action.setObjectName(name)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        self.act_new = self._action(
            "action.new", "&New experiment", self.new_experiment, QKeySequence.StandardKey.New
        )
        self.act_open = self._action(
            "action.open", "&Open experiment...", self.open_dialog, QKeySequence.StandardKey.Open
        )
        self.act_save = self._action(
            "action.save", "&Save", self.save, QKeySequence.StandardKey.Save
        )
        self.act_save_as = self._action(
            "action.save_as", "Save &As...", self.save_as, QKeySequence.StandardKey.SaveAs
        )
        self.act_quit = self._action(
            "action.quit", "&Quit", self.close, QKeySequence.StandardKey.Quit
        )
        self.act_start = self._action("action.start", "&Start", self.start_run, "Ctrl+R")
        self.act_pause = self._action("action.pause", "&Pause", self.toggle_pause, "Ctrl+P")
        self.act_pause.setCheckable(True)
        self.act_stop = self._action("action.stop", "S&top", self.stop_run, "Ctrl+.")
        self.act_resume = self._action(
            "action.resume", "&Resume selected run", self.resume_selected_run, "Ctrl+Shift+R"
        )
        self.act_resume.setToolTip(
            "Continue the run selected in Runs (stopped, failed or interrupted) in its own "
            "folder, from its last checkpoint"
        )
        self.act_lr_find = self._action(
            "action.lr_find", "Find &learning rate...", self.find_learning_rate, "Ctrl+L"
        )
        self.act_plugins = self._action("action.plugins", "&Plugins...", self.show_plugins)
        self.act_about = self._action("action.about", "&About TransferStudio", self.show_about)
        self.act_workspace = self._action(
            "action.workspace",
            "Open &workspace folder",
            lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.workspace))),
        )

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        for action in (self.act_new, self.act_open, self.act_save, self.act_save_as):
            file_menu.addAction(action)
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.setObjectName("menu.recent")
        file_menu.addSeparator()
        file_menu.addAction(self.act_workspace)
        file_menu.addAction(self.act_quit)
        run_menu = bar.addMenu("&Run")
        for action in (self.act_start, self.act_pause, self.act_stop, self.act_resume):
            run_menu.addAction(action)
        run_menu.addSeparator()
        run_menu.addAction(self.act_lr_find)
        model_menu = bar.addMenu("&Model")
        model_menu.setObjectName("menu.model")
        for spec in self.host.exporters.values():
            action = model_menu.addAction(f"Export model as {spec.format}...")
            action.setObjectName(f"action.export.{spec.format}")
            action.triggered.connect(lambda _=False, f=spec.format: self._export_dialog("", f))
        view_menu = bar.addMenu("&View")
        for dock in self.findChildren(QDockWidget):
            view_menu.addAction(dock.toggleViewAction())
        bar.addMenu("&Plugins").addAction(self.act_plugins)
        bar.addMenu("&Help").addAction(self.act_about)
        self._refresh_recent()

    def _arrange_default_layout(self) -> None:
        # Data and Model share the left column as tabs so the layer tree gets the full height;
        # Runs and Evaluation share the bottom. A saved layout (QSettings) overrides this.
        dock = {d.objectName(): d for d in self.findChildren(QDockWidget)}
        self.tabifyDockWidget(dock["dock.data"], dock["dock.model"])
        self.tabifyDockWidget(dock["dock.runs"], dock["dock.evaluation"])
        self.tabifyDockWidget(dock["dock.evaluation"], dock["dock.predict"])
        self.tabifyDockWidget(dock["dock.predict"], dock["dock.sweeps"])
        dock["dock.data"].raise_()
        dock["dock.runs"].raise_()
        self._fit_docks_to_window()

    def _fit_to_screen(self) -> None:
        """The first window: as large as the screen allows, up to 1600x1000, centred."""
        screen = self.screen().availableGeometry()
        width, height = min(screen.width(), 1600), min(screen.height(), 1000)
        self.resize(width, height)
        self.move(screen.x() + (screen.width() - width) // 2, screen.y())

    def _fit_docks_to_window(self) -> None:
        """Dock sizes in proportion to the window: the live curves get most of the height and
        the middle column; side panels a quarter of the width each at most (at 1366 px fixed
        sizes left the curves 60 px tall and cut off the side panels' buttons)."""
        dock = {d.objectName(): d for d in self.findChildren(QDockWidget)}
        width, height = self.width(), self.height()
        self.resizeDocks([dock["dock.runs"]], [int(height * 0.31)], Qt.Orientation.Vertical)
        self.resizeDocks(
            [dock["dock.data"], dock["dock.method"]],
            [max(340, int(width * 0.25)), max(330, int(width * 0.22))],
            Qt.Orientation.Horizontal,
        )

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            if self.settings.value("window/state") is None:  # no layout of the user's own
                # Queued: the window has its real size only once the show has been processed.
                QTimer.singleShot(0, self._fit_docks_to_window)

    def _build_sweeps_dock(self) -> None:
        from transferstudio.gui.sweep_panel import SweepPanel

        self.sweep_panel = SweepPanel(self.host, self.workspace, self.current_experiment)
        self.sweep_panel.open_experiment.connect(self._open_sweep_trial)
        self.sweep_panel.sweep_ended.connect(self.refresh_runs)
        self._dock("sweeps", "Sweeps", self.sweep_panel, Qt.DockWidgetArea.BottomDockWidgetArea)

    def _open_sweep_trial(self, path: str) -> None:
        self.open_file(Path(path))

    def _dock(self, name: str, title: str, widget: QWidget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock.{name}")
        # Each panel scrolls rather than imposing its full height on the window: without this
        # the stacked panels made the window's minimum height ~1100 px, taller than a laptop.
        scroll = QScrollArea()
        scroll.setObjectName(f"scroll.{name}")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(widget)
        dock.setWidget(scroll)
        self.addDockWidget(area, dock)
        return dock

    def _build_data_dock(self) -> None:
        panel = QWidget()
        layout = QVBoxLayout(panel)
        row = QHBoxLayout()
        self.data_path = named(QLineEdit(), "data.path", "data folder or CSV")
        self.data_path.setPlaceholderText("image folder or CSV file (or drop one here)")
        self.data_path.editingFinished.connect(self._on_data_path_changed)
        browse = named(QPushButton("Folder..."), "data.browse_folder")
        browse.clicked.connect(self._browse_folder)
        browse_csv = named(QPushButton("CSV..."), "data.browse_csv")
        browse_csv.clicked.connect(self._browse_csv)
        row.addWidget(self.data_path)
        row.addWidget(browse)
        row.addWidget(browse_csv)
        layout.addLayout(row)
        self.scan_label = named(QLabel("no data scanned"), "data.scan_status")
        # a long reason (one class only, an unreadable CSV) wraps instead of widening the panel
        # and pushing Folder... and CSV... out of view
        self.scan_label.setWordWrap(True)
        layout.addWidget(self.scan_label)
        self.counts_tree = named(QTreeWidget(), "data.counts", "class counts per split")
        self.counts_tree.setRootIsDecorated(True)
        layout.addWidget(self.counts_tree)
        self.thumbnails = thumbnail_list("data.thumbnails", "sample images per class")
        layout.addWidget(self.thumbnails)
        self.data_form = SettingsForm(X.DataSettings, "data.")
        self.data_form.widgets["path"].setVisible(False)
        self.data_form.layout().labelForField(self.data_form.widgets["path"]).setVisible(False)
        self.data_form.changed.connect(self._on_form_changed)
        layout.addWidget(self.data_form)
        self.augment_form = SettingsForm(X.AugmentSettings, "augment.")
        self.augment_form.changed.connect(self._on_form_changed)
        layout.addWidget(self.augment_form)
        self._dock("data", "Data", panel, Qt.DockWidgetArea.LeftDockWidgetArea)

    def _build_model_dock(self) -> None:
        panel = QWidget()
        layout = QVBoxLayout(panel)
        self.backbone_combo = named(QComboBox(), "model.backbone", "backbone")
        by_family: dict[str, list] = {}
        for spec in self.host.backbones.values():
            by_family.setdefault(spec.family, []).append(spec)
        for family in sorted(by_family):
            self.backbone_combo.addItem(f"— {family} —")
            item = self.backbone_combo.model().item(self.backbone_combo.count() - 1)
            item.setEnabled(False)
            for spec in by_family[family]:
                size = f" ({spec.approx_params / 1e6:.1f}M)" if spec.approx_params else ""
                self.backbone_combo.addItem(f"{spec.name}{size}", spec.name)
        self.backbone_combo.currentIndexChanged.connect(self._on_model_changed)
        layout.addWidget(self.backbone_combo)
        self.weights_combo = named(QComboBox(), "model.weights", "weights source")
        self.weights_combo.addItem("none (random initialisation)", "none")
        self.weights_combo.addItem("pretrained (local file)", "cache")
        self.weights_combo.addItem("file...", "file")
        self.weights_combo.activated.connect(self._on_weights_chosen)
        layout.addWidget(self.weights_combo)
        # Folded BatchNorm in the chosen weights (core/models/bn_check.py): the reason, in view where
        # the weights are chosen, and a one-click fix when the method still trains BN stats.
        self.bn_warning = named(QLabel(""), "model.bn_warning")
        self.bn_warning.setWordWrap(True)
        self.bn_warning.setStyleSheet("color: #8a4b00;")
        self.bn_warning.setVisible(False)
        layout.addWidget(self.bn_warning)
        self.bn_fix = named(QPushButton("Use bn mode frozen-stats"), "model.bn_fix")
        self.bn_fix.clicked.connect(lambda: self._use_frozen_stats(automatically=False))
        self.bn_fix.setVisible(False)
        layout.addWidget(self.bn_fix)
        self._bn_reason = ""
        self.model_form = SettingsForm(X.ModelSettings, "model.")
        for hidden in ("backbone", "weights"):
            self.model_form.widgets[hidden].setVisible(False)
            self.model_form.layout().labelForField(self.model_form.widgets[hidden]).setVisible(
                False
            )
        self.model_form.changed.connect(self._on_form_changed)
        layout.addWidget(self.model_form)
        presets = QGridLayout()
        train_all = named(QPushButton("Train all"), "tree.train_all")
        train_all.clicked.connect(lambda: self._preset("all"))
        head_only = named(QPushButton("Head only"), "tree.head_only")
        head_only.clicked.connect(lambda: self._preset("head"))
        self.last_blocks = named(QSpinBox(), "tree.last_blocks", "blocks to unfreeze")
        self.last_blocks.setRange(1, 50)
        last = named(QPushButton("Unfreeze last N"), "tree.unfreeze_last")
        last.clicked.connect(lambda: self._preset("last"))
        # Two rows: in one, the buttons were wider than the dock at 1366 px and were cut off.
        presets.addWidget(train_all, 0, 0)
        presets.addWidget(head_only, 0, 1)
        presets.addWidget(last, 1, 0)
        presets.addWidget(self.last_blocks, 1, 1)
        layout.addLayout(presets)
        self.tree_summary = named(QLabel(""), "tree.summary")
        self.tree_summary.setWordWrap(True)
        layout.addWidget(self.tree_summary)
        from PySide6.QtWidgets import QCheckBox

        self.show_stats = named(
            QCheckBox("show drift and gradients while training"), "tree.show_stats"
        )
        self.show_stats.setToolTip(
            "Show each layer's weight drift from its starting value and its gradient norm in "
            "the tree while a run trains (measured only while the tree is visible)"
        )
        self.show_stats.setChecked(True)
        self.show_stats.toggled.connect(self._apply_stats_columns)
        layout.addWidget(self.show_stats)
        self.tree_view = named(QTreeView(), "tree.view", "layer tree")
        self.tree_view.setUniformRowHeights(True)
        self.tree_view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree_view.customContextMenuRequested.connect(self._tree_menu)
        layout.addWidget(self.tree_view, 1)
        self.export_button = named(QPushButton("Export model..."), "model.export")
        self.export_button.setToolTip(
            "Export the whole model (the weights of the last run finished in this window, else "
            "the initial ones); right-click a layer in the tree to export only that part"
        )
        export_menu = QMenu(self.export_button)
        export_menu.setObjectName("menu.export")
        for spec in self.host.exporters.values():
            action = export_menu.addAction(f"as {spec.format} ({spec.suffix})...")
            action.triggered.connect(lambda _=False, f=spec.format: self._export_dialog("", f))
        self.export_button.setMenu(export_menu)
        layout.addWidget(self.export_button)
        dock = self._dock("model", "Model", panel, Qt.DockWidgetArea.LeftDockWidgetArea)
        # Queued: visibilityChanged comes before the view itself reports visible.
        dock.visibilityChanged.connect(
            self._refresh_stats_if_shown, Qt.ConnectionType.QueuedConnection
        )

    def _build_method_dock(self) -> None:
        panel = QWidget()
        self.method_layout = QVBoxLayout(panel)
        self.method_combo = named(QComboBox(), "method.name", "method")
        for spec in self.host.methods.values():
            self.method_combo.addItem(spec.name, spec.name)
            self.method_combo.setItemData(
                self.method_combo.count() - 1, spec.description, Qt.ItemDataRole.ToolTipRole
            )
        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.method_layout.addWidget(self.method_combo)
        self.method_form: SettingsForm | None = None
        self.train_form = SettingsForm(X.TrainSettings, "train.")
        self.train_form.context_check = _check_device
        self.train_form.changed.connect(self._on_form_changed)
        self.method_layout.addWidget(self.train_form)
        self.form_error = named(QLabel(""), "method.error")
        self.form_error.setStyleSheet("color: #b00000;")
        self.form_error.setWordWrap(True)
        self.method_layout.addWidget(self.form_error)
        self._dock("method", "Method", panel, Qt.DockWidgetArea.RightDockWidgetArea)

    def _build_training_dock(self) -> None:
        panel = QWidget()
        layout = QVBoxLayout(panel)
        buttons = QHBoxLayout()
        for action in (self.act_start, self.act_pause, self.act_stop):
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
        self._reset_progress()
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
        self.setCentralWidget(panel)

    def _build_runs_dock(self) -> None:
        table_side = QWidget()
        layout = QVBoxLayout(table_side)
        layout.setContentsMargins(0, 0, 0, 0)
        self.runs_table = named(QTableWidget(0, 8), "runs.table", "run history")
        self.runs_table.setHorizontalHeaderLabels(
            [
                "date",
                "name",
                "backbone",
                "method",
                "best val",
                "duration",
                "status",
                "transfer gain",
            ]
        )
        self.runs_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.runs_table.verticalHeader().setVisible(False)
        self.runs_table.verticalHeader().setDefaultSectionSize(
            self.runs_table.fontMetrics().height() + 8
        )
        self.runs_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.runs_table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents
        )
        self.runs_table.itemSelectionChanged.connect(self._overlay_selected_runs)
        self.runs_table.itemSelectionChanged.connect(self._evaluate_selected_run)
        self.runs_table.itemSelectionChanged.connect(self._update_actions)
        self.runs_table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.runs_table.customContextMenuRequested.connect(self._runs_menu)
        self.runs_table.doubleClicked.connect(lambda _index: self.open_selected_run())
        layout.addWidget(self.runs_table)
        row = QHBoxLayout()
        for name, text, slot in (
            ("runs.refresh", "Refresh", self.refresh_runs),
            ("runs.open", "Open experiment", self.open_selected_run),
            ("runs.resume", "Resume", self.resume_selected_run),
            ("runs.baseline", "Transfer gain", self.run_selected_baseline),
            ("runs.delete", "Delete...", self.delete_selected_runs),
        ):
            button = named(QPushButton(text), name)
            button.clicked.connect(slot)
            row.addWidget(button)
            if name == "runs.resume":
                button.setToolTip(self.act_resume.toolTip())
                self.act_resume.changed.connect(
                    lambda b=button: b.setEnabled(self.act_resume.isEnabled())
                )
        layout.addLayout(row)
        # Runs started elsewhere (the CLI, a sweep, another window) appear without a click.
        self._runs_seen: tuple = ()
        self._runs_poll = QTimer(self)
        self._runs_poll.setInterval(RUNS_POLL_MS)
        self._runs_poll.timeout.connect(self._refresh_runs_if_changed)
        self._runs_poll.start()
        import pyqtgraph as pg

        self.overlay_plot = pg.PlotWidget(title="val accuracy of selected runs")
        self.overlay_plot.setObjectName("runs.overlay")
        self.overlay_plot.setBackground("w")
        self.overlay_plot.setLabel("bottom", "epoch")
        self.overlay_plot.addLegend(brush=LEGEND_BRUSH)
        # Side by side: the dock is wide and short, and stacked, the table showed one row.
        panel = named(QSplitter(Qt.Orientation.Horizontal), "runs.split")
        panel.addWidget(table_side)
        panel.addWidget(self.overlay_plot)
        # the table gets two thirds: its transfer-gain column is a sentence
        panel.setStretchFactor(0, 2)
        panel.setStretchFactor(1, 1)
        panel.setChildrenCollapsible(False)
        self._dock("runs", "Runs", panel, Qt.DockWidgetArea.BottomDockWidgetArea)

    def _build_evaluation_dock(self) -> None:
        from transferstudio.gui.evaluation_view import EvaluationPanel

        self.evaluation = named(EvaluationPanel(), "evaluation.panel")
        self.evaluation.gallery_requested.connect(self._load_gallery)
        self.class_table = self.evaluation.class_table
        self._gallery_generation = 0
        self._evaluation_run_id: str | None = None
        self._evaluation_run_status = ""  # a change (running -> completed elsewhere) re-reads
        self._dock(
            "evaluation", "Evaluation", self.evaluation, Qt.DockWidgetArea.BottomDockWidgetArea
        )

    def _build_predict_dock(self) -> None:
        from transferstudio.gui.predict_panel import PredictPanel

        self.predict_panel = PredictPanel(self.host, self.workspace)
        self.predict_panel.setObjectName("predict.panel")
        self._dock("predict", "Predict", self.predict_panel, Qt.DockWidgetArea.BottomDockWidgetArea)

    # ------------------------------------------------------------------ experiment <-> window

    def load_experiment(self, exp: X.Experiment, path: Path | None = None) -> None:
        """Show ``exp`` in every panel (the window's whole state comes from the experiment)."""
        self._syncing = True
        try:
            self.base_dir = Path(exp.base_dir)
            self.experiment_path = path
            self.experiment_name = exp.name
            self.data_path.setText(exp.data.path)
            self.data_form.set_values(dataclasses.asdict(exp.data))
            self.augment_form.set_values(dataclasses.asdict(exp.augment))
            self.model_form.set_values(dataclasses.asdict(exp.model))
            self.train_form.set_values(dataclasses.asdict(exp.train))
            index = self.backbone_combo.findData(exp.model.backbone)
            self.backbone_combo.setCurrentIndex(max(index, 0))
            self._set_weights(exp.model.weights)
            self.method_combo.setCurrentIndex(max(self.method_combo.findData(exp.method), 0))
            self._rebuild_method_form(exp.method_params)
        finally:
            self._syncing = False
        self.setWindowTitle(f"TransferStudio - {path.name if path else exp.name}[*]")
        self._saved_text = self._experiment_text()
        self._scan_data()
        self._rebuild_tree()
        self._check_weights_batchnorm()
        self._update_actions()

    def _experiment_text(self) -> str:
        """What saving would write now (an invalid form counts as its own text), for
        :meth:`has_unsaved_changes`."""
        try:
            return self.current_experiment().to_toml(comments=False)
        except TransferStudioError as exc:
            return f"invalid: {exc}"

    def has_unsaved_changes(self) -> bool:
        """True when the window shows an experiment that differs from the one last opened,
        created or saved."""
        return self._experiment_text() != self._saved_text

    def _confirm_discard(self, doing: str) -> bool:
        """Before ``doing`` replaces the experiment: Save, Discard or Cancel when it has unsaved
        changes. True when the caller may go on."""
        if not self.has_unsaved_changes():
            return True
        name = self.experiment_path.name if self.experiment_path else self.experiment_name
        buttons = QMessageBox.StandardButton
        answer = QMessageBox.question(
            self,
            "Unsaved changes",
            f"{name} has changes that are not saved. Save them before {doing}?",
            buttons.Save | buttons.Discard | buttons.Cancel,
            buttons.Save,
        )
        if answer == buttons.Save:
            return self.save()
        return answer == buttons.Discard

    def current_experiment(self) -> X.Experiment:
        """The experiment the window shows (raises ExperimentError naming a bad key)."""
        error = self._first_form_error()
        if error:
            raise ExperimentError(error)
        data = self.data_form.build()
        data.path = self.data_path.text().strip()
        model = self.model_form.build()
        model.backbone = self.backbone_combo.currentData() or model.backbone
        model.weights = self.weights_value
        assert self.method_form is not None
        return X.Experiment(
            name=self.experiment_name,
            method=self.method_combo.currentData(),
            method_params=self.method_form.build(),
            data=data,
            augment=self.augment_form.build(),
            model=model,
            train=self.train_form.build(),
            base_dir=str(self.base_dir),
        )

    def _rebuild_method_form(self, params: Any | None = None) -> None:
        spec = self.host.method(self.method_combo.currentData())
        if self.method_form is not None:
            self.method_layout.removeWidget(self.method_form)
            self.method_form.deleteLater()
        self.method_form = SettingsForm(spec.params, "method.params.")
        self.method_form.setObjectName("method.params")
        self.method_form.context_check = self._check_plan_against_model
        if params is not None and isinstance(params, spec.params):
            self.method_form.set_values(dataclasses.asdict(params))
        self.method_form.changed.connect(self._on_method_params_changed)
        self.method_layout.insertWidget(1, self.method_form)
        self._show_data_roles(spec)

    def _check_plan_against_model(self, params: Any) -> None:
        """A method's freeze plan against the modules of the model in the tree, as the run will
        check it at setup (while the tree is being built, or for methods without a plan,
        nothing is checked)."""
        plan = getattr(params, "plan", None)
        if (
            callable(plan)
            and self.tree_model is not None
            and self._tree_model_for == (self._tree_key())
        ):
            plan().check(self.tree_torch_model)

    def _show_data_roles(self, spec) -> None:
        """The Data panel shows the fields of the roles the method declares (API 1.1 roles)."""
        from transferstudio.api import ROLE_KEYS

        roles = {*spec.data_roles, *spec.optional_roles}
        wanted = {ROLE_KEYS[r].split(".")[1] for r in roles if r in ROLE_KEYS}
        if "multilabel" in roles:
            wanted.add("label_columns")
        for key in ("target_path", "target_eval_path", "label_columns"):
            widget = self.data_form.widgets[key]
            widget.setVisible(key in wanted)
            self.data_form.layout().labelForField(widget).setVisible(key in wanted)

    # ------------------------------------------------------------------ reactions

    def _on_form_changed(self) -> None:
        self._update_actions()

    def _on_method_changed(self) -> None:
        if self._syncing:
            return
        self._rebuild_method_form()
        self._show_bn_state()
        self._rebuild_tree()
        self._update_actions()

    def _on_method_params_changed(self) -> None:
        if not self._syncing and self.tree_model is not None and self.method_form.validate():
            self._apply_plan_to_tree()
        if self._bn_reason:
            self._show_bn_state()
        self._update_actions()

    def _on_model_changed(self) -> None:
        if not self._syncing:
            self._rebuild_tree()
            self._check_weights_batchnorm(adopt=True)  # 'pretrained' is another file now
            self._update_actions()

    def _set_weights(self, value: str) -> None:
        self.weights_value = value
        if value in ("none", "cache"):
            self.weights_combo.setCurrentIndex(self.weights_combo.findData(value))
            self.weights_combo.setItemText(2, "file...")
        else:
            self.weights_combo.setCurrentIndex(2)
            self.weights_combo.setItemText(2, f"file: {Path(value).name}")
            self.weights_combo.setItemData(2, value, Qt.ItemDataRole.ToolTipRole)

    def _on_weights_chosen(self) -> None:
        choice = self.weights_combo.currentData()
        if choice == "file":
            path, _ = QFileDialog.getOpenFileName(
                self, "Weights file", str(self.base_dir), "Weights (*.safetensors *.pth *.pt)"
            )
            if not path:
                self._set_weights(self.weights_value)
                return
            choice = path
        self._set_weights(choice)
        self._check_weights_batchnorm(adopt=True)
        self._update_actions()

    def _check_weights_batchnorm(self, adopt: bool = False) -> None:
        """Read the chosen weights off the GUI thread and look for folded BatchNorm. With
        ``adopt`` (the user just picked them) a method training BN statistics is switched to
        ``frozen-stats``; otherwise (an experiment opened) the fix is proposed."""
        from transferstudio.core.models.bn_check import folded_batchnorm_reason
        from transferstudio.core.models.weights import read_state_dict, resolve_weights

        value = self.weights_value
        backbone = self.backbone_combo.currentData()
        self._bn_reason = ""
        self._show_bn_state()
        if value == "none" or not backbone:
            return
        spec, base_dir = self.host.backbone(backbone), self.base_dir

        def check() -> str:
            path = resolve_weights(spec, value, base_dir)
            return folded_batchnorm_reason(read_state_dict(path), path.name) if path else ""

        def done(reason: str) -> None:
            if (value, backbone) != (self.weights_value, self.backbone_combo.currentData()):
                return  # other weights (or, for 'cache', another backbone) chosen meanwhile
            self._bn_reason = reason
            if reason and adopt:
                self._use_frozen_stats(automatically=True)
            else:
                self._show_bn_state()

        # An unreadable file is reported by the run (and the tree): nothing to add here.
        run_in_background(check, done, lambda *_: None, self)

    def _use_frozen_stats(self, automatically: bool) -> None:
        if self.method_form is None or "bn_mode" not in self.method_form.widgets:
            return
        self.method_form.set_values({"bn_mode": "frozen-stats"})
        self._show_bn_state(switched=automatically)
        self._update_actions()

    def _show_bn_state(self, switched: bool = False) -> None:
        """The folded-BatchNorm line under the weights: what was found and what was done."""
        values = self.method_form.values() if self.method_form is not None else {}
        bn_mode = values.get("bn_mode")
        reason = self._bn_reason
        if not reason or bn_mode is None:
            self.bn_warning.setVisible(False)
            self.bn_fix.setVisible(False)
            return
        summary = reason.split(":")[0]  # "52 of 52 BatchNorm layers in F hold identity ..."
        if bn_mode == "train":
            text = f"⚠ {reason}"
        elif switched:
            text = f"bn mode set to frozen-stats for these weights: {summary} (folded BatchNorm)."
        else:
            text = f"bn mode {bn_mode} suits these weights: {summary} (folded BatchNorm)."
        self.bn_warning.setText(text)
        self.bn_warning.setToolTip(reason)
        self.bn_warning.setVisible(True)
        self.bn_fix.setVisible(bn_mode == "train")

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Image folder", str(self.base_dir))
        if path:
            self.set_data_path(path)

    def _browse_csv(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "CSV file", str(self.base_dir), "CSV (*.csv)")
        if path:
            self.set_data_path(path)

    def set_data_path(self, path: str) -> None:
        self.data_path.setText(path)
        self._on_data_path_changed()

    def _on_data_path_changed(self) -> None:
        self._scan_data()
        self._update_actions()

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt API
        if event.mimeData().hasUrls() and event.mimeData().urls()[0].isLocalFile():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.set_data_path(event.mimeData().urls()[0].toLocalFile())

    # ------------------------------------------------------------------ data scan

    def _scan_data(self) -> None:
        text = self.data_path.text().strip()
        self.counts_tree.clear()
        self.thumbnails.clear()  # another folder's images must not stay on show
        self.scan_result = None
        self.data_error = ""
        self._scan_generation += 1
        generation = self._scan_generation
        self._scanning = bool(self.data_path.text().strip())
        if not text:
            self.scan_label.setText("choose an image folder or CSV file")
            return
        from transferstudio.core.data import loaders as D

        path = Path(text) if Path(text).is_absolute() else self.base_dir / text
        settings = self.data_form.build() if self.data_form.validate() else X.DataSettings()
        self.scan_label.setText(f"scanning {path} ...")
        self._update_actions()

        def scan():
            spec = D.choose_source(self.host.datasets, settings, path)
            return D.scan(spec, settings, path)

        run_in_background(
            scan,
            lambda result: self._show_scan(result, generation),
            lambda message, details: self._scan_failed(message, details, generation),
            self,
        )

    def _show_scan(self, result, generation: int | None = None) -> None:
        if generation is not None and generation != self._scan_generation:
            return  # an earlier folder's scan, finished after the user chose another
        self._scanning = False
        self.scan_result = result
        counts = result.counts()
        splits = list(counts)
        self.counts_tree.setColumnCount(1 + len(splits))
        self.counts_tree.setHeaderLabels(["class", *splits])
        for name in result.classes:
            QTreeWidgetItem(self.counts_tree, [name, *[str(counts[s][name]) for s in splits]])
        if result.skipped:
            skipped = QTreeWidgetItem(self.counts_tree, [f"skipped files ({len(result.skipped)})"])
            # the lines span the count columns: in the class column alone they were cut to
            # "readm..."; the tooltip holds the whole reason and the full path
            skipped.setFirstColumnSpanned(True)
            for path, reason in result.skipped:
                item = QTreeWidgetItem(skipped, [f"{Path(path).name}: {reason}"])
                item.setFirstColumnSpanned(True)
                item.setToolTip(0, f"{path}\n{reason}")
        total = sum(len(v) for v in result.splits.values())
        self.scan_label.setText(
            f"{len(result.classes)} classes, {total} images"
            + (f", {len(result.skipped)} skipped" if result.skipped else "")
        )
        self._rebuild_tree()
        self._start_if_pending()  # when the tree needed no rebuild for these classes
        per_class: dict[str, list[str]] = {}
        for sample in result.splits.get("train", []):
            paths = per_class.setdefault(sample.label, [])
            if len(paths) < THUMBNAILS_PER_CLASS:
                paths.append(sample.path)
        items = [(label, path) for label, paths in per_class.items() for path in paths]
        self._update_actions()
        run_in_background(
            lambda: load_thumbnails(items),
            lambda images: self._show_thumbnails(images, generation),
            lambda message, details: self._scan_failed(message, details, generation),
            self,
        )

    def _show_thumbnails(self, images, generation: int | None = None) -> None:
        if generation is None or generation == self._scan_generation:
            fill_thumbnails(self.thumbnails, images)

    def _scan_failed(self, message: str, details: str, generation: int | None = None) -> None:
        if generation is not None and generation != self._scan_generation:
            return
        self._scanning = self._start_pending = False  # nothing to start on
        self.data_error = message
        self.scan_label.setText(f"cannot use this data: {message}")
        self._update_actions()

    # ------------------------------------------------------------------ layer tree

    def _tree_key(self) -> tuple:
        classes = len(self.scan_result.classes) if getattr(self, "scan_result", None) else 2
        return (
            self.backbone_combo.currentData(),
            classes,
            self.model_form.values()["head_dropout"],
        )

    def _rebuild_tree(self) -> None:
        backbone = self.backbone_combo.currentData()
        if not backbone:
            return
        key = self._tree_key()
        if key == self._tree_model_for and self.tree_model is not None:
            self._apply_plan_to_tree()
            return
        spec = self.host.backbone(backbone)
        crop = self.data_form.values()["image_size"] or spec.preprocessing.crop
        self.tree_summary.setText(f"building {backbone} ...")

        def build():
            import torch

            from transferstudio.core.models.build import build_classifier
            from transferstudio.core.models.layer_tree import build_tree

            model = build_classifier(spec, None, key[1], dropout=key[2])
            tree = build_tree(model, torch.zeros(1, 3, crop, crop))
            return key, model, tree

        self._tree_builds += 1
        run_in_background(build, self._show_tree, self._tree_failed, self)

    def model_ready(self) -> bool:
        """True when no layer-tree model is being built in the background. Building one draws
        on torch's global random generator, which a run seeds and then uses to initialise its
        own head: a run started meanwhile would not repeat its headless twin, so Start waits
        (see :meth:`start_run`). A data scan in progress counts too: its end rebuilds the tree
        for the number of classes found."""
        return self._tree_builds == 0 and not self._scanning

    def _show_tree(self, value) -> None:
        self._tree_build_ended()
        key, model, tree = value
        if key != self._tree_key():
            return  # the user picked something else meanwhile
        self.tree_torch_model = model
        self.tree_weights_source = "initial weights (no run finished in this window yet)"
        self.tree_run_meta: dict | None = None
        sizes = {n: p.numel() for n, p in model.named_parameters()}
        self.tree_model = QtLayerTreeModel(tree, sizes, set(), self)
        self.tree_model.freeze_changed.connect(self._on_tree_edited)
        self._tree_model_for = key
        self.tree_view.setModel(self.tree_model)
        self._apply_stats_columns()
        self.tree_view.expandToDepth(0)
        self.tree_view.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self._apply_plan_to_tree()
        self._update_actions()  # the plan can now be checked against the model's modules

    def _apply_stats_columns(self) -> None:
        from transferstudio.gui.layer_tree_model import DRIFT_COLUMN, GRAD_COLUMN

        for column in (DRIFT_COLUMN, GRAD_COLUMN):
            self.tree_view.setColumnHidden(column, not self.show_stats.isChecked())
        self._refresh_stats_if_shown()

    def _tree_failed(self, message: str, details: str) -> None:
        self._tree_build_ended()
        self.tree_summary.setText(f"cannot build the model: {message}")

    def _tree_build_ended(self) -> None:
        self._tree_builds -= 1
        self._start_if_pending()

    def _start_if_pending(self) -> None:
        if self._start_pending and self.model_ready():
            self._start_pending = False
            QTimer.singleShot(0, self.start_run)

    def _freeze_params(self) -> dict[str, Any] | None:
        """The method's freeze settings, when the method has them (fine-tune does)."""
        if self.method_form is None:
            return None
        values = self.method_form.values()
        return values if "freeze" in values else None

    def _apply_plan_to_tree(self) -> None:
        """Method settings -> tree (opening a file, editing patterns by hand)."""
        if self.tree_model is None:
            return
        values = self._freeze_params()
        model = self.tree_torch_model
        if values is None:  # feature extraction: the backbone is frozen, the tree is read-only
            frozen = {n for n, _ in model.named_parameters() if n.startswith("backbone.")}
            self.tree_model.editable = False
        else:
            from transferstudio.api import FreezePlan

            self.tree_model.editable = True
            plan = FreezePlan(
                patterns=list(values["freeze"]),
                up_to=values["freeze_up_to"],
                bn_mode=values["bn_mode"],
            )
            try:
                frozen = plan.frozen_names(model, 0)
            except KeyError:
                frozen = set()
        self._syncing = True
        try:
            self.tree_model.set_frozen(frozen)
        finally:
            self._syncing = False
        self.tree_summary.setText(self.tree_model.summary_text())

    def _on_tree_edited(self) -> None:
        """Tree -> method settings: the edit becomes the experiment's freeze plan."""
        assert self.tree_model is not None
        self.tree_summary.setText(self.tree_model.summary_text())
        if self._syncing or self._freeze_params() is None:
            return
        from transferstudio.core.settings.freeze import patterns_for

        patterns = patterns_for(self.tree_torch_model, self.tree_model.frozen)
        self._syncing = True
        try:
            self.method_form.set_values({"freeze": patterns, "freeze_up_to": ""})
        finally:
            self._syncing = False
        self._update_actions()

    # ------------------------------------------------------------------ export from the tree

    def _tree_menu(self, position) -> None:
        from PySide6.QtWidgets import QMenu

        index = self.tree_view.indexAt(position)
        if self.tree_model is None:
            return
        node = index.internalPointer() if index.isValid() else self.tree_model.root
        menu = QMenu(self)
        menu.setObjectName("tree.export_menu")
        title = node.path or "whole model"
        for spec in self.host.exporters.values():
            action = menu.addAction(f"Export {title} as {spec.format} ({spec.suffix})...")
            action.triggered.connect(
                lambda _=False, p=node.path, f=spec.format: self._export_dialog(p, f)
            )
        menu.popup(self.tree_view.viewport().mapToGlobal(position))

    def _export_dialog(self, module_path: str, fmt: str) -> None:
        spec = self.host.exporters[fmt]
        default = self.base_dir / f"{(module_path or 'model').replace('.', '_')}{spec.suffix}"
        path, _ = QFileDialog.getSaveFileName(
            self, f"Export as {fmt}", str(default), f"{fmt} (*{spec.suffix})"
        )
        if path:
            self.export_from_tree(module_path, fmt, Path(path))

    def export_from_tree(self, module_path: str, fmt: str, target: Path) -> None:
        """Export a module of the model off the GUI thread, verify it, report the difference.
        The weights are those of the last finished run in this window, else the initial ones.
        (QFileDialog already asked before overwriting an existing file.)"""
        import torch

        from transferstudio.core.inference.export import export_module, sample_input

        spec = self.host.exporters[fmt]
        model = self.tree_torch_model
        crop = (
            self.data_form.values()["image_size"]
            or self.host.backbone(self.backbone_combo.currentData()).preprocessing.crop
        )
        batch = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
        module = model.get_submodule(module_path) if module_path else model
        run_meta = self.tree_run_meta
        metadata = {
            "module": module_path or "(whole model)",
            "backbone": str(self._tree_key()[0]),
            "weights": self.tree_weights_source,
        }
        self.statusBar().showMessage(f"exporting {module_path or 'model'} as {fmt} ...")

        def work():
            from transferstudio.core.models.bundle import bundle_manifest

            example = sample_input(model, module_path, batch)
            info = dict(metadata)
            if run_meta is not None:  # the tree holds a finished run's weights: its provenance
                with torch.no_grad():
                    shape = list(module.eval()(example).shape[1:])
                info = bundle_manifest(run_meta, module_path, shape)
            return export_module(spec, module, example, target, info)

        run_in_background(work, self._export_done, self._export_failed, self)

    def _export_done(self, result) -> None:
        self.last_export = result
        diff = f"{result.max_abs_diff:.3g}" if result.max_abs_diff is not None else "not checked"
        box = QMessageBox(
            QMessageBox.Icon.Information,
            "Exported",
            f"{result.path}\nformat: {result.format}\nverified on a sample batch: "
            f"max abs difference {diff}",
            parent=self,
        )
        box.setObjectName("dialog.exported")
        box.open()
        self.statusBar().showMessage(f"exported {result.path} (max abs difference {diff})")

    def _export_failed(self, message: str, details: str) -> None:
        self.show_error("Export failed", message, details)

    def _load_run_weights(self, result) -> None:
        """Show the finished run's best weights in the tree (what the tree exports)."""
        from transferstudio.core.runs.checkpoint import CheckpointStore

        store = CheckpointStore(Path(result.folder) / "checkpoints")
        if self.tree_model is None or not store.exists("best"):
            return
        weights = store.load("best", with_state=False).weights
        state = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
        try:
            self.tree_torch_model.load_state_dict(state)
        except RuntimeError:  # another architecture was picked meanwhile
            return
        self.tree_weights_source = f"run {result.run_id} (best checkpoint)"
        self.tree_run_meta = store.meta("best")

    def _preset(self, kind: str) -> None:
        if self.tree_model is None or not self.tree_model.editable:
            return
        names = list(self.tree_model.param_sizes)
        if kind == "all":
            frozen: set[str] = set()
        elif kind == "head":
            frozen = {n for n in names if n.startswith("backbone.")}
        else:
            blocks = _blocks(self.tree_model.root.find("backbone"))
            keep = {b.path for b in blocks[-self.last_blocks.value() :]}
            frozen = {
                n
                for n in names
                if n.startswith("backbone.") and not any(n.startswith(k + ".") for k in keep)
            }
        self.tree_model.set_frozen(frozen)

    # ------------------------------------------------------------------ runs

    def start_run(self) -> None:
        if self.controller.running:
            return
        if not self.model_ready():
            self._start_pending = True
            self.eta_label.setText("starting once the model is built ...")
            return
        try:
            exp = self.current_experiment()
        except TransferStudioError as exc:
            self.show_error("Cannot start", str(exc))
            return
        self._start(exp)

    def _start(
        self, exp: X.Experiment, tags: dict[str, str] | None = None, resume: str | None = None
    ) -> None:
        self.curves.clear()
        self.log_view.clear()
        self._reset_progress()
        self.eta_label.setText("starting ...")
        self._run_started_at = time.monotonic()
        self._run_began = False
        self._run_tags = dict(tags or {})
        if resume is not None:
            self._show_earlier_epochs(resume)
        one_process = tags or resume is not None
        processes = self.processes.value() if self.processes.isEnabled() and not one_process else 1
        if processes > 1:
            from transferstudio.gui.process_run import ProcessRun

            worker = ProcessRun(exp, self.workspace, processes)
        else:
            worker = RunWorker(exp, self.host, self.workspace, resume=resume, tags=tags)
        worker.run_started.connect(self._on_run_started)
        worker.batches_ended.connect(self._on_batches)
        worker.epoch_ended.connect(self._on_epoch)
        worker.layer_stats.connect(self._on_layer_stats)
        worker.logged.connect(self.log_view.appendPlainText)
        worker.finished.connect(self._on_run_finished)
        # Bound methods, never lambdas: a lambda would run in the worker's thread.
        worker.errored.connect(self._on_run_error)
        worker.wants_layer_stats = self._stats_visible()
        if processes > 1:
            try:
                self.controller.start_process(worker)
            except OSError as exc:
                self.show_error("Cannot start torchrun", f"{exc}")
                return
            self.statusBar().showMessage(f"starting {processes} processes under torchrun ...")
        else:
            self.controller.start(worker)
            self.statusBar().showMessage(f"resuming run {resume} ..." if resume else "training ...")

    def _reset_progress(self) -> None:
        """Empty, labelled progress bars: nothing of the last run is left on them."""
        self.epoch_bar.setRange(0, 1)
        self.epoch_bar.setValue(0)
        self.epoch_bar.setFormat("no run")
        self.batch_bar.setRange(0, 1)
        self.batch_bar.setValue(0)
        self.batch_bar.setFormat("")

    def resume_selected_run(self) -> None:
        """Continue the run selected in Runs in its own folder, as ``run --resume`` does."""
        from transferstudio.core.runs.resume import experiment_to_resume
        from transferstudio.core.runs.workspace import RunStore

        ids = self._selected_run_ids()
        if len(ids) != 1 or self.controller.running:
            self.statusBar().showMessage("select one stopped, failed or interrupted run to resume")
            return
        try:
            record, exp = experiment_to_resume(
                RunStore(self.workspace), ids[0], self.host.method_params
            )
        except TransferStudioError as exc:
            self.show_error("Cannot resume the run", str(exc))
            return
        self._start(exp, resume=record.id)

    def _show_earlier_epochs(self, run_id: str) -> None:
        """A resumed run's curves start with the epochs it had already done."""
        from transferstudio.core.runs.workspace import RunStore

        metrics = RunStore(self.workspace).epoch_metrics(run_id)
        for split, prefix in (("train", "train"), ("val", "val")):
            for name, key in (("loss", "loss"), ("accuracy", "acc")):
                for epoch, value in metrics.get(split, {}).get(name, []):
                    self.curves.append(f"{prefix}_{key}", epoch + 1, value)
        self._schedule_redraw("train_loss", "val_loss", "train_acc", "val_acc")

    def find_learning_rate(self) -> None:
        """The learning-rate range test on the experiment as shown; Apply sets train.lr."""
        from transferstudio.gui.lr_finder_dialog import LrFinderDialog

        try:
            exp = self.current_experiment()
        except TransferStudioError as exc:
            self.show_error("Cannot find a learning rate", str(exc))
            return
        if self.lr_dialog is not None:  # the last one, closed (it is modal) and stopped
            self.lr_dialog.deleteLater()
        self.lr_dialog = LrFinderDialog(exp, self.host, self.workspace, self)
        self.lr_dialog.applied.connect(self._apply_learning_rate)
        self.lr_dialog.open()
        self.lr_dialog.start()

    def _apply_learning_rate(self, lr: float) -> None:
        self.train_form.widgets["lr"].setValue(lr)
        self.statusBar().showMessage(f"train.lr = {lr:g} (from the learning-rate finder)")

    def toggle_pause(self) -> None:
        self.controller.pause(self.act_pause.isChecked())

    def stop_run(self) -> None:
        self.controller.stop()
        self.statusBar().showMessage("stopping after this batch ...")

    def _on_run_started(self, event: E.RunStarted) -> None:
        self._run_began = True
        self._epochs, self._start_epoch = event.epochs, event.start_epoch
        self._run_started_at = time.monotonic()
        self.device_label.setText(f"device: {event.device_detail} ({event.precision})")
        self.epoch_bar.setRange(0, event.epochs)
        self.epoch_bar.setValue(event.start_epoch)
        self.epoch_bar.setFormat("epoch %v of %m done")
        self.batch_bar.setRange(0, event.batches_per_epoch)
        self.batch_bar.setFormat("training batch %v of %m")
        self.curves.set_epochs(event.epochs)
        self._eta.started(
            self._run_started_at,
            event.epochs,
            event.start_epoch,
            sum(event.counts.get("train", {}).values()),
            sum(event.counts.get("val", {}).values()),
        )

    def _on_batches(self, events: list) -> None:
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
        self._eta.batch(now, last.epoch, last.batch, last.batches)
        if self._eta.validating:
            self.batch_bar.setFormat("validating ...")
        self._show_eta(
            f"epoch {last.epoch + 1}/{self._epochs}, batch {last.batch + 1}/{last.batches}, "
            f"loss {last.loss:.4f}",
            now,
        )
        self._schedule_redraw("batch_loss", "lr", *self.curves.diagnostic_keys())

    def _show_eta(self, where: str, now: float) -> None:
        phase = ", validating" if self._eta.validating else ""
        left = self._eta.remaining(now)
        eta = f", about {format_duration(left)} left" if left is not None else ""
        elapsed = format_duration(now - self._run_started_at)
        self.eta_label.setText(f"{where}{phase}{eta} (elapsed {elapsed})")

    def _schedule_redraw(self, *keys: str) -> None:
        # Curves repaint at most every CURVE_REFRESH_MS: pyqtgraph paints in Python and holds
        # the GIL the training thread needs, so on small machines each repaint slows training.
        self._dirty_curves.update(keys)
        if not self._redraw_timer.isActive():
            self._redraw_timer.start()

    def _redraw_curves(self) -> None:
        keys, self._dirty_curves = self._dirty_curves, set()
        self.curves.redraw(sorted(keys))

    def _on_layer_stats(self, ev: E.LayerStats) -> None:
        if self.tree_model is None:
            return
        # The tree shows the classifier the method calls "model"; other modules are not in it.
        stats = {k.removeprefix("model."): v for k, v in ev.stats.items() if k.startswith("model.")}
        # A hidden tree (its dock tabbed away, or the columns off) is not notified: the view's
        # reaction to dataChanged walks the model in Python, ~12 ms per update on ResNet-18.
        self.tree_model.set_stats(stats, notify=self._stats_visible())

    def _stats_visible(self) -> bool:
        # Not isVisible(): a dock tabbed behind another still counts as visible to Qt.
        return not self.tree_view.visibleRegion().isEmpty() and self.show_stats.isChecked()

    def _refresh_stats_if_shown(self, *_args) -> None:
        visible = self._stats_visible()
        worker = self.controller.worker
        if worker is not None:
            # The training thread measures drift and gradients only while someone can see them.
            worker.wants_layer_stats = visible
        if self.tree_model is not None and visible:
            self.tree_model.refresh_stats()

    def _on_epoch(self, ev: E.EpochEnded) -> None:
        x = ev.epoch + 1
        self.curves.append("train_loss", x, ev.train["loss"])
        self.curves.append("val_loss", x, ev.val.get("loss", float("nan")))
        self.curves.append("train_acc", x, ev.train.get("accuracy", float("nan")))
        self.curves.append("val_acc", x, ev.val.get("accuracy", float("nan")))
        for key, value in ev.val.items():
            if key.startswith("diag_"):
                self.curves.append_diagnostic(f"val {key[len('diag_') :]}", x, value)
        self._schedule_redraw(
            "train_loss", "val_loss", "train_acc", "val_acc", *self.curves.diagnostic_keys()
        )
        self.epoch_bar.setValue(ev.epoch + 1)
        self.batch_bar.setValue(0)
        self.batch_bar.setFormat("training batch %v of %m")
        now = time.monotonic()
        self._eta.epoch_ended(now, ev.epoch)
        self.log_view.appendPlainText(_epoch_line(ev))
        self._show_eta(f"epoch {ev.epoch + 1}/{ev.epochs} done", now)

    def _on_run_error(self, message: str, details: str) -> None:
        if getattr(self, "_run_began", True):
            self._show_run_end("failed")
            self.show_error("The run stopped with an error", message, details)
            return
        # refused before its first epoch (settings, data, weights): no run to speak of
        self._reset_progress()
        self.eta_label.setText("not started: see the message")
        self.show_error("The run could not start", message, details)

    def _show_run_end(self, what: str) -> None:
        """The progress area after a run: what happened, nothing left ticking."""
        self.batch_bar.setRange(0, 1)
        self.batch_bar.setValue(0)
        self.batch_bar.setFormat("")
        self.epoch_bar.setFormat(f"{what}: epoch %v of %m")
        elapsed = format_duration(time.monotonic() - self._run_started_at)
        self.eta_label.setText(f"run {what} after {elapsed}")

    def _on_run_finished(self, result) -> None:
        self._last_result = result
        resumable = result.status != "completed"
        self._show_run_end(result.status + (" (Resume it from Runs)" if resumable else ""))
        if resumable:
            self.log_view.appendPlainText(
                "in the window: select it in Runs, then Run > Resume (Ctrl+Shift+R) or "
                "right-click > Resume"
            )
        from transferstudio.core.studies.baseline import BASELINE_OF

        baseline_of = getattr(self, "_run_tags", {}).get(BASELINE_OF)
        if baseline_of is not None:
            # A baseline is a measurement: Predict, Evaluation and the tree keep the run it
            # measures (the random-init model would otherwise replace the user's own).
            self.log_view.appendPlainText(
                f"baseline of run {baseline_of} finished: Runs shows the transfer gain on that "
                "run's row; Predict, Evaluation and the layer tree keep that run"
            )
        elif result.status == "completed" and result.best_epoch is not None:
            self.predict_panel.set_run(result.folder)
        self._redraw_timer.stop()
        self._redraw_curves()
        self.statusBar().showMessage(
            f"run {result.run_id}: {result.status}"
            + (f", best val {result.best_metric:.4f}" if result.best_metric is not None else "")
        )
        if result.report and baseline_of is None:
            self._evaluation_run_id, self._evaluation_run_status = result.run_id, result.status
            self.show_evaluation(result.report, f"run {result.run_id} (just finished)")
        if result.status == "completed" and baseline_of is None:
            self._load_run_weights(result)
        self.refresh_runs()

    def show_evaluation(self, report: dict, run_label: str = "the run just finished") -> None:
        """Fill the Evaluation panel from a run's report (see gui/evaluation_view.py)."""
        self.evaluation.show_report(report, run_label)

    def show_run_evaluation(self, record) -> None:
        """The Evaluation panel for a run of the workspace (selected in Runs, or the newest
        completed one when the window opens); a missing or damaged report is said there."""
        from transferstudio.gui.evaluation_view import read_report_file

        self._evaluation_run_id, self._evaluation_run_status = record.id, record.status
        label = f"run {record.id} ({record.name}, {record.status})"
        if record.status == "running":
            self.evaluation.show_message(f"{label}: its evaluation appears here when it ends")
            return
        try:
            report = read_report_file(record.folder)
        except ValueError as exc:
            self.evaluation.show_message(f"{label}: {exc}")
            return
        self.evaluation.show_report(report, label)

    def _evaluate_selected_run(self) -> None:
        ids = self._selected_run_ids()
        if len(ids) == 1 and ids[0] != self._evaluation_run_id:
            self.show_run_evaluation(next(r for r in self.run_records if r.id == ids[0]))

    def _load_gallery(self, items: list) -> None:
        self._gallery_generation += 1
        generation = self._gallery_generation

        def show(images) -> None:
            if generation == self._gallery_generation:  # not an earlier run's thumbnails
                self.evaluation.show_gallery(images)

        run_in_background(lambda: load_thumbnails(items), show, self._gallery_failed, self)

    def _gallery_failed(self, message: str, details: str) -> None:
        self.evaluation.gallery_label.setText(f"cannot show the misclassified images: {message}")

    def _runs_signature(self) -> tuple:
        """Changes whenever the runs table would: the index was written, or a run shown as
        running lost its process (it then reads "interrupted")."""
        from transferstudio.core.runs.workspace import RunStore

        files = [self.workspace / f"runs.sqlite{suffix}" for suffix in ("", "-wal")]
        stamps = tuple(
            (f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None for f in files
        )
        store = RunStore(self.workspace)
        running = tuple(
            store.is_active(r.id) for r in getattr(self, "run_records", []) if r.status == "running"
        )
        return stamps, running

    def _refresh_runs_if_changed(self) -> None:
        if self.controller.running:
            # This window's own run rewrites the index every epoch; the table is refreshed
            # when it ends. Polling meanwhile cost the training thread for nothing it shows.
            return
        try:
            changed = self._runs_signature() != self._runs_seen
        except OSError:  # the workspace went away (an unplugged drive): keep what is shown
            return
        if changed:
            self.refresh_runs()

    def refresh_runs(self) -> None:
        from transferstudio.core.runs.workspace import RunStore
        from transferstudio.core.studies.baseline import gains

        store = RunStore(self.workspace)
        selected = set(self._selected_run_ids()) if hasattr(self, "run_records") else set()
        self.run_records = store.list()
        self.run_gains = gains(store)
        self._runs_seen = self._runs_signature()
        # Rows move when a run is added (newest first): keep the same runs selected, by id.
        self.runs_table.blockSignals(True)
        self.runs_table.clearSelection()
        self.runs_table.setRowCount(len(self.run_records))
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
                self.runs_table.setItem(r, c, item)
            if rec.id in selected:
                self.runs_table.selectionModel().select(
                    self.runs_table.model().index(r, 0),
                    QItemSelectionModel.SelectionFlag.Select
                    | QItemSelectionModel.SelectionFlag.Rows,
                )
        self.runs_table.blockSignals(False)
        if set(self._selected_run_ids()) != selected:  # a selected run was deleted elsewhere
            self.runs_table.itemSelectionChanged.emit()
        if self._evaluation_run_id is None:  # a window just opened: the newest finished run
            finished = next((r for r in self.run_records if r.status == "completed"), None)
            if finished is not None:
                self.show_run_evaluation(finished)
        else:  # the run on show ended in another process meanwhile: its report is there now
            shown = next((r for r in self.run_records if r.id == self._evaluation_run_id), None)
            if shown is not None and shown.status != self._evaluation_run_status:
                self.show_run_evaluation(shown)
        self._update_actions()

    def run_selected_baseline(self) -> None:
        """Run the transfer-gain baseline of the selected run in the window; when it completes,
        the runs table shows the gain on the original run's row."""
        from transferstudio.core.studies.baseline import (
            BASELINE_KIND,
            BASELINE_OF,
            baseline_experiment,
        )

        ids = self._selected_run_ids()
        if len(ids) != 1 or self.controller.running:
            self.statusBar().showMessage("select one completed run (and no run in progress)")
            return
        record = next(r for r in self.run_records if r.id == ids[0])
        try:
            if record.status != "completed":
                raise TransferStudioError(
                    f"run {record.id} is {record.status}: a transfer gain compares completed runs"
                )
            exp = X.load(Path(record.folder) / "experiment.toml", self.host.method_params)
            baseline, what = baseline_experiment(exp, self.host)
        except TransferStudioError as exc:
            self.show_error("Cannot measure the transfer gain", str(exc))
            return
        self._start(baseline, {BASELINE_OF: record.id, BASELINE_KIND: what})
        self.statusBar().showMessage(f"baseline of {record.id}: {what} ...")

    def _runs_menu(self, position) -> None:
        menu = QMenu(self)
        menu.setObjectName("menu.runs")
        menu.addAction(self.act_resume)
        for text, slot in (
            ("Open experiment", self.open_selected_run),
            ("Measure transfer gain", self.run_selected_baseline),
            ("Delete...", self.delete_selected_runs),
        ):
            menu.addAction(text, slot)
        menu.popup(self.runs_table.viewport().mapToGlobal(position))

    def _selected_run_ids(self) -> list[str]:
        rows = sorted({i.row() for i in self.runs_table.selectedIndexes()})
        return [self.run_records[r].id for r in rows]

    def _overlay_selected_runs(self) -> None:
        import pyqtgraph as pg

        from transferstudio.core.runs.workspace import RunStore

        self.overlay_plot.clear()
        store = RunStore(self.workspace)
        for k, run_id in enumerate(self._selected_run_ids()):
            points = store.epoch_metrics(run_id).get("val", {}).get("accuracy", [])
            if points:
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

    def open_selected_run(self) -> None:
        ids = self._selected_run_ids()
        if ids:
            record = next(r for r in self.run_records if r.id == ids[0])
            self.open_file(Path(record.folder) / "experiment.toml")

    def delete_selected_runs(self) -> None:
        from transferstudio.core.runs.workspace import RunStore

        ids = self._selected_run_ids()
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
        self.refresh_runs()
        if refused:
            QMessageBox.warning(self, "Some runs were not deleted", "\n\n".join(refused))

    # ------------------------------------------------------------------ files

    def new_experiment(self) -> None:
        if not self._confirm_discard("starting a new experiment"):
            return
        spec = self.host.method(self.method_combo.currentData() or "fine-tune")
        from transferstudio.core.models.weights import default_weights

        backbone = self.host.backbone(X.ModelSettings().backbone)
        exp = X.new_experiment(spec.name, spec.params, weights=default_weights(backbone))
        self.load_experiment(exp, None)
        self._check_weights_batchnorm(adopt=True)  # a new experiment: set, not only proposed

    def open_dialog(self) -> None:
        if not self._confirm_discard("opening another experiment"):
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "Open experiment", str(self.base_dir), "Experiments (*.toml)"
        )
        if path:
            self.open_file(Path(path))

    def open_file(self, path: Path) -> bool:
        try:
            exp = X.load(path, self.host.method_params)
        except TransferStudioError as exc:
            self.show_error("Cannot open the experiment", str(exc))
            return False
        self.load_experiment(exp, path)
        self._remember_recent(path)
        return True

    def save(self) -> bool:
        if self.experiment_path is None:
            return self.save_as()
        return self.save_to(self.experiment_path)

    def save_as(self) -> bool:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save experiment", str(self.base_dir / "experiment.toml"), "Experiments (*.toml)"
        )
        return self.save_to(Path(path)) if path else False

    def save_to(self, path: Path) -> bool:
        try:
            exp = self.current_experiment()
        except TransferStudioError as exc:
            self.show_error("Cannot save", str(exc))
            return False
        if path != self.experiment_path:
            # Save As names the experiment after its file (the name runs are listed under),
            # as a new experiment is still called after its method
            self.experiment_name = exp.name = path.stem
        if path.resolve().parent != self.base_dir.resolve():
            exp = exp.with_absolute_paths()
        write_text_atomic(path, exp.to_toml())
        self.experiment_path = path
        self.base_dir = path.resolve().parent
        self._saved_text = self._experiment_text()
        self.setWindowTitle(f"TransferStudio - {path.name}[*]")
        self.setWindowModified(False)
        self._remember_recent(path)
        self.statusBar().showMessage(f"saved {path}")
        return True

    def _remember_recent(self, path: Path) -> None:
        recent = [p for p in (self.settings.value("recent", []) or []) if p != str(path)]
        self.settings.setValue("recent", [str(path), *recent][:MAX_RECENT])
        self._refresh_recent()

    def _refresh_recent(self) -> None:
        if not hasattr(self, "recent_menu"):
            return
        self.recent_menu.clear()
        for entry in self.settings.value("recent", []) or []:
            action = self.recent_menu.addAction(entry)
            action.triggered.connect(lambda _=False, p=entry: self._open_recent(Path(p)))

    def _open_recent(self, path: Path) -> None:
        if self._confirm_discard("opening another experiment"):
            self.open_file(path)

    # ------------------------------------------------------------------ dialogs and state

    def show_error(self, title: str, message: str, details: str = "") -> None:
        """A non-blocking error dialog; the window stays usable."""
        self.last_error = (message, details)
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, parent=self)
        box.setObjectName("dialog.error")
        if details:
            box.setDetailedText(details)
        box.open()
        self.error_box = box
        self.statusBar().showMessage(message.splitlines()[0] if message else title)

    def show_plugins(self) -> None:
        lines = []
        for r in self.host.records:
            lines.append(f"{r.name} {r.version} [{r.status}], API {r.api_version or '?'}")
            lines += [f"    {k}: {', '.join(v)}" for k, v in r.provides.items()]
        details = "\n\n".join(e for r in self.host.records for e in r.errors)
        box = QMessageBox(QMessageBox.Icon.Information, "Plugins", "\n".join(lines), parent=self)
        box.setObjectName("dialog.plugins")
        if details:
            box.setDetailedText(details)
        box.open()

    def show_about(self) -> None:
        import platform

        import torch

        from transferstudio.core.training.device import choose_device, describe

        text = (
            f"TransferStudio {__version__} (plugin API {API_VERSION})\n"
            f"Python {platform.python_version()}, torch {torch.__version__}\n"
            f"device: {describe(choose_device('auto'))}\nworkspace: {self.workspace}"
        )
        box = QMessageBox(QMessageBox.Icon.Information, "About TransferStudio", text, parent=self)
        box.setObjectName("dialog.about")
        box.open()

    def _first_form_error(self) -> str:
        """The message of the first invalid settings field (highlighting it), or ''."""
        forms = (
            self.data_form,
            self.augment_form,
            self.model_form,
            self.train_form,
            self.method_form,
        )
        for form in forms:
            if form is not None and not form.validate():
                return form.error
        return ""

    def _update_actions(self, *_: Any) -> None:
        running = self.controller.running
        if not self._syncing and getattr(self, "method_form", None) is not None:
            self.setWindowModified(self.has_unsaved_changes())
        error = self._first_form_error()
        if not error and not self.data_path.text().strip():
            error = "data.path: choose an image folder or CSV file"
        if not error and self.data_error:
            error = f"data.path: {self.data_error}"
        self.form_error.setText(error)
        self.act_start.setEnabled(not running and not error)
        self.act_lr_find.setEnabled(not running and not error)
        self.act_pause.setEnabled(running)
        self.act_stop.setEnabled(running and self.controller.state != "stopping")
        self.act_resume.setEnabled(not running and self._selected_run_resumable())
        if not running:
            self.act_pause.setChecked(False)
        for widget in (self.data_path, self.backbone_combo, self.method_combo):
            widget.setEnabled(not running)
        method = self.host.methods.get(self.method_combo.currentData())
        distributed = method is not None and method.distributed
        self.processes.setEnabled(not running and distributed)
        self.processes.setToolTip(
            PROCESSES_TIP
            if distributed
            else f"{self.method_combo.currentData()} does not support training in several "
            "processes (docs/distributed.md); it runs in one."
        )

    def _selected_run_resumable(self) -> bool:
        from transferstudio.core.runs.resume import is_resumable

        ids = self._selected_run_ids() if hasattr(self, "run_records") else []
        records = {r.id: r for r in self.run_records} if ids else {}
        return len(ids) == 1 and is_resumable(records[ids[0]])

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self.sweep_panel.running:
            answer = QMessageBox.question(
                self,
                "A sweep is in progress",
                "Stop the sweep and quit? Its finished trials are kept; Start continues it "
                "later, retrying the interrupted trial.",
            )
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
            self.sweep_panel.stop_and_wait()
        if self.controller.running:
            answer = QMessageBox.question(
                self,
                "A run is in progress",
                "Stop the run and quit? Its checkpoints are kept and it can be resumed later.",
            )
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
            self.controller.stop_and_wait()
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        event.accept()


PROCESSES_TIP = (
    "More than 1 runs the experiment under torchrun with DistributedDataParallel: one process "
    "per GPU (NCCL), or CPU processes (Gloo). The batch size stays the global batch and must be "
    "a multiple of this number."
)


def _epoch_line(ev: E.EpochEnded) -> str:
    """The window log's line for an ended epoch: its figures at a glance."""

    def figures(split: dict[str, float]) -> str:
        shown = [f"{k} {split[k]:.4f}" for k in ("loss", "accuracy") if k in split]
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


def _blocks(backbone_node) -> list:
    """The backbone's block list: descend while there is a single child with parameters."""
    node = backbone_node
    while node is not None:
        with_params = [c for c in node.children if c.params]
        if len(with_params) != 1:
            return with_params
        node = with_params[0]
    return []


def _check_device(train: X.TrainSettings) -> None:
    """The device field as the run checks it: a name torch knows and a device this machine has."""
    from transferstudio.core.training.device import choose_device

    choose_device(train.device)
