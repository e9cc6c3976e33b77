"""A sweep's search space: which settings it searches, and over which ranges or choices.

The space comes from the settings dataclasses: a key such as ``train.lr`` or
``method.params.temperature`` takes its range or choices from the field's ``param(min=, max=,
choices=)``, unless the user gives one (the CLI's ``--param KEY=SPEC``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transferstudio.api import ExperimentError
from transferstudio.core.plugins.host import PluginHost
from transferstudio.core.settings import params as P
from transferstudio.core.settings.experiment import SECTIONS, Experiment, from_mapping

DEFAULT_KEYS = ("train.lr", "train.weight_decay")
# Sensible ranges where the field's own bounds are too wide to search (lr may be 0..10).
DEFAULT_RANGES = {"train.lr": (1e-5, 1e-1), "train.weight_decay": (1e-6, 1e-1)}


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a float or int range (``log`` for a log-uniform one) or choices."""

    key: str
    kind: str  # float | int | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """Draw this setting for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def describe(self) -> str:
        """The dimension as ``--param`` takes it: ``train.lr=1e-05:0.1:log``, ``key=a,b``."""
        if self.kind == "choice":
            return f"{self.key}={','.join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)}"
        return f"{self.key}={self.low:g}:{self.high:g}" + (":log" if self.log else "")


def _field(exp: Experiment, key: str) -> P.FieldInfo:
    parts = key.split(".")
    if len(parts) == 3 and parts[:2] == ["method", "params"]:
        cls = type(exp.method_params)
    elif len(parts) == 2 and parts[0] in SECTIONS:
        cls = SECTIONS[parts[0]]
    else:
        raise ExperimentError(
            "cannot be searched: name a setting as SECTION.KEY (train.lr) or method.params.KEY",
            key,
        )
    for info in P.fields_of(cls):
        if info.name == parts[-1]:
            return info
    names = ", ".join(f.name for f in P.fields_of(cls))
    raise ExperimentError(f"no such setting; {'.'.join(parts[:-1])} has: {names}", key)


def dimension(exp: Experiment, key: str, spec: str = "") -> Dimension:
    """The search dimension of setting ``key``: from ``spec`` ("LOW:HIGH", "LOW:HIGH:log" or
    "a,b,c") when given, else from the field's bounds or choices."""
    info = _field(exp, key)
    if spec and ":" not in spec:
        values = [v.strip() for v in spec.split(",") if v.strip()]
        choices = tuple(_coerce(info, v, key) for v in values)
        for value in choices:  # the setting's own limits and choices, checked now
            P.coerce_value(info, value, key)
        return Dimension(key, "choice", choices=choices)
    if info.kind is bool:
        return Dimension(key, "choice", choices=(False, True))
    if info.choices and not spec:
        return Dimension(key, "choice", choices=tuple(info.choices))
    if info.kind not in (int, float):
        raise ExperimentError(
            f"is a {info.kind.__name__} setting without choices: give them, e.g. {key}=a,b",
            key,
        )
    if spec:
        low_text, _, rest = spec.partition(":")
        high_text, _, scale = rest.partition(":")
        try:
            low, high = float(low_text), float(high_text)
        except ValueError:
            raise ExperimentError(f"range {spec!r}: write LOW:HIGH, e.g. 1e-5:1e-1", key) from None
        log = scale.strip() == "log"
    else:
        low, high = DEFAULT_RANGES.get(key, (info.min, info.max))
        if low is None or high is None:
            raise ExperimentError(f"has no range in its definition: give one, e.g. {key}=0:10", key)
        log = info.kind is float and low > 0 and high / low >= 100
    if info.min is not None and low < info.min or info.max is not None and high > info.max:
        raise ExperimentError(
            f"range {low:g}..{high:g} leaves the setting's limits {info.min}..{info.max}", key
        )
    if not low < high or (log and low <= 0):
        raise ExperimentError(
            f"range {low:g}..{high:g} is empty" + (" or not positive (log)" if log else ""), key
        )
    if info.kind is int:
        if low != int(low) or high != int(high):
            raise ExperimentError(f"range {low:g}..{high:g}: give whole numbers", key)
        return Dimension(key, "int", int(low), int(high), log)
    return Dimension(key, "float", low, high, log)


def _coerce(info: P.FieldInfo, text: str, key: str) -> Any:
    try:
        if info.kind is bool:
            return {"true": True, "false": False}[text.lower()]
        return info.kind(text)
    except (ValueError, KeyError):
        raise ExperimentError(f"{text!r} is not a {info.kind.__name__}", key) from None


def default_space(exp: Experiment) -> list[Dimension]:
    """``train.lr`` and ``train.weight_decay`` (log-uniform), and every method parameter that
    declares choices, is a switch, or has both bounds."""
    space = [dimension(exp, key) for key in DEFAULT_KEYS]
    for info in P.fields_of(type(exp.method_params)):
        key = f"method.params.{info.name}"
        if (
            info.kind is bool
            or info.choices
            or (info.kind in (int, float) and info.min is not None and info.max is not None)
        ):
            space.append(dimension(exp, key))
    return space


def parse_space(exp: Experiment, items: Sequence[str]) -> list[Dimension]:
    """``KEY`` or ``KEY=SPEC`` items (the CLI's ``--param``); empty: :func:`default_space`."""
    if not items:
        return default_space(exp)
    space = []
    for item in items:
        key, _, spec = item.partition("=")
        space.append(dimension(exp, key.strip(), spec.strip()))
    return space


def with_params(exp: Experiment, host: PluginHost, params: dict[str, Any]) -> Experiment:
    """A copy of ``exp`` with ``params`` (dotted keys) set, validated like a file."""
    raw = exp.to_dict()
    for key, value in params.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_mapping(raw, host.method_params, exp.base_dir, "sweep trial")
