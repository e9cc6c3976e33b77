"""Running the engine and other slow work off the GUI thread: one worker shape.

Every worker of the window (a run, the learning-rate finder, a sweep, a prediction, an export, a
scan) ends with ``finished(value)`` or ``errored(message, details)`` (:class:`WorkerSignals`).
Long work with a Stop button is a :class:`Worker` in its own QThread, driven by a
:class:`WorkerThread` (start, ``stop_and_wait``, clean-up on the GUI thread); cancellation is a
plain flag the loop polls. One-off work runs on the thread pool (:func:`run_in_background`).
Frequent events are handed to the GUI thread in lists by an :class:`EventCoalescer`.

:class:`RunWorker` is the engine's ``state``: the loop polls its stop/pause flags between batches
(a plain flag, not a queued slot, so Stop works within one batch) and every event becomes a
signal. Batch events are coalesced: at most one ``batches_ended`` signal per 50 ms carries every
batch since the last one, so curves redraw at most ~20 times a second however fast batches go.

The module is a little over 400 lines because it holds the whole worker vocabulary of the window
in one place (the issue it came from counted three copies of each piece); every panel's worker
is a short subclass elsewhere.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QRunnable, Qt, QThread, QThreadPool, Signal, Slot
from shiboken6 import delete, isValid

from transferstudio.core.progress import events as E

EMIT_INTERVAL_S = 0.05


class EventCoalescer:
    """Holds frequent items back and hands them on as one list at most every ``interval_s``
    (and at once for an item marked ``last``), so the GUI thread is woken ~20 times a second
    however fast a loop goes. Call :meth:`flush` before the work's end so nothing is lost."""

    def __init__(self, emit: Callable[[list], None], interval_s: float = EMIT_INTERVAL_S) -> None:
        self._emit = emit
        self.interval_s = interval_s
        self._pending: list = []
        self._last_emit = 0.0

    def add(self, item: Any, last: bool = False) -> None:
        self._pending.append(item)
        now = time.monotonic()
        if last or now - self._last_emit >= self.interval_s:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Hand on what is held back (nothing if nothing is)."""
        if self._pending:
            items, self._pending = self._pending, []
            self._last_emit = time.monotonic() if now is None else now
            self._emit(items)


class WorkerSignals(QObject):
    """How every worker ends: ``finished(value)``, or ``errored(message, details)`` (details:
    a traceback, or "" for a TransferStudioError, whose message is meant for the user)."""

    finished = Signal(object)
    errored = Signal(str, str)


def _outcome(work: Callable[[], Any]) -> tuple[Any, tuple[str, str] | None]:
    """``(value, None)``, or ``(None, (message, details))`` when ``work`` raised."""
    from transferstudio.api import TransferStudioError

    try:
        return work(), None
    except TransferStudioError as exc:
        return None, (str(exc), "")
    except Exception as exc:  # noqa: BLE001 - shown in a dialog; the app stays usable
        return None, (f"{type(exc).__name__}: {exc}", traceback.format_exc())


class Worker(WorkerSignals):
    """Long work in its own QThread (see :class:`WorkerThread`): subclasses implement
    :meth:`work`, which polls :meth:`stop_requested`. ``stop`` may be an event owned by the
    caller (it may be set while this object is being deleted)."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        super().__init__()
        self._stop = stop if stop is not None else threading.Event()

    def work(self) -> Any:
        raise NotImplementedError

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def deliver(self, value: Any) -> None:
        """Emit the result of :meth:`work` (by default ``finished(value)``)."""
        self.finished.emit(value)

    @Slot()
    def run(self) -> None:
        """In the worker's thread: :meth:`work`, then ``finished`` or ``errored``."""
        value, error = _outcome(self.work)
        if error is not None:
            self.errored.emit(*error)
        else:
            self.deliver(value)


class WorkerThread(QObject):
    """Owns one :class:`Worker` at a time in a QThread called ``name``. ``ended`` fires on the
    GUI thread once the thread has ended and both are deleted (by the worker's end or by
    :meth:`stop_and_wait`)."""

    ended = Signal()

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.thread: QThread | None = None
        self.worker: Any = None

    @property
    def running(self) -> bool:
        """Whether a worker's thread exists (started and not yet cleaned up)."""
        return self.thread is not None

    def start(self, worker: Worker) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.worker = worker
        ends = [worker.finished, worker.errored]
        self.thread = start_in_thread(worker, self.name, ends, self._cleanup)

    def stop_and_wait(self, timeout_ms: int | None = None) -> bool:
        """Ask the worker to stop and block until its thread has ended (``timeout_ms`` None:
        however long that takes; the flag is polled often, and dropping a running QThread
        would abort the process). False if the thread was still running at the timeout."""
        if self.thread is None:
            return True
        self.worker.request_stop()
        finished = self.thread.wait() if timeout_ms is None else self.thread.wait(timeout_ms)
        self._cleanup()
        return finished

    @Slot()
    def _cleanup(self) -> None:
        if self.thread is None:  # already cleaned up by stop_and_wait
            return
        end_thread(self.thread, self.worker)
        self.thread = self.worker = None
        self.ended.emit()


class StopButtonOwner:
    """What a panel or dialog with one Stop button over a :class:`WorkerThread` shares: it sets
    ``runner`` (a WorkerThread), ``stop_button``, ``status`` (a label) and ``_stop`` (the event its
    worker polls) and defines ``_on_finished`` / ``_on_errored``; this gives it ``running``,
    ``thread``, ``worker``, :meth:`start_worker`, :meth:`stop` and :meth:`stop_and_wait`."""

    runner: WorkerThread
    _stop: threading.Event

    @property
    def running(self) -> bool:
        """Whether the worker's thread exists (started and not yet cleaned up)."""
        return self.runner.running

    @property
    def thread(self) -> QThread | None:
        return self.runner.thread

    @property
    def worker(self) -> Any:
        return self.runner.worker

    def start_worker(self, worker: Worker, status: str) -> None:
        """Connect ``worker``'s end to this object's slots (bound methods of a GUI-thread object:
        they run queued on the GUI thread), say ``status`` and start it."""
        worker.finished.connect(self._on_finished)  # type: ignore[attr-defined]
        worker.errored.connect(self._on_errored)  # type: ignore[attr-defined]
        self.status.setText(status)  # type: ignore[attr-defined]
        self.runner.start(worker)

    def stop(self) -> None:
        """Ask the work to end at its next check of the stop flag; what it did so far is kept."""
        if self.running:
            self._stop.set()
            self.stop_button.setEnabled(False)  # type: ignore[attr-defined]
            self.status.setText("stopping...")  # type: ignore[attr-defined]

    def stop_and_wait(self) -> None:
        """Stop the work and block until its thread has ended (when the window closes). No
        timeout: the flag is polled before every step or batch, so this is at most one of
        those (or the model's preparation)."""
        if not self.running:
            return
        self.stop()
        self.runner.stop_and_wait()


class RunSignals(Worker):
    """The signals of a run, named for what happened, and the engine events that become them
    (:meth:`dispatch`). Shared by a run in a thread (:class:`RunWorker`) and a run in other
    processes (:class:`~transferstudio.gui.process_run.ProcessRun`)."""

    run_started = Signal(object)  # events.RunStarted
    batches_ended = Signal(list)  # [events.BatchEnded, ...] since the last signal
    epoch_ended = Signal(object)  # events.EpochEnded
    layer_stats = Signal(object)  # events.LayerStats
    logged = Signal(str)
    # finished(engine.RunResult), errored(message, details): WorkerSignals

    def __init__(self) -> None:
        super().__init__()
        self._batches = EventCoalescer(self.batches_ended.emit)

    def dispatch(self, event: Any) -> None:
        """Emit the signal for one engine event; batch events are coalesced."""
        if isinstance(event, E.BatchEnded):
            self._batches.add(event, last=event.batch + 1 == event.batches)
            return
        self.flush()
        if isinstance(event, E.RunStarted):
            self.run_started.emit(event)
        elif isinstance(event, E.EpochEnded):
            self.epoch_ended.emit(event)
        elif isinstance(event, E.LayerStats):
            self.layer_stats.emit(event)
        elif isinstance(event, E.LogMessage):
            self.logged.emit(event.text)
        elif isinstance(event, E.RunFailed):
            self.logged.emit(f"run failed: {event.message}")

    def flush(self, now: float | None = None) -> None:
        """Emit the batches held back for coalescing."""
        self._batches.flush(now)


class RunWorker(RunSignals):
    """Runs one experiment in a QThread; signals are named for what happened."""

    def __init__(
        self,
        experiment,
        host,
        workspace: Path,
        resume: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.experiment = experiment
        self.host = host
        self.workspace = Path(workspace)
        self.resume = resume
        self.tags = tags or {}  # labels for the run store (e.g. the run a baseline is for)
        self.wants_layer_stats = True  # the engine then emits weight drift and gradient norms
        self._pause = threading.Event()

    # -- the engine's RunState -------------------------------------------------------------

    def pause_requested(self) -> bool:
        return self._pause.is_set()

    def emit(self, event: Any) -> None:
        self.dispatch(event)

    # -- control (called from the GUI thread) ------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()
        self._pause.clear()

    def set_paused(self, paused: bool) -> None:
        if paused:
            self._pause.set()
        else:
            self._pause.clear()

    def work(self):
        from transferstudio.core.training.engine import run_experiment

        return run_experiment(
            self.experiment, self.host, self, self.workspace, resume=self.resume, tags=self.tags
        )

    def deliver(self, result) -> None:
        if result.status == "failed":
            self.errored.emit(result.message, "")
        self.finished.emit(result)


def release_free_memory() -> None:
    """Hand memory freed by a finished run back to the operating system (glibc only).

    Each run trains in a new thread, and glibc keeps what a thread's arena freed for reuse
    instead of returning it: a long session's resident memory then grows in steps although no
    object is kept (measured: +17 MB a run over 20 runs, live tensors constant;
    tests/faults/test_leftovers.py). ``malloc_trim`` returns those free pages."""
    import contextlib
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    # Not glibc (e.g. musl): no malloc_trim, nothing to do.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def start_in_thread(
    worker: QObject, name: str, ends: list[Any], on_thread_finished: Callable[[], None]
) -> QThread:
    """Run ``worker.run`` in a new QThread called ``name`` and return the thread.

    The thread quits when any signal in ``ends`` (the worker's finished/failed) is emitted;
    ``on_thread_finished``, a slot of a GUI-thread object, is then called there, and should
    end with :func:`end_thread`."""
    thread = QThread()
    thread.setObjectName(name)
    worker.moveToThread(thread)
    thread.started.connect(worker.run)
    # Direct: quit() is thread-safe, and a queued call would never arrive while the GUI
    # thread waits for this thread (closing the window during the work).
    for signal in ends:
        signal.connect(thread.quit, Qt.ConnectionType.DirectConnection)
    thread.finished.connect(on_thread_finished)
    thread.start()
    return thread


def end_thread(thread: QThread, worker: QObject) -> None:
    """After :func:`start_in_thread`'s thread has finished: delete both on the GUI thread and
    return the freed memory to the system.

    The worker still belongs to its ended thread, so ``deleteLater`` would never run (no event
    loop will serve it) and ``moveToThread`` may only be called by that thread. It is deleted
    here, at once, which is safe because its thread has ended. Why not let the ending thread
    move the worker back, or use ``thread.finished -> deleteLater``: both act on the worker
    from the ending thread while the GUI thread may hold the GIL, and Qt's per-thread locks
    against the GIL deadlocked. Seen in CI twice: the window hung in show_error, and a worker
    that failed at once hung in ``moveToThread`` while the GUI thread waited for its signal."""
    thread.wait()
    thread.deleteLater()
    if isValid(worker):
        delete(worker)
    release_free_memory()


class RunController(QObject):
    """Owns the current run: a :class:`RunWorker` in its QThread, or a
    :class:`~transferstudio.gui.process_run.ProcessRun` (torchrun). One run at a time."""

    state_changed = Signal(str)  # idle | running | paused | stopping

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread = WorkerThread("transferstudio-run", self)
        self._thread.ended.connect(self._cleanup)
        self.worker: Any = None  # RunWorker | ProcessRun
        self.state = "idle"

    @property
    def thread(self) -> QThread | None:
        """The run's QThread (None for a ProcessRun, or when idle)."""
        return self._thread.thread

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start_process(self, run: Any) -> None:
        """Start a ProcessRun; the controller is idle again once its processes have exited."""
        if self.running:
            raise RuntimeError("a run is already in progress")
        self.worker = run
        run.ended.connect(self._cleanup)
        self._set_state("running")
        try:
            run.start()
        except Exception:  # e.g. the experiment file could not be written: not left "running"
            self._cleanup()
            raise

    def start(self, worker: RunWorker) -> None:
        if self.running:
            raise RuntimeError("a run is already in progress")
        self.worker = worker
        self._set_state("running")
        self._thread.start(worker)

    def _cleanup(self) -> None:
        """The run has ended: a RunWorker was deleted with its thread (``WorkerThread``); a
        ProcessRun, which trained in other processes, is deleted here."""
        if self.worker is not None and not isinstance(self.worker, RunWorker):
            self.worker.deleteLater()
        self.worker = None
        self._set_state("idle")

    def _set_state(self, state: str) -> None:
        self.state = state
        self.state_changed.emit(state)

    def pause(self, paused: bool) -> None:
        if self.worker is not None:
            self.worker.set_paused(paused)
            self._set_state("paused" if paused else "running")

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.request_stop()
            self._set_state("stopping")

    def stop_and_wait(self, timeout_ms: int = 60_000) -> bool:
        """Stop the run and block until its thread or processes have ended (when closing)."""
        if self.worker is None:
            return True
        self.stop()
        if not self._thread.running:  # a ProcessRun: ``ended`` cleans up
            return self.worker.wait(timeout_ms)
        return self._thread.stop_and_wait(timeout_ms)


class _Task(QRunnable):
    def __init__(self, fn: Callable[[], Any], signals: WorkerSignals) -> None:
        super().__init__()
        self.fn = fn
        self.signals = signals

    def run(self) -> None:
        try:
            value = self.fn()
        except Exception as exc:  # noqa: BLE001 - delivered to the caller's error handler
            self.signals.errored.emit(str(exc), traceback.format_exc())
            return
        self.signals.finished.emit(value)


# Signals of background tasks still running: kept alive here, not by a parent widget, so a task
# can always emit (a window closed meanwhile would have deleted a parented object under it).
_in_flight: set[WorkerSignals] = set()


def run_in_background(
    fn: Callable[[], Any],
    on_done: Callable[[Any], None],
    on_error: Callable[[str, str], None],
    parent: QObject,
) -> WorkerSignals:
    """Run ``fn`` on the global thread pool; ``on_done(value)`` or ``on_error(message,
    details)`` is called on the GUI thread, unless ``parent`` has been deleted by then (a panel
    closed while the work ran: nothing is left to show the result)."""
    signals = WorkerSignals()
    _in_flight.add(signals)

    def when_ended(callback: Callable[..., None]) -> Callable[..., None]:
        def ended(*args: Any) -> None:
            _in_flight.discard(signals)
            signals.deleteLater()
            if isValid(parent):
                callback(*args)

        return ended

    signals.finished.connect(when_ended(on_done))
    signals.errored.connect(when_ended(on_error))
    QThreadPool.globalInstance().start(_Task(fn, signals))
    return signals
