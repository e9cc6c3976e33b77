"""Resume from the window, and what the progress area says during and after a run."""

from __future__ import annotations

import json

from tests.helpers import run_cli
from transferstudio.core.runs.workspace import RunStore


def _select(window, run_id: str) -> None:
    window.runs_table.clearSelection()
    window.runs_table.selectRow([r.id for r in window.run_records].index(run_id))


def _stop_after_first_epoch(window, qtbot):
    window.start_run()
    worker = window.controller.worker
    worker.epoch_ended.connect(lambda _ev: window.stop_run())
    with qtbot.waitSignal(worker.finished, timeout=120_000) as blocker:
        pass
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    return blocker.args[0]


def test_a_stopped_run_resumes_in_its_folder_to_the_result_of_an_uninterrupted_run(
    window, qtbot, tmp_path
):
    path = tmp_path / "exp.toml"
    assert window.save_to(path)
    stopped = _stop_after_first_epoch(window, qtbot)
    assert stopped.status == "cancelled"
    # what the progress area says: the run's end, nothing left ticking
    assert "cancelled" in window.eta_label.text() and "Resume" in window.eta_label.text()
    assert "left" not in window.eta_label.text()
    assert window.batch_bar.value() == 0
    log = window.log_view.toPlainText()
    assert "epoch 1/2: train loss" in log
    assert "in the window: select it in Runs, then Run > Resume" in log

    window.refresh_runs()
    _select(window, stopped.run_id)
    assert window.act_resume.isEnabled()
    window.runs_table.customContextMenuRequested.emit(window.runs_table.rect().center())
    (menu,) = [
        m
        for m in window.findChildren(type(window.menuBar().actions()[0].menu()))
        if m.objectName() == "menu.runs"
    ]
    assert window.act_resume in menu.actions()
    menu.close()

    window.act_resume.trigger()
    assert window.controller.running and not window.act_resume.isEnabled()
    with qtbot.waitSignal(window.controller.worker.finished, timeout=120_000) as blocker:
        pass
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    resumed = blocker.args[0]
    assert resumed.run_id == stopped.run_id and resumed.folder == stopped.folder
    assert resumed.status == "completed"
    (record,) = RunStore(window.workspace).list()
    assert record.status == "completed" and record.epochs_done == 2
    # the curves hold the epoch done before the stop and the one done after it
    assert window.curves.points("val_acc") == 2
    window.refresh_runs()
    _select(window, stopped.run_id)
    assert not window.act_resume.isEnabled()  # completed: nothing left to resume

    run_cli(tmp_path / "cli", "run", str(path))
    (report_path,) = (tmp_path / "cli" / "runs").glob("*/report.json")
    assert json.loads(report_path.read_text())["val"] == json.loads(
        json.dumps(resumed.report["val"])
    )


def test_resuming_a_run_without_its_experiment_file_says_what_to_do(window, qtbot, monkeypatch):
    stopped = _stop_after_first_epoch(window, qtbot)
    (stopped.folder / "experiment.toml").unlink()
    window.refresh_runs()
    _select(window, stopped.run_id)
    errors: list[tuple[str, str]] = []
    monkeypatch.setattr(window, "show_error", lambda t, m, d="": errors.append((t, m)))
    window.resume_selected_run()
    assert not window.controller.running
    assert errors and errors[0][0] == "Cannot resume the run"
    assert f"runs delete {stopped.run_id}" in errors[0][1]


def test_the_first_epoch_is_drawn_and_the_bars_are_labelled(open_window, make_images, qtbot):
    from tests.helpers import tiny_experiment

    # 30 epochs: the run is still going when the first epoch's figures are checked (2 epochs of
    # this tiny data ended within a second on an idle machine, before the checks ran).
    data = make_images({"red": 8, "green": 8, "blue": 8})
    window = open_window(tiny_experiment(data, train__epochs=30))
    window.start_run()
    worker = window.controller.worker
    with qtbot.waitSignal(worker.epoch_ended, timeout=120_000):
        pass
    curve = window.curves.curves["val_acc"]

    def drawn() -> bool:
        # At least the first epoch's point (curves redraw at most once a second).
        x, _ = curve.getData()
        return x is not None and len(x) >= 1

    qtbot.waitUntil(drawn)
    # a one-point series is drawn as a dot (a line through one point draws nothing)
    assert window.curves.curves["val_acc"].opts["symbol"] == "o"
    assert "epoch" in window.epoch_bar.text() and "of 30" in window.epoch_bar.text()
    assert "left" in window.eta_label.text()
    with qtbot.waitSignal(worker.finished, timeout=300_000):
        pass
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    assert "completed" in window.eta_label.text() and "Resume" not in window.eta_label.text()


def test_runs_started_elsewhere_appear_without_a_click(window, qtbot, tmp_path):
    path = tmp_path / "exp.toml"
    window.save_to(path)
    assert window.runs_table.rowCount() == 0
    run_cli(window.workspace, "run", str(path), "--set", "train.epochs=1")
    qtbot.waitUntil(lambda: window.runs_table.rowCount() == 1, timeout=15_000)
    assert window.runs_table.item(0, 6).text() == "completed"
