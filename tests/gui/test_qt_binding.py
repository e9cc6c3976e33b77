"""The installed Qt binding must not leak references: PySide6 6.12.0 drops one reference to
None per void method call, which aborts a long window session ("none_dealloc")."""

from __future__ import annotations

import sys


def test_void_method_calls_keep_the_reference_count_of_none():
    from PySide6.QtCore import QObject

    obj = QObject()
    before = sys.getrefcount(None)
    for _ in range(1000):
        obj.setObjectName("probe")
    lost = before - sys.getrefcount(None)
    # Restore what a buggy binding took, so this process can finish either way.
    _keep_alive.extend([None] * max(lost, 0))
    assert lost < 10, f"the Qt binding lost {lost} references to None in 1000 calls"


_keep_alive: list = []
