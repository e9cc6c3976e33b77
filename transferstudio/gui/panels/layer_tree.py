"""The layer tree: the model's modules with a "trainable" check column, the freeze presets,
live weight drift and gradient norms, and export of any module.

The tree's model is built off the GUI thread for a key ``(backbone, classes, head dropout)``;
the window asks for a rebuild when the key changes. Freeze edits come back to the window as
``plan_edited(patterns)``; the window writes them into the method's settings (where the method
declared them, see ``MethodSpec.layer_tree``) and shows the plan with :meth:`show_plan`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QPushButton,
    QSpinBox,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from transferstudio.gui.panels.layer_tree_model import (
    DRIFT_COLUMN,
    GRAD_COLUMN,
    TRAIN_COLUMN,
    QtLayerTreeModel,
)
from transferstudio.gui.widgets import named
from transferstudio.gui.worker import run_in_background

INITIAL_WEIGHTS = "initial weights (no run finished in this window yet)"


class LayerTreePanel(QWidget):
    """The lower part of the Model dock.

    Signals: ``build_ended`` after every background build (done or failed: a Start that
    waited for the model may go on); ``tree_shown`` when a new tree is on show (the window then
    shows the method's plan on it); ``plan_edited(patterns)`` when the user changed what is
    frozen; ``export_requested(module_path, format)`` from the export menus;
    ``stats_wanted(bool)`` when whether the drift columns can be seen changed (a run measures
    them only then); ``exported(result)`` / ``export_errored(message, details)``."""

    build_ended = Signal()
    tree_shown = Signal()
    plan_edited = Signal(list)
    export_requested = Signal(str, str)
    stats_wanted = Signal(bool)
    exported = Signal(object)  # core.inference.export.ExportResult
    export_errored = Signal(str, str)

    def __init__(self, exporters: dict, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.exporters = exporters
        self.tree_model: QtLayerTreeModel | None = None
        self.torch_model = None  # the classifier the tree shows (what it exports)
        self.weights_source = INITIAL_WEIGHTS
        self.run_meta: dict | None = None  # checkpoint metadata of the run whose weights it holds
        self.built_for: tuple | None = None  # the key of the tree on show
        self.builds = 0  # models being built in the background
        self.stages: tuple[str, ...] = ()  # the backbone's feature-map stages (detectors)
        self.run_folder: Path | None = None  # the finished run whose weights the tree holds
        self.export_host = None
        """Set by the window: the plugin host a detection run's export rebuilds it with."""
        self.freeze_columns = True  # the method declares the tree (API 1.5): checks, presets
        self.wanted_key: Callable[[], tuple] | None = None
        """Set by the window: ``() -> key`` of the model it shows now (a build for an older
        key, ended late, is not shown)."""
        self._syncing = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.presets = QWidget()
        presets = QGridLayout(self.presets)
        presets.setContentsMargins(0, 0, 0, 0)
        train_all = named(QPushButton("Train all"), "tree.train_all")
        train_all.clicked.connect(lambda: self.apply_preset("all"))
        self.head_only = head_only = named(QPushButton("Head only"), "tree.head_only")
        head_only.clicked.connect(lambda: self.apply_preset("head"))
        self.last_blocks = named(QSpinBox(), "tree.last_blocks", "blocks to unfreeze")
        self.last_blocks.setRange(1, 50)
        self.unfreeze_last = last = named(QPushButton("Unfreeze last N"), "tree.unfreeze_last")
        last.clicked.connect(lambda: self.apply_preset("last"))
        # Two rows: in one, the buttons were wider than the dock at 1366 px and were cut off.
        presets.addWidget(train_all, 0, 0)
        presets.addWidget(head_only, 0, 1)
        presets.addWidget(last, 1, 0)
        presets.addWidget(self.last_blocks, 1, 1)
        layout.addWidget(self.presets)
        self.summary = named(QLabel(""), "tree.summary")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.show_stats = named(
            QCheckBox("show drift and gradients while training"), "tree.show_stats"
        )
        self.show_stats.setToolTip(
            "Show each layer's weight drift from its starting value and its gradient norm in "
            "the tree while a run trains (measured only while the tree is visible)"
        )
        self.show_stats.setChecked(True)
        self.show_stats.toggled.connect(self._apply_columns)
        layout.addWidget(self.show_stats)
        self.view = named(QTreeView(), "tree.view", "layer tree")
        self.view.setUniformRowHeights(True)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._tree_menu)
        layout.addWidget(self.view, 1)
        self.export_button = named(QPushButton("Export model..."), "model.export")
        self.export_button.setToolTip(
            "Export the whole model (the weights of the last run finished in this window, else "
            "the initial ones); right-click a layer in the tree to export only that part"
        )
        export_menu = QMenu(self.export_button)
        export_menu.setObjectName("menu.export")
        for spec in exporters.values():
            action = export_menu.addAction(f"as {spec.format} ({spec.suffix})...")
            action.triggered.connect(
                lambda _=False, f=spec.format: self.export_requested.emit("", f)
            )
        self.export_button.setMenu(export_menu)
        layout.addWidget(self.export_button)

    # ------------------------------------------------------------------ building

    def is_current(self, key: tuple) -> bool:
        """Whether the tree on show was built for ``key``."""
        return self.tree_model is not None and self.built_for == key

    def rebuild(self, key: tuple, backbone_spec, crop: int) -> None:
        """Build the model ``key = (backbone, classes, head dropout, detector)`` and its tree
        off the GUI thread; :attr:`wanted_key` decides, when it ends, whether it is still
        wanted. ``detector`` (detection experiments) is the detector's recipe options as
        ``(name, value)`` pairs; ``None`` builds a classifier."""
        self.summary.setText(f"building {key[0]} ...")

        detector = dict(key[3]) if len(key) > 3 and key[3] is not None else None
        self.stages = tuple(backbone_spec.stages)

        def build():
            import torch

            from transferstudio.core.models.build import build_classifier
            from transferstudio.core.models.layer_tree import build_tree

            if detector is not None:  # a detection experiment: the whole detector
                from transferstudio.core.models.detector import DetectorRecipe, build_detector

                recipe = DetectorRecipe(backbone_spec.name, key[1], **detector)
                model = build_detector(backbone_spec, None, recipe).eval()
            else:
                model = build_classifier(backbone_spec, None, key[1], dropout=key[2])
            tree = build_tree(model, torch.zeros(1, 3, crop, crop))
            return key, model, tree

        self.builds += 1
        run_in_background(build, self._show_tree, self._build_errored, self)

    def forget(self) -> None:
        """Build again at the next :meth:`rebuild`, even for the same key."""
        self.built_for = None

    def _show_tree(self, value) -> None:
        self.builds -= 1
        self.build_ended.emit()
        key, model, tree = value
        if self.wanted_key is not None and key != self.wanted_key():
            return  # the user picked something else meanwhile
        self.torch_model = model
        # A detector's presets: its heads (pyramid, RPN, box head) always train, and "last N"
        # counts the backbone's stages, as torchvision's trainable_backbone_layers does.
        detector = len(key) > 3 and key[3] is not None
        self.head_only.setText("Heads only" if detector else "Head only")
        self.unfreeze_last.setText("Unfreeze last N stages" if detector else "Unfreeze last N")
        self.weights_source = INITIAL_WEIGHTS
        self.run_meta = None
        self.run_folder = None
        sizes = {n: p.numel() for n, p in model.named_parameters()}
        self.tree_model = QtLayerTreeModel(tree, sizes, set(), self)
        self.tree_model.freeze_changed.connect(self._on_edited)
        self.built_for = key
        self.view.setModel(self.tree_model)
        self._apply_columns()
        self.view.expandToDepth(0)
        self.view.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.tree_shown.emit()

    def _build_errored(self, message: str, details: str) -> None:
        self.builds -= 1
        self.summary.setText(f"cannot build the model: {message}")
        self.build_ended.emit()

    # ------------------------------------------------------------------ the freeze plan

    def show_plan(self, plan, fixed: tuple[str, ...] = ()) -> None:
        """Show what ``plan`` (a FreezePlan) freezes, editable; ``plan=None``: read-only, with
        the modules ``fixed`` (paths such as ``"backbone"``) frozen."""
        if self.tree_model is None:
            return
        model = self.torch_model
        if plan is None:
            prefixes = tuple(f"{p}." for p in fixed)
            frozen = {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
            self.tree_model.editable = False
        else:
            self.tree_model.editable = True
            try:
                frozen = plan.frozen_names(model, 0)
            except KeyError:
                frozen = set()
        self._syncing = True
        try:
            self.tree_model.set_frozen(frozen)
        finally:
            self._syncing = False
        self.summary.setText(self.tree_model.summary_text())

    def _on_edited(self) -> None:
        """Tree -> the window: the edit becomes the experiment's freeze plan."""
        assert self.tree_model is not None
        self.summary.setText(self.tree_model.summary_text())
        if self._syncing or not self.tree_model.editable:
            return
        from transferstudio.core.models.freeze_presets import patterns_for

        self.plan_edited.emit(patterns_for(self.torch_model, self.tree_model.frozen))

    def apply_preset(self, kind: str) -> None:
        """ "Train all" (``all``), "Head only" (``head``), "Unfreeze last N" (``last``)."""
        if self.tree_model is None or not self.tree_model.editable:
            return
        from transferstudio.core.models.freeze_presets import preset_frozen

        frozen = preset_frozen(
            kind,
            self.tree_model.param_sizes,
            self.tree_model.root,
            self.last_blocks.value(),
            self.stages,
        )
        self.tree_model.set_frozen(frozen)

    def set_freeze_columns(self, shown: bool, editable: bool = True) -> None:
        """Whether the method declares that it honours the tree (``MethodSpec.layer_tree``):
        the trainable checks and the drift columns are shown only then, the presets only when
        the declaration names a freeze setting they can write (``editable``)."""
        self.freeze_columns = shown
        self.presets.setVisible(shown and editable)
        self.show_stats.setVisible(shown)
        self._apply_columns()

    # ------------------------------------------------------------------ live statistics

    def _apply_columns(self) -> None:
        self.view.setColumnHidden(TRAIN_COLUMN, not self.freeze_columns)
        for column in (DRIFT_COLUMN, GRAD_COLUMN):
            self.view.setColumnHidden(column, not self.stats_visible(ignore_region=True))
        self.refresh_stats_if_shown()

    def stats_visible(self, ignore_region: bool = False) -> bool:
        """Whether drift and gradients can be seen: the columns on and the tree on screen."""
        # Not isVisible(): a dock tabbed behind another still counts as visible to Qt.
        shown = self.show_stats.isChecked() and self.freeze_columns
        return shown and (ignore_region or not self.view.visibleRegion().isEmpty())

    def refresh_stats_if_shown(self, *_args) -> None:
        visible = self.stats_visible()
        # The training thread measures drift and gradients only while someone can see them.
        self.stats_wanted.emit(visible)
        if self.tree_model is not None and visible:
            self.tree_model.refresh_stats()

    def show_stats_of(self, stats: dict, notify: bool) -> None:
        """Per-parameter drift and gradient norms (names as in the tree's model). A hidden
        tree is not notified: the view's reaction to dataChanged walks the model in Python,
        ~12 ms per update on ResNet-18."""
        if self.tree_model is not None:
            self.tree_model.set_stats(stats, notify=notify)

    # ------------------------------------------------------------------ weights and export

    def load_run_weights(self, folder: str | Path, run_id: str, module: str = "model") -> None:
        """Show the finished run's best weights (its ``module``) in the tree: what it exports."""
        from transferstudio.core.runs.checkpoint import CheckpointStore

        store = CheckpointStore(Path(folder) / "checkpoints")
        if self.tree_model is None or not store.exists("best"):
            return
        weights = store.load("best", with_state=False).weights
        prefix = f"{module}."
        state = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
        try:
            self.torch_model.load_state_dict(state)
        except RuntimeError:  # another architecture was picked meanwhile
            return
        self.weights_source = f"run {run_id} (best checkpoint)"
        self.run_meta = store.meta("best")
        self.run_folder = Path(folder)

    def _export_detection_run(self, module_path: str, fmt: str, target: Path) -> None:
        from transferstudio.core.inference.detection_export import export_detection_run

        folder, host = self.run_folder, self.export_host
        run_in_background(
            lambda: export_detection_run(
                folder, fmt, target, host, folder.parent.parent, module_path, force=True
            ),
            self.exported.emit,
            self.export_errored.emit,
            self,
        )

    def _tree_menu(self, position) -> None:
        index = self.view.indexAt(position)
        if self.tree_model is None:
            return
        node = index.internalPointer() if index.isValid() else self.tree_model.root
        menu = QMenu(self)
        menu.setObjectName("tree.export_menu")
        title = node.path or "whole model"
        for spec in self.exporters.values():
            action = menu.addAction(f"Export {title} as {spec.format} ({spec.suffix})...")
            action.triggered.connect(
                lambda _=False, p=node.path, f=spec.format: self.export_requested.emit(p, f)
            )
        menu.popup(self.view.viewport().mapToGlobal(position))

    def export(self, module_path: str, fmt: str, target: Path, crop: int) -> None:
        """Export ``module_path`` of the tree's model off the GUI thread, verified; ends with
        ``exported`` or ``export_errored``."""
        from transferstudio.core.inference.export import export_submodule

        if self.run_meta is not None and self.run_meta.get("detector_recipe"):
            # A detection run's detector: exported from its run and checked box by box on
            # its validation images (core.inference.detection_export).
            self._export_detection_run(module_path, fmt, target)
            return
        from transferstudio.core.models.detector import is_detector

        if is_detector(self.torch_model):
            self.export_errored.emit(
                "a detector is exported once trained: finish a run (its best weights then "
                "show here), and every box of the file is checked on its validation images",
                "",
            )
            return
        spec, model, run_meta = self.exporters[fmt], self.torch_model, self.run_meta
        metadata = {
            "module": module_path or "(whole model)",
            "backbone": str(self.built_for[0] if self.built_for else ""),
            "weights": self.weights_source,
        }
        run_in_background(
            lambda: export_submodule(spec, model, module_path, crop, target, metadata, run_meta),
            self.exported.emit,
            self.export_errored.emit,
            self,
        )
