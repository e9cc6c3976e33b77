"""A run's ``log.txt``, fed by the engine's own lines and by stdlib :mod:`logging`.

The engine writes its lines with :meth:`RunLog.write`. While a run is attached
(:meth:`RunLog.attach` ... :meth:`RunLog.detach`), records of the ``transferstudio`` logger (and
its children, which plugins may use) and every Python warning raised in the run's thread (torch,
PIL, Optuna, a plugin's ``warnings.warn``, during ``setup()`` too) become lines of the same
``log.txt`` and the same :class:`~transferstudio.core.progress.events.LogMessage` events the
window's log view shows. Lines written before the run folder exists are kept and written once
it does. Detaching restores the previous warning hook, so runs in one process never share one.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transferstudio.core.progress import events as E

LOGGER = logging.getLogger("transferstudio")
"""The library's logger; a run's handler is attached to it while the run executes."""

WARNINGS_LOGGER = logging.getLogger("transferstudio.warnings")
"""Where Python warnings raised during a run are logged (then written to its log.txt)."""


class RunLog:
    """The log of one run: ``log.txt`` once its folder exists, events always."""

    def __init__(self, emit: Callable[[Any], None]) -> None:
        self.emit = emit
        self.pending: list[str] = []  # written before the run folder (and log.txt) exists
        self.file: io.TextIOBase | None = None
        self.handler = _RunLogHandler(self)
        self._previous_showwarning: Callable[..., None] | None = None
        self._attached = False

    def write(self, message: str, quiet: bool = False) -> None:
        """A line for the run's log file; also emitted as an event unless ``quiet``."""
        line = f"{time.strftime('%H:%M:%S')} {message}"
        if self.file is not None:
            try:
                self.file.write(line + "\n")
                self.file.flush()
            except OSError:  # a full disk: the line still reaches the user as an event
                pass
        else:  # before the run folder exists (a method's setup): written once it does
            self.pending.append(line)
        if not quiet:
            self.emit(E.LogMessage(message))

    def open(self, path: Path) -> None:
        """Start writing ``path`` (appending), with the lines kept so far."""
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.file.writelines(line + "\n" for line in self.pending)
        self.file.flush()
        self.pending.clear()

    def forget_pending(self) -> None:
        """Drop the lines kept so far (a process that writes no files)."""
        self.pending.clear()

    def attach(self) -> None:
        """Route the ``transferstudio`` logger and this thread's warnings to this log."""
        if self._attached:
            return
        self._attached = True
        self.handler.thread = threading.get_ident()
        LOGGER.addHandler(self.handler)
        self._previous_showwarning = warnings.showwarning
        warnings.showwarning = self._show_warning

    def detach(self) -> None:
        """Undo :meth:`attach`; safe to call twice."""
        if not self._attached:
            return
        self._attached = False
        LOGGER.removeHandler(self.handler)
        if warnings.showwarning == self._show_warning:
            warnings.showwarning = self._previous_showwarning
        self._previous_showwarning = None

    def close(self) -> None:
        """Detach, and close ``log.txt``."""
        self.detach()
        if self.file is not None:
            self.file.close()
            self.file = None

    def _show_warning(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if threading.get_ident() != self.handler.thread and self._previous_showwarning:
            # Another thread's warning (the window's own): shown where it always was.
            self._previous_showwarning(message, category, filename, lineno, file, line)
            return
        WARNINGS_LOGGER.warning("%s: %s (%s:%d)", category.__name__, message, filename, lineno)


class _RunLogHandler(logging.Handler):
    """Writes the records of the run's thread to its :class:`RunLog`."""

    def __init__(self, run_log: RunLog) -> None:
        super().__init__(logging.NOTSET)
        self.run_log = run_log
        self.thread: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return  # a concurrent run's (or the window's) record: not this run's log
        try:
            prefix = "" if record.levelno < logging.WARNING else "warning: "
            self.run_log.write(prefix + record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)
