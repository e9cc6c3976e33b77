"""Process locks on workspace objects (a run, a sweep): held while a process works on one.

The lock is the OS's (filelock: ``flock`` / ``LockFileEx``) on a file under
``WORKSPACE/locks``, so a process that is killed leaves no lock behind, and "is anybody
working on this?" has a true answer without trusting a status that a dead process wrote.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transferstudio.api import TransferStudioError

LOCK_FOLDER = "locks"


@contextmanager
def held(path: str | Path, refusal: str) -> Iterator[None]:
    """Hold the lock at ``path`` for the block, or raise ``TransferStudioError(refusal)`` at
    once when another process (or another lock object of this one) holds it."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TransferStudioError(refusal) from None
    try:
        yield
    finally:
        lock.release()


def is_held(path: str | Path) -> bool:
    """Whether some process holds the lock at ``path`` now. Never creates or writes anything
    (a workspace on a full or read-only disk can still be listed)."""
    from filelock import FileLock, Timeout

    path = Path(path)
    if not path.exists():
        return False
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:  # a lock file we may not open: take the status as written
        return True
    lock.release()
    return False
