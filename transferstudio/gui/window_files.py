"""The window's experiment files: New, Open, Save, Save As, recent files, and the question
before unsaved changes are replaced. A mixin of
:class:`~transferstudio.gui.main_window.MainWindow` (the shell owns the files)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QMessageBox

from transferstudio.api import TASK_DETECTION, TransferStudioError
from transferstudio.core.files.atomic import write_text_atomic
from transferstudio.core.settings import experiment as X
from transferstudio.core.studies.sweep_space import with_params

MAX_RECENT = 8


class FilesMixin:
    """Opening and saving the experiment the window shows."""

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

    # ------------------------------------------------------------------ files

    def new_experiment(self) -> None:
        if not self._confirm_discard("starting a new experiment"):
            return
        spec = self.host.method(self.method_combo.currentData() or "fine-tune")
        from transferstudio.core.models.weights import default_weights

        backbone = self.host.backbone(X.ModelSettings().backbone)
        exp = X.new_experiment(
            spec.name, spec.params, weights=default_weights(backbone), task=spec.task
        )
        if spec.task == TASK_DETECTION and hasattr(exp.method_params, "freeze_up_to"):
            from transferstudio.core.models.detector import freeze_up_to_for

            # As `init --task detection`: the last three backbone stages train.
            exp.method_params.freeze_up_to = freeze_up_to_for(backbone)
        self.load_experiment(exp, None)
        self.model_panel.check_weights_batchnorm(adopt=True)  # new: set, not only proposed

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

    def open_best_trial(self, path: str, params: dict) -> bool:
        """A sweep's best trial, to keep. When the window holds an experiment file of the same
        method, the trial's swept values are set in it, unsaved: Save then rewrites just those
        lines of the user's file. Otherwise the trial's experiment opens as a new, unsaved
        experiment (Save asks where): the run folder's own copy is the run's record and is never
        saved over."""
        try:
            trial = X.load(Path(path), self.host.method_params)
        except TransferStudioError as exc:
            self.show_error("Cannot open the best trial", str(exc))
            return False
        target = self.experiment_path
        if target is not None and trial.method == self.method_panel.name():
            try:
                best = with_params(self.current_experiment(), self.host, params)
            except TransferStudioError:
                best = None  # the window's experiment does not take these values: open the trial
            if best is not None:
                saved = self._saved_text
                self.load_experiment(best, target)
                self._saved_text = saved  # the file does not hold these values yet
                self.setWindowModified(self.has_unsaved_changes())
                self.statusBar().showMessage(
                    f"the best trial's values are set; Save writes them into {target.name}"
                )
                return True
        trial.name = f"{trial.name}-best"
        self.load_experiment(trial, None)
        self._saved_text = ""
        self.setWindowModified(True)
        self.statusBar().showMessage("the best trial opened as a new experiment; Save asks where")
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
        if path == self.experiment_path:
            # The file it was opened from: only the changed values are rewritten, and the
            # author's comments, order and spacing stay (core/settings/experiment.save).
            X.save(exp, path)
        else:  # another file (Save As): generated whole, every key with its help
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
