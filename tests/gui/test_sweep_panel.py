"""The sweep panel: a sweep runs in a thread and its trials, best-so-far curve and importances
are shown; Stop interrupts a trial that the next Start tries again; a bad searched setting is
reported without starting anything; an existing sweep is shown without running it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import shiboken6

from tests.helpers import tiny_experiment
from transferstudio.core.runs.workspace import RunStore
from transferstudio.core.studies.sweep import load_sweep, run_sweep, sweep_names

TIMEOUT_MS = 120_000


@pytest.fixture
def fast(make_images):
    """Factory: LeNet on two colours; a 2-epoch trial takes well under a second. Validation
    loss is the metric: accuracy saturates on this task, so trials would all tie."""
    data = make_images({"a": 12, "b": 12}, size=24)

    def make(**overrides):
        settings = {
            "model__backbone": "lenet",
            "data__batch_size": 8,
            "train__epochs": 2,
            "train__early_stopping_metric": "loss",
        }
        return tiny_experiment(data, **{**settings, **overrides})

    return make


@pytest.fixture
def open_panel(qtbot, host, tmp_path):
    """Factory: ``open_panel(experiment)`` -> the panel on workspace ``tmp_path/ws``, shown.
    Fails the test if a sweep thread is left running."""
    from transferstudio.gui.panels.sweeps import SweepPanel

    panels = []

    def open_(exp):
        panel = SweepPanel(host, tmp_path / "ws", lambda: exp)
        qtbot.addWidget(panel)
        panel.show()
        panels.append(panel)
        return panel

    yield open_
    for panel in panels:
        running = panel.running
        panel.stop_and_wait()
        assert not running and not panel.running, "a sweep thread was left running"


def _table(widget) -> list[list[str]]:
    return [
        [widget.item(r, c).text() for c in range(widget.columnCount())]
        for r in range(widget.rowCount())
    ]


def _run(qtbot, panel) -> None:
    """Click Start and wait for the sweep's thread to be gone."""
    with qtbot.waitSignal(panel.sweep_ended, timeout=TIMEOUT_MS):
        panel.start_button.click()
        worker = panel.worker
        assert panel.running and not panel.start_button.isEnabled()
        assert panel.stop_button.isEnabled() and not panel.space.isEnabled()
        assert not panel.name.isEnabled() and not panel.trials.isEnabled()
    assert not panel.running
    qtbot.waitUntil(lambda: not shiboken6.isValid(worker), timeout=5_000)  # deleted
    assert panel.start_button.isEnabled() and not panel.stop_button.isEnabled()


def test_a_sweep_runs_and_its_trials_best_and_importances_are_shown(
    qtbot, open_panel, fast, host, tmp_path
):
    panel = open_panel(fast())
    panel.name.setText("lr")
    panel.trials.setValue(3)
    panel.sampler.setCurrentText("random")
    panel.space.setText("train.lr=1e-4:1e-2:log; train.weight_decay=1e-6:1e-2:log")
    assert not panel.open_best.isEnabled()
    _run(qtbot, panel)

    summary = panel.summary
    assert summary is not None and summary.name == "lr" and summary.best is not None
    rows = _table(panel.table)
    assert len(rows) == 3
    assert {row[1] for row in rows} <= {"COMPLETE", "PRUNED"}
    assert panel.table.horizontalHeaderItem(2).text() == "val loss"
    assert f"best val loss {summary.best.value:.4f}" in panel.status.text()
    assert "3 trials finished" in panel.status.text()
    # the best-so-far curve: one point per completed trial, never getting worse (loss)
    complete = [t for t in summary.trials if t.state == "COMPLETE"]
    x, y = panel.best_curve.getData()
    assert list(x) == [t.number for t in complete]
    assert list(y) == pytest.approx([v for _, v in summary.best_so_far()])
    assert all(b <= a for a, b in zip(y, y[1:], strict=False))
    assert len(panel.trial_points.data) == len(complete)
    # both searched settings are ranked, each with a bar as long as its importance
    assert set(summary.importances) == {"train.lr", "train.weight_decay"}
    ranked = _table(panel.importances)
    assert {row[0] for row in ranked} == {"train.lr", "train.weight_decay"}
    for key, bar in ranked:
        value = summary.importances[key]
        assert bar.endswith(f" {value:.2f}") and bar.count("█") == round(value * 20)
    # the form's choices reached the sweep
    study, _ = load_sweep(tmp_path / "ws", "lr", host)
    assert (study.user_attrs["sampler"], study.user_attrs["pruner"]) == ("random", "median")
    assert summary.space == [
        "train.lr=0.0001:0.01:log",
        "train.weight_decay=1e-06:0.01:log",
    ]
    # every trial is a run of the workspace
    store = RunStore(tmp_path / "ws")
    for row in rows:
        assert store.get(row[4]).id == row[4]
    assert panel.existing.findText("lr") > 0  # listed once it exists

    assert panel.open_best.isEnabled()
    with qtbot.waitSignal(panel.open_experiment, timeout=1000) as opened:
        panel.open_best.click()
    path = Path(opened.args[0])
    assert path.exists() and path.parent == Path(store.get(summary.best.run_id).folder)
    raw = tomllib.loads(path.read_text())
    assert raw["train"]["lr"] == pytest.approx(summary.best.params["train.lr"])
    assert raw["train"]["weight_decay"] == pytest.approx(summary.best.params["train.weight_decay"])


def test_stop_interrupts_a_trial_that_start_tries_again(qtbot, open_panel, fast):
    # Many epochs, so the first trial is surely still running when Stop is clicked.
    panel = open_panel(fast(train__epochs=40))
    panel.name.setText("st")
    panel.trials.setValue(2)
    panel.pruner.setCurrentText("none")
    panel.space.setText("train.lr=1e-4:1e-2:log")
    with qtbot.waitSignal(panel.sweep_ended, timeout=TIMEOUT_MS):
        panel.start_button.click()
        qtbot.waitUntil(lambda: "trial #0 running" in panel.status.text(), timeout=TIMEOUT_MS)
        panel.stop_button.click()
        assert panel.status.text() == "stopping..." and not panel.stop_button.isEnabled()
    assert not panel.running
    assert "Start continues sweep 'st'" in panel.status.text()
    [stopped] = panel.summary.trials
    assert stopped.state == "FAIL"

    _run(qtbot, panel)  # the same name: continued
    assert "2 trials finished" in panel.status.text()
    trials = panel.summary.trials
    assert [t.state for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].params == stopped.params
    assert stopped.params in [t.params for t in trials[1:]]  # tried again
    rows = _table(panel.table)
    assert [row[1] for row in rows] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert rows[1][3] == rows[0][3]  # the retried trial shows the same parameters


def test_a_bad_searched_setting_is_reported_and_nothing_starts(open_panel, fast, tmp_path):
    panel = open_panel(fast())
    panel.space.setText("train.lr; train.nope")
    panel.start_button.click()
    assert not panel.running and panel.worker is None
    assert "train.nope" in panel.status.text() and "no such setting" in panel.status.text()
    assert sweep_names(tmp_path / "ws") == []
    assert panel.start_button.isEnabled()


def test_an_experiment_error_from_the_window_is_shown(qtbot, host, tmp_path):
    from transferstudio.api import TransferStudioError
    from transferstudio.gui.panels.sweeps import SweepPanel

    def broken():
        raise TransferStudioError("data.path: no such folder")

    panel = SweepPanel(host, tmp_path / "ws", broken)
    qtbot.addWidget(panel)
    panel.start_button.click()
    assert panel.status.text() == "data.path: no such folder" and not panel.running


def test_choosing_an_existing_sweep_shows_it_without_running(
    qtbot, open_panel, fast, host, tmp_path
):
    exp = fast()
    done = run_sweep(exp, host, tmp_path / "ws", "old", trials=2, sampler="random")
    panel = open_panel(exp)
    assert [panel.existing.itemText(i) for i in range(panel.existing.count())][1:] == ["old"]
    assert panel.summary is None and panel.table.rowCount() == 0
    panel.existing.setCurrentIndex(1)
    assert not panel.running and panel.worker is None
    assert panel.name.text() == "old"
    rows = _table(panel.table)
    assert [row[0] for row in rows] == [str(t.number) for t in done.trials]
    assert [row[4] for row in rows] == [t.run_id for t in done.trials]
    assert "Start continues it" in panel.status.text()
    # its own settings are shown, in the form the space field takes
    assert panel.space.text() == "; ".join(done.space) and panel.space.text().count("=") >= 2
    assert panel.sampler.currentText() == "random"
    assert len(sweep_names(tmp_path / "ws")) == 1 and len(RunStore(tmp_path / "ws").list()) == 2


def test_a_sweep_another_process_runs_is_refused_and_the_panel_stays_usable(
    qtbot, open_panel, fast, tmp_path
):
    from filelock import FileLock

    from transferstudio.core.studies.sweep import sweep_lock_path

    panel = open_panel(fast())
    panel.name.setText("shared")
    panel.trials.setValue(1)
    held = FileLock(sweep_lock_path(tmp_path / "ws", "shared"))  # as the other process would
    held.acquire(timeout=0)
    try:
        with qtbot.waitSignal(panel.sweep_ended, timeout=TIMEOUT_MS):
            panel.start_button.click()
    finally:
        held.release()
    assert "'shared' is running in another process" in panel.status.text()
    assert sweep_names(tmp_path / "ws") == []  # refused before anything was written
    assert panel.start_button.isEnabled() and not panel.running
    _run(qtbot, panel)  # once the other one has let go, the same Start runs the sweep
    assert sweep_names(tmp_path / "ws") == ["shared"]
