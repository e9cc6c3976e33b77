"""The window's runs: starting one (new, resumed, a transfer-gain baseline), following it in
the panels and what its end changes; the learning-rate finder.

A mixin of :class:`~transferstudio.gui.main_window.MainWindow`: the run touches most panels
(training progress, the layer tree's weights and drift, Evaluation, Predict, Runs), and the
window is where panels meet. The run itself is a :class:`~transferstudio.gui.worker.RunWorker`
(or a torchrun :class:`~transferstudio.gui.process_run.ProcessRun`) owned by the controller.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QTimer

from transferstudio.api import TransferStudioError
from transferstudio.core.progress import events as E
from transferstudio.core.settings import experiment as X
from transferstudio.gui.worker import RunController, RunWorker


class RunMixin:
    """Start, Pause, Stop, Resume, Transfer gain and Find learning rate, for MainWindow."""

    def _init_run(self) -> None:
        self.controller = RunController(self)
        self.controller.state_changed.connect(self._update_actions)
        self.controller.state_changed.connect(
            lambda state: setattr(self.runs, "polling", state == "idle")
        )
        self._start_pending = False  # Start pressed while the model was built (model_ready)
        self._run_tags: dict[str, str] = {}
        self._last_result = None
        self.last_export = None
        self.lr_dialog = None  # the learning-rate finder, while open

    # ------------------------------------------------------------------ starting

    def start_run(self) -> None:
        if self.controller.running:
            return
        if not self.model_ready():
            self._start_pending = True
            self.training.eta_label.setText("starting once the model is built ...")
            return
        try:
            exp = self.current_experiment()
        except TransferStudioError as exc:
            self.show_error("Cannot start", str(exc))
            return
        self._start(exp)

    def _start_if_pending(self) -> None:
        if self._start_pending and self.model_ready():
            self._start_pending = False
            QTimer.singleShot(0, self.start_run)

    def _start(
        self, exp: X.Experiment, tags: dict[str, str] | None = None, resume: str | None = None
    ) -> None:
        self.training.begin()
        self._run_tags = dict(tags or {})
        if resume is not None:
            from transferstudio.core.runs.workspace import RunStore

            self.training.show_earlier_epochs(RunStore(self.workspace).epoch_metrics(resume))
        one_process = tags or resume is not None
        spin = self.training.processes
        processes = spin.value() if spin.isEnabled() and not one_process else 1
        if processes > 1:
            from transferstudio.gui.process_run import ProcessRun

            worker = ProcessRun(exp, self.workspace, processes)
        else:
            worker = RunWorker(exp, self.host, self.workspace, resume=resume, tags=tags)
        # Bound methods of GUI-thread objects, never lambdas: a lambda would run in the
        # worker's thread.
        worker.run_started.connect(self.training.on_run_started)
        worker.batches_ended.connect(self.training.on_batches)
        worker.epoch_ended.connect(self.training.on_epoch)
        worker.layer_stats.connect(self._on_layer_stats)
        worker.logged.connect(self.training.log_view.appendPlainText)
        worker.finished.connect(self._on_run_finished)
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

    def resume_selected_run(self) -> None:
        """Continue the run selected in Runs in its own folder, as ``run --resume`` does."""
        from transferstudio.core.runs.resume import experiment_to_resume
        from transferstudio.core.runs.workspace import RunStore

        ids = self.runs.selected_ids()
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

    def run_selected_baseline(self) -> None:
        """Run the transfer-gain baseline of the selected run in the window; when it completes,
        the runs table shows the gain on the original run's row."""
        from transferstudio.core.studies.baseline import (
            BASELINE_KIND,
            BASELINE_OF,
            baseline_experiment,
        )

        ids = self.runs.selected_ids()
        if len(ids) != 1 or self.controller.running:
            self.statusBar().showMessage("select one completed run (and no run in progress)")
            return
        record = self.runs.record(ids[0])
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

    def find_learning_rate(self) -> None:
        """The learning-rate range test on the experiment as shown; Apply sets train.lr."""
        from transferstudio.gui.dialogs.lr_finder import LrFinderDialog

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
        self.method_panel.train_form.widgets["lr"].setValue(lr)
        self.statusBar().showMessage(f"train.lr = {lr:g} (from the learning-rate finder)")

    def toggle_pause(self) -> None:
        self.controller.pause(self.act_pause.isChecked())

    def stop_run(self) -> None:
        self.controller.stop()
        self.statusBar().showMessage("stopping after this batch ...")

    # ------------------------------------------------------------------ following

    def _tree_module(self) -> str:
        """The method module the layer tree shows (its declaration; ``model`` by default)."""
        declared = self.method_panel.tree_declaration()
        return declared.module if declared is not None else "model"

    def _on_layer_stats(self, ev: E.LayerStats) -> None:
        if self.tree_model is None:
            return
        # The tree shows the classifier the method declares; other modules are not in it.
        prefix = f"{self._tree_module()}."
        stats = {k.removeprefix(prefix): v for k, v in ev.stats.items() if k.startswith(prefix)}
        self.layer_tree.show_stats_of(stats, notify=self._stats_visible())

    def _stats_visible(self) -> bool:
        return self.layer_tree.stats_visible()

    def _set_stats_wanted(self, visible: bool) -> None:
        worker = self.controller.worker
        if worker is not None:
            # The training thread measures drift and gradients only while someone can see them.
            worker.wants_layer_stats = visible

    # ------------------------------------------------------------------ the end

    def _on_run_error(self, message: str, details: str) -> None:
        if self.training.run_began:
            self.training.show_run_end("failed")
            self.show_error("The run stopped with an error", message, details)
            return
        # refused before its first epoch (settings, data, weights): no run to speak of
        self.training.show_not_started()
        self.show_error("The run could not start", message, details)

    def _on_run_finished(self, result) -> None:
        self._last_result = result
        resumable = result.status != "completed"
        self.training.show_run_end(result.status + (" (Resume it from Runs)" if resumable else ""))
        log = self.training.log_view
        if resumable:
            log.appendPlainText(
                "in the window: select it in Runs, then Run > Resume (Ctrl+Shift+R) or "
                "right-click > Resume"
            )
        from transferstudio.core.studies.baseline import BASELINE_OF

        baseline_of = self._run_tags.get(BASELINE_OF)
        if baseline_of is not None:
            # A baseline is a measurement: Predict, Evaluation and the tree keep the run it
            # measures (the random-init model would otherwise replace the user's own).
            log.appendPlainText(
                f"baseline of run {baseline_of} finished: Runs shows the transfer gain on that "
                "run's row; Predict, Evaluation and the layer tree keep that run"
            )
        elif result.status == "completed" and result.best_epoch is not None:
            self.predict_panel.set_run(result.folder)
        self.training.redraw_now()
        self.statusBar().showMessage(
            f"run {result.run_id}: {result.status}"
            + (f", best val {result.best_metric:.4f}" if result.best_metric is not None else "")
        )
        if result.report and baseline_of is None:
            self.evaluation.show_finished_run(result)
        if result.status == "completed" and baseline_of is None:
            self.layer_tree.load_run_weights(result.folder, result.run_id, self._tree_module())
        self.refresh_runs()
