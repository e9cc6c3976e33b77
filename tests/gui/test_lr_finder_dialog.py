"""The learning-rate finder dialog: a live sweep in a thread, its suggestion applied, Stop and
Close ending the sweep with no thread left running, and errors shown."""

from __future__ import annotations

import math

import pytest
import shiboken6

from tests.helpers import tiny_experiment

TIMEOUT_MS = 60_000


@pytest.fixture
def task(make_images):
    """LeNet on three colours: 100 sweep steps take a few seconds on the CPU."""
    data = make_images({"a": 30, "b": 30, "c": 30}, size=24)
    return tiny_experiment(
        data, model__backbone="lenet", data__batch_size=8, train__schedule="constant"
    )


@pytest.fixture
def open_dialog(qtbot, host, tmp_path):
    """Factory: ``open_dialog(experiment)`` -> the dialog, shown, its sweep started. Fails the
    test if a sweep thread is left running."""
    from transferstudio.gui.dialogs.lr_finder import LrFinderDialog

    dialogs = []

    def open_(exp, steps=100):
        dialog = LrFinderDialog(exp, host, tmp_path / "ws", steps=steps)
        qtbot.addWidget(dialog)
        dialog.show()
        dialog.start()
        dialogs.append(dialog)
        return dialog

    yield open_
    for dialog in dialogs:
        running = dialog.running
        dialog.stop_and_wait()
        assert not running, "a sweep thread was left running"


def test_the_sweep_is_drawn_and_its_suggestion_applied(qtbot, open_dialog, task):
    dialog = open_dialog(task)
    worker = dialog.worker
    assert dialog.stop_button.isEnabled() and not dialog.apply_button.isEnabled()
    with qtbot.waitSignal(dialog.sweep_ended, timeout=TIMEOUT_MS):
        pass
    result = dialog.result
    assert result is not None and dialog.error is None and not dialog.running
    # deleted by the GUI thread once its thread has ended
    qtbot.waitUntil(lambda: not shiboken6.isValid(worker), timeout=5_000)
    assert len(result.lrs) > 50 and result.suggestion is not None
    # every point arrived through the coalesced signals, in order, and is drawn
    assert [p[1] for p in dialog.points] == result.lrs
    x, y = dialog.smoothed_curve.getData()
    assert len(x) == len(y) == len(result.lrs)
    assert list(y) == pytest.approx(result.smoothed)
    assert list(x) == pytest.approx([math.log10(lr) for lr in result.lrs])  # log axis
    assert len(dialog.raw_curve.getData()[1]) == len(result.losses)
    assert dialog.progress.value() == len(result.lrs) and dialog.progress.maximum() == 100
    assert dialog.suggestion_line.value() == pytest.approx(math.log10(result.suggestion))
    assert f"suggested learning rate {result.suggestion:.1e}" in dialog.status.text()
    assert result.stopped_because in dialog.status.text()
    assert dialog.apply_button.isEnabled() and not dialog.stop_button.isEnabled()
    with (
        qtbot.waitSignal(dialog.accepted, timeout=1000),
        qtbot.waitSignal(dialog.applied, timeout=1000) as applied,
    ):
        dialog.apply_button.click()
    assert applied.args == [float(f"{result.suggestion:.3g}")]
    assert not dialog.isVisible()


def test_stop_ends_the_sweep_early_and_keeps_its_points(qtbot, open_dialog, task):
    dialog = open_dialog(task)
    qtbot.waitUntil(lambda: len(dialog.points) > 0, timeout=TIMEOUT_MS)
    with qtbot.waitSignal(dialog.sweep_ended, timeout=TIMEOUT_MS):
        dialog.stop_button.click()
        assert not dialog.stop_button.isEnabled() and dialog.running
    # sweep_ended comes after the thread was waited for
    assert dialog.thread is None and not dialog.running
    result = dialog.result
    assert result.stopped_because == "stopped by the user"
    assert 0 < len(result.lrs) < 100 and len(dialog.points) == len(result.lrs)
    # a part of the sweep suggests nothing: its "valley" ends where the user stopped it
    assert result.suggestion is None and not dialog.apply_button.isEnabled()
    assert dialog.suggestion_line is None
    assert f"stopped at step {len(result.lrs)} of " in dialog.status.text()
    assert "run it to the end" in dialog.status.text()


def test_an_error_is_shown_and_nothing_can_be_applied(qtbot, open_dialog, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    dialog = open_dialog(tiny_experiment(empty, model__backbone="lenet"))
    with qtbot.waitSignal(dialog.sweep_ended, timeout=TIMEOUT_MS):
        pass
    assert dialog.result is None and "no usable training images" in dialog.error
    assert dialog.status.text() == f"the sweep failed: {dialog.error}"
    assert not dialog.apply_button.isEnabled() and not dialog.stop_button.isEnabled()
    assert dialog.suggestion_line is None and dialog.points == []


def test_closing_during_the_sweep_stops_it_and_waits(qtbot, open_dialog, task):
    dialog = open_dialog(task)
    qtbot.waitUntil(lambda: len(dialog.points) > 0, timeout=TIMEOUT_MS)
    thread = dialog.thread
    assert thread.isRunning()
    dialog.close_button.click()
    # The click returned only once the thread had ended (no event loop ran yet, so the thread,
    # handed to deleteLater, still exists to be asked).
    assert thread.isFinished() and dialog.thread is None and not dialog.isVisible()
    # the result queued before the thread ended still arrives: the sweep was stopped, not run out
    qtbot.waitUntil(lambda: dialog.result is not None, timeout=TIMEOUT_MS)
    assert dialog.result.stopped_because == "stopped by the user"
    assert len(dialog.result.lrs) < 100
