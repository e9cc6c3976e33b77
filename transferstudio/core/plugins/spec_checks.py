"""Checks of a plugin's declarations (the specs its hooks return), run once when the plugin is
loaded (:mod:`transferstudio.core.plugins.host`). The test kit (``transferstudio.testing``)
calls the same functions, so the loader and the kit never disagree. Each returns a list of
problems, one sentence each, empty when the spec is sound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from transferstudio.api import (
    ROLE_KEYS,
    BackboneSpec,
    DatasetSpec,
    ExporterSpec,
    MethodSpec,
    Preprocessing,
)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text_field(spec: Any, name: str, *, empty_ok: bool = False) -> list[str]:
    value = getattr(spec, name)
    if not isinstance(value, str) or (not empty_ok and not value.strip()):
        return [f"{name} must be a {'' if empty_ok else 'non-empty '}string, not {value!r}"]
    return []


def _callable_field(spec: Any, name: str, *, optional: bool = False) -> list[str]:
    value = getattr(spec, name)
    if (value is None and optional) or callable(value):
        return []
    return [f"{name} must be a function{' or None' if optional else ''}, not {value!r}"]


def check_preprocessing(pre: Any) -> list[str]:
    """Problems of a backbone's :class:`~transferstudio.api.Preprocessing`: ``resize`` and
    ``crop`` whole numbers within the read limits with ``crop <= resize``, ``mean`` and ``std``
    three finite numbers each with every ``std`` above 0, ``interpolation`` a known name."""
    from transferstudio.core.files.limits import INTERPOLATIONS, MAX_CROP, MAX_RESIZE

    if not isinstance(pre, Preprocessing):
        return [f"preprocessing must be an api.Preprocessing, not {type(pre).__name__}"]
    problems = []
    for name, limit in (("resize", MAX_RESIZE), ("crop", MAX_CROP)):
        value = getattr(pre, name)
        if not _is_count(value) or not 1 <= value <= limit:
            problems.append(
                f"preprocessing.{name} must be a whole number from 1 to {limit}, not {value!r}"
            )
    if not problems and pre.crop > pre.resize:
        problems.append(
            f"preprocessing.crop ({pre.crop}) is larger than preprocessing.resize "
            f"({pre.resize}): the centre crop is taken from the resized image"
        )
    for name in ("mean", "std"):
        values = getattr(pre, name)
        numbers = isinstance(values, tuple | list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in values
        )
        if not numbers or len(values) != 3:
            problems.append(
                f"preprocessing.{name} must be three finite numbers (R, G, B), not {values!r}"
            )
        elif name == "std" and min(values) <= 0:
            problems.append(
                f"preprocessing.std must be above 0 (images are divided by it), not {values!r}"
            )
    if pre.interpolation not in INTERPOLATIONS:
        problems.append(
            f"preprocessing.interpolation {pre.interpolation!r} is not one of "
            + ", ".join(repr(i) for i in INTERPOLATIONS)
        )
    return problems


def check_backbone_spec(spec: BackboneSpec) -> list[str]:
    """Problems of a :class:`~transferstudio.api.BackboneSpec`'s declaration (what can be told
    without building the network; the test kit also builds it)."""
    problems = _text_field(spec, "name") + _text_field(spec, "family", empty_ok=True)
    if not _is_count(spec.feature_dim) or spec.feature_dim < 1:
        problems.append(f"feature_dim must be a positive whole number, not {spec.feature_dim!r}")
    problems += _callable_field(spec, "build") + _text_field(spec, "classifier")
    problems += check_preprocessing(spec.preprocessing)
    files = spec.cache_files
    if not isinstance(files, tuple | list) or not all(isinstance(f, str) for f in files):
        problems.append(f"cache_files must be a tuple of file names, not {files!r}")
    problems += _text_field(spec, "description", empty_ok=True)
    if spec.approx_params is not None and not _is_count(spec.approx_params):
        problems.append(f"approx_params must be a whole number or None, not {spec.approx_params!r}")
    problems += _callable_field(spec, "convert_state_dict", optional=True)
    problems += _callable_field(spec, "packaged_weights", optional=True)
    return problems


def check_method_spec(spec: MethodSpec) -> list[str]:
    """Problems of a :class:`~transferstudio.api.MethodSpec`'s declaration: its fields' types,
    its data roles, and its parameter dataclass (:func:`transferstudio.core.settings.params.check_settings_class`:
    every setting has a default that fits its own type, range and choices)."""
    from transferstudio.core.settings.params import check_settings_class

    problems = _text_field(spec, "name") + _text_field(spec, "description", empty_ok=True)
    problems += _callable_field(spec, "factory")
    for name in ("data_roles", "optional_roles"):
        roles = getattr(spec, name)
        unknown = (
            [r for r in roles if r not in ROLE_KEYS] if isinstance(roles, tuple | list) else [roles]
        )
        if unknown:
            problems.append(
                f"{name} holds {unknown!r}; data roles are "
                + ", ".join(f"api.ROLE_{r.upper()}" for r in ROLE_KEYS)
            )
    if isinstance(spec.data_roles, tuple | list) and not spec.data_roles:
        problems.append("data_roles is empty; a method reads at least one role (api.ROLE_LABELED)")
    for name in ("support_set", "distributed"):
        if not isinstance(getattr(spec, name), bool):
            problems.append(f"{name} must be True or False, not {getattr(spec, name)!r}")
    if spec.baseline is not None and not isinstance(spec.baseline, str):
        problems.append(f"baseline must be a method id or None, not {spec.baseline!r}")
    return problems + check_settings_class(spec.params)


def check_exporter_spec(spec: ExporterSpec) -> list[str]:
    """Problems of an :class:`~transferstudio.api.ExporterSpec`'s declaration."""
    problems = _text_field(spec, "format") + _text_field(spec, "description", empty_ok=True)
    if not isinstance(spec.suffix, str) or not spec.suffix.startswith(".") or len(spec.suffix) < 2:
        problems.append(f"suffix must be a file suffix such as '.onnx', not {spec.suffix!r}")
    problems += _callable_field(spec, "export")
    problems += _callable_field(spec, "verify", optional=True)
    return problems + _callable_field(spec, "load", optional=True)


def check_dataset_spec(spec: DatasetSpec) -> list[str]:
    """Problems of a :class:`~transferstudio.api.DatasetSpec`'s declaration."""
    problems = _text_field(spec, "name") + _text_field(spec, "description", empty_ok=True)
    problems += _callable_field(spec, "detect") + _callable_field(spec, "list_samples")
    return problems + _callable_field(spec, "write_example", optional=True)


SPEC_CHECKS: dict[type, Callable[[Any], list[str]]] = {
    BackboneSpec: check_backbone_spec,
    MethodSpec: check_method_spec,
    ExporterSpec: check_exporter_spec,
    DatasetSpec: check_dataset_spec,
}


def check_spec(spec: Any) -> list[str]:
    """Problems of any spec a registration hook returns (see the ``check_*_spec`` functions)."""
    check = next((c for cls, c in SPEC_CHECKS.items() if isinstance(spec, cls)), None)
    if check is None:
        return [f"{type(spec).__name__} is not a spec type"]
    try:
        return check(spec)
    except Exception as exc:  # noqa: BLE001 - a field of an unexpected type the checks missed
        return [f"could not be checked ({type(exc).__name__}: {exc})"]
