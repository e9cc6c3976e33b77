"""The Evaluation panel a person can read: a square, labelled confusion matrix, per-class
table and captions that fit, for the run just finished, a run chosen in Runs, or the newest
run when the window opens again."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import QPoint, QSize
from PySide6.QtWidgets import QDockWidget

from tests.helpers import run_cli, tiny_experiment
from transferstudio.core.runs.workspace import RunStore
from transferstudio.gui.panels.confusion_matrix import MIN_CELL_PX, ConfusionMatrixView
from transferstudio.gui.panels.evaluation import EvaluationPanel


def _report(names, correct=8, wrong=2, with_test=False, mistakes=()):
    n = len(names)
    confusion = [
        [correct if i == j else (wrong if j == (i + 1) % n else 0) for j in range(n)]
        for i in range(n)
    ]
    section = {
        "metrics": {"accuracy": correct / (correct + wrong)},
        "per_class": [
            {"class": c, "precision": 0.8, "recall": 0.8, "f1": 0.8, "support": correct + wrong}
            for c in names
        ],
        "confusion": confusion,
        "misclassified": list(mistakes),
    }
    report = {"val": section}
    if with_test:
        report["test"] = json.loads(json.dumps(section))
        report["test"]["confusion"][0][0] = 99
    return report


def test_the_matrix_is_square_labelled_and_shaded_by_row(qtbot):
    panel = EvaluationPanel()
    qtbot.addWidget(panel)
    panel.resize(900, 420)
    panel.show()
    names = ["ants", "bees", "wasps"]
    assert panel.show_report(_report(names, with_test=True), "run X")
    view = panel.matrix
    assert panel.class_names() == names
    assert "ants, bees, wasps" in view.accessibleDescription()
    # opens on the test split (the figure to cite), val one pick away
    assert panel.current_split() == "test" and panel.split_box.isVisible()
    assert view.matrix[0][0] == 99
    panel.split_box.setCurrentIndex(1)
    assert panel.current_split() == "val" and view.matrix[0][0] == 8
    # square cells that fill the space: far more than a 12 px strip
    assert view.cell >= 40
    left, top = view._margins()
    assert view.width() - left == view.height() - top == 3 * view.cell + 4
    shot = view.grab()
    assert shot.width() >= 200 and shot.height() >= 200
    # row-normalised shading: the diagonal is darker than an off-diagonal cell of its row
    image = shot.toImage()
    diag = image.pixelColor(left + view.cell // 6, top + view.cell // 6)
    off = image.pixelColor(left + view.cell + view.cell // 6, top + view.cell // 6)
    assert diag.lightness() < off.lightness()
    assert view.fraction(0, 0) == pytest.approx(0.8)  # 8 of the row's 10
    assert view.cell_at(QPoint(left + 1, top + view.cell + 1)) == (1, 0)
    # the table has the class names; its columns are not cut
    assert [panel.class_table.item(r, 0).text() for r in range(3)] == names
    assert "Validation split" not in panel.title.text() and "run X" in panel.title.text()


def test_fifty_classes_stay_readable_and_scroll(qtbot):
    panel = EvaluationPanel()
    qtbot.addWidget(panel)
    panel.resize(900, 420)
    panel.show()
    names = [f"class_{i:02d}" for i in range(50)]
    panel.show_report(_report(names), "run many")
    view, scroll = panel.matrix, panel.matrix_scroll
    assert view.cell >= MIN_CELL_PX  # no shrinking into unreadable cells
    assert scroll.verticalScrollBar().maximum() > 0  # it scrolls instead
    assert len(panel.class_names()) == 50


def test_scrolled_labels_stay_pinned_and_long_names_elide_in_the_middle(qtbot):
    panel = EvaluationPanel()
    qtbot.addWidget(panel)
    panel.resize(1366, 212)  # the bottom dock of a 1366x768 window
    panel.show()
    names = [f"n0144{i:02d}_a_rather_long_class_name_{i:02d}" for i in range(50)]
    panel.show_report(_report(names), "run long")
    view, scroll = panel.matrix, panel.matrix_scroll
    shown = view.axis_labels()
    # elided in the middle: the distinguishing ends stay, and they stay distinct
    assert all("…" in label for label in shown) and len(set(shown)) == 50
    assert shown[7].endswith("07") and shown[7].startswith("n01")
    left, top = view._margins()
    assert left < scroll.viewport().width() // 2  # the names leave room for cells
    scroll.verticalScrollBar().setValue(10 * view.cell)
    scroll.horizontalScrollBar().setValue(20 * view.cell)
    qtbot.wait(20)
    x0, y0 = scroll.horizontalScrollBar().value(), scroll.verticalScrollBar().value()
    # the column names sit at the top of what is in view, the row names at its left,
    # each with its whole name for the tooltip; the cells beneath them are not hit
    column = view.label_at(QPoint(x0 + left + view.cell // 2, y0 + top // 2))
    row = view.label_at(QPoint(x0 + left // 2, y0 + top + view.cell // 2))
    assert column == names[(x0 + view.cell // 2) // view.cell]
    assert row == names[(y0 + view.cell // 2) // view.cell]
    assert view.cell_at(QPoint(x0 + left + 2, y0 + top // 2)) is None
    assert view.cell_at(QPoint(x0 + left + 2, y0 + top + 2)) is not None


def test_short_names_are_whole_and_the_header_takes_one_line_when_it_can(qtbot):
    panel = EvaluationPanel()
    qtbot.addWidget(panel)
    panel.resize(1366, 212)
    panel.show()
    names = [f"class_{i:02d}" for i in range(3)]
    panel.show_report(_report(names), "run short")
    assert panel.matrix.axis_labels() == names  # not "class_..." for want of a pixel
    line = panel.title.fontMetrics().lineSpacing()
    assert panel.title.height() < 2 * line  # one line: the rest is the matrix's
    panel.show_message("report.json cannot be read " + "because of a long reason " * 12)
    qtbot.wait(20)
    assert panel.title.height() >= 2 * line
    assert "report.json cannot be read" in panel.title.toolTip()


def test_ctrl_wheel_zooms(qtbot):
    view = ConfusionMatrixView()
    qtbot.addWidget(view)
    view.set_matrix(["a", "b"], [[3, 1], [0, 4]])
    view.fit(QSize(300, 300))
    before = view.cell
    view.zoom = 2.0
    view.fit(QSize(300, 300))
    assert view.cell == pytest.approx(2 * before, abs=1)


def test_captions_wrap_instead_of_being_cut(qtbot, make_images):
    folder = make_images({"ants": 2, "bees": 2})
    paths = sorted(str(p) for p in folder.rglob("*.png"))
    mistakes = [
        {"path": paths[0], "true": "ants", "predicted": "bees", "confidence": 0.93},
        {"path": paths[2], "true": "bees", "predicted": "ants", "confidence": 0.71},
    ]
    panel = EvaluationPanel()
    qtbot.addWidget(panel)
    loaded = []
    panel.gallery_requested.connect(loaded.append)
    panel.resize(900, 420)
    panel.show()
    panel.show_report(_report(["ants", "bees"], mistakes=mistakes), "run G")
    from transferstudio.gui.widgets import load_thumbnails

    panel.show_gallery(load_thumbnails(loaded[-1]))
    assert panel.gallery.count() == 2
    assert panel.gallery.wordWrap()
    item = panel.gallery.item(0)
    assert item.text() == "ants → bees (93%)"
    assert "ants → bees (93%)" in item.toolTip() and paths[0] in item.toolTip()
    assert "2 shown" in panel.gallery_label.text()


def test_the_panel_fills_for_a_finished_run_a_selected_run_and_a_reopened_window(
    window, qtbot, open_window, make_images
):
    assert "No evaluation yet" in window.evaluation.title.text()
    window.start_run()
    with qtbot.waitSignal(window.controller.worker.finished, timeout=120_000) as blocker:
        pass
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    first = blocker.args[0]
    assert window.evaluation.class_names() == ["blue", "green", "red"]
    assert first.run_id in window.evaluation.title.text()
    # a run still running says when its evaluation comes; it comes once the run has ended
    # (in another process: the Runs table's refresh sees the new status)
    from dataclasses import replace

    record = RunStore(window.workspace).get(first.run_id)
    window.evaluation.show_run(replace(record, status="running"))
    assert window.evaluation.class_names() == []
    assert "appears here when it ends" in window.evaluation.title.text()
    window.refresh_runs()
    assert window.evaluation.class_names() == ["blue", "green", "red"]

    # a second run from the command line, on another folder with other classes
    other = make_images({"cat": 6, "dog": 6}, name="other")
    exp = tiny_experiment(other, train__epochs=1)
    exp_path = other.parent / "other.toml"
    exp_path.write_text(exp.to_toml())
    run_cli(window.workspace, "run", str(exp_path))
    window.refresh_runs()
    second = RunStore(window.workspace).list()[0]
    window.runs_table.selectRow([r.id for r in window.run_records].index(second.id))
    assert window.evaluation.class_names() == ["cat", "dog"]
    assert second.id in window.evaluation.title.text()
    window.runs_table.selectRow([r.id for r in window.run_records].index(first.run_id))
    assert window.evaluation.class_names() == ["blue", "green", "red"]

    # a damaged report says so, naming the file, and keeps the window usable
    report = RunStore(window.workspace).get(second.id).folder + "/report.json"
    with open(report, "w") as f:
        f.write("{not json")
    window.runs_table.selectRow([r.id for r in window.run_records].index(second.id))
    assert window.evaluation.class_names() == []
    assert "report.json cannot be read" in window.evaluation.title.text()
    assert window.act_start.isEnabled()

    # a window opened again on the workspace shows the newest completed run's evaluation
    reopened = open_window(tiny_experiment(make_images({"x": 6, "y": 6}, name="third")))
    assert reopened.workspace == window.workspace
    assert "report.json cannot be read" in reopened.evaluation.title.text()  # newest: damaged
    reopened.runs_table.selectRow([r.id for r in reopened.run_records].index(first.run_id))
    assert reopened.evaluation.class_names() == ["blue", "green", "red"]
    # at the window's default size, with the panel brought to the front: a real matrix
    dock = reopened.findChild(QDockWidget, "dock.evaluation")
    dock.raise_()
    qtbot.waitUntil(lambda: reopened.evaluation.matrix.visibleRegion().isEmpty() is False)
    reopened.resize(1366, 768)
    qtbot.wait(200)
    panel = reopened.evaluation
    shot = panel.grab()  # the panel as the user sees it, at 1366x768
    assert shot.size() == panel.size() and shot.height() >= 180
    assert panel.matrix.height() >= 0.75 * panel.height()  # the matrix has the height
    assert panel.matrix.cell >= MIN_CELL_PX
    # three classes fit whole, no scrolling; the table shows every class
    assert panel.matrix_scroll.verticalScrollBar().maximum() == 0
    assert panel.matrix_scroll.horizontalScrollBar().maximum() == 0
    assert panel.class_table.rowCount() == 3
    # the window's default size (1600x1000 at most, see MainWindow._fit_to_screen)
    reopened.resize(1600, 1000)
    reopened._fit_docks_to_window()
    qtbot.wait(200)
    shot = panel.matrix.grab()
    assert shot.width() >= 200 and shot.height() >= 200
    left, top = panel.matrix._margins()
    assert panel.matrix.width() - left == panel.matrix.height() - top  # square cells
    assert panel.matrix.axis_labels() == ["blue", "green", "red"]
