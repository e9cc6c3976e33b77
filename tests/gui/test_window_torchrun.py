"""The window's "processes / GPUs" at 2: torchrun runs the experiment in two CPU processes
(Gloo) and rank 0's events reach the same curves, tree and runs table as a run in a thread;
Stop ends both processes; a rank that dies ends the run with its error shown."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest

from tests.helpers import child_pids, tiny_experiment, torchrun_rank
from transferstudio.core.progress import event_stream as S
from transferstudio.core.progress import events as E
from transferstudio.core.runs.workspace import RunStore

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds workers in /proc")


@pytest.fixture
def ddp_window(open_window, make_images, monkeypatch):
    # The processes load the built-in plugins only, like the window's test host.
    monkeypatch.setenv("TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = make_images({"red": 8, "green": 8, "blue": 8}, size=32)  # 18 train, 6 val
    exp = tiny_experiment(
        data, model__backbone="lenet", data__batch_size=6, train__lr=0.001, train__epochs=2
    )
    exp.augment.hflip = False
    window = open_window(exp)
    window.processes.setValue(2)
    return window


def _start_long_run(window, qtbot, until: str = "batches_ended"):
    """Start a 200-epoch run and return its ProcessRun once it has sent ``until``."""
    window.train_form.widgets["epochs"].setValue(200)
    window.start_run()
    run = window.controller.worker
    with qtbot.waitSignal(getattr(run, until), timeout=300_000):
        pass
    return run


def _wait_idle(window, qtbot, timeout=10_000):
    qtbot.waitUntil(lambda: not window.controller.running, timeout=timeout)


def test_two_processes_stream_into_the_curves_tree_and_runs_table(ddp_window, qtbot):
    from PySide6.QtWidgets import QDockWidget

    window = ddp_window
    window.findChild(QDockWidget, "dock.model").raise_()
    qtbot.waitUntil(lambda: not window.tree_view.visibleRegion().isEmpty())
    window.start_run()
    run = window.controller.worker
    assert type(run).__name__ == "ProcessRun" and not window.processes.isEnabled()
    with qtbot.waitSignal(run.finished, timeout=300_000) as blocker:
        pass
    _wait_idle(window, qtbot)
    result = blocker.args[0]
    assert result.status == "completed" and isinstance(result.folder, Path)
    # 18 training images, global batch 6: 3 batches per epoch, each drawn once
    assert window.curves.points("batch_loss") == 2 * 3
    assert window.curves.points("val_acc") == 2 and window.curves.points("train_loss") == 2
    assert window.runs_table.rowCount() == 1
    assert window.runs_table.item(0, 6).text() == "completed"
    log = window.log_view.toPlainText()
    assert "2 processes (cpu): DistributedDataParallel" in log
    assert "@transferstudio-event" not in log  # every event line was decoded
    drift, grad = window.tree_model.node_stats(window.tree_model.root.find("head"))
    assert drift > 0 and grad > 0  # layer statistics came from rank 0
    record = RunStore(window.workspace).get(result.run_id)
    assert record.status == "completed" and Path(record.folder) == result.folder
    assert sum(row["support"] for row in result.report["val"]["per_class"]) == 6
    assert not run.folder.exists()  # the temporary experiment and control files are gone
    assert window.act_start.isEnabled() and window.processes.isEnabled()


def test_stop_ends_every_process_and_leaves_a_resumable_run(ddp_window, qtbot):
    window = ddp_window
    run = _start_long_run(window, qtbot)
    workers = child_pids(run.process.processId())
    assert sorted(torchrun_rank(p) for p in workers) == [0, 1]
    window.stop_run()
    with qtbot.waitSignal(run.finished, timeout=120_000) as blocker:
        pass
    _wait_idle(window, qtbot)
    assert blocker.args[0].status == "cancelled"
    assert RunStore(window.workspace).get(blocker.args[0].run_id).status == "cancelled"
    assert not any(Path(f"/proc/{p}").exists() for p in workers)
    assert window.last_error is None


def test_a_rank_that_dies_ends_the_run_with_its_error(ddp_window, qtbot):
    window = ddp_window
    run = _start_long_run(window, qtbot, "epoch_ended")
    qtbot.waitUntil(lambda: (run.run_folder / "checkpoints" / "last.json").exists())
    (rank1,) = [p for p in child_pids(run.process.processId()) if torchrun_rank(p) == 1]
    with qtbot.waitSignal(run.errored, timeout=120_000) as blocker:
        os.kill(rank1, signal.SIGKILL)
    _wait_idle(window, qtbot, timeout=60_000)
    message, details = blocker.args
    # Rank 0 may see the lost connection before torchrun ends it, or not: either way the
    # message says a process failed and how to resume.
    assert "training process" in message and "--resume" in message, message
    assert "raised by TransferStudio itself" not in message
    (record,) = RunStore(window.workspace).list()
    assert record.id in message and record.status != "completed"
    assert "SIGKILL" in details or "Signal 9" in details, details  # torchrun's own report
    assert window.error_box is not None and window.error_box.isVisible()
    window.error_box.close()
    assert window.act_start.isEnabled()  # the app stays usable


def test_an_error_before_the_run_is_shown_with_its_message(ddp_window, qtbot):
    window = ddp_window
    window.data_form.widgets["batch_size"].setValue(5)
    window.start_run()
    with qtbot.waitSignal(window.controller.worker.errored, timeout=300_000) as blocker:
        pass
    _wait_idle(window, qtbot)
    assert "make it a multiple of 2" in blocker.args[0]
    window.error_box.close()


def test_methods_without_distributed_support_run_in_one_process(ddp_window):
    window = ddp_window
    assert window.processes.isEnabled() and window.processes.value() == 2
    window.method_combo.setCurrentIndex(window.method_combo.findData("feature-extract"))
    assert not window.processes.isEnabled()
    assert "does not support" in window.processes.toolTip()


def test_events_survive_the_line_protocol(tmp_path):
    import io

    events = [
        E.BatchEnded(0, 1, 3, float("nan"), 1e-3, 6, {"mmd": math.inf}),
        E.LayerStats(0, 2, {"model.head.weight": (1.0, 2.0, 3.0)}),
        E.EpochEnded(0, 2, {"loss": 0.5}, {"accuracy": 1.0}, 0.01, 1.5, True, 1.0, 0),
        E.LogMessage("a line\nwith a newline"),
        S.StreamResult("r1", "/x", "completed", best_metric=0.5, report={"val": {"a": [1]}}),
    ]
    stream = io.StringIO()
    state = S.StreamState(tmp_path, stream)
    for event in events:
        state.write(event)
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(events)  # one line each, even with a newline in a message
    decoded = [S.decode(line) for line in lines]
    assert math.isnan(decoded[0].loss) and decoded[0].logs == {"mmd": math.inf}
    assert decoded[1:] == events[1:]
    assert S.decode("plain output") is None and S.decode(S.PREFIX + "{torn") is None
    # the control files every rank reads
    assert not state.stop_requested() and not state.wants_layer_stats
    S.set_flag(tmp_path, S.STOP_FILE, True)
    S.set_flag(tmp_path, S.LAYER_STATS_FILE, True)
    assert state.stop_requested() and state.wants_layer_stats
    S.set_flag(tmp_path, S.STOP_FILE, False)
    assert not state.stop_requested()


def test_closing_the_window_stops_the_processes_first(ddp_window, qtbot, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    window = ddp_window
    run = _start_long_run(window, qtbot)
    workers = child_pids(run.process.processId())
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    window.close()
    assert not window.controller.running
    assert not any(Path(f"/proc/{p}").exists() for p in workers)
    (record,) = RunStore(window.workspace).list()
    assert record.status == "cancelled"


def test_processes_that_do_not_stop_in_time_are_ended_with_their_workers(ddp_window, qtbot):
    window = ddp_window
    run = _start_long_run(window, qtbot)
    workers = child_pids(run.process.processId())
    assert len(workers) == 2
    assert run.wait(1) is False  # not done in 1 ms: terminated (SIGTERM, then the group)
    qtbot.waitUntil(lambda: not window.controller.running, timeout=30_000)
    qtbot.waitUntil(lambda: not any(Path(f"/proc/{p}").exists() for p in workers), timeout=30_000)
    # The processes take SIGTERM as a request to stop (as a headless run does): they end
    # after the batch with the checkpoint kept, and the run is not left "running".
    (record,) = RunStore(window.workspace).list()
    assert record.status in ("cancelled", "failed"), record.status
    if window.last_error is not None:
        window.error_box.close()
