"""The layer tree honours only what a method declares (``MethodSpec.layer_tree``, API 1.5).

Two third-party methods, registered as real plugins: one declares the tree with its own names
for the module and the settings, the other declares nothing although its settings happen to be
called ``freeze`` and ``bn_mode`` (names alone are no contract)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.helpers import tiny_experiment
from transferstudio.api import BN_MODES, LayerTreeSpec, MethodSpec, TransferMethod, param
from transferstudio.core.progress import events as E


@dataclass
class TidyParams:
    """A method that freezes what ``keep_frozen`` names and handles BatchNorm as ``norm``."""

    keep_frozen: list[str] = param([], help="module patterns to freeze")
    norm: str = param("train", choices=BN_MODES, help="BatchNorm mode")


@dataclass
class SilentParams:
    """Settings with the built-in names, but no declaration."""

    freeze: list[str] = param([], help="not a freeze plan the window knows about")
    bn_mode: str = param("train", choices=BN_MODES, help="not declared either")


class _Unused(TransferMethod):
    """Never run here: the tests only look at the window."""

    def __init__(self, params) -> None:
        self.params = params


DECLARING = MethodSpec(
    name="tidy-tree",
    description="declares the layer tree under its own names",
    params=TidyParams,
    factory=_Unused,
    layer_tree=LayerTreeSpec(module="net", freeze="keep_frozen", freeze_up_to=None, bn_mode="norm"),
)
SILENT = MethodSpec(
    name="silent-tree", description="declares nothing", params=SilentParams, factory=_Unused
)


@pytest.fixture
def host():
    """The built-ins and the two probe methods, registered as a plugin."""
    from transferstudio.core.plugins.host import load_plugins, plugin_from_namespace

    plugin = plugin_from_namespace("tree_probe", transferstudio_methods=lambda: [DECLARING, SILENT])
    loaded = load_plugins(autoload=False, extra=[plugin])
    assert {"tidy-tree", "silent-tree"} <= set(loaded.methods)
    return loaded


@pytest.fixture
def window(open_window, make_images):
    return open_window(tiny_experiment(make_images({"red": 8, "green": 8}), train__epochs=1))


def _choose(window, qtbot, method: str) -> None:
    window.method_combo.setCurrentIndex(window.method_combo.findData(method))
    qtbot.waitUntil(window.model_ready, timeout=30_000)
    assert window.method_form.objectName() == "method.params"


def _shown(window, widget) -> bool:
    return widget.isVisibleTo(window)


def test_a_declaring_method_gets_checks_presets_and_drift(window, qtbot):
    from transferstudio.gui.panels.layer_tree_model import DRIFT_COLUMN, TRAIN_COLUMN

    _choose(window, qtbot, "tidy-tree")
    tree = window.layer_tree
    assert not tree.view.isColumnHidden(TRAIN_COLUMN)
    assert not tree.view.isColumnHidden(DRIFT_COLUMN)
    assert _shown(window, tree.presets) and _shown(window, window.show_stats)
    assert window.tree_model.editable
    # The presets write the declared setting, whatever it is called.
    tree.apply_preset("head")
    assert window.method_form.values()["keep_frozen"] == ["backbone"]
    # ... and the declared setting drives the tree.
    window.method_form.set_values({"keep_frozen": []})
    window._on_method_params_changed()  # what an edit of the field does (set_values is silent)
    assert window.tree_model.frozen == set()
    # Drift and gradients of the declared module ("net"), not of a module called "model".
    head = window.tree_model.root.find("head")
    window._on_layer_stats(E.LayerStats(0, 0, {"net.head.0.weight": (1, 4, 9)}))
    assert window.tree_model.node_stats(head) == (0.5, 3.0)
    window._on_layer_stats(E.LayerStats(0, 0, {"model.head.0.weight": (4, 4, 4)}))
    assert window.tree_model.node_stats(head) is None  # another module's: not this tree's


def test_the_declared_bn_setting_takes_the_folded_batchnorm_fix(window, qtbot):
    _choose(window, qtbot, "tidy-tree")
    window.model_panel.bn_reason = "52 of 52 BatchNorm layers hold identity statistics: ..."
    window.model_panel.frozen_stats_wanted.emit(False)
    assert window.method_form.values()["norm"] == "frozen-stats"
    assert not window.bn_warning.isHidden()


def test_a_method_that_declares_nothing_gets_none_of_it(window, qtbot):
    from transferstudio.gui.panels.layer_tree_model import DRIFT_COLUMN, GRAD_COLUMN, TRAIN_COLUMN

    _choose(window, qtbot, "silent-tree")
    tree = window.layer_tree
    assert tree.view.isColumnHidden(TRAIN_COLUMN)
    assert tree.view.isColumnHidden(DRIFT_COLUMN) and tree.view.isColumnHidden(GRAD_COLUMN)
    assert not _shown(window, tree.presets) and not _shown(window, window.show_stats)
    assert not window.tree_model.editable
    # Presets and the BN fix do nothing (and raise nothing); the settings keep their values.
    tree.apply_preset("head")
    window.model_panel.bn_reason = "52 of 52 BatchNorm layers hold identity statistics: ..."
    window.model_panel.frozen_stats_wanted.emit(False)
    assert window.method_form.values() == {"freeze": [], "bn_mode": "train"}
    assert window.model_panel.bn_warning.isHidden()
    # Layer statistics are not measured for it, and any that come are not drawn.
    assert not window._stats_visible()
    window._on_layer_stats(E.LayerStats(0, 0, {"model.head.0.weight": (1, 4, 9)}))
    # The tree still lists the modules: it is where a part of the model is exported.
    assert window.tree_model.root.find("backbone.layer1") is not None
    assert window.act_start.isEnabled(), window.form_error.text()
    # Back to a declaring method: everything is there again.
    _choose(window, qtbot, "fine-tune")
    assert not tree.view.isColumnHidden(TRAIN_COLUMN) and window.tree_model.editable


def test_a_read_only_declaration_shows_checks_and_drift_without_presets(window, qtbot):
    """DANN trains the whole classifier and declares no freeze setting (``freeze=None``): the
    tree shows every layer trainable, read-only, with live drift, but offers no presets."""
    from transferstudio.gui.panels.layer_tree_model import DRIFT_COLUMN, TRAIN_COLUMN

    _choose(window, qtbot, "dann")
    tree = window.layer_tree
    assert not tree.view.isColumnHidden(TRAIN_COLUMN)
    assert not tree.view.isColumnHidden(DRIFT_COLUMN)
    assert not _shown(window, tree.presets) and _shown(window, window.show_stats)
    assert not window.tree_model.editable
    assert window.tree_model.frozen == set()
    head = window.tree_model.root.find("head")
    window._on_layer_stats(E.LayerStats(0, 0, {"model.head.0.weight": (1, 4, 9)}))
    assert window.tree_model.node_stats(head) == (0.5, 3.0)
