"""Experiment files: TOML with a schema version, validated section by section.

An experiment holds everything needed to repeat a run: data, model, method and its parameters,
training settings and seeds. Each section is a settings dataclass (see ``core.params``); the
method's parameters are the method plugin's own dataclass. Files from older schema versions are
upgraded through :data:`MIGRATIONS`, one version at a time.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transferstudio.api import ExperimentError, param
from transferstudio.core.files.safe_text import is_utf8_text, printable
from transferstudio.core.settings import params as P

SCHEMA_VERSION = 1

MIN_IMAGE_SIZE = 16
"""The smallest ``data.image_size`` (other than 0): below it even the smallest built-in
backbones (lenet, conv4) shrink to nothing inside; most ImageNet ones need 32, vit_b_16 224."""

PATH_KEYS = ("data.path", "data.target_path", "data.target_eval_path", "model.weights")
"""Settings holding a file or folder path (``~`` expanded, relative to the experiment file)."""

Migration = Callable[[dict[str, Any]], dict[str, Any]]
MIGRATIONS: dict[int, Migration] = {}
"""``MIGRATIONS[v]`` upgrades a raw experiment mapping from schema ``v`` to ``v + 1``."""


@dataclasses.dataclass
class AugmentSettings:
    """Random augmentation of training images (validation and test images are never augmented)."""

    random_resized_crop: bool = param(
        True, help="random crop of a random area, resized to the input size"
    )
    crop_scale_min: float = param(
        0.5, min=0.05, max=1.0, help="smallest crop area, as a fraction of the image"
    )
    hflip: bool = param(True, help="random horizontal flip")
    rotation: float = param(0.0, min=0.0, max=180.0, help="random rotation up to this many degrees")
    color_jitter: float = param(
        0.0, min=0.0, max=1.0, help="brightness/contrast/saturation jitter strength"
    )

    @property
    def any_random(self) -> bool:
        return self.random_resized_crop or self.hflip or self.rotation > 0 or self.color_jitter > 0


@dataclasses.dataclass
class DataSettings:
    """Where the images are and how they are split and batched."""

    path: str = param(
        "", help="image folder (class subfolders, or train/val[/test] folders) or CSV file"
    )
    source: str = param(
        "auto", help="data-source plugin; 'auto' picks the one that recognises the path"
    )
    target_path: str = param("", help="domain adaptation: folder of unlabeled target-domain images")
    target_eval_path: str = param(
        "",
        help="optional labeled target folder (class subfolders), used only to evaluate "
        "target accuracy",
    )
    label_columns: list[str] = param([], help="multi-task: the CSV's label columns, one task each")
    val_split: float = param(
        0.2,
        min=0.0,
        max=0.9,
        help="fraction held out for validation when the data has no val folder",
    )
    test_split: float = param(
        0.0, min=0.0, max=0.9, help="fraction held out for testing when the data has no test folder"
    )
    split_seed: int = param(0, min=0, help="seed of the stratified split")
    batch_size: int = param(32, min=1, max=4096, help="images per batch")
    image_size: int = param(
        0, min=0, max=1024, help="input size; 0 uses the backbone's own preprocessing"
    )
    num_workers: int = param(
        -1, min=-1, max=64, help="DataLoader worker processes; -1 chooses for this machine"
    )


@dataclasses.dataclass
class ModelSettings:
    """The backbone, its starting weights and the new head."""

    backbone: str = param("resnet18", help="backbone plugin id (see 'transferstudio plugins')")
    weights: str = param(
        "none",
        help="'none' (random init), 'cache' (the backbone's pretrained weights from local files: "
        "the plugin's own, else the local torch cache), a .pth/.pt/.safetensors/.tsmodel path or "
        "a run folder",
    )
    head_dropout: float = param(
        0.0, min=0.0, max=0.95, help="dropout before the classification head"
    )


@dataclasses.dataclass
class TrainSettings:
    """The optimisation loop the engine runs for every method."""

    epochs: int = param(10, min=1, max=10000, help="number of epochs")
    device: str = param(
        "auto", help="'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'cuda:1', 'mps'"
    )
    precision: str = param(
        "auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="mixed precision on CUDA ('auto': bf16 where supported, else fp16)",
    )
    optimizer: str = param("adamw", choices=["adamw", "sgd"], help="optimizer")
    lr: float = param(
        1e-3,
        min=0.0,
        max=10.0,
        help="learning rate of the head (the backbone's may be scaled by the method)",
    )
    momentum: float = param(0.9, min=0.0, max=1.0, help="SGD momentum")
    nesterov: bool = param(False, help="Nesterov momentum (SGD)")
    weight_decay: float = param(
        1e-4, min=0.0, max=1.0, help="decoupled (AdamW) or L2 (SGD) weight decay"
    )
    schedule: str = param(
        "cosine", choices=["constant", "step", "cosine", "onecycle"], help="learning-rate schedule"
    )
    warmup_epochs: float = param(
        0.0, min=0.0, max=100.0, help="linear warmup length in epochs (fractions allowed)"
    )
    step_epochs: int = param(7, min=1, help="'step' schedule: epochs between decays")
    step_gamma: float = param(0.1, min=0.0, max=1.0, help="'step' schedule: decay factor")
    label_smoothing: float = param(
        0.0, min=0.0, max=0.5, help="label smoothing of the cross-entropy"
    )
    grad_clip: float = param(0.0, min=0.0, help="clip the gradient norm to this value; 0 disables")
    early_stopping_metric: str = param(
        "accuracy",
        choices=["accuracy", "loss", "f1_macro", "f1_weighted", "precision_macro", "recall_macro"],
        help="validation metric that picks the best checkpoint and drives early stopping",
    )
    patience: int = param(
        0, min=0, help="stop after this many epochs without improvement; 0 disables"
    )
    seed: int = param(0, min=0, help="seed of every random number generator")
    deterministic: bool = param(
        False, help="use deterministic algorithms only (slower, bit-for-bit repeatable)"
    )


SECTIONS: dict[str, type] = {
    "data": DataSettings,
    "augment": AugmentSettings,
    "model": ModelSettings,
    "train": TrainSettings,
}


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
        for section in SECTIONS:
            out[section] = P.to_dict(getattr(self, section))
        out["method"] = {"name": self.method, "params": P.to_dict(self.method_params)}
        return out

    def to_toml(self, comments: bool = True) -> str:
        """The experiment as TOML text; with ``comments`` every key carries its help."""
        return render_toml(
            self.name, self.method, type(self.method_params), self.to_dict(), comments
        )


def render_toml(
    name: str, method: str, params_cls: type, data: Mapping[str, Any], comments: bool
) -> str:
    """Write an experiment mapping as commented TOML."""
    parts = [
        "# TransferStudio experiment. Run it with: transferstudio run THIS_FILE\n"
        if comments
        else "",
        f"schema_version = {SCHEMA_VERSION}\n",
        f"name = {P.toml_value(name)}\n",
    ]
    for section, cls in SECTIONS.items():
        doc = (cls.__doc__ or "").strip()
        parts.append("\n# " + doc + "\n" if comments and doc else "\n")
        parts.append(P.toml_table(section, cls, data.get(section, {}), comments))
    parts.append("\n[method]\n")
    parts.append(f"name = {P.toml_value(method)}\n")
    doc = (params_cls.__doc__ or "").strip().splitlines()
    parts.append("\n# " + doc[0] + "\n" if comments and doc else "\n")
    parts.append(
        P.toml_table(
            "method.params", params_cls, data.get("method", {}).get("params", {}), comments
        )
    )
    return "".join(parts)


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
    allowed = {"schema_version", "name", "method", *SECTIONS}
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


def load_toml_text(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text, turning syntax errors into :class:`ExperimentError` naming the file."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{source} is not valid TOML: {exc}") from None
    except ValueError as exc:
        # tomllib converts integer literals with int(), which refuses over 4300 digits.
        reason = "an integer in it has over 4300 digits" if "digits" in str(exc) else exc
        raise ExperimentError(f"{source} is not usable TOML: {reason}") from None
    except RecursionError:
        raise ExperimentError(
            f"{source} is not usable TOML: arrays or tables nested too deeply"
        ) from None


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
) -> Experiment:
    """An experiment with every default, for ``transferstudio init`` and the GUI's File > New.

    ``weights`` is the model.weights setting; callers pass what
    :func:`transferstudio.core.models.weights.default_weights` finds for the backbone (its pretrained
    weights when they are on this machine) or the user's choice."""
    exp = Experiment(name=name or method, method=method, method_params=params_cls())
    exp.data.path = data_path
    if backbone:
        exp.model.backbone = backbone
    exp.model.weights = weights
    return exp
