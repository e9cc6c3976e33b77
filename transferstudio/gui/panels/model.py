"""The Model panel: backbone, weights (with the folded-BatchNorm check), model settings, and
below them the layer tree (:mod:`transferstudio.gui.panels.layer_tree`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QLabel, QPushButton, QVBoxLayout, QWidget

from transferstudio.core.settings import experiment as X
from transferstudio.gui.panels.layer_tree import LayerTreePanel
from transferstudio.gui.settings_form import SettingsForm
from transferstudio.gui.widgets import named
from transferstudio.gui.worker import run_in_background


class ModelPanel(QWidget):
    """The model an experiment trains. ``backbone_changed`` and ``weights_chosen`` fire on the
    user's choices, ``changed`` on a model setting; ``frozen_stats_wanted(automatically)`` asks
    the window to set the method's BN mode to ``frozen-stats`` (the weights hold folded
    BatchNorm). The window tells the panel the method's BN mode with :meth:`set_bn_mode`."""

    backbone_changed = Signal()
    weights_chosen = Signal()
    changed = Signal()
    frozen_stats_wanted = Signal(bool)

    def __init__(self, host, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.host = host
        self.base_dir = Path.cwd()  # the window sets the experiment's folder
        self.weights_value = "none"
        self.bn_mode: str | None = None  # the method's BN mode (None: it has none)
        self.bn_reason = ""  # why the chosen weights hold folded BatchNorm ("" if they do not)
        layout = QVBoxLayout(self)
        self.backbone_combo = named(QComboBox(), "model.backbone", "backbone")
        by_family: dict[str, list] = {}
        for spec in host.backbones.values():
            by_family.setdefault(spec.family, []).append(spec)
        for family in sorted(by_family):
            self.backbone_combo.addItem(f"— {family} —")
            item = self.backbone_combo.model().item(self.backbone_combo.count() - 1)
            item.setEnabled(False)
            for spec in by_family[family]:
                size = f" ({spec.approx_params / 1e6:.1f}M)" if spec.approx_params else ""
                self.backbone_combo.addItem(f"{spec.name}{size}", spec.name)
        self.backbone_combo.currentIndexChanged.connect(self.backbone_changed)
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
        self.bn_fix.clicked.connect(lambda: self.frozen_stats_wanted.emit(False))
        self.bn_fix.setVisible(False)
        layout.addWidget(self.bn_fix)
        self.model_form = SettingsForm(X.ModelSettings, "model.")
        for hidden in ("backbone", "weights"):
            self.model_form.widgets[hidden].setVisible(False)
            self.model_form.layout().labelForField(self.model_form.widgets[hidden]).setVisible(
                False
            )
        self.model_form.changed.connect(self.changed)
        layout.addWidget(self.model_form)
        self.tree = LayerTreePanel(host.exporters)
        layout.addWidget(self.tree, 1)

    # ------------------------------------------------------------------ the experiment

    def show_experiment(self, exp: X.Experiment) -> None:
        self.model_form.set_values(dataclasses.asdict(exp.model))
        index = self.backbone_combo.findData(exp.model.backbone)
        self.backbone_combo.setCurrentIndex(max(index, 0))
        self.set_weights(exp.model.weights)

    def backbone(self) -> str | None:
        return self.backbone_combo.currentData()

    def model_settings(self) -> X.ModelSettings:
        model = self.model_form.build()
        model.backbone = self.backbone() or model.backbone
        model.weights = self.weights_value
        return model

    def head_dropout(self) -> float:
        return self.model_form.values()["head_dropout"]

    # ------------------------------------------------------------------ weights

    def set_weights(self, value: str) -> None:
        """Show ``value`` (``none``, ``cache`` or a file) as the weights source."""
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
                self.set_weights(self.weights_value)
                return
            choice = path
        self.set_weights(choice)
        self.check_weights_batchnorm(adopt=True)
        self.weights_chosen.emit()

    def check_weights_batchnorm(self, adopt: bool = False) -> None:
        """Read the chosen weights off the GUI thread and look for folded BatchNorm. With
        ``adopt`` (the user just picked them) a method training BN statistics is switched to
        ``frozen-stats``; otherwise (an experiment opened) the fix is proposed."""
        from transferstudio.core.models.bn_check import folded_batchnorm_reason
        from transferstudio.core.models.weights import read_state_dict
        from transferstudio.core.runs.weight_sources import resolve_weights

        value = self.weights_value
        backbone = self.backbone()
        self.bn_reason = ""
        self.show_bn_state()
        if value == "none" or not backbone:
            return
        spec, base_dir = self.host.backbone(backbone), self.base_dir

        def check() -> str:
            path = resolve_weights(spec, value, base_dir)
            return folded_batchnorm_reason(read_state_dict(path), path.name) if path else ""

        def done(reason: str) -> None:
            if (value, backbone) != (self.weights_value, self.backbone()):
                return  # other weights (or, for 'cache', another backbone) chosen meanwhile
            self.bn_reason = reason
            if reason and adopt:
                self.frozen_stats_wanted.emit(True)
            else:
                self.show_bn_state()

        # An unreadable file is reported by the run (and the tree): nothing to add here.
        run_in_background(check, done, lambda *_: None, self)

    def set_bn_mode(self, bn_mode: str | None) -> None:
        """The method's BN mode as its settings show it now (None: the method has none)."""
        self.bn_mode = bn_mode
        if self.bn_reason:
            self.show_bn_state()

    def show_bn_state(self, switched: bool = False) -> None:
        """The folded-BatchNorm line under the weights: what was found and what was done."""
        reason, bn_mode = self.bn_reason, self.bn_mode
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
