"""Where a ``model.weights`` setting points: nothing, the local cache, a weights file or bundle,
or a finished run folder (whose best checkpoint's backbone is used). Here in ``runs`` because
the last case reads a run folder; ``core/models/weights.py`` reads the files themselves."""

from __future__ import annotations

import os
from pathlib import Path

from transferstudio.api import BackboneSpec, WeightsError
from transferstudio.core.models.weights import find_cached
from transferstudio.core.runs.finished import best_weights_file


def resolve_weights(spec: BackboneSpec, weights: str, base_dir: str | Path) -> Path | None:
    """The file a ``model.weights`` setting points to (``None`` for random initialisation)."""
    if weights == "none":
        return None
    if weights == "cache":
        return find_cached(spec)
    path = Path(os.path.expanduser(weights))
    if not path.is_absolute():
        path = Path(base_dir) / path
    if (path / "checkpoints").is_dir():
        # A run folder: its best checkpoint's backbone (e.g. after self-supervised pretraining).
        return best_weights_file(path)
    if path.suffix not in (".pt", ".pth", ".safetensors", ".tsmodel"):
        raise WeightsError(
            f"model.weights: {path} must be a .pt, .pth, .safetensors or .tsmodel (bundle) file, "
            "a run folder, or 'none' or 'cache'"
        )
    if not path.is_file():
        raise WeightsError(f"model.weights: {path} does not exist")
    return path
