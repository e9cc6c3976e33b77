"""Where the method, the model and the layer tree meet: the window rebuilds the tree when the
model changes, shows the method's declared freeze plan on it (``MethodSpec.layer_tree``), writes
edits in the tree back into the method's settings, applies the folded-BatchNorm fix to the
declared BN setting, and exports modules of the tree. A mixin of
:class:`~transferstudio.gui.main_window.MainWindow`; the panels never call each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QFileDialog, QMessageBox

from transferstudio.api import TASK_DETECTION


class TreeMixin:
    """The method <-> model <-> layer tree wiring of the window."""

    def _on_method_changed(self) -> None:
        if self._syncing:
            return
        self.model_panel.set_bn_mode(self.method_panel.bn_mode())
        self.model_panel.show_bn_state()
        self._rebuild_tree()
        self._show_tree_contract()
        self._update_actions()

    def _on_method_params_changed(self) -> None:
        form = self.method_panel.method_form
        if not self._syncing and self.tree_model is not None and form.validate():
            if self._detector_options() is not None:
                # The detector's shape may have changed (pyramid levels). Not during a run:
                # building one traces with torch.fx, which breaks modules running elsewhere.
                if not self.controller.running:
                    self._rebuild_tree()
            else:
                self._apply_plan_to_tree()
        self.model_panel.set_bn_mode(self.method_panel.bn_mode())
        self._update_actions()

    def _on_model_changed(self) -> None:
        if not self._syncing:
            self._rebuild_tree()
            self.model_panel.check_weights_batchnorm(adopt=True)  # 'pretrained' is another file
            self._update_actions()

    def _use_frozen_stats(self, automatically: bool) -> None:
        """Set the method's BN mode to ``frozen-stats`` (the weights hold folded BatchNorm)."""
        if not self.method_panel.set_bn_mode("frozen-stats"):
            return
        self.model_panel.set_bn_mode(self.method_panel.bn_mode())
        self.model_panel.show_bn_state(switched=automatically)
        self._update_actions()

    def _tree_key(self) -> tuple:
        return (
            self.model_panel.backbone(),
            self.data_panel.class_count(),
            self.model_panel.head_dropout(),
            self._detector_options(),
        )

    def _detector_options(self) -> tuple | None:
        """For a detection method, what shapes its detector (the tree shows that detector):
        the method's own settings that ``build_detector`` takes, as ``(name, value)`` pairs."""
        spec = self.method_panel.spec()
        if spec is None or spec.task != TASK_DETECTION or self.method_panel.method_form is None:
            return None
        from transferstudio.core.models.detector import DetectorRecipe

        values = self.method_panel.method_form.values()
        shape = ("pyramid_levels", "fpn_channels")  # sizes and thresholds change no module
        return tuple(
            (k, values[k])
            for k in shape
            if k in values and k in DetectorRecipe.__dataclass_fields__
        )

    def _crop(self) -> int:
        backbone = self.model_panel.backbone()
        return self.data_panel.image_size() or self.host.backbone(backbone).preprocessing.crop

    def _rebuild_tree(self) -> None:
        backbone = self.model_panel.backbone()
        if not backbone:
            return
        key = self._tree_key()
        if self.layer_tree.is_current(key):
            self._apply_plan_to_tree()
            return
        self.layer_tree.rebuild(key, self.host.backbone(backbone), self._crop())

    def model_ready(self) -> bool:
        """True when no layer-tree model is being built in the background. Building one draws
        on torch's global random generator, which a run seeds and then uses to initialise its
        own head: a run started meanwhile would not repeat its headless twin, so Start waits
        (see :meth:`start_run`). A data scan in progress counts too: its end rebuilds the tree
        for the number of classes found."""
        return self.layer_tree.builds == 0 and not self.data_panel.scanning

    def _on_tree_shown(self) -> None:
        self._apply_plan_to_tree()
        self._update_actions()  # the plan can now be checked against the model's modules

    def _show_tree_contract(self) -> None:
        """Checks, presets and drift columns only for a method that declares the tree."""
        declared = self.method_panel.tree_declaration()
        self.layer_tree.set_freeze_columns(
            declared is not None, editable=declared is not None and declared.freeze is not None
        )

    def _apply_plan_to_tree(self) -> None:
        """Method settings -> tree (opening a file, editing patterns by hand). A method without
        a freeze plan shows read-only what it declares always frozen (feature extraction: the
        backbone)."""
        declared = self.method_panel.tree_declaration()
        fixed = declared.frozen if declared is not None else ()
        self.layer_tree.show_plan(self.method_panel.freeze_plan(), fixed=fixed)

    def _on_plan_edited(self, patterns: list) -> None:
        """Tree -> method settings: the edit becomes the experiment's freeze plan."""
        self._syncing = True
        try:
            self.method_panel.set_plan_patterns(patterns)
        finally:
            self._syncing = False
        self._update_actions()

    def _check_plan_against_model(self, params: Any) -> None:
        """A method's freeze plan against the modules of the model in the tree, as the run will
        check it at setup (while the tree is being built, or for methods without a plan,
        nothing is checked)."""
        plan = getattr(params, "plan", None)
        if callable(plan) and self.layer_tree.is_current(self._tree_key()):
            plan().check(self.tree_torch_model)

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
        self.statusBar().showMessage(f"exporting {module_path or 'model'} as {fmt} ...")
        self.layer_tree.export(module_path, fmt, target, self._crop())

    def _export_done(self, result) -> None:
        self.last_export = result
        diff = f"{result.max_abs_diff:.3g}" if result.max_abs_diff is not None else "not checked"
        checked = f"verified on a sample batch: max abs difference {diff}"
        if result.boxes_compared:  # a detector, checked box by box
            checked = (
                f"verified on {result.val_images} validation images: {result.boxes_compared} "
                f"detections matched, lowest IoU {result.min_iou:.4f}, largest score "
                f"difference {result.max_score_diff:.2g}"
            )
        box = QMessageBox(
            QMessageBox.Icon.Information,
            "Exported",
            f"{result.path}\nformat: {result.format}\n{checked}",
            parent=self,
        )
        box.setObjectName("dialog.exported")
        box.open()
        self.statusBar().showMessage(f"exported {result.path} (max abs difference {diff})")
