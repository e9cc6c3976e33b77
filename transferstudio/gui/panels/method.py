"""The Method panel: the transfer method, its own settings (a form rebuilt for each method),
the training settings and the first problem that keeps Start disabled."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QLabel, QVBoxLayout, QWidget

from transferstudio.api import TASK_CLASSIFICATION, TASK_DETECTION, TASKS
from transferstudio.core.settings import experiment as X
from transferstudio.gui.settings_form import SettingsForm
from transferstudio.gui.widgets import named

DEFAULT_METHODS = {TASK_CLASSIFICATION: "fine-tune", TASK_DETECTION: "detect"}
"""The method a task starts with when the user picks it."""


class MethodPanel(QWidget):
    """``method_changed`` fires when the user picks another method (after its form was
    rebuilt), ``params_changed`` on an edit of the method's settings, ``changed`` on an edit of
    the training settings. ``form_rebuilt(spec)`` follows every rebuild of the method's form.

    The method's layer-tree declaration (``MethodSpec.layer_tree``, API 1.5) says which of its
    settings hold the freeze plan and the BN mode: :meth:`freeze_plan`, :meth:`bn_mode` and
    :meth:`set_plan_patterns` read and write only those."""

    method_changed = Signal()
    task_changed = Signal()
    params_changed = Signal()
    changed = Signal()
    form_rebuilt = Signal(object)  # the MethodSpec

    def __init__(self, host, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.host = host
        self.plan_check: Callable[[Any], None] | None = None
        """Set by the window: checks a method's settings against the model in the tree."""
        self.method_layout = QVBoxLayout(self)
        # The task first: it decides which methods (and data formats) apply.
        self.task_combo = named(QComboBox(), "task", "task")
        for task in TASKS:
            self.task_combo.addItem(task.capitalize(), task)
        self.task_combo.setToolTip(
            "What the experiment learns: one class per image (classification) or boxes around "
            "objects (detection)"
        )
        self.task_combo.currentIndexChanged.connect(self._on_task_picked)
        self.method_layout.addWidget(self.task_combo)
        self.method_combo = named(QComboBox(), "method.name", "method")
        self._fill_methods(TASK_CLASSIFICATION)
        self.method_combo.currentIndexChanged.connect(self._on_method_picked)
        self.method_layout.addWidget(self.method_combo)
        self.method_form: SettingsForm | None = None
        self.train_form = SettingsForm(X.TrainSettings, "train.")
        self.train_form.context_check = _check_device
        self.train_form.changed.connect(self.changed)
        self.method_layout.addWidget(self.train_form)
        self.form_error = named(QLabel(""), "method.error")
        self.form_error.setStyleSheet("color: #b00000;")
        self.form_error.setWordWrap(True)
        self.method_layout.addWidget(self.form_error)
        self._showing = False  # show_experiment: the combo's change is not the user's

    # ------------------------------------------------------------------ the experiment

    def _fill_methods(self, task: str) -> None:
        """The method list: the methods of ``task`` (``MethodSpec.task``, API 1.6)."""
        self.method_combo.clear()
        for spec in self.host.methods.values():
            if spec.task != task:
                continue
            self.method_combo.addItem(spec.name, spec.name)
            self.method_combo.setItemData(
                self.method_combo.count() - 1, spec.description, Qt.ItemDataRole.ToolTipRole
            )

    def task(self) -> str:
        """The experiment's task as shown."""
        return self.task_combo.currentData() or TASK_CLASSIFICATION

    def _on_task_picked(self) -> None:
        if self._showing:
            return
        self._showing = True
        try:
            self._fill_methods(self.task())
            preferred = DEFAULT_METHODS.get(self.task(), "")
            self.method_combo.setCurrentIndex(max(self.method_combo.findData(preferred), 0))
        finally:
            self._showing = False
        if self.method_combo.count():
            self.rebuild_form()
        self.task_changed.emit()
        self.method_changed.emit()

    def show_experiment(self, exp: X.Experiment) -> None:
        self._showing = True
        try:
            self.train_form.set_values(dataclasses.asdict(exp.train))
            self.task_combo.setCurrentIndex(max(self.task_combo.findData(exp.task), 0))
            self._fill_methods(exp.task)
            self.method_combo.setCurrentIndex(max(self.method_combo.findData(exp.method), 0))
        finally:
            self._showing = False
        self.rebuild_form(exp.method_params)

    def name(self) -> str | None:
        return self.method_combo.currentData()

    def spec(self):
        """The MethodSpec of the method shown (None if no plugin provides it)."""
        return self.host.methods.get(self.name())

    def forms(self) -> tuple:
        return (self.train_form, self.method_form)

    def _on_method_picked(self) -> None:
        if self._showing:
            return
        self.rebuild_form()
        self.method_changed.emit()

    def rebuild_form(self, params: Any | None = None) -> None:
        """A new form for the method shown, with ``params`` (else its defaults)."""
        spec = self.host.method(self.name())
        if self.method_form is not None:
            self.method_layout.removeWidget(self.method_form)
            self.method_form.hide()  # not drawn under the new form until it is deleted
            self.method_form.deleteLater()
        self.method_form = SettingsForm(spec.params, "method.params.")
        self.method_form.setObjectName("method.params")
        self.method_form.context_check = self._check_plan
        if params is not None and isinstance(params, spec.params):
            self.method_form.set_values(dataclasses.asdict(params))
        self.method_form.changed.connect(self.params_changed)
        # Below the task and method lists.
        self.method_layout.insertWidget(
            self.method_layout.indexOf(self.method_combo) + 1, self.method_form
        )
        self.form_rebuilt.emit(spec)

    def _check_plan(self, params: Any) -> None:
        if self.plan_check is not None:
            self.plan_check(params)

    # ------------------------------------------------------------------ the declared fields

    def tree_declaration(self):
        """The method's ``LayerTreeSpec`` (None: it does not declare the layer tree)."""
        spec = self.spec()
        return getattr(spec, "layer_tree", None) if spec is not None else None

    def freeze_plan(self):
        """The FreezePlan the method's settings hold now, or None when the method declares no
        freeze plan (the tree is then read-only)."""
        tree = self.tree_declaration()
        if self.method_form is None or tree is None or tree.freeze is None:
            return None
        from transferstudio.api import FreezePlan

        values = self.method_form.values()
        return FreezePlan(
            patterns=list(values[tree.freeze]),
            up_to=values[tree.freeze_up_to] if tree.freeze_up_to else "",
            bn_mode=values[tree.bn_mode] if tree.bn_mode else "train",
        )

    def set_plan_patterns(self, patterns: list[str]) -> None:
        """Write a freeze plan edited in the tree into the declared settings."""
        tree = self.tree_declaration()
        if self.method_form is None or tree is None or tree.freeze is None:
            return
        values: dict[str, Any] = {tree.freeze: patterns}
        if tree.freeze_up_to:
            values[tree.freeze_up_to] = ""
        self.method_form.set_values(values)

    def bn_mode(self) -> str | None:
        """The BN mode the declared setting holds (None: the method declares none)."""
        tree = self.tree_declaration()
        if self.method_form is None or tree is None or not tree.bn_mode:
            return None
        return self.method_form.values().get(tree.bn_mode)

    def set_bn_mode(self, mode: str) -> bool:
        """Set the declared BN mode setting; False when the method declares none."""
        tree = self.tree_declaration()
        if self.method_form is None or tree is None or not tree.bn_mode:
            return False
        self.method_form.set_values({tree.bn_mode: mode})
        return True


def _check_device(train: X.TrainSettings) -> None:
    """The device field as the run checks it: a name torch knows and a device this machine has."""
    from transferstudio.core.training.device import choose_device

    choose_device(train.device)
