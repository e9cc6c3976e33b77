"""Parameter dataclasses: one description, three uses (validation, GUI form, generated files).

Every field of a settings dataclass is made with :func:`transferstudio.api.param`; its metadata
(help, min, max, choices) checks values read from an experiment file or ``--set``, builds the
GUI form, and becomes the comment above the key in ``transferstudio init`` output.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from transferstudio.api import ExperimentError


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """A settings field as the validator, the form builder and the TOML writer see it."""

    name: str
    kind: type  # bool, int, float, str or list
    default: Any
    help: str
    min: float | None
    max: float | None
    choices: tuple[Any, ...] | None
    item_kind: type | None = None  # the entries' type of a list field (list[float] -> float)


def fields_of(cls: type) -> list[FieldInfo]:
    """The fields of a settings dataclass with their resolved types and metadata."""
    hints = typing.get_type_hints(cls)
    return [_field_info(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _field_info(f: dataclasses.Field, hint: Any) -> FieldInfo:
    kind = _base_type(hint)
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = None
    meta = f.metadata
    return FieldInfo(
        f.name,
        kind,
        default,
        meta.get("help", ""),
        meta.get("min"),
        meta.get("max"),
        meta.get("choices"),
        _item_type(hint) if kind is list else None,
    )


def _item_type(hint: Any) -> type | None:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    while args and typing.get_origin(args[0]) in (typing.Union, types.UnionType, list):
        args = [a for a in typing.get_args(args[0]) if a is not type(None)]
    return args[0] if args and args[0] in (bool, int, float, str) else None


def _base_type(hint: Any) -> type:
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return list
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0])
    if hint in (bool, int, float, str):
        return hint
    raise TypeError(f"unsupported settings type {hint!r}")


def _describe(info: FieldInfo) -> str:
    if info.choices:
        return "one of " + ", ".join(repr(c) for c in info.choices)
    kinds = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
    }
    text = kinds[info.kind]
    if info.min is not None and info.max is not None:
        text += f" from {info.min} to {info.max}"
    elif info.min is not None:
        text += f" >= {info.min}"
    elif info.max is not None:
        text += f" <= {info.max}"
    return text


INT_LIMIT = 2**63
"""TOML integers are 64-bit; tomllib reads longer ones, which later fail deep inside (a seed
torch cannot take, a float conversion that overflows), so they are refused here."""


def shown(value: Any) -> str:
    """A value as an error message shows it: its repr, shortened. An integer too long to
    print (Python refuses ``str()`` of one over 4300 digits) is described by its length."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= INT_LIMIT:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def coerce_value(info: FieldInfo, value: Any, key: str) -> Any:
    """Check one value against its field; returns it converted (int -> float where allowed)."""
    ok = True
    if info.kind is bool:
        ok = isinstance(value, bool)
    elif info.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif info.kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif info.kind is str:
        ok = isinstance(value, str)
    elif info.kind is list:
        ok = isinstance(value, list | tuple)
        value = list(value) if ok else value
    if not ok:
        raise ExperimentError(f"expected {_describe(info)}, got {shown(value)}", key)
    if info.kind is list:
        _check_items(info, value, key)
    if info.kind in (int, float):
        if isinstance(value, int) and abs(value) >= INT_LIMIT:
            raise ExperimentError(
                f"{shown(value)} is out of range (TOML integers are 64-bit); expected "
                f"{_describe(info)}",
                key,
            )
        if info.kind is float:
            value = float(value)
            # NaN passes every range comparison, so it is refused by name (inf too: no
            # setting means "infinitely much").
            if not math.isfinite(value):
                raise ExperimentError(f"{value!r} is not allowed; expected {_describe(info)}", key)
    if info.choices and value not in info.choices:
        raise ExperimentError(f"{shown(value)} is not allowed; expected {_describe(info)}", key)
    if info.kind in (int, float) and (
        (info.min is not None and value < info.min) or (info.max is not None and value > info.max)
    ):
        raise ExperimentError(f"{shown(value)} is out of range; expected {_describe(info)}", key)
    return value


def _check_items(info: FieldInfo, items: list, key: str) -> None:
    """List entries must be plain TOML scalars: a table, a nested list or a date cannot be
    a setting's entry, and would make the experiment impossible to write back to TOML. Which
    scalars an entry may be is the method's business (fusion's ``trainable`` takes true/false
    as well as strings), so only the item kind numbers-versus-text is checked here."""
    numeric = info.item_kind in (int, float)
    for index, item in enumerate(items):
        number = isinstance(item, int | float) and not isinstance(item, bool)
        plain = number or isinstance(item, str | bool)
        finite = not isinstance(item, float) or math.isfinite(item)
        small = not isinstance(item, int) or abs(item) < INT_LIMIT
        if not plain or not finite or not small or (numeric and not number):
            expected = "numbers" if numeric else "strings, numbers or true/false"
            raise ExperimentError(
                f"entry {index + 1} ({shown(item)}) is not allowed; the entries are {expected}",
                key,
            )


def build(cls: type, data: Mapping[str, Any] | None, prefix: str) -> Any:
    """Build a settings dataclass from a mapping, naming the key of any bad value.

    Unknown keys are errors (with a suggestion); missing keys take their defaults.
    """
    data = dict(data or {})
    infos = {info.name: info for info in fields_of(cls)}
    for key in data:
        if key not in infos:
            hint = difflib.get_close_matches(key, list(infos), n=1)
            suggestion = f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""
            raise ExperimentError(
                f"unknown key{suggestion}; allowed keys: {', '.join(infos)}", f"{prefix}{key}"
            )
    values = {name: coerce_value(infos[name], v, f"{prefix}{name}") for name, v in data.items()}
    return cls(**values)


def check_settings_class(cls: Any) -> list[str]:
    """Problems of a settings dataclass as a plugin declares it, one sentence each (empty when
    it is sound): it is a dataclass, every field has a supported type and a default, ``min`` is
    not above ``max``, and each default (and each choice) satisfies the field's own type, range
    and choices.

    Checked when a plugin is loaded, so that a bad declaration is reported against the plugin
    instead of surfacing later as the user's fault: ``init`` would write the bad default into
    an experiment file that ``run`` then refuses, and the window's spin box would clamp it.
    A method's ``validate()`` is not called: a default may legitimately need the user's input
    (a distillation teacher), which the experiment loader asks for by key."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return [f"params must be a dataclass class (made with @dataclass), not {shown(cls)}"]
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:  # noqa: BLE001 - a plugin's annotations may name anything
        return [
            f"the type hints of {cls.__name__} cannot be resolved ({type(exc).__name__}: {exc})"
        ]
    problems = []
    for f in dataclasses.fields(cls):
        where = f"setting {f.name!r}"
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{where} has no default; give one with api.param(default, ...)")
            continue
        try:
            info = _field_info(f, hints[f.name])
        except TypeError:
            problems.append(
                f"{where} has type {getattr(hints[f.name], '__name__', hints[f.name])}; a "
                "setting is bool, int, float, str or a list of them"
            )
            continue
        except Exception as exc:  # noqa: BLE001 - the default_factory is the plugin's code
            problems.append(f"{where}: its default factory raised {type(exc).__name__}: {exc}")
            continue
        if info.min is not None and info.max is not None and info.min > info.max:
            problems.append(f"{where}: its min {info.min!r} is above its max {info.max!r}")
            continue
        plain = dataclasses.replace(info, choices=None)
        for choice in info.choices or ():
            try:
                coerce_value(plain, choice, None)  # type: ignore[arg-type]
            except (ExperimentError, TypeError) as exc:  # TypeError: a min that is no number
                problems.append(
                    f"{where}: its choice {shown(choice)} does not fit its type ({exc})"
                )
        try:
            coerce_value(info, info.default, None)  # type: ignore[arg-type]
        except (ExperimentError, TypeError) as exc:
            problems.append(
                f"{where}: its default {shown(info.default)} does not fit its own declaration "
                f"({exc})"
            )
    if not problems:
        try:
            cls()
        except Exception as exc:  # noqa: BLE001 - __post_init__ is the plugin's code
            problems.append(
                f"{cls.__name__}() with its defaults raised {type(exc).__name__}: {exc}"
            )
    return problems


def to_dict(instance: Any) -> dict[str, Any]:
    """A settings dataclass as a plain mapping (lists copied)."""
    return {f.name: _plain(getattr(instance, f.name)) for f in dataclasses.fields(instance)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- TOML output


_TOML_ESCAPES = {
    **{chr(c): f"\\u{c:04x}" for c in (*range(0x20), 0x7F) if c != 0x09},
    "\n": "\\n",
    '"': '\\"',
    "\\": "\\\\",
}


def toml_value(value: Any) -> str:
    """A Python value written as a TOML value (strings, numbers, booleans, lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # TOML basic strings may not hold control characters other than tab, raw: they are
        # written as escapes, or the file would not load back.
        return '"' + "".join(_TOML_ESCAPES.get(ch, ch) for ch in value) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_table(header: str | None, cls: type, values: Mapping[str, Any], comments: bool) -> str:
    """One TOML table for a settings dataclass, with each field's help as a comment."""
    lines = [f"[{header}]"] if header else []
    for info in fields_of(cls):
        if comments:
            note = info.help
            allowed = _describe(info)
            lines.append(f"# {note} ({allowed})" if note else f"# {allowed}")
        lines.append(f"{info.name} = {toml_value(values.get(info.name, info.default))}")
    return "\n".join(lines) + "\n"
