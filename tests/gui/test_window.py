"""The window driven as a user would: pick, freeze, run, watch, close."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from transferstudio.core.progress import events as E
from transferstudio.gui.panels.layer_tree_model import TRAIN_COLUMN, QtLayerTreeModel


def test_layer_tree_model_passes_qtmodeltester(qtmodeltester):
    import torch

    from transferstudio.core.models.build import ClassifierModel, make_head
    from transferstudio.core.models.layer_tree import build_tree

    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
    model = ClassifierModel(backbone, make_head(4, 2))
    tree = build_tree(model, torch.zeros(1, 3, 8, 8))
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    qt_model = QtLayerTreeModel(tree, sizes, {"backbone.0.weight"})
    qtmodeltester.check(qt_model)
    assert tree.find("backbone.0").output_shape == (4, 6, 6)


def test_toggling_a_node_changes_the_summary_and_the_freeze_plan(window, tmp_path):
    model = window.tree_model
    before = window.tree_summary.text()
    backbone = model.node_index("backbone").siblingAtColumn(TRAIN_COLUMN)
    assert model.data(backbone, Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked.value
    model.setData(backbone, Qt.CheckState.Unchecked.value, Qt.ItemDataRole.CheckStateRole)
    after = window.tree_summary.text()
    assert after != before and after.startswith("trainable 1,539 of 11,178,051")  # the head
    assert window.method_form.values()["freeze"] == ["backbone"]
    # a child back on: the parent shows a partial check and the plan names what stays frozen
    layer4 = model.node_index("backbone.layer4").siblingAtColumn(TRAIN_COLUMN)
    model.setData(layer4, Qt.CheckState.Checked.value, Qt.ItemDataRole.CheckStateRole)
    assert (
        model.data(backbone, Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.PartiallyChecked.value
    )
    assert "backbone.layer3" in window.method_form.values()["freeze"]
    assert "backbone.layer4" not in window.method_form.values()["freeze"]
    # saved in the experiment file, and restored on open
    path = tmp_path / "saved.toml"
    assert window.save_to(path)
    saved = tomllib.loads(path.read_text())["method"]["params"]["freeze"]
    assert "backbone.layer4" not in saved and "backbone.layer3" in saved
    window.tree_model.set_frozen(set())
    assert window.open_file(path)
    assert window.method_form.values()["freeze"] == saved


def test_the_window_fits_a_laptop_screen(window):
    # Panels scroll instead of stacking their full heights into the window's minimum size.
    hint = window.minimumSizeHint()
    assert hint.height() <= 768 and hint.width() <= 1366, hint


def test_presets(window):
    window.layer_tree.apply_preset("head")
    assert window.method_form.values()["freeze"] == ["backbone"]
    window.last_blocks.setValue(1)
    window.layer_tree.apply_preset("last")
    frozen = window.method_form.values()["freeze"]
    assert "backbone.layer3" in frozen and "backbone.layer4" not in frozen
    window.layer_tree.apply_preset("all")
    assert window.method_form.values()["freeze"] == []


def test_invalid_setting_is_highlighted_and_start_disabled(window):
    assert window.act_start.isEnabled()
    window.method_form.widgets["unfreeze"].setText("layer4")
    assert not window.act_start.isEnabled()
    assert "EPOCH:PATTERN" in window.form_error.text()
    assert window.method_form.widgets["unfreeze"].styleSheet()
    window.method_form.widgets["unfreeze"].setText("2:backbone.layer4")
    assert window.act_start.isEnabled()


def _show_tree(window, qtbot):
    """Raise the Model dock: the run measures drift and gradients only while the tree shows."""
    from PySide6.QtWidgets import QDockWidget

    window.findChild(QDockWidget, "dock.model").raise_()
    qtbot.waitUntil(lambda: not window.tree_view.visibleRegion().isEmpty())


def test_a_run_trains_draws_curves_and_lands_in_the_runs_table(window, qtbot):
    _show_tree(window, qtbot)
    window.start_run()
    assert window.controller.running and not window.act_start.isEnabled()
    worker = window.controller.worker
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    import shiboken6

    qtbot.waitUntil(lambda: not shiboken6.isValid(worker))  # deleted with its thread
    assert window.curves.points("val_acc") == 2 and window.curves.points("train_loss") == 2
    assert window.curves.points("batch_loss") == 2 * 5
    assert len(window.curves.curves["val_acc"].getData()[0]) == 2  # drawn, not only recorded
    # the x axis spans the whole run (fixed, so redraws do not rescale it)
    x_range = window.curves.plots["loss"].getViewBox().viewRange()[0]
    assert x_range[0] <= 0 and 2 <= x_range[1] < 2.5
    assert window.runs_table.rowCount() == 1
    assert window.runs_table.item(0, 6).text() == "completed"
    assert window.class_table.rowCount() == 3
    mistakes = window._last_result.report["val"]["misclassified"]
    gallery = window.evaluation.gallery
    qtbot.waitUntil(lambda: gallery.count() == min(len(mistakes), 24), timeout=10_000)
    assert window.thumbnails.count() == 3 * 4  # four per class
    # weight drift and gradient norms reached the tree: the head moved, the frozen-free stem too
    from transferstudio.gui.panels.layer_tree_model import DRIFT_COLUMN

    head = window.tree_model.root.find("head")
    drift, grad = window.tree_model.node_stats(head)
    assert drift > 0 and grad > 0
    head_index = window.tree_model.node_index("head").siblingAtColumn(DRIFT_COLUMN)
    assert window.tree_model.data(head_index).endswith("%")
    assert window.act_start.isEnabled()


def test_closing_during_a_run_stops_it_and_waits(window, qtbot, monkeypatch):
    from transferstudio.core.runs.workspace import RunStore

    window.train_form.widgets["epochs"].setValue(50)
    window.start_run()
    with qtbot.waitSignal(window.controller.worker.batches_ended, timeout=60_000):
        pass
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    thread = window.controller.thread
    window.close()
    assert not window.controller.running
    assert thread is not None
    (record,) = RunStore(window.workspace).list()
    assert record.status == "cancelled"


def test_a_raising_method_shows_an_error_and_the_app_stays_usable(window, qtbot, monkeypatch):
    from transferstudio.core.training import engine

    def broken_step(self, epoch):
        raise RuntimeError("step exploded")

    monkeypatch.setattr(engine.TrainingRun, "train_epoch", broken_step)
    window.start_run()
    with qtbot.waitSignal(window.controller.worker.errored, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    assert window.last_error is not None and "step exploded" in window.last_error[0]
    assert window.error_box is not None and window.error_box.isVisible()
    assert window.act_start.isEnabled()
    window.error_box.close()


@pytest.mark.parametrize("method", ["feature-extract"])
def test_switching_method_rebuilds_its_form_and_locks_the_tree(window, method):
    window.method_combo.setCurrentIndex(window.method_combo.findData(method))
    assert "cache" in window.method_form.widgets
    assert not window.tree_model.editable
    exp = window.current_experiment()
    assert exp.method == method


def test_export_from_the_tree_writes_a_verified_file_that_reloads(window, qtbot, tmp_path):
    import torch

    window.start_run()
    with qtbot.waitSignal(window.controller.worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    assert window.tree_weights_source.startswith("run ")
    target = tmp_path / "backbone.pt"
    window.export_from_tree("backbone", "torchscript", target)
    qtbot.waitUntil(lambda: getattr(window, "last_export", None) is not None, timeout=60_000)
    assert window.last_export.max_abs_diff <= 1e-4
    import warnings

    # (torch deprecates TorchScript; the exporter silences that, and so does this reload.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(target))
    assert loaded(torch.zeros(1, 3, 32, 32)).shape == (1, 512)
    # the whole model as a bundle: it reopens with the run's classes and provenance
    from transferstudio.core.models.bundle import load_bundle

    window.last_export = None
    bundle = tmp_path / "model.tsmodel"
    window.export_from_tree("", "bundle", bundle)
    qtbot.waitUntil(lambda: window.last_export is not None, timeout=60_000)
    reopened = load_bundle(bundle, window.host)
    assert reopened.class_names == ["blue", "green", "red"]
    assert reopened.manifest["provenance"]["run_id"] == window._last_result.run_id
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(reopened.model(images), window.tree_torch_model.eval()(images))


def test_a_window_run_equals_a_headless_run_of_the_saved_file(window, qtbot, tmp_path):
    import json

    from tests.helpers import run_cli

    # a non-trivial freeze plan must survive the round trip too
    window.layer_tree.apply_preset("last")
    path = tmp_path / "from-window.toml"
    assert window.save_to(path)
    window.start_run()
    with qtbot.waitSignal(window.controller.worker.finished, timeout=120_000) as blocker:
        pass
    gui_result = blocker.args[0]
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    run_cli(tmp_path / "cli", "run", str(path))
    (report_path,) = (tmp_path / "cli" / "runs").glob("*/report.json")
    cli_report = json.loads(report_path.read_text())
    assert cli_report["val"] == json.loads(json.dumps(gui_result.report["val"]))


def test_frozen_layers_show_no_drift(window, qtbot):
    window.layer_tree.apply_preset("head")
    _show_tree(window, qtbot)
    window.start_run()
    with qtbot.waitSignal(window.controller.worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    model = window.tree_model
    frozen_drift, frozen_grad = model.node_stats(model.root.find("backbone.layer1"))
    assert frozen_drift == 0 and frozen_grad == 0
    assert model.node_stats(model.root.find("head"))[0] > 0


def test_a_tabbed_away_tree_is_refreshed_when_shown(window, qtbot):
    from PySide6.QtWidgets import QDockWidget

    docks = {d.objectName(): d for d in window.findChildren(QDockWidget)}
    docks["dock.data"].raise_()
    qtbot.waitUntil(lambda: window.tree_view.visibleRegion().isEmpty())
    model = window.tree_model
    head = model.root.find("head")
    stats = E.LayerStats(epoch=0, batch=0, stats={"model.head.0.weight": (1, 4, 9)})
    with qtbot.assertNotEmitted(model.dataChanged):
        window._on_layer_stats(stats)
    assert model.node_stats(head) == (0.5, 3.0)  # stored even while hidden
    with qtbot.waitSignal(model.dataChanged, timeout=5_000):
        docks["dock.model"].raise_()


def test_documented_object_names_exist_and_controls_are_named(window):
    import re
    from pathlib import Path

    from PySide6.QtCore import QObject
    from PySide6.QtWidgets import QAbstractButton, QComboBox, QLineEdit

    doc = (Path(__file__).resolve().parents[2] / "docs" / "gui.md").read_text()
    table = doc[doc.index("## Object names") :]
    found = re.findall(r"`([A-Za-z][A-Za-z0-9_.: ]*)`", table)
    names = [
        n
        for n in found
        # dialogs, context menus and the diagnostics plot exist only once opened or needed (the
        # learning-rate finder's names are checked on the dialog in its own test)
        if ("." in n or ":" in n)
        and not n.startswith(
            ("dialog.", "tree.export_menu", "menu.runs", "plot:diagnostics", "lr_finder")
        )
    ]
    assert "setting:train.lr" in names and "plot:learning rate" in names
    missing = [n for n in names if window.findChild(QObject, n) is None]
    assert missing == []
    unnamed = [
        w.objectName() or type(w).__name__
        for cls in (QAbstractButton, QComboBox, QLineEdit)
        for w in window.findChildren(cls)
        if w.isVisibleTo(window) and not w.accessibleName() and not w.objectName().startswith("qt_")
    ]
    assert unnamed == []


def test_a_run_measures_no_layer_stats_while_the_tree_is_hidden(window, qtbot):
    from PySide6.QtWidgets import QDockWidget

    window.findChild(QDockWidget, "dock.data").raise_()
    qtbot.waitUntil(lambda: window.tree_view.visibleRegion().isEmpty())
    window.start_run()
    worker = window.controller.worker
    assert worker.wants_layer_stats is False
    received = []
    worker.layer_stats.connect(received.append)
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    assert received == []


def test_the_data_panel_shows_the_fields_of_the_methods_roles(window):
    from transferstudio.api import (
        ROLE_LABELED,
        ROLE_LABELED_TARGET,
        ROLE_UNLABELED_TARGET,
        MethodSpec,
    )

    fields = window.data_form.widgets
    assert not fields["target_path"].isVisibleTo(window)  # fine-tune reads data.path only
    spec = MethodSpec(
        "da", "", object, object, (ROLE_LABELED, ROLE_UNLABELED_TARGET), (ROLE_LABELED_TARGET,)
    )
    window.data_panel.show_roles(spec)
    assert fields["target_path"].isVisibleTo(window)
    assert fields["target_eval_path"].isVisibleTo(window)
    assert not fields["label_columns"].isVisibleTo(window)


def test_method_diagnostics_get_their_own_plot_reset_per_run(window, qtbot):
    from transferstudio.core.progress import events as E

    curves = window.curves
    assert "diagnostics" not in curves.plots
    window.training.epochs, window.training.start_epoch = 2, 0
    window.training.on_batches(
        [E.BatchEnded(0, 0, 2, 1.0, 0.1, 4, {"mmd": 0.3, "domain_acc": 0.6})]
    )
    window.training.on_epoch(
        E.EpochEnded(
            0, 2, {"loss": 1.0}, {"loss": 1.0, "diag_target_accuracy": 0.7}, 0.1, 1.0, True, 1.0, 0
        )
    )
    window.training.redraw_curves()
    assert set(curves.diagnostic_keys()) == {"mmd", "domain_acc", "val target_accuracy"}
    assert curves.plots["diagnostics"].objectName() == "plot:diagnostics"
    assert curves.points("val target_accuracy") == 1
    assert len(curves.curves["mmd"].getData()[0]) == 1
    curves.clear()
    assert curves.diagnostic_keys() == [] and "diagnostics" not in curves.plots


def test_every_builtin_method_can_be_chosen_with_its_form_and_data_fields(window, host):
    from transferstudio.api import ROLE_KEYS
    from transferstudio.core.settings.params import fields_of

    combo = window.method_combo
    # The list holds the methods of the experiment's task (classification here).
    classifying = {n: s for n, s in host.methods.items() if s.task == "classification"}
    assert {combo.itemData(i) for i in range(combo.count())} == set(classifying)
    assert "detect" in host.methods and "detect" not in classifying
    for name, spec in classifying.items():
        combo.setCurrentIndex(combo.findData(name))
        assert set(window.method_form.widgets) == {f.name for f in fields_of(spec.params)}
        roles = {*spec.data_roles, *spec.optional_roles}
        shown = {
            key
            for key in ("target_path", "target_eval_path", "label_columns")
            if window.data_form.widgets[key].isVisibleTo(window)
        }
        expected = {ROLE_KEYS[r].split(".")[1] for r in roles if r in ROLE_KEYS}
        expected |= {"label_columns"} if "multilabel" in roles else set()
        assert shown == expected - {"path"}, name


def test_a_domain_adaptation_run_from_the_window_plots_its_diagnostics(window, qtbot, make_images):
    target = make_images({"any": 10}, name="target", seed=7)
    window.method_combo.setCurrentIndex(window.method_combo.findData("dann"))
    window.method_form.set_values({"bottleneck": 16, "discriminator_hidden": 16})
    window.data_form.set_values({"target_path": str(target)})
    window.start_run()
    with qtbot.waitSignal(window.controller.worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    assert window.runs_table.item(0, 6).text() == "completed"
    assert {"domain_acc", "domain_loss", "grl_lambda"} <= set(window.curves.diagnostic_keys())
    assert window.curves.points("domain_acc") > 0


def test_the_predict_panel_classifies_dropped_images_with_the_run_and_a_bundle(
    window, qtbot, make_images, tmp_path
):
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDropEvent

    from transferstudio.core.inference.export import export_run

    panel = window.predict_panel
    assert not panel.images_button.isEnabled()  # no model before a run finishes
    window.start_run()
    with qtbot.waitSignal(window.controller.worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: panel.model_ref is not None, timeout=10_000)
    folder = make_images({"red": 2, "blue": 1}, name="new")
    (folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(folder))])
    drop = QDropEvent(
        QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.NoModifier
    )
    with qtbot.waitSignal(panel.finished, timeout=60_000) as blocker:
        panel.dropEvent(drop)
    report = blocker.args[0]
    assert len(report.predictions) == 3 and panel.results.count() == 3
    assert [Path(p).name for p, _ in report.skipped] == ["broken.jpg"]
    assert "broken.jpg" in panel.status.text()
    assert len(report.predictions[0].top) == 3  # top-3 by default, three classes
    from_run = [item.top[0][0] for item in report.predictions]

    bundle = tmp_path / "model.tsmodel"
    export_run(window._last_result.run_id, "bundle", bundle, window.host, window.workspace)
    panel.set_bundle(bundle)
    panel.top_k.setValue(1)
    with qtbot.waitSignal(panel.finished, timeout=60_000) as blocker:
        panel.predict_paths([str(folder)])
    assert [item.top[0][0] for item in blocker.args[0].predictions] == from_run
    assert all(len(item.top) == 1 for item in blocker.args[0].predictions)


def test_the_predict_panel_takes_a_support_folder_for_a_few_shot_run(window, qtbot, tmp_path):
    import shutil

    from tests.helpers import fewshot_experiment, write_glyphs
    from transferstudio.core.training.engine import PlainState, run_experiment

    glyphs = write_glyphs(tmp_path / "glyphs", classes=16, per_class=6)
    exp = fewshot_experiment(
        tmp_path, window.host, "protonet", data=glyphs, test_split=0.0,
        n_way=3, queries=3, episodes_per_epoch=5, val_episodes=2,
    )  # fmt: skip
    result = run_experiment(exp, window.host, PlainState(), window.workspace)
    assert result.status == "completed", result.message
    support = tmp_path / "support"
    for name in ("glyph00", "glyph01"):
        shutil.copytree(glyphs / name, support / name)

    panel = window.predict_panel
    panel.set_run(result.folder)
    with qtbot.waitSignal(panel.errored, timeout=60_000) as blocker:
        panel.predict_paths([str(glyphs / "glyph02")])
    assert "Support..." in blocker.args[0] and "Support..." in panel.status.text()

    panel.set_support(support)
    assert panel.support_label.text() == "support: support/"
    with qtbot.waitSignal(panel.finished, timeout=60_000) as blocker:
        panel.predict_paths([str(glyphs / "glyph02")])
    report = blocker.args[0]
    assert len(report.predictions) == 6 and panel.results.count() == 6
    assert {label for item in report.predictions for label, _ in item.top} == {
        "glyph00",
        "glyph01",
    }
    panel.clear_support_button.click()
    assert panel.support is None and not panel.clear_support_button.isEnabled()


def test_the_learning_rate_finder_applies_its_suggestion_to_the_form(window, qtbot):
    window.backbone_combo.setCurrentIndex(window.backbone_combo.findData("lenet"))
    window.train_form.widgets["lr"].setValue(0.5)
    window.act_lr_find.trigger()
    dialog = window.lr_dialog
    from PySide6.QtCore import QObject

    doc = (Path(__file__).resolve().parents[2] / "docs" / "gui.md").read_text()
    documented = set(re.findall(r"`(lr_finder\.[a-z_]+)`", doc))
    assert len(documented) == 6
    assert all(dialog.findChild(QObject, name) is not None for name in documented)
    qtbot.waitUntil(lambda: dialog.result is not None, timeout=120_000)
    assert dialog.result.suggestion is not None and dialog.apply_button.isEnabled()
    dialog.apply_button.click()
    expected = float(f"{dialog.result.suggestion:.3g}")
    assert window.train_form.widgets["lr"].value() == pytest.approx(expected, abs=1e-6)
    assert window.current_experiment().train.lr == pytest.approx(expected, abs=1e-6)
    assert not (window.workspace / "runs").exists()  # the sweep wrote no run
    window.act_lr_find.trigger()  # again: the closed dialog is freed, not kept hidden
    assert window.lr_dialog is not dialog
    qtbot.waitUntil(lambda: not shiboken6.isValid(dialog), timeout=5_000)
    window.lr_dialog.close()  # stops its sweep


def _run_to_end(window, qtbot, start):
    qtbot.waitUntil(window.model_ready, timeout=30_000)  # Start waits for the tree's model
    start()
    with qtbot.waitSignal(window.controller.worker.finished, timeout=120_000) as blocker:
        pass
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    return blocker.args[0]


def _select_run(window, run_id):
    window.runs_table.clearSelection()
    window.runs_table.selectRow([r.id for r in window.run_records].index(run_id))


def test_transfer_gain_runs_the_baseline_and_shows_the_gain(window, qtbot, monkeypatch):
    window.backbone_combo.setCurrentIndex(window.backbone_combo.findData("lenet"))
    source = _run_to_end(window, qtbot, window.start_run)  # from random initialisation
    _select_run(window, source.run_id)
    monkeypatch.setattr(window, "show_error", lambda title, text, details="": errors.append(text))
    errors: list[str] = []
    window.run_selected_baseline()
    assert errors and "already starts from random initialisation" in errors[0]
    window.model_panel.set_weights(str(source.folder))  # pretrained on the task: the transfer
    transfer = _run_to_end(window, qtbot, window.start_run)
    _select_run(window, transfer.run_id)
    baseline = _run_to_end(window, qtbot, window.run_selected_baseline)
    from transferstudio.core.runs.workspace import RunStore

    assert RunStore(window.workspace).tags(baseline.run_id)["baseline_of"] == transfer.run_id
    row = [r.id for r in window.run_records].index(transfer.run_id)
    text = window.runs_table.item(row, 7).text()
    gain = window.run_gains[transfer.run_id]
    assert text == (
        f"{gain.transfer_value:.4f} vs {gain.baseline_value:.4f}: {gain.gain:+.4f} val "
        "accuracy over random initialisation"
    )
    assert window.run_gains[transfer.run_id].baseline_id == baseline.run_id
    # the baseline is a measurement: Predict, Evaluation and the tree keep the transfer run
    assert window.predict_panel.model_ref == str(transfer.folder)
    assert transfer.run_id in window.evaluation.title.text()
    assert transfer.run_id in window.tree_weights_source
    assert "transfer gain on that run's row" in window.log_view.toPlainText()


def test_the_sweeps_dock_searches_the_window_experiment_and_opens_the_best_trial(
    window, qtbot, tmp_path
):
    panel = window.sweep_panel
    window.backbone_combo.setCurrentIndex(window.backbone_combo.findData("lenet"))
    window.train_form.widgets["epochs"].setValue(1)
    panel.name.setText("w")
    panel.trials.setValue(2)
    panel.space.setText("train.lr=1e-4:1e-2:log")
    with qtbot.waitSignal(panel.sweep_ended, timeout=120_000):
        panel.start_button.click()
    assert len(panel.summary.trials) == 2 and panel.summary.best is not None
    assert window.runs_table.rowCount() == 2  # the trials are runs, shown in Runs
    best_lr = panel.summary.best.params["train.lr"]
    panel.open_best.click()
    assert window.current_experiment().train.lr == pytest.approx(best_lr, abs=1e-6)
    assert window.current_experiment().model.backbone == "lenet"
