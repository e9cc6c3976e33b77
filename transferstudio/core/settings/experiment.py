"""Experiments: reading, validating and saving experiment files (TOML with a schema version).

An experiment holds everything needed to repeat a run: data, model, method and its parameters,
training settings and seeds. Each section is a settings dataclass (``core.settings.sections``);
the method's parameters are the method plugin's own dataclass. Files from older schema versions
are upgraded through :data:`MIGRATIONS`, one version at a time. The TOML text itself (the
generated file, parsing, updating a user's file in place) is ``core.settings.experiment_toml``.
The names of both are importable from here too, as callers always have.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transferstudio.api import TASK_CLASSIFICATION, TASK_DETECTION, TASKS, ExperimentError
from transferstudio.core.files.atomic import write_text_atomic
from transferstudio.core.files.safe_text import is_utf8_text, printable
from transferstudio.core.settings import params as P
from transferstudio.core.settings.experiment_toml import (
    SCHEMA_VERSION,
    load_toml_text,
    render_toml,
    update_toml,
)
from transferstudio.core.settings.sections import (
    MIN_IMAGE_SIZE,
    SECTIONS,
    AugmentSettings,
    DataSettings,
    ModelSettings,
    TrainSettings,
)

__all__ = [
    "MIGRATIONS",
    "MIN_IMAGE_SIZE",
    "PATH_KEYS",
    "SCHEMA_VERSION",
    "SECTIONS",
    "AugmentSettings",
    "DataSettings",
    "Experiment",
    "ModelSettings",
    "TrainSettings",
    "apply_overrides",
    "check_settings",
    "expand_user",
    "from_mapping",
    "load",
    "load_toml_text",
    "migrate",
    "new_experiment",
    "render_toml",
    "save",
]

PATH_KEYS = ("data.path", "data.target_path", "data.target_eval_path", "model.weights")
"""Settings holding a file or folder path (``~`` expanded, relative to the experiment file)."""

Migration = Callable[[dict[str, Any]], dict[str, Any]]
MIGRATIONS: dict[int, Migration] = {}
"""``MIGRATIONS[v]`` upgrades a raw experiment mapping from schema ``v`` to ``v + 1``."""


@dataclasses.dataclass
class Experiment:
    """A complete, validated experiment. ``method_params`` is the method's own dataclass."""

    name: str
    method: str
    method_params: Any
    data: DataSettings = dataclasses.field(default_factory=DataSettings)
    augment: AugmentSettings = dataclasses.field(default_factory=AugmentSettings)
    model: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    train: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    base_dir: str = "."  # folder relative data/weights paths are resolved against
    task: str = TASK_CLASSIFICATION
    """What the experiment learns (``TASKS``): its method and data format serve this task."""

    def resolve(self, path: str) -> Path:
        """A path from the file, resolved against the experiment file's folder."""
        p = expand_user(path)
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    def with_absolute_paths(self) -> Experiment:
        """A copy whose data and weights paths are absolute (what a run folder keeps, so that
        the run can be repeated or resumed from its own copy)."""
        copy = dataclasses.replace(
            self,
            data=dataclasses.replace(self.data),
            model=dataclasses.replace(self.model),
        )
        for key in ("path", "target_path", "target_eval_path"):
            if getattr(self.data, key):
                setattr(copy.data, key, str(self.resolve(getattr(self.data, key))))
        if self.model.weights not in ("none", "cache"):
            copy.model.weights = str(self.resolve(self.model.weights))
        return copy

    def to_dict(self) -> dict[str, Any]:
        """The experiment as the mapping written to TOML (without the base folder)."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "name": self.name}
        if self.task != TASK_CLASSIFICATION:  # classification files stay as they always were
            out["task"] = self.task
        for section in SECTIONS:
            out[section] = P.to_dict(getattr(self, section))
        out["method"] = {"name": self.method, "params": P.to_dict(self.method_params)}
        return out

    def to_toml(self, comments: bool = True) -> str:
        """The experiment as TOML text; with ``comments`` every key carries its help."""
        return render_toml(
            self.name, self.method, type(self.method_params), self.to_dict(), comments
        )


def migrate(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Upgrade a raw experiment mapping to :data:`SCHEMA_VERSION` through the migration chain."""
    version = raw.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ExperimentError(
            f"must be a whole number, got {P.shown(version)} in {source}", "schema_version"
        )
    if version > SCHEMA_VERSION:
        raise ExperimentError(
            f"{source} was written by a newer TransferStudio (schema {P.shown(version)}; this "
            f"version reads up to {SCHEMA_VERSION}); upgrade TransferStudio to open it",
            "schema_version",
        )
    while version < SCHEMA_VERSION:
        if version not in MIGRATIONS:
            raise ExperimentError(
                f"no migration from schema {version} (in {source})", "schema_version"
            )
        raw = MIGRATIONS[version](dict(raw))
        version += 1
        raw["schema_version"] = version
    return raw


def from_mapping(
    raw: Mapping[str, Any],
    method_params_for: Callable[[str], type],
    base_dir: str | Path = ".",
    source: str = "experiment",
) -> Experiment:
    """Validate a raw mapping (from TOML) into an :class:`Experiment`.

    ``method_params_for(name)`` returns the parameter dataclass of a method id (raising
    :class:`ExperimentError` for an unknown method).
    """
    raw = migrate(dict(raw), source)
    allowed = {"schema_version", "name", "task", "method", *SECTIONS}
    for key in raw:
        if key not in allowed:
            # A blank key ("" = 1 is valid TOML) would vanish from "key: message".
            shown = "" if key.strip() == key != "" else f" {key!r}"
            raise ExperimentError(
                f"unknown section{shown} in {source}{_did_you_mean(key, allowed)}; allowed: "
                f"{', '.join(sorted(allowed))}",
                key,
            )
    name = raw.get("name", "experiment")
    if not isinstance(name, str) or not name.strip():
        raise ExperimentError("must be a non-empty string", "name")
    task = raw.get("task", TASK_CLASSIFICATION)
    if task not in TASKS:
        raise ExperimentError(
            f"must be one of {', '.join(TASKS)}, got {P.shown(task)} in {source}", "task"
        )
    sections = {}
    for section, cls in SECTIONS.items():
        value = raw.get(section, {})
        if not isinstance(value, Mapping):
            raise ExperimentError(f"must be a table ([{section}])", section)
        sections[section] = P.build(cls, value, f"{section}.")
    method = raw.get("method")
    if not isinstance(method, Mapping) or not isinstance(method.get("name"), str):
        raise ExperimentError(
            'needs a [method] table with name = "fine-tune" (or another method id)', "method.name"
        )
    for key in method:
        if key not in ("name", "params"):
            raise ExperimentError(
                f"unknown key{_did_you_mean(key, ('name', 'params'), 'method.')}; allowed keys: "
                "name, params",
                f"method.{key}",
            )
    params_value = method.get("params", {})
    if not isinstance(params_value, Mapping):
        raise ExperimentError("must be a table ([method.params])", "method.params")
    params_cls = method_params_for(method["name"])
    method_params = P.build(params_cls, params_value, "method.params.")
    check = getattr(method_params, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as exc:
            raise ExperimentError(str(exc), "method.params") from None
    check_settings(sections["data"], sections["model"])
    return Experiment(
        name=name,
        method=method["name"],
        method_params=method_params,
        base_dir=str(base_dir),
        task=task,
        **sections,
    )


def expand_user(path: str, key: str | None = None) -> Path:
    """``Path(path).expanduser()``, with an unknown ``~user`` as an :class:`ExperimentError`
    naming ``key`` (Python raises a bare RuntimeError there)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        user = path.split("/", 1)[0].split("\\", 1)[0]
        raise ExperimentError(
            f"{path!r} starts with {user!r}, but this computer has no such user (or no home "
            "folder for it); write the full path",
            key,
        ) from None


def check_settings(data: DataSettings, model: ModelSettings) -> None:
    """Checks across keys that the per-key limits cannot make, each naming its keys."""
    # Rounded: 0.7 + 0.3 is 0.9999999999999999 in floating point, and leaves no training image.
    if round(data.val_split + data.test_split, 9) >= 1:
        raise ExperimentError(
            f"data.val_split ({data.val_split:g}) + data.test_split ({data.test_split:g}) = "
            f"{data.val_split + data.test_split:g} leaves nothing to train on; make their sum "
            "less than 1 (e.g. 0.2 and 0.1)",
            # the larger share is the one to lower (and the one a single edit just raised)
            "data.test_split" if data.test_split > data.val_split else "data.val_split",
        )
    if 0 < data.image_size < MIN_IMAGE_SIZE:
        raise ExperimentError(
            f"{data.image_size} pixels is too small for any backbone; use 0 (the backbone's own "
            f"size) or at least {MIN_IMAGE_SIZE} (most ImageNet backbones need 32)",
            "data.image_size",
        )
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(data if section == "data" else model, name)
        if key == "model.weights" and value in ("none", "cache"):
            continue
        if value.startswith("~"):
            expand_user(value, key)


def _did_you_mean(key: str, allowed: Iterable[str], prefix: str = "") -> str:
    hint = difflib.get_close_matches(key, sorted(allowed), n=1)
    return f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""


def load(
    path: str | Path, method_params_for: Callable[[str], type], overrides: Sequence[str] = ()
) -> Experiment:
    """Read and validate an experiment file, applying ``--set key=value`` overrides."""
    path = Path(path)
    try:
        # utf-8-sig: Windows editors may start a UTF-8 file with a byte-order mark, which
        # TOML does not allow; it is no part of the text.
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ExperimentError(f"cannot read experiment file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ExperimentError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    raw = load_toml_text(text, str(path))
    raw = apply_overrides(raw, overrides)
    return from_mapping(raw, method_params_for, base_dir=path.resolve().parent, source=str(path))


def save(exp: Experiment, path: str | Path) -> None:
    """Write ``exp`` to the experiment file ``path``, atomically.

    A new file is generated with every key and its help (:meth:`Experiment.to_toml`). An
    existing one keeps what its author wrote: only the values that differ are rewritten (keys
    now set are added at the end of their table, keys no longer known are removed), and its
    comments, key order and spacing stay. A file that cannot be updated so (not TOML, or an
    update that would not read back as ``exp``) is replaced by a generated one.
    """
    path = Path(path)
    text = exp.to_toml()
    try:
        old = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):  # no file yet (or not one we can keep): generate it
        old = None
    if old is not None:
        defaults = Experiment(name="experiment", method="", method_params=type(exp.method_params)())
        updated = update_toml(old, exp.to_dict(), defaults.to_dict(), text)
        if updated is not None and _reads_back_as(updated, exp):
            text = updated
    write_text_atomic(path, text)


def _reads_back_as(text: str, exp: Experiment) -> bool:
    """Whether ``text`` loads as ``exp`` (the check that an in-place update lost nothing)."""
    method_cls = type(exp.method_params)

    def params_for(name: str) -> type:
        if name != exp.method:
            raise ExperimentError(f"unknown method {name!r}", "method.name")
        return method_cls

    try:
        back = from_mapping(tomllib.loads(text), params_for, exp.base_dir)
    except (ExperimentError, tomllib.TOMLDecodeError, ValueError):
        return False
    return back.to_dict() == exp.to_dict()


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (dotted keys; TOML values, bare words taken as strings)."""
    raw = _deep_copy(raw)
    for item in overrides:
        if not is_utf8_text(item):
            # A terminal in another encoding passes bytes Python keeps as lone surrogates;
            # they would fail later in the experiment file, the log and the run index.
            raise ExperimentError(
                f"--set {printable(item)}: holds bytes that are not UTF-8 text (the terminal "
                "uses another encoding); retype the value in a UTF-8 terminal or set it in the "
                "experiment file"
            )
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ExperimentError(f"--set {item!r} must look like key=value, e.g. train.epochs=5")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except (ValueError, RecursionError):  # not TOML (or too long a number for tomllib)
            value = text.strip()
        # Spaces around the dots are allowed, as in TOML's own dotted keys.
        parts = [part.strip() for part in key.split(".")]
        if not all(parts):
            raise ExperimentError(
                f"--set {item!r}: the key has an empty part; write it like train.epochs=5"
            )
        node = raw
        for depth, part in enumerate(parts[:-1], start=1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ExperimentError(
                    f"is not a table; cannot set {'.'.join(parts)!r} inside it",
                    ".".join(parts[:depth]),
                )
        node[parts[-1]] = value
    return raw


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def new_experiment(
    method: str,
    params_cls: type,
    data_path: str = "",
    backbone: str | None = None,
    name: str | None = None,
    weights: str = "none",
    task: str = TASK_CLASSIFICATION,
) -> Experiment:
    """An experiment with every default, for ``transferstudio init`` and the GUI's File > New.
    A detection experiment trains as torchvision's detection references (SGD, 4 images a batch)
    and picks its best checkpoint by validation mAP@0.5.

    ``weights`` is the model.weights setting; callers pass what
    :func:`transferstudio.core.models.weights.default_weights` finds for the backbone (its pretrained
    weights when they are on this machine) or the user's choice."""
    exp = Experiment(name=name or method, method=method, method_params=params_cls())
    exp.data.path = data_path
    if backbone:
        exp.model.backbone = backbone
    exp.model.weights = weights
    exp.task = task
    if task == TASK_DETECTION:
        # torchvision's detection recipe scaled to 4 images a batch (SGD, lr 0.02 per 16
        # images, a warm-up); detectors fit a few images a batch on CPUs and small GPUs.
        exp.data.batch_size = 4
        exp.train.optimizer, exp.train.lr, exp.train.warmup_epochs = "sgd", 0.01, 1.0
        exp.train.early_stopping_metric = "map50"
    return exp
