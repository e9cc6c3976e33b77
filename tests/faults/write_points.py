"""Imported first by a victim process of the write-point kill series
(``test_kill_at_write_points.py``): every durable write a run makes is a numbered *point*,
and the process can SIGKILL itself at exactly one of them.

Points: each atomic file write twice, once when its temporary file is complete (before the
rename) and once after the rename; and each write to the run index after its transaction
commits. ``TS_WRITE_LOG`` names a file that gets one line per point (``n kind target``);
``TS_KILL_AT=n`` makes point ``n`` a ``kill -9`` of this process. Nothing else changes: the
writes themselves are TransferStudio's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from transferstudio.core.files import atomic
from transferstudio.core.runs import workspace as runs

LOG = os.environ.get("TS_WRITE_LOG")
KILL_AT = int(os.environ.get("TS_KILL_AT", "0"))
_count = 0
_original_atomic_path = atomic.atomic_path


def _point(kind: str, target: str) -> None:
    global _count
    _count += 1
    if LOG:
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(f"{_count} {kind} {target}\n")
    if _count == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def _pointed_atomic_path(target):
    name = Path(target).name
    with _original_atomic_path(target) as tmp:
        yield tmp
        _point("temp-written", name)
    _point("renamed", name)


def _after(method_name: str):
    original = getattr(runs.RunStore, method_name)

    def wrapped(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        _point("index", method_name)
        return result

    setattr(runs.RunStore, method_name, wrapped)


atomic.atomic_path = _pointed_atomic_path  # write_atomic looks it up at each call
for _name in ("create", "record_epoch", "set_status", "truncate_epochs"):
    _after(_name)
