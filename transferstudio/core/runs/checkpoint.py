"""Checkpoints of a run: ``best`` and ``last``, each written atomically.

A checkpoint is three files with one stem: ``last.safetensors`` (weights of every trained module,
keys ``<module>.<param>``), ``last.json`` (experiment, class names, plugin versions, metrics,
epoch) and ``last.state.pt`` (optimizer, RNG and loop state; read back with
``weights_only=True``). The JSON is written last and names the digest of the other two, so a
checkpoint whose write was interrupted is recognised as incomplete and the previous one's files
are never half-replaced: the weights/state files are first written under a new generation name.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from transferstudio.api import TransferStudioError
from transferstudio.core.files.atomic import write_atomic, write_text_atomic


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    weights: dict[str, torch.Tensor]
    meta: dict[str, Any]
    state: dict[str, Any]


def module_weights(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Flatten named modules' state dicts into one ``name.key -> tensor`` mapping (on CPU)."""
    out = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            out[f"{name}.{key}"] = value.detach().to("cpu").contiguous()
    return out


def load_module_weights(
    modules: dict[str, torch.nn.Module], weights: dict[str, torch.Tensor]
) -> None:
    """Inverse of :func:`module_weights` (strict)."""
    for name, module in modules.items():
        prefix = name + "."
        module.load_state_dict(
            {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        )


class CheckpointStore:
    """The ``checkpoints`` folder of a run."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def save(
        self,
        kind: str,
        weights: dict[str, torch.Tensor],
        meta: dict[str, Any],
        state: dict[str, Any],
        same_weights_as: str | None = None,
    ) -> Path:
        """Write checkpoint ``kind`` (``best`` or ``last``); returns the JSON path.

        ``same_weights_as="last"`` reuses that checkpoint's weights file (a hard link, else a
        copy) instead of serialising identical weights twice; weights files are never modified
        after they are written, so sharing them is safe.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_path = self.folder / f"{kind}.json"
        previous = self._read_meta(meta_path)
        generation = int(previous.get("generation", 0)) + 1 if previous else 1
        weights_name = f"{kind}-{generation}.safetensors"
        state_name = f"{kind}-{generation}.state.pt"
        str_meta = {"format": "transferstudio-checkpoint-1"}
        if same_weights_as is not None:
            source = self.folder / self.meta(same_weights_as)["weights_file"]
            write_atomic(self.folder / weights_name, lambda p: _link_or_copy(source, p))
        else:
            write_atomic(
                self.folder / weights_name, lambda p: save_file(weights, str(p), metadata=str_meta)
            )
        write_atomic(self.folder / state_name, lambda p: torch.save(state, p))
        full_meta = dict(
            meta, generation=generation, weights_file=weights_name, state_file=state_name
        )
        write_text_atomic(meta_path, json.dumps(full_meta, indent=2))
        # Only now is the new generation the checkpoint; drop files of older generations.
        for stale in self.folder.glob(f"{kind}-*"):
            if stale.name not in (weights_name, state_name):
                stale.unlink(missing_ok=True)
        for tmp in self.folder.glob(f".{kind}-*.tmp"):
            tmp.unlink(missing_ok=True)
        return meta_path

    @staticmethod
    def _read_meta(path: Path) -> dict[str, Any] | None:
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested 100k deep
            return None
        return meta if isinstance(meta, dict) else None

    def exists(self, kind: str) -> bool:
        return (self.folder / f"{kind}.json").is_file()

    def meta(self, kind: str) -> dict[str, Any]:
        """The metadata of checkpoint ``kind``, checked before anything is built from it: its
        file names, class names and preprocessing within limits (``core.limits``)."""
        path = self.folder / f"{kind}.json"
        meta = self._read_meta(path)
        if meta is None:
            raise TransferStudioError(f"no readable {kind} checkpoint in {self.folder}")
        return checked_meta(meta, path)

    def load(self, kind: str, with_state: bool = True) -> Checkpoint:
        """Read checkpoint ``kind``; the state file is read with ``weights_only=True``. A
        damaged file is a :class:`TransferStudioError` naming it, never torch's or
        safetensors' traceback (nor torch's advice to load with ``weights_only=False``)."""
        from safetensors import SafetensorError

        from transferstudio.core.models.weights import load_tensors_only

        meta = self.meta(kind)
        weights_path = self.folder / meta["weights_file"]
        try:
            weights = load_file(str(weights_path))
        except (OSError, SafetensorError) as exc:
            raise TransferStudioError(
                f"checkpoint {kind} in {self.folder} cannot be read: its weights file "
                f"{weights_path.name} is damaged or missing ({exc}); resume from another run, "
                "or delete the run"
            ) from None
        state = (
            load_tensors_only(self.folder / meta["state_file"], f"checkpoint {kind} state file")
            if with_state
            else {}
        )
        return Checkpoint(weights, meta, state)

    def paths(self, kind: str) -> list[Path]:
        meta = self.meta(kind)
        return [
            self.folder / f"{kind}.json",
            self.folder / meta["weights_file"],
            self.folder / meta["state_file"],
        ]


def checked_meta(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """``meta`` read from checkpoint metadata file ``path``, refused with a message naming the
    file and key when a field would make TransferStudio allocate without bound (``crop =
    60000`` asks 86 GB) or read outside the checkpoint folder."""
    from transferstudio.core.files.limits import MAX_CLASSES, check_limit, checked_preprocessing

    for key in ("weights_file", "state_file"):
        name = meta.get(key)
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise TransferStudioError(
                f"{path}: {key} must name a file in the same folder, not {name!r}; the "
                "checkpoint is damaged: resume from another run, or delete the run"
            )
    if meta.get("preprocessing") is not None:
        checked_preprocessing(meta["preprocessing"], file=path)
    names = meta.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TransferStudioError(f"{path}: class_names must be a list of names; it is damaged")
    check_limit(
        len(names), MAX_CLASSES, file=path, what="the number of class_names", advice="it is damaged"
    )
    return meta


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # file systems without hard links
        shutil.copyfile(source, target)


def rng_state() -> dict[str, Any]:
    """The torch and Python RNG states (NumPy is reseeded per epoch by the engine)."""
    import random

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    import random

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
