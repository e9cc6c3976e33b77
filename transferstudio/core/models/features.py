"""A cache of backbone features, so a frozen backbone runs over each image once.

Entries are keyed by everything features depend on: backbone id, weights file digest (or the seed
for a random initialisation), preprocessing, and the split's files (paths, sizes, mtimes). They
live in memory for the process (another run in the same window reuses them) and on disk in the
workspace (another run, later, reuses them); sets too large for memory stay on disk only.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from transferstudio.core.files.atomic import write_atomic

MEMORY_LIMIT_BYTES = 2 * 2**30
"""Features larger than this are not kept in memory (they are still cached on disk)."""

_MEMORY: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()


def cache_key(parts: dict[str, Any]) -> str:
    """A stable key of everything the features depend on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


class FeatureCache:
    """Memory + disk cache of ``(features, targets)`` tensors by key."""

    def __init__(self, folder: str | Path | None, memory_limit: int = MEMORY_LIMIT_BYTES) -> None:
        self.folder = Path(folder) if folder else None
        self.memory_limit = memory_limit
        self.hits = 0
        self.misses = 0

    def get_or_compute(
        self, key: str, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached features for ``key``, computing (and storing) them on a miss."""
        if key in _MEMORY:
            _MEMORY.move_to_end(key)
            self.hits += 1
            return _MEMORY[key]
        path = self.folder / f"{key}.safetensors" if self.folder else None
        if path is not None and path.is_file():
            try:
                tensors = load_file(str(path))
                value = (tensors["features"], tensors["targets"])
                self.hits += 1
                self._remember(key, value)
                return value
            except Exception:  # noqa: BLE001,S110 - a damaged cache file is recomputed
                path.unlink(missing_ok=True)
        self.misses += 1
        features, targets = compute()
        value = (features.detach().cpu().contiguous(), targets.detach().cpu().contiguous())
        if path is not None:
            tensors = {"features": value[0], "targets": value[1]}
            write_atomic(path, lambda p: save_file(tensors, str(p)))
        self._remember(key, value)
        return value

    def _remember(self, key: str, value: tuple[torch.Tensor, torch.Tensor]) -> None:
        size = value[0].numel() * value[0].element_size()
        if size > self.memory_limit:
            return
        _MEMORY[key] = value
        while sum(v[0].numel() * v[0].element_size() for v in _MEMORY.values()) > self.memory_limit:
            _MEMORY.popitem(last=False)


def clear_memory() -> None:
    """Forget in-memory features (tests; freeing memory)."""
    _MEMORY.clear()
