"""The main window: the shell around the panels (``gui/panels/``) of one experiment.

The window owns the actions, menus and docks, the experiment files (``window_files.py``), the
runs (``window_run.py``) and closing; each panel owns its widgets and reports through signals,
which the window wires to the other panels (the method, model and tree: ``window_tree.py``).
This module is longer than a panel because it is where they all meet: it builds and docks
every panel, reads the experiment from them and shows it in them, and keeps the widget names
that tests, benchmarks and docs/screenshots.py use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, Qt, QTimer, QUrl
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFrame,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QWidget,
)

from transferstudio.api import TASK_DETECTION, ExperimentError
from transferstudio.core.plugins.host import PluginHost
from transferstudio.core.settings import experiment as X
from transferstudio.gui.dialogs.about import show_about, show_plugins
from transferstudio.gui.gui_thread_gc import collect_garbage_on_gui_thread
from transferstudio.gui.panels.data import DataPanel
from transferstudio.gui.panels.evaluation import EvaluationPanel
from transferstudio.gui.panels.method import MethodPanel
from transferstudio.gui.panels.model import ModelPanel
from transferstudio.gui.panels.predict import PredictPanel
from transferstudio.gui.panels.runs import RunsPanel
from transferstudio.gui.panels.sweeps import SweepPanel
from transferstudio.gui.panels.training import TrainingPanel
from transferstudio.gui.widgets import named
from transferstudio.gui.window_files import FilesMixin
from transferstudio.gui.window_run import RunMixin
from transferstudio.gui.window_tree import TreeMixin


class MainWindow(FilesMixin, TreeMixin, RunMixin, QMainWindow):
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
        self._base_dir = Path.cwd()
        self._syncing = False
        self.last_error: tuple[str, str] | None = None
        self.error_box: QMessageBox | None = None
        self._saved_text = ""
        self._shown_once = False
        self.setObjectName("MainWindow")
        self.setWindowTitle("TransferStudio")
        self.setDockNestingEnabled(True)
        self.setAcceptDrops(True)

        self._build_actions()
        self._init_run()  # the run controller (gui/window_run.py)
        self._build_panels()
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

    def _build_panels(self) -> None:
        left, right = Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea
        bottom = Qt.DockWidgetArea.BottomDockWidgetArea
        self.data_panel = DataPanel(self.host)
        self.data_panel.changed.connect(self._update_actions)
        self.data_panel.path_chosen.connect(self._update_actions)
        self.data_panel.scanned.connect(self._on_scanned)
        self.data_panel.scan_failed.connect(self._on_scan_failed)
        self._dock("data", "Data", self.data_panel, left)

        self.model_panel = ModelPanel(self.host)
        self.model_panel.backbone_changed.connect(self._on_model_changed)
        self.model_panel.weights_chosen.connect(self._update_actions)
        self.model_panel.changed.connect(self._update_actions)
        self.model_panel.frozen_stats_wanted.connect(self._use_frozen_stats)
        tree = self.layer_tree = self.model_panel.tree
        tree.export_host = self.host
        tree.wanted_key = self._tree_key
        tree.build_ended.connect(self._start_if_pending)
        tree.tree_shown.connect(self._on_tree_shown)
        tree.plan_edited.connect(self._on_plan_edited)
        tree.export_requested.connect(self._export_dialog)
        tree.stats_wanted.connect(self._set_stats_wanted)
        tree.exported.connect(self._export_done)
        tree.export_errored.connect(lambda m, d: self.show_error("Export failed", m, d))
        dock = self._dock("model", "Model", self.model_panel, left)
        # Queued: visibilityChanged comes before the view itself reports visible.
        dock.visibilityChanged.connect(
            tree.refresh_stats_if_shown, Qt.ConnectionType.QueuedConnection
        )

        self.method_panel = MethodPanel(self.host)
        self.method_panel.plan_check = self._check_plan_against_model
        self.method_panel.method_changed.connect(self._on_method_changed)
        self.method_panel.task_changed.connect(self._on_task_changed)
        self.method_panel.params_changed.connect(self._on_method_params_changed)
        self.method_panel.changed.connect(self._update_actions)
        self.method_panel.form_rebuilt.connect(self.data_panel.show_roles)
        self._dock("method", "Method", self.method_panel, right)

        self.training = TrainingPanel([self.act_start, self.act_pause, self.act_stop])
        self.setCentralWidget(self.training)

        self.runs = RunsPanel(self.workspace, self.act_resume)
        self.runs.selection_changed.connect(self._evaluate_selected_run)
        self.runs.selection_changed.connect(self._update_actions)
        self.runs.refreshed.connect(self._on_runs_refreshed)
        self.runs.open_requested.connect(lambda path: self.open_file(Path(path)))
        self.runs.resume_requested.connect(self.resume_selected_run)
        self.runs.baseline_requested.connect(self.run_selected_baseline)
        self._dock("runs", "Runs", self.runs, bottom)

        self.evaluation = named(EvaluationPanel(load_gallery=True), "evaluation.panel")
        self._dock("evaluation", "Evaluation", self.evaluation, bottom)

        self.predict_panel = PredictPanel(self.host, self.workspace)
        self.predict_panel.setObjectName("predict.panel")
        self._dock("predict", "Predict", self.predict_panel, bottom)

        self.sweep_panel = SweepPanel(self.host, self.workspace, self.current_experiment)
        self.sweep_panel.open_experiment.connect(self.open_best_trial)
        self.sweep_panel.sweep_ended.connect(self.refresh_runs)
        self._dock("sweeps", "Sweeps", self.sweep_panel, bottom)

        # The widgets tests, benchmarks and docs/screenshots.py reach by their old names.
        d, m, t = self.data_panel, self.model_panel, self.training
        self.data_path, self.scan_label, self.counts_tree = d.path, d.scan_label, d.counts_tree
        self.thumbnails, self.data_form, self.augment_form = (
            d.thumbnails,
            d.data_form,
            d.augment_form,
        )
        self.backbone_combo, self.weights_combo, self.model_form = (
            m.backbone_combo, m.weights_combo, m.model_form,
        )  # fmt: skip
        self.bn_warning, self.bn_fix = m.bn_warning, m.bn_fix
        self.tree_view, self.tree_summary = tree.view, tree.summary
        self.last_blocks, self.show_stats, self.export_button = (
            tree.last_blocks, tree.show_stats, tree.export_button,
        )  # fmt: skip
        self.method_combo, self.train_form = (
            self.method_panel.method_combo,
            self.method_panel.train_form,
        )
        self.form_error = self.method_panel.form_error
        self.processes, self.device_label, self.curves, self.log_view = (
            t.processes, t.device_label, t.curves, t.log_view,
        )  # fmt: skip
        self.epoch_bar, self.batch_bar, self.eta_label = t.epoch_bar, t.batch_bar, t.eta_label
        self.runs_table, self.overlay_plot = self.runs.table, self.runs.overlay_plot
        self.class_table = self.evaluation.class_table

    # The state tests and tools read, where the panel that owns it keeps it.
    method_form = property(lambda self: self.method_panel.method_form)
    tree_model = property(lambda self: self.layer_tree.tree_model)
    tree_torch_model = property(lambda self: self.layer_tree.torch_model)
    tree_weights_source = property(lambda self: self.layer_tree.weights_source)
    scan_result = property(lambda self: self.data_panel.scan_result)
    data_error = property(lambda self: self.data_panel.data_error)
    weights_value = property(lambda self: self.model_panel.weights_value)
    run_records = property(lambda self: self.runs.run_records)
    run_gains = property(lambda self: self.runs.run_gains)

    @property
    def base_dir(self) -> Path:
        """The folder of the experiment (its relative paths start there)."""
        return self._base_dir

    @base_dir.setter
    def base_dir(self, value: Path) -> None:
        self._base_dir = self.data_panel.base_dir = self.model_panel.base_dir = Path(value)

    # ------------------------------------------------------------------ experiment <-> window

    def load_experiment(self, exp: X.Experiment, path: Path | None = None) -> None:
        """Show ``exp`` in every panel (the window's whole state comes from the experiment)."""
        self._syncing = True
        try:
            self.base_dir = Path(exp.base_dir)
            self.experiment_path = path
            self.experiment_name = exp.name
            self.data_panel.set_task(exp.task)
            self.data_panel.show_experiment(exp)
            self.model_panel.show_experiment(exp)
            self.method_panel.show_experiment(exp)
        finally:
            self._syncing = False
        self.setWindowTitle(f"TransferStudio - {path.name if path else exp.name}[*]")
        self._saved_text = self._experiment_text()
        self.data_panel.scan()
        self._rebuild_tree()
        self._show_tree_contract()
        self.model_panel.set_bn_mode(self.method_panel.bn_mode())
        self.model_panel.check_weights_batchnorm()
        self._update_actions()

    def current_experiment(self) -> X.Experiment:
        """The experiment the window shows (raises ExperimentError naming a bad key)."""
        error = self._first_form_error()
        if error:
            raise ExperimentError(error)
        method = self.method_panel
        assert method.method_form is not None
        return X.Experiment(
            name=self.experiment_name,
            method=method.name(),
            method_params=method.method_form.build(),
            data=self.data_panel.data_settings(),
            augment=self.data_panel.augment_form.build(),
            model=self.model_panel.model_settings(),
            train=method.train_form.build(),
            base_dir=str(self.base_dir),
            task=method.task(),
        )

    def _first_form_error(self) -> str:
        """The message of the first invalid settings field (highlighting it), or ''."""
        forms = (
            self.data_panel.data_form,
            self.data_panel.augment_form,
            self.model_panel.model_form,
            *self.method_panel.forms(),
        )
        for form in forms:
            if form is not None and not form.validate():
                return form.error
        return ""

    # ------------------------------------------------------------------ panels -> panels

    def _on_task_changed(self) -> None:
        """Another task: the data is read by that task's formats, and the metric that picks
        the best checkpoint is the task's own (mAP@0.5 for detection, accuracy otherwise)."""
        task = self.method_panel.task()
        self.data_panel.set_task(task)
        metric = self.method_panel.train_form.values().get("early_stopping_metric")
        detection_metric = metric in ("map50", "map")
        if (task == TASK_DETECTION) != detection_metric:
            wanted = "map50" if task == TASK_DETECTION else "accuracy"
            self.method_panel.train_form.set_values({"early_stopping_metric": wanted})
        if not self._syncing:
            self.data_panel.scan()

    def _on_scanned(self, _result) -> None:
        self._rebuild_tree()
        self._start_if_pending()  # when the tree needed no rebuild for these classes

    def _on_scan_failed(self, _message: str) -> None:
        self._start_pending = False  # nothing to start on
        self._update_actions()

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt API
        if event.mimeData().hasUrls() and event.mimeData().urls()[0].isLocalFile():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.data_panel.set_path(event.mimeData().urls()[0].toLocalFile())

    # ------------------------------------------------------------------ runs and evaluation

    def refresh_runs(self) -> None:
        self.runs.refresh()

    def _on_runs_refreshed(self) -> None:
        self.evaluation.follow_runs(self.runs.run_records)
        self._update_actions()

    def _evaluate_selected_run(self) -> None:
        ids = self.runs.selected_ids()
        if len(ids) == 1 and ids[0] != self.evaluation.run_id:
            self.evaluation.show_run(self.runs.record(ids[0]))

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
        show_plugins(self, self.host)

    def show_about(self) -> None:
        show_about(self, self.workspace)

    def _update_actions(self, *_: Any) -> None:
        running = self.controller.running
        if not self._syncing and self.method_form is not None:
            self.setWindowModified(self.has_unsaved_changes())
        error = self._first_form_error()
        if not error and not self.data_panel.path.text().strip():
            error = "data.path: choose an image folder or CSV file"
        if not error and self.data_panel.data_error:
            error = f"data.path: {self.data_panel.data_error}"
        self.method_panel.form_error.setText(error)
        self.act_start.setEnabled(not running and not error)
        self.act_lr_find.setEnabled(not running and not error)
        self.act_pause.setEnabled(running)
        self.act_stop.setEnabled(running and self.controller.state != "stopping")
        self.act_resume.setEnabled(not running and self.runs.selected_resumable())
        if not running:
            self.act_pause.setChecked(False)
        for widget in (
            self.data_path,
            self.backbone_combo,
            self.method_combo,
            self.method_panel.task_combo,
        ):
            widget.setEnabled(not running)
        method = self.method_panel.spec()
        distributed = method is not None and method.distributed
        self.training.set_processes_allowed(not running, distributed, self.method_panel.name())

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
