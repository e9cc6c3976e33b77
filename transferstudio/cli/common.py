"""What the commands share: the plugin host, the workspace, usage errors and Ctrl+C handling."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

STOP_MESSAGE = "stopping after this batch (Ctrl+C again to abort)..."
"""What the first Ctrl+C of a run prints."""

INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl+C or SIGTERM (128 + SIGINT, as shells use)."""


class UsageError(Exception):
    """A command line that cannot work as given: printed with the usage, exit status 2."""


def load_host():
    """The plugin host (built-ins and installed plugins); imported only when a command runs."""
    from transferstudio.core.plugins.host import load_plugins

    return load_plugins()


def workspace_of(args) -> Path:
    """The workspace folder, absolute: the run index stores run folders under it, and a
    relative one ("../ws") would point elsewhere from another working folder."""
    from transferstudio.core.runs.workspace import default_workspace
    from transferstudio.core.settings.experiment import expand_user

    if args.workspace:
        return expand_user(args.workspace, "--workspace").resolve()
    return default_workspace().expanduser().resolve()


@contextlib.contextmanager
def interruptible(
    ask_stop: Callable[[], None], message: str | None = STOP_MESSAGE, second_aborts: bool = True
) -> Iterator[None]:
    """While the block runs, Ctrl+C (SIGINT) and SIGTERM (``kill``, ``timeout``, a logout) ask
    for a clean stop through ``ask_stop()``, printing ``message``: the run saves its state and is
    marked stopped, resumable, instead of dying "running". A second Ctrl+C aborts at once, if
    ``second_aborts`` (a person at a terminal; not the window driving a child process)."""
    asked = {"before": False}

    def handle(signum, frame):
        if second_aborts and asked["before"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        asked["before"] = True
        ask_stop()
        if message:
            print(f"\n{message}", file=sys.stderr)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_process(code: int) -> NoReturn:
    """End the process with ``code``. A torchrun worker (``WORLD_SIZE`` > 1) whose command has
    returned has closed its run (files written, process group left, lock released), so it skips
    the interpreter's teardown: torch's C++ static destructors sometimes abort there
    ("terminate called without an active exception", SIGABRT, after the work was done and
    reported), and torchrun then fails the whole job."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
