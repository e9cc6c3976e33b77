"""The window's demo (``transferstudio gui --demo``): the demo run, then its transfer-gain
baseline through the window's own action, ending with the gain on the demo run's row."""

from __future__ import annotations

from transferstudio.core.runs.workspace import RunStore


def _pretrained_on_the_task(window, qtbot):
    """Weights of a first lenet run: the window's experiment then starts from them."""
    window.backbone_combo.setCurrentIndex(window.backbone_combo.findData("lenet"))
    qtbot.waitUntil(window.model_ready, timeout=30_000)  # Start waits for the tree's model
    window.start_run()
    with qtbot.waitSignal(window.controller.worker.finished, timeout=120_000) as blocker:
        pass
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    window.model_panel.set_weights(str(blocker.args[0].folder))


def test_the_demo_runs_then_its_baseline_and_shows_the_gain(window, qtbot):
    from transferstudio.gui.demo_run import QtDemoSequence

    _pretrained_on_the_task(window, qtbot)
    sequence = QtDemoSequence(window, transfer=True)
    with qtbot.waitSignal(sequence.ended, timeout=240_000) as blocker:
        sequence.start()
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    run_id = sequence.run_id
    gain = window.run_gains[run_id]
    assert blocker.args[0] == f"demo: transfer gain of run {run_id}: {gain.describe()}"
    assert RunStore(window.workspace).tags(gain.baseline_id)["baseline_of"] == run_id
    assert window.runs.selected_ids() == [run_id]  # the row that shows the gain
    row = [r.id for r in window.run_records].index(run_id)
    assert window.runs_table.item(row, 7).text() == gain.describe()
    assert window.statusBar().currentMessage() == blocker.args[0]


def test_the_from_scratch_demo_runs_once_and_measures_nothing(window, qtbot):
    from transferstudio.gui.demo_run import QtDemoSequence

    sequence = QtDemoSequence(window, transfer=False)
    with qtbot.waitSignal(sequence.ended, timeout=120_000) as blocker:
        sequence.start()
    assert blocker.args[0] == f"demo run {sequence.run_id}: completed"
    assert len(window.run_records) == 1 and window.run_gains == {}


def test_a_stopped_demo_run_starts_no_baseline(window, qtbot):
    from transferstudio.gui.demo_run import QtDemoSequence

    _pretrained_on_the_task(window, qtbot)
    sequence = QtDemoSequence(window, transfer=True)
    with qtbot.waitSignal(sequence.ended, timeout=120_000) as blocker:
        sequence.start()
        window.controller.stop()
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    assert "no baseline run" in blocker.args[0]
    assert RunStore(window.workspace).tagged("baseline_of") == {}
