"""Cycles holding Qt objects are freed on the GUI thread, however busy the worker threads are."""

from __future__ import annotations

import gc
import threading
import weakref

from PySide6.QtCore import QObject

from transferstudio.gui.gui_thread_gc import (
    collect_garbage_on_gui_thread,
    restore_automatic_collection,
)


def _cyclic_qobject_freed_in() -> list[str]:
    """Make a QObject kept only by a reference cycle, then allocate hard on a worker thread.
    Returns (once filled) the name of the thread that freed the QObject."""
    freed_in: list[str] = []
    obj = QObject()
    obj.myself = obj  # only the cycle collector can free it
    # Enough tracked objects that generation 0 stays past its threshold (700) even when the
    # event loop frees other tests' deferred-deleted wrappers first: each free lowers the count,
    # and with a payload of 1,000 a busy CI run dropped it below the threshold, so no
    # collection fell due within the wait.
    obj.payload = [[i] for i in range(100_000)]
    weakref.finalize(obj, lambda: freed_in.append(threading.current_thread().name))
    del obj

    def allocate():  # what a training or tree-building thread does all the time
        junk = [{"i": [i]} for i in range(200_000)]
        del junk

    worker = threading.Thread(target=allocate, name="worker")
    worker.start()
    worker.join()
    return freed_in


def test_the_worker_thread_frees_qt_cycles_without_the_collector(qtbot):
    restore_automatic_collection()  # what every thread saw before: Python's automatic collector
    freed_in = _cyclic_qobject_freed_in()
    assert freed_in == ["worker"]  # the hazard this module exists for


def test_with_the_collector_qt_cycles_are_freed_on_the_gui_thread(qtbot):
    collect_garbage_on_gui_thread()
    assert not gc.isenabled()
    freed_in = _cyclic_qobject_freed_in()
    assert freed_in == []  # the worker's allocations did not collect
    qtbot.waitUntil(lambda: freed_in != [], timeout=5_000)  # the GUI thread's timer did
    assert freed_in == [threading.current_thread().name] == ["MainThread"]


def test_restoring_collects_and_hands_collection_back(qtbot):
    collect_garbage_on_gui_thread()
    freed = []
    obj = QObject()
    obj.myself = obj
    weakref.finalize(obj, lambda: freed.append(True))
    del obj
    restore_automatic_collection()
    assert freed == [True]
    assert gc.isenabled()


def test_the_window_moves_collection_to_the_gui_thread(open_window, make_images):
    from tests.helpers import tiny_experiment

    restore_automatic_collection()
    assert gc.isenabled()
    open_window(tiny_experiment(make_images({"a": 4, "b": 4})))
    assert not gc.isenabled()
