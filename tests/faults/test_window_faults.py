"""The window under faults: the run's worker raising at each kind of event, a failing disk
write, the run folder deleted mid-run, closing during a checkpoint write. Each time the app
stays usable (another run starts and completes), the user is told what happened, and nothing
saved earlier is lost."""

from __future__ import annotations

import errno
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from transferstudio.core.progress import events as E  # noqa: E402
from transferstudio.core.runs.checkpoint import CheckpointStore  # noqa: E402
from transferstudio.core.runs.workspace import RunStore  # noqa: E402


def _wait_until_idle(window, qtbot) -> None:
    qtbot.waitUntil(lambda: not window.controller.running, timeout=120_000)


def _run_to_the_end(window, qtbot):
    """Start a run and return ``(signal_name, args)`` of how it ended."""
    outcome = {}
    window.start_run()
    worker = window.controller.worker

    def done(result):
        outcome.setdefault("finished", result)

    def failed(message, details):
        outcome.setdefault("errored", message)

    worker.finished.connect(done)
    worker.errored.connect(failed)
    _wait_until_idle(window, qtbot)
    return outcome


def _assert_usable_again(window, qtbot) -> None:
    """The app is not stuck: the next run starts, completes and lands in the runs table."""
    if window.error_box is not None:
        window.error_box.close()
    assert window.act_start.isEnabled()
    outcome = _run_to_the_end(window, qtbot)
    assert outcome.get("finished") is not None and outcome["finished"].status == "completed", (
        outcome
    )


EVENT_KINDS = [
    E.RunStarted,
    E.BatchEnded,
    E.EpochEnded,
    E.LayerStats,
    E.CheckpointSaved,
    E.LogMessage,
    E.RunFinished,
]


@pytest.mark.parametrize("kind", EVENT_KINDS, ids=lambda k: k.__name__)
def test_the_worker_raising_at_an_event_is_reported_and_the_app_stays_usable(
    window, qtbot, monkeypatch, kind
):
    from transferstudio.gui.worker import RunWorker

    original = RunWorker.emit
    raised = threading.Event()

    def emit(self, event):
        if isinstance(event, kind) and not raised.is_set():
            raised.set()
            raise RuntimeError(f"injected fault at {kind.__name__}")
        original(self, event)

    monkeypatch.setattr(RunWorker, "emit", emit)
    # Layer statistics are only measured while the model tree is on screen: ask for them.
    monkeypatch.setattr(type(window), "_stats_visible", lambda self: True)
    outcome = _run_to_the_end(window, qtbot)
    assert raised.is_set()
    assert "errored" in outcome, outcome
    assert f"injected fault at {kind.__name__}" in outcome["errored"]
    assert window.last_error and f"at {kind.__name__}" in window.last_error[0]
    assert window.error_box is not None and window.error_box.isVisible()
    # Whatever the run had saved is still readable, and it is not left marked as running.
    store = RunStore(window.workspace)
    for record in store.list():
        assert record.status != "running", (kind, record.status)
        checkpoints = CheckpointStore(Path(record.folder) / "checkpoints")
        if checkpoints.exists("last"):
            checkpoints.load("last")
    monkeypatch.setattr(RunWorker, "emit", original)
    _assert_usable_again(window, qtbot)


def test_a_failing_disk_write_stops_the_run_with_the_file_named_and_keeps_epoch_one(
    window, qtbot, monkeypatch
):
    from transferstudio.core.runs import checkpoint

    real_save = checkpoint.save_file
    calls = {"n": 0}

    def save_file(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2's weights: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    outcome = _run_to_the_end(window, qtbot)
    message = outcome["errored"]
    assert message.startswith("no space left on the disk of ") and "Free some space" in message
    assert "last-2.safetensors" in message and "the checkpoint of epoch 1 is kept" in message
    (record,) = RunStore(window.workspace).list()
    folder = Path(record.folder) / "checkpoints"
    assert CheckpointStore(folder).load("last").meta["epoch"] == 0
    assert not list(folder.glob(".*.tmp")), "a partial file was left behind"
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    _assert_usable_again(window, qtbot)


def test_deleting_the_run_folder_mid_run_stops_it_with_a_clear_message(window, qtbot):
    deleted = {}

    def delete_after_first_epoch(event):
        if event.epoch == 0 and not deleted:
            (record,) = RunStore(window.workspace).list()
            shutil.rmtree(record.folder)
            deleted["folder"] = record.folder

    window.start_run()
    window.controller.worker.epoch_ended.connect(delete_after_first_epoch)
    with qtbot.waitSignal(window.controller.worker.errored, timeout=120_000) as blocker:
        pass
    _wait_until_idle(window, qtbot)
    message = blocker.args[0]
    assert deleted and "was deleted or moved during the run" in message
    assert not Path(deleted["folder"]).exists(), "the engine recreated the deleted folder"
    assert RunStore(window.workspace).get(Path(deleted["folder"]).name).status == "failed"
    _assert_usable_again(window, qtbot)


def test_closing_during_a_checkpoint_write_waits_for_it_and_keeps_it_whole(
    window, qtbot, monkeypatch
):
    from PySide6.QtWidgets import QMessageBox

    from transferstudio.core.files import atomic
    from transferstudio.core.runs import checkpoint

    in_write = threading.Event()
    real_write = atomic.write_atomic

    def slow_write(target, writer):
        def pausing(tmp):
            writer(tmp)
            if Path(target).suffix == ".safetensors" and not in_write.is_set():
                in_write.set()
                time.sleep(1.0)  # the close request arrives now, mid-write

        real_write(target, pausing)

    monkeypatch.setattr(checkpoint, "write_atomic", slow_write)
    # The close confirmation ("Stop the run and quit?") answered Yes, as a user would.
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    window.start_run()
    qtbot.waitUntil(in_write.is_set, timeout=120_000)
    window.close()
    assert not window.controller.running
    (record,) = RunStore(window.workspace).list()
    assert record.status == "cancelled"
    ck = CheckpointStore(Path(record.folder) / "checkpoints").load("last")
    assert ck.weights and ck.state and ck.meta["epoch"] == 0
    assert not list((Path(record.folder) / "checkpoints").glob(".*.tmp"))


def test_running_out_of_gpu_memory_in_the_window_shows_the_advice(window, qtbot, monkeypatch):
    import torch

    from transferstudio.core.training import engine

    real_epoch = engine.TrainingRun.train_epoch

    def second_epoch_runs_out(self, epoch):
        if epoch == 1:  # what a CUDA allocation failure raises, injected on this CPU machine
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_epoch(self, epoch)

    monkeypatch.setattr(engine.TrainingRun, "train_epoch", second_epoch_runs_out)
    outcome = _run_to_the_end(window, qtbot)
    message = outcome["errored"]
    assert message.startswith("out of memory on ") and "lower data.batch_size" in message
    assert window.error_box is not None and "lower data.batch_size" in window.error_box.text()
    monkeypatch.setattr(engine.TrainingRun, "train_epoch", real_epoch)
    _assert_usable_again(window, qtbot)
