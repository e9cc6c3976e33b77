"""Cyclic garbage collection on the GUI thread only, while the window is up.

Python's cyclic collector runs in whichever thread happens to allocate when a generation's
threshold is crossed. In the window that is usually a training, tree-building or sweep thread,
and the cycles it frees include Qt objects of the GUI thread: a closed dialog, an earlier window
and the lambdas connected to it. Qt objects must be destroyed in the thread they live in; freed
elsewhere, the behaviour is undefined. A CI run hung for good that way: the tree-building
thread was collecting a previous window while the GUI thread showed a new one.

So while the GUI is up, automatic collection is off and a timer on the GUI thread collects, by
the same generation thresholds Python uses, about once a second (the technique pyqtgraph ships
as ``pyqtgraph.util.garbage_collector``). Reference counting, which frees almost everything,
is untouched; only the cycle collector moves.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QObject, QThread, QTimer
from shiboken6 import isValid

CHECK_INTERVAL_MS = 1000


class GuiThreadCollector(QObject):
    """Collects cyclic garbage on a GUI-thread timer; automatic collection is off meanwhile."""

    def __init__(self, app: QCoreApplication) -> None:
        super().__init__(app)
        self._was_enabled = gc.isenabled()
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.collect_due)
        gc.disable()
        self._timer.start(CHECK_INTERVAL_MS)

    def collect_due(self) -> int:
        """Collect the oldest generation whose count has passed its threshold, as Python would.

        Returns the number of unreachable objects found (0 when nothing was due)."""
        counts, thresholds = gc.get_count(), gc.get_threshold()
        due = -1
        for generation in range(3):
            if counts[generation] <= thresholds[generation]:
                break
            due = generation
        return gc.collect(due) if due >= 0 else 0

    def stop(self) -> None:
        """Collect everything now, on this thread, and hand collection back to Python."""
        self._timer.stop()
        gc.collect()
        if self._was_enabled:
            gc.enable()


_active: GuiThreadCollector | None = None


def collect_garbage_on_gui_thread() -> GuiThreadCollector:
    """Move cyclic garbage collection onto the GUI thread for as long as the application lives.

    Idempotent; call it on the GUI thread once a ``QApplication`` exists."""
    global _active
    app = QCoreApplication.instance()
    if app is None:
        raise RuntimeError("collect_garbage_on_gui_thread() needs a QApplication")
    if QThread.currentThread() is not app.thread():
        raise RuntimeError("collect_garbage_on_gui_thread() must be called on the GUI thread")
    if _active is None or not isValid(_active):  # none yet, or its application has ended
        _active = GuiThreadCollector(app)
    return _active


def restore_automatic_collection() -> None:
    """Undo :func:`collect_garbage_on_gui_thread` (tests call it between windows)."""
    global _active
    if _active is not None and isValid(_active):
        _active.stop()
        _active.deleteLater()
    _active = None
