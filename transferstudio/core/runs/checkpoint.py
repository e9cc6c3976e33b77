"""Checkpoints of a run: ``best`` and ``last``, each written atomically.

A checkpoint is three files with one stem: ``last.safetensors`` (weights of every trained module,
keys ``<module>.<param>``), ``last.json`` (experiment, class names, plugin versions, metrics,
epoch) and ``last.state.pt`` (optimizer, RNG and loop state; read back with
``weights_only=True``). The JSON is written last and names the digest of the other two, so a
checkpoint whose write was interrupted is recognised as incomplete and the previous one's files
are never half-replaced: the weights/state files are first written under a new generation name.

The JSON is one :class:`CheckpointRecord`. Files written before it had a ``schema_version`` (and
files of any older schema) are brought up to date by :func:`upgrade_record` as they are read:
the one place that knows what older versions left out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from transferstudio.api import TransferStudioError
from transferstudio.core.files.atomic import write_atomic, write_text_atomic

CHECKPOINT_SCHEMA = 2
"""The schema of checkpoint metadata the engine writes. Version 1 had no ``schema_version``
field (TransferStudio up to issue 19); :func:`upgrade_record` reads every older version."""

_STORE_FIELDS = ("generation", "weights_file", "state_file")
"""Fields :class:`CheckpointStore` sets as it writes a checkpoint."""


@dataclass
class CheckpointRecord:
    """What a checkpoint's JSON says: the experiment, classes, model and provenance of its
    weights. ``history`` and ``best_val_report`` are the ``last`` checkpoint's only (``None`` in
    ``best``); ``generation``, ``weights_file`` and ``state_file`` are set by the store."""

    run_id: str
    epoch: int
    experiment: dict[str, Any]
    class_names: list[str]
    metrics: dict[str, Any]
    backbone: str
    method: str
    preprocessing: dict[str, Any] | None
    plugin_versions: dict[str, str] = field(default_factory=dict)
    backbone_plugin: dict[str, str] | None = None  # what to install to predict elsewhere
    weights_source: str = ""
    weights_digest: str | None = None
    dataset_fingerprint: str | None = None
    seed: int | None = None
    method_state: dict[str, Any] = field(default_factory=dict)
    support_set: bool | None = None  # None: not recorded (v1 files); ask the method
    predictor_module: str | None = None  # the module that predicts, when the method has one
    head_recipe: dict[str, Any] | None = None  # how that module's head is built
    detector_recipe: dict[str, Any] | None = None  # how that module is built, for a detector
    history: list[dict[str, Any]] | None = None
    best_val_report: dict[str, Any] | None = None
    generation: int = 0
    weights_file: str = ""
    state_file: str = ""
    schema_version: int = CHECKPOINT_SCHEMA

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> CheckpointRecord:
        """The record of checkpoint metadata ``meta`` of any schema (see
        :func:`upgrade_record`); keys it does not know are dropped."""
        meta = upgrade_record(meta)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; fields a checkpoint does not have are left out, as before."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "schema_version" or (f.name in _STORE_FIELDS and not value):
                continue
            if value is None and f.name in (
                "support_set",
                "predictor_module",
                "head_recipe",
                "detector_recipe",
            ):
                continue
            if f.name in ("history", "best_val_report") and self.history is None:
                continue
            out[f.name] = value
        return out

    def without_history(self) -> CheckpointRecord:
        """This record as a ``best`` checkpoint holds it: no history, no store fields."""
        return dataclasses.replace(
            self, history=None, best_val_report=None, generation=0, weights_file="",
            state_file="",
        )  # fmt: skip


def upgrade_record(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` of any checkpoint schema as the current schema has it. Version 1 (no
    ``schema_version``) may lack the fields later versions added (``support_set``,
    ``predictor_module``, ``head_recipe``, ``plugin_versions``, ``method_state``,
    ``backbone_plugin``, ``seed``, ...): they are filled with what "not recorded" means."""
    version = meta.get("schema_version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_SCHEMA:
        raise TransferStudioError(
            f"checkpoint metadata of schema {version!r}: written by a newer TransferStudio; "
            "update TransferStudio to read it"
        )
    out = dict(meta)
    if version < 2:
        experiment = out.get("experiment") if isinstance(out.get("experiment"), dict) else {}
        out.setdefault("experiment", experiment)
        out.setdefault("run_id", "")
        out.setdefault("class_names", [])
        out.setdefault("metrics", {})
        out.setdefault("backbone", experiment.get("model", {}).get("backbone", ""))
        out.setdefault("method", experiment.get("method", {}).get("name", ""))
        out.setdefault("preprocessing", None)
        out.setdefault("seed", experiment.get("train", {}).get("seed"))
        for key in ("plugin_versions", "method_state"):
            if not isinstance(out.get(key), dict):
                out[key] = {}
        out["schema_version"] = CHECKPOINT_SCHEMA
    return out


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    weights: dict[str, torch.Tensor]
    record: CheckpointRecord
    state: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        """The record as a dict (what bundle manifests and support sets are built from)."""
        return self.record.to_dict()


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
        meta: CheckpointRecord | dict[str, Any],
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
        previous = self._read_meta(meta_path)  # any schema: only its generation is read
        generation = int(previous.get("generation", 0)) + 1 if previous else 1
        weights_name = f"{kind}-{generation}.safetensors"
        state_name = f"{kind}-{generation}.state.pt"
        str_meta = {"format": "transferstudio-checkpoint-1"}
        if same_weights_as is not None:
            source = self.folder / self.record(same_weights_as).weights_file
            write_atomic(self.folder / weights_name, lambda p: _link_or_copy(source, p))
        else:
            write_atomic(
                self.folder / weights_name, lambda p: save_file(weights, str(p), metadata=str_meta)
            )
        write_atomic(self.folder / state_name, lambda p: torch.save(state, p))
        if isinstance(meta, CheckpointRecord):
            meta = meta.to_dict()
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
        """The metadata of checkpoint ``kind`` as a dict of the current schema, checked before
        anything is built from it: its file names, class names and preprocessing within limits
        (``core.limits``). :meth:`record` is the typed form."""
        path = self.folder / f"{kind}.json"
        meta = self._read_meta(path)
        if meta is None:
            raise TransferStudioError(f"no readable {kind} checkpoint in {self.folder}")
        return checked_meta(upgrade_record(meta), path)

    def record(self, kind: str) -> CheckpointRecord:
        """The :class:`CheckpointRecord` of checkpoint ``kind`` (checked as :meth:`meta`)."""
        return CheckpointRecord.from_dict(self.meta(kind))

    def load(self, kind: str, with_state: bool = True) -> Checkpoint:
        """Read checkpoint ``kind``; the state file is read with ``weights_only=True``. A
        damaged file is a :class:`TransferStudioError` naming it, never torch's or
        safetensors' traceback (nor torch's advice to load with ``weights_only=False``)."""
        from safetensors import SafetensorError

        from transferstudio.core.models.weights import load_tensors_only

        record = self.record(kind)
        weights_path = self.folder / record.weights_file
        try:
            weights = load_file(str(weights_path))
        except (OSError, SafetensorError) as exc:
            raise TransferStudioError(
                f"checkpoint {kind} in {self.folder} cannot be read: its weights file "
                f"{weights_path.name} is damaged or missing ({exc}); resume from another run, "
                "or delete the run"
            ) from None
        state = (
            load_tensors_only(self.folder / record.state_file, f"checkpoint {kind} state file")
            if with_state
            else {}
        )
        return Checkpoint(weights, record, state)

    def paths(self, kind: str) -> list[Path]:
        record = self.record(kind)
        return [
            self.folder / f"{kind}.json",
            self.folder / record.weights_file,
            self.folder / record.state_file,
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
