"""Background tasks whose panel is closed while they run (transferstudio.gui.worker)."""

from __future__ import annotations

import threading

import shiboken6
from PySide6.QtCore import QObject

from transferstudio.gui.worker import run_in_background


def test_a_task_whose_owner_was_deleted_ends_quietly_and_its_result_is_dropped(qtbot):
    owner = QObject()
    release = threading.Event()
    delivered: list = []

    def work():
        release.wait(10)
        return 42

    signals = run_in_background(work, delivered.append, lambda *e: delivered.append(e), owner)
    shiboken6.delete(owner)  # the panel is closed while the task still runs
    release.set()
    # The task emits on its own object (before, it was the owner's child and already gone:
    # "Signal source has been deleted" in the pool thread), which is then deleted.
    qtbot.waitUntil(lambda: not shiboken6.isValid(signals), timeout=10_000)
    assert delivered == []


def test_a_task_whose_owner_lives_delivers_its_result_on_the_gui_thread(qtbot):
    owner = QObject()
    delivered: list = []
    threads: list = []

    def done(value):
        threads.append(threading.current_thread())
        delivered.append(value)

    run_in_background(lambda: 42, done, lambda *e: delivered.append(e), owner)
    qtbot.waitUntil(lambda: bool(delivered), timeout=10_000)
    assert delivered == [42] and threads == [threading.main_thread()]
