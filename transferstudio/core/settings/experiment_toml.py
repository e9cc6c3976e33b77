"""Experiment files as TOML text: the generated file, parsing, and updating a user's file.

A new file is generated with every key and its help as a comment (:func:`render_toml`). A file
that exists is updated in place (:func:`update_toml`, on tomlkit's round-trip document): only
the values that changed are rewritten, so what its author wrote (comments, key order, spacing,
``1e-3`` against ``0.001``) stays as it was.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from transferstudio.api import TASK_CLASSIFICATION, ExperimentError
from transferstudio.core.settings import params as P
from transferstudio.core.settings.sections import SECTIONS

SCHEMA_VERSION = 1
"""The version of the experiment file's layout (``schema_version``); older files are upgraded
through ``experiment.MIGRATIONS``."""


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
    task = data.get("task", TASK_CLASSIFICATION)
    if task != TASK_CLASSIFICATION:  # classification files stay as they always were
        parts.append(
            ("# what the experiment learns: classification or detection\n" if comments else "")
            + f"task = {P.toml_value(task)}\n"
        )
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


def update_toml(
    text: str, values: Mapping[str, Any], defaults: Mapping[str, Any], generated: str
) -> str | None:
    """``text`` (an experiment file) rewritten to hold ``values``, changing only what differs.

    A value the file holds is rewritten only when it differs from the new one (its line keeps
    its comment); a key the file leaves out (so, its default from ``defaults``) is added at the
    end of its table only when the new value is not that default; a key of the file that
    ``values`` no longer has is removed with the comment lines just above it. Everything else
    (comments, key order, blank lines, how numbers are written) stays as the author wrote it.
    A new method's ``[method]`` table is taken whole from ``generated`` (the generated file):
    none of the old method's parameters or notes apply to it. None when the file is not TOML
    that tomlkit can keep (the caller then generates the file).
    """
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        doc = tomlkit.parse(text)
        method = doc.get("method")
        if method is None or _plain(method.get("name")) != values["method"]["name"]:
            doc["method"] = tomlkit.parse(generated)["method"]
        _update_table(doc, values, defaults)
        return tomlkit.dumps(doc)
    except (TOMLKitError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _update_table(table, values: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    import tomlkit

    for key, value in values.items():
        default = defaults.get(key) if isinstance(defaults, Mapping) else None
        if isinstance(value, Mapping):
            if key not in table:
                # A section the file leaves out: written only when it holds a non-default value.
                if not _differs(value, default):
                    continue
                table[key] = tomlkit.table()
            _update_table(table[key], value, default if isinstance(default, Mapping) else {})
        elif key in table:
            old = _plain(table[key])
            # 0 and 0.0 are one value to the settings (a whole number is taken for a float
            # field) and stay as written; true and 1 are not (a switch is never a number).
            if old != value or isinstance(old, bool) != isinstance(value, bool):
                table[key] = _item(value)
        elif value != default:
            _append(table, key, _item(value))
    for key in [k for k in table if k not in values]:
        _remove(table, key)


def _differs(values: Mapping[str, Any], defaults: Any) -> bool:
    if not isinstance(defaults, Mapping):
        return True
    return any(
        _differs(v, defaults.get(k)) if isinstance(v, Mapping) else v != defaults.get(k)
        for k, v in values.items()
    )


def _plain(item: Any) -> Any:
    return item.unwrap() if hasattr(item, "unwrap") else item


def _item(value: Any):
    """``value`` as a tomlkit item written as the generated file writes it (``P.toml_value``)."""
    import tomlkit

    return tomlkit.parse(f"v = {P.toml_value(value)}\n")["v"]


def _append(table, key: str, item) -> None:
    """Add ``key`` after the table's last key (tomlkit's own append puts it after the blank
    lines and comments that lead to the next table, which belong to that one)."""
    container = getattr(table, "value", None)
    last = None
    for k, _ in getattr(container, "body", []):
        if k is not None:
            last = k
    if last is None or not hasattr(container, "_insert_after"):
        table[key] = item
    else:
        # tomlkit has no public insert; Container._insert_after keeps its index consistent.
        container._insert_after(last, key, item)


def _remove(table, key: str) -> None:
    """Remove ``key`` and the comment lines directly above it (its help, in a generated file)."""
    from tomlkit.items import Comment, Null

    body = getattr(getattr(table, "value", None), "body", None)
    at = next((i for i, (k, _) in enumerate(body or []) if k is not None and k.key == key), None)
    del table[key]
    if at is None or body[at][0] is not None:
        return  # not laid out as expected: the key is gone, its comments stay
    # tomlkit blanks a removed entry in place ((None, Null())) rather than re-indexing its body;
    # the comments above it are blanked the same way.
    while at > 0 and body[at - 1][0] is None and isinstance(body[at - 1][1], Comment):
        body[at - 1] = (None, Null())
        at -= 1
