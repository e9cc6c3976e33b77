"""Detection in the window: the task picker, the data scan of boxes, the detector in the layer
tree with its stage presets, a run's mAP curves, the Evaluation panel's precision-recall
curves and worst images, and the Predict panel's boxes."""

from __future__ import annotations

import pytest
import torch

from tests.core.test_detection_engine import detection_experiment
from transferstudio.core.data.detection_demo import generate_detection_data
from transferstudio.core.training.detection_metrics import DetectionMetrics
from transferstudio.gui.panels.evaluation import EvaluationPanel


@pytest.fixture
def shapes(tmp_path):
    return generate_detection_data(tmp_path / "shapes", images=16, seed=2)


def test_the_detection_task_lists_its_methods_scans_boxes_and_shows_the_detector(
    open_window, shapes, qtbot
):
    win = open_window(detection_experiment(shapes))
    method = win.method_panel
    assert method.task() == "detection"
    methods = {method.method_combo.itemData(i) for i in range(method.method_combo.count())}
    assert methods == {"detect"}
    tree = win.data_panel.counts_tree
    header = tree.headerItem().text(0)
    assert "boxes" in header
    rows = {tree.topLevelItem(i).text(0) for i in range(tree.topLevelItemCount())}
    assert {"circle", "square", "triangle", "no boxes (negatives)"} <= rows
    assert "boxes" in win.data_panel.scan_label.text()
    qtbot.waitUntil(lambda: win.data_panel.thumbnails.count() > 0, timeout=10_000)
    paths = {n.path for n in win.tree_model.root.children}
    assert {"backbone", "rpn", "roi_heads"} <= paths
    assert win.layer_tree.head_only.text() == "Heads only"
    assert win.layer_tree.stages == win.host.backbone("mobilenet_v3_small").stages
    # "Unfreeze last 1 stage": everything of the backbone body up to its third stage freezes.
    win.layer_tree.last_blocks.setValue(1)
    win.layer_tree.apply_preset("last")
    plan = win.method_panel.freeze_plan()
    assert plan.bn_mode == "frozen"  # BatchNorm parameters stay fixed whatever the preset
    frozen = plan.frozen_names(win.layer_tree.torch_model)
    assert "backbone.body.features.1.block.0.0.weight" in frozen
    assert "backbone.body.features.12.0.weight" not in frozen  # the last stage trains
    assert not any(n.startswith(("rpn.", "roi_heads.", "backbone.fpn.")) for n in frozen)
    assert win.current_experiment().task == "detection"


def test_switching_the_task_offers_its_methods_and_metric(window, qtbot):
    method = window.method_panel
    index = method.task_combo.findData("detection")
    method.task_combo.setCurrentIndex(index)
    assert method.name() == "detect"
    values = method.train_form.values()
    assert values["early_stopping_metric"] == "map50"
    assert window.data_panel.browse_file.text() == "File..."
    method.task_combo.setCurrentIndex(method.task_combo.findData("classification"))
    assert method.name() == "fine-tune"
    assert method.train_form.values()["early_stopping_metric"] == "accuracy"
    assert window.data_panel.browse_file.text() == "CSV..."


def _detection_report(shapes):
    from transferstudio.core.data.detection_scan import DetectionScan  # noqa: F401

    paths = sorted(str(p) for p in (shapes / "images").glob("*.png"))[:3]
    metrics = DetectionMetrics(["circle", "square"], score_threshold=0.5)
    box = torch.tensor([[10.0, 10.0, 40.0, 40.0]])
    for _ in paths:
        metrics.update(
            [
                {
                    "boxes": torch.cat([box, box + 50]),
                    "scores": torch.tensor([0.9, 0.3]),
                    "labels": torch.tensor([1, 2]),
                }
            ],
            [{"boxes": torch.cat([box, box + 50]), "labels": torch.tensor([1, 2])}],
        )
    report = metrics.report().to_dict()
    for image in report["worst_images"]:
        image["path"] = paths[image["index"]]
    return {"val": report}


def test_the_evaluation_panel_draws_pr_curves_and_rematches_the_gallery(qtbot, shapes):
    panel = EvaluationPanel()
    qtbot.addWidget(panel)
    requested = []
    panel.gallery_requested.connect(requested.append)
    panel.resize(1200, 400)
    panel.show()
    assert panel.show_report(_detection_report(shapes), "run x")
    assert panel.is_detection()
    assert panel.pr_plot.isVisible() and not panel.matrix_scroll.isVisible()
    headers = [panel.class_table.horizontalHeaderItem(c).text() for c in range(5)]
    assert headers == ["class", "AP50", "AP50:95", "recall", "boxes"]
    assert "mAP@0.5" in panel.title.text()
    curves = [item for item in panel.pr_plot.listDataItems()]
    assert len(curves) == 2
    # At 0.5 each image misses its 'square' (its detection scores 0.3) ...
    assert [c for c, _ in requested[-1]] == ["1 missed, 0 false +"] * 3
    # ... at 0.25 nothing is missed, so the gallery is empty.
    panel.threshold.setValue(0.25)
    assert requested[-1] == []
    assert "no missed objects" in panel.gallery_label.text()
    # A classification report afterwards shows the matrix again.
    from tests.gui.test_evaluation_panel import _report

    panel.show_report(_report(["a", "b"]), "run y")
    assert panel.matrix_scroll.isVisible() and not panel.pr_plot.isVisible()
    assert panel.class_table.horizontalHeaderItem(1).text() == "precision"


def test_a_finished_detection_run_exports_from_the_tree_checked_box_by_box(
    open_window, shapes, qtbot, tmp_path
):
    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.training.engine import PlainState, run_experiment

    exp = detection_experiment(shapes, train__epochs=1)
    result = run_experiment(exp, load_plugins(autoload=False), PlainState(), tmp_path / "ws")
    assert result.status == "completed", result.message
    win = open_window(detection_experiment(shapes))
    win.refresh_runs()
    win.runs_table.selectRow(0)  # the run's curve in Runs: validation mAP, not accuracy
    assert win.runs.overlay_plot.getPlotItem().titleLabel.text == "val mAP@0.5 of selected runs"
    assert len(win.runs.overlay_plot.getPlotItem().listDataItems()) == 1
    tree = win.layer_tree
    errors = []
    tree.export_errored.connect(lambda message, details: errors.append(message))
    tree.export("", "torchscript", tmp_path / "untrained.pt", 96)
    assert errors and "exported once trained" in errors[-1]
    assert not (tmp_path / "untrained.pt").exists()
    tree.load_run_weights(result.folder, result.run_id, "detector")
    with qtbot.waitSignal(tree.exported, timeout=120_000) as exported:
        tree.export("", "torchscript", tmp_path / "detector.pt", 96)
    outcome = exported.args[0]
    assert outcome.boxes_compared and outcome.min_iou >= 0.99
    assert (tmp_path / "detector.pt").is_file()


def test_the_accuracy_plot_becomes_an_map_plot_for_a_detection_run_and_back(qtbot):
    from transferstudio.gui.plots import TrainingCurves

    curves = TrainingCurves()
    qtbot.addWidget(curves)

    def legend() -> list[str]:
        return [label.text for _, label in curves.plots["accuracy"].getPlotItem().legend.items]

    assert legend() == ["train", "val"]  # a classification run's plot has no mAP entries
    curves.show_map(True)
    assert legend() == ["val mAP@0.5", "val mAP@[.5:.95]"]
    assert curves.plots["accuracy"].getPlotItem().titleLabel.text == "mAP (validation)"
    curves.clear()
    assert legend() == ["train", "val"]
    assert curves.plots["accuracy"].getPlotItem().titleLabel.text == "accuracy"
