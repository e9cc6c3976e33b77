"""Imported first by a victim process of the kill -9 trials (``test_kill9.py``): every atomic
write into a ``checkpoints`` folder announces itself and pauses after its temporary file is
written and before the rename, so a SIGKILL can be aimed at the middle of a checkpoint write.

Nothing else changes: the writes themselves are TransferStudio's own. ``TS_FAULT_MARKER`` is a
path prefix; write ``n`` (1-based) creates ``<prefix>.<n>`` when it pauses.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from transferstudio.core.files import atomic
from transferstudio.core.runs import checkpoint

MARKER = os.environ["TS_FAULT_MARKER"]
PAUSE_S = float(os.environ.get("TS_FAULT_PAUSE", "0.5"))
_original = atomic.write_atomic
_count = 0


def _announcing_write(target, writer) -> None:
    if Path(target).parent.name != "checkpoints":
        _original(target, writer)
        return

    def write_then_pause(tmp: Path) -> None:
        global _count
        writer(tmp)
        _count += 1
        Path(f"{MARKER}.{_count}").write_text(str(target))
        time.sleep(PAUSE_S)  # the temporary file is complete; the rename has not happened

    _original(target, write_then_pause)


atomic.write_atomic = _announcing_write
checkpoint.write_atomic = _announcing_write  # it imported the name
