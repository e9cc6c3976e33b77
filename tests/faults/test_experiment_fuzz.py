"""Property-based fuzzing of the experiment loader: whatever a file or ``--set`` holds, loading
gives an Experiment or an ExperimentError whose message names the key at fault, never another
exception from deep inside; and what loads can be written back to TOML and loads the same.

The plain tests at the end pin each bug the fuzzer found, with the minimal input it reported.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from tests.helpers import tiny_experiment
from transferstudio.api import ExperimentError
from transferstudio.core.plugins.host import PluginHost, load_plugins
from transferstudio.core.settings import experiment as X
from transferstudio.core.settings.params import fields_of

FUZZ = settings(
    max_examples=300,
    deadline=None,
    # No example database: it would write a .hypothesis folder into the checkout.
    database=None,
    # The function-scoped fixtures (the autouse workspace isolation, tmp_path) hold nothing an
    # example changes: each example overwrites its one file.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@functools.cache
def _host() -> PluginHost:
    return load_plugins(autoload=False)


def _method_params(name: str) -> type:
    return _host().method_params(name)


METHODS = sorted(_host().methods)
TOP_LEVEL = ("schema_version", "name", "method", *X.SECTIONS)
KNOWN_KEYS = sorted(
    {*TOP_LEVEL, "params"}
    | {info.name for cls in X.SECTIONS.values() for info in fields_of(cls)}
    | {info.name for m in METHODS for info in fields_of(_method_params(m))}
)
"""Every key name the loader knows, so that random documents often hit real keys."""


# --------------------------------------------------------------------------- TOML values


_ESCAPES = {"\\": "\\\\", '"': '\\"'}


def _toml_string(text: str) -> str:
    """A TOML basic string (control characters escaped: TOML refuses them raw)."""
    escaped = (
        _ESCAPES.get(ch, f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch)
        for ch in text
    )
    return '"' + "".join(escaped) + '"'


def _toml_value(value: Any) -> str:
    """Any TOML value, tables inline, so that a whole random document is one line per key."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        pairs = (f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    raise TypeError(value)


def _toml_document(doc: Mapping[str, Any]) -> str:
    return "".join(f"{_toml_string(k)} = {_toml_value(v)}\n" for k, v in doc.items())


keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=12)
scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),  # far past TOML's 64 bits
    st.floats(),  # NaN and infinities included
    st.text(max_size=20),
    st.sampled_from(["", "fine-tune", "resnet18", "cpu", "adamw", "3:backbone.layer4"]),
    st.datetimes(timezones=st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=-7))])),
    st.dates(),
    st.times(),
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def _field_values(info) -> st.SearchStrategy:
    """Values aimed at one setting: its edges and its type, mixed with anything at all."""
    aimed = {
        bool: st.booleans(),
        int: st.integers(min_value=-(2**70), max_value=2**70),
        float: st.floats() | st.integers(min_value=-(2**70), max_value=2**70),
        str: st.text(max_size=20),
        list: st.lists(scalars, max_size=4),
    }[info.kind]
    edges = [e for e in (info.min, info.max) if e is not None]
    edges += [e + d for e in edges for d in (-1, -1e-9, 1e-9, 1)]
    if info.choices:
        edges += list(info.choices)
    return aimed | toml_values | (st.sampled_from(edges) if edges else aimed)


# --------------------------------------------------------------------------- the checks


def _load_or_refuse(raw: Mapping[str, Any]) -> Any:
    """Load ``raw``: the Experiment, or the ExperimentError (any other exception propagates).
    A loaded experiment must write back to TOML that loads the same."""
    try:
        exp = X.from_mapping(raw, _method_params, source="fuzz.toml")
    except ExperimentError as exc:
        assert str(exc).strip(), "an empty message"
        event("refused")  # --hypothesis-show-statistics shows how often each side is reached
        return exc
    again = X.from_mapping(tomllib.loads(exp.to_toml()), _method_params)
    assert again.to_dict() == exp.to_dict()
    event("loaded")
    return exp


def _assert_names(exc: ExperimentError, key: str, table: str | None = None) -> None:
    """The message names ``key``; a method's own cross-checks (one parameter against another)
    may name another key of its ``[method.params]`` instead."""
    message = str(exc)
    if table and key.startswith(table) and exc.key and exc.key.startswith(table):
        assert exc.key in message
        return
    assert key in message, message


def _base(method: str) -> dict[str, Any]:
    """A valid experiment of ``method`` as the mapping a file holds (a fresh copy)."""
    return copy.deepcopy(_valid_experiment(method))


@functools.cache
def _valid_experiment(method: str) -> dict[str, Any]:
    if method == "fine-tune":
        return tiny_experiment(Path("imgs")).to_dict()
    return X.new_experiment(method, _method_params(method), data_path="imgs").to_dict()


def _leaves(raw: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in raw.items():
        dotted = prefix + key
        out.append(dotted)
        if isinstance(value, Mapping):
            out += _leaves(value, dotted + ".")
    return out


def _tables(raw: Mapping[str, Any]) -> list[str]:
    return ["", *(k for k in _leaves(raw) if isinstance(_get(raw, k), Mapping))]


def _get(raw: Mapping[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split(".") if dotted else []:
        node = node[part]
    return node


def _parent_and_leaf(raw: dict[str, Any], dotted: str) -> tuple[dict[str, Any], str]:
    *parents, leaf = dotted.split(".")
    return _get(raw, ".".join(parents)), leaf


# --------------------------------------------------------------------------- 1. any text or bytes

toml_ish_text = st.text(alphabet=st.sampled_from(list("[]{}=.\"',#\n \t\\abc_lr019-:+eE")))


@FUZZ
@given(text=st.text() | toml_ish_text)
def test_any_text_parses_or_is_refused(text):
    try:
        raw = X.load_toml_text(text, "fuzz.toml")
    except ExperimentError as exc:
        assert "fuzz.toml" in str(exc)
        return
    outcome = _load_or_refuse(raw)
    if isinstance(outcome, ExperimentError) and outcome.key is not None:
        assert _at_fault_in(raw, outcome.key), outcome


@FUZZ
@given(
    data=st.binary()
    | st.builds(
        lambda text, junk, at: text[:at] + junk + text[at:],
        st.sampled_from(['name = "x"\n', "[train]\nlr = 0.1\n", ""]).map(str.encode),
        st.binary(min_size=1, max_size=4),
        st.integers(min_value=0, max_value=12),
    )
)
def test_any_bytes_in_a_file_load_or_are_refused(tmp_path, data):
    path = tmp_path / "exp.toml"
    path.write_bytes(data)
    try:
        X.load(path, _method_params)
    except ExperimentError as exc:
        assert str(exc).strip()


# --------------------------------------------------------------------------- 2. random TOML


def _section_documents() -> st.SearchStrategy:
    """Documents shaped like experiments (real sections, real and random keys inside)."""
    section = st.dictionaries(keys, toml_values, max_size=5)
    method = st.fixed_dictionaries(
        {},
        optional={
            "name": st.sampled_from(METHODS) | toml_values,
            "params": st.dictionaries(keys, toml_values, max_size=5) | toml_values,
        },
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "schema_version": st.sampled_from([0, 1, 2, -1, 2**64]) | toml_values,
            "name": st.text(max_size=10) | toml_values,
            "method": method | toml_values,
            **{name: section | toml_values for name in X.SECTIONS},
        },
    )


@FUZZ
@given(doc=st.dictionaries(keys, toml_values, max_size=6) | _section_documents())
def test_any_toml_document_loads_or_names_the_key(doc):
    text = _toml_document(doc)
    raw = X.load_toml_text(text, "fuzz.toml")  # valid TOML by construction: must parse
    outcome = _load_or_refuse(raw)
    if isinstance(outcome, ExperimentError) and outcome.key is not None:
        assert _at_fault_in(raw, outcome.key), outcome


def _at_fault_in(raw: Mapping[str, Any], key: str) -> bool:
    """Whether an error's dotted ``key`` is one the document holds (keys may contain dots
    themselves), or one it lacks and must have: the method's name, or a method parameter a
    method's cross-check asks for."""
    if key == "method.name" or key.startswith("method.params."):
        return True
    return _holds(raw, key)


def _holds(node: Any, dotted: str) -> bool:
    if not isinstance(node, Mapping):
        return False
    return any(
        dotted == k or (dotted.startswith(k + ".") and _holds(v, dotted[len(k) + 1 :]))
        for k, v in node.items()
    )


# --------------------------------------------------------------------------- 3. mutations


@FUZZ
@given(method=st.sampled_from(METHODS), data=st.data())
def test_a_replaced_value_loads_or_is_refused_naming_its_key(method, data):
    raw = _base(method)
    key = data.draw(st.sampled_from(_leaves(raw)), label="key")
    parent, leaf = _parent_and_leaf(raw, key)
    parent[leaf] = data.draw(toml_values, label="value")
    outcome = _load_or_refuse(raw)
    if isinstance(outcome, ExperimentError):
        _assert_names(outcome, key, "method.params")


@FUZZ
@given(method=st.sampled_from(METHODS), data=st.data())
def test_a_deleted_key_takes_its_default_or_is_refused_naming_it(method, data):
    raw = _base(method)
    key = data.draw(st.sampled_from(_leaves(raw)), label="key")
    parent, leaf = _parent_and_leaf(raw, key)
    del parent[leaf]
    outcome = _load_or_refuse(raw)
    if isinstance(outcome, ExperimentError):
        # Only the method's name is required: deleting it, or its table, is refused.
        assert key in ("method", "method.name"), outcome
        assert "method.name" in str(outcome)


def _typo(data, word: str) -> str:
    """One keyboard slip in ``word``: a letter dropped, doubled, swapped or replaced."""
    i = data.draw(st.integers(min_value=0, max_value=len(word) - 2), label="at")
    slip = data.draw(st.sampled_from(["drop", "double", "swap", "replace"]), label="slip")
    if slip == "drop":
        return word[:i] + word[i + 1 :]
    if slip == "double":
        return word[:i] + word[i] + word[i:]
    if slip == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[:i] + data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz")) + word[i + 1 :]


@FUZZ
@given(method=st.sampled_from(METHODS), data=st.data())
def test_an_unknown_key_is_refused_naming_it_and_suggesting_the_close_one(method, data):
    raw = _base(method)
    table = data.draw(st.sampled_from(_tables(raw)), label="table")
    node = _get(raw, table)
    near = data.draw(st.sampled_from([k for k in node if len(k) >= 4] or [None]), label="near")
    slipped = near is not None and data.draw(st.booleans(), label="slipped")
    new = _typo(data, near) if slipped else data.draw(st.text(), label="new")
    assume(new not in node)
    node[new] = data.draw(toml_values, label="value")
    outcome = _load_or_refuse(raw)
    assert isinstance(outcome, ExperimentError), "an unknown key was accepted"
    dotted = f"{table}.{new}" if table else new
    assert outcome.key == dotted
    if dotted.strip():
        assert str(outcome).startswith(f"{dotted}: ")
    else:  # a blank key must still be visible
        assert repr(new) in str(outcome)
    if slipped:  # one slip in a key of 4 letters or more is always close enough to suggest
        assert "did you mean" in str(outcome), outcome


@FUZZ
@given(
    method=st.sampled_from(METHODS),
    table=st.sampled_from([*X.SECTIONS, "method", "method.params"]),
    value=scalars | st.lists(scalars, max_size=3),
)
def test_a_section_replaced_by_a_scalar_is_refused_naming_it(method, table, value):
    raw = _base(method)
    parent, leaf = _parent_and_leaf(raw, table)
    parent[leaf] = value
    outcome = _load_or_refuse(raw)
    assert isinstance(outcome, ExperimentError)
    assert table in str(outcome)


@FUZZ
@given(method=st.sampled_from(METHODS), data=st.data())
def test_every_methods_parameters_load_or_are_refused_naming_one(method, data):
    raw = _base(method)
    infos = fields_of(_method_params(method))
    chosen = data.draw(
        st.lists(st.sampled_from(infos), min_size=1, max_size=4, unique_by=lambda i: i.name)
    )
    for info in chosen:
        raw["method"]["params"][info.name] = data.draw(_field_values(info), label=info.name)
    outcome = _load_or_refuse(raw)
    if isinstance(outcome, ExperimentError):
        assert outcome.key and outcome.key.startswith("method.params."), outcome
        assert str(outcome).startswith(outcome.key + ": ")


@FUZZ
@given(data=st.data())
def test_every_setting_loads_or_is_refused_naming_it(data):
    raw = _base("fine-tune")
    section = data.draw(st.sampled_from(list(X.SECTIONS)))
    info = data.draw(st.sampled_from(fields_of(X.SECTIONS[section])))
    raw[section][info.name] = data.draw(_field_values(info), label="value")
    outcome = _load_or_refuse(raw)
    if isinstance(outcome, ExperimentError):
        assert str(outcome).startswith(f"{section}.{info.name}: "), outcome


# --------------------------------------------------------------------------- 4. --set overrides

real_keys = st.sampled_from(_leaves(_base("fine-tune")))
dotted_keys = st.one_of(
    real_keys,
    st.builds(lambda real, more: f"{real}.{more}", real_keys, keys),  # inside a value or table
    st.lists(keys, min_size=1, max_size=4).map(".".join),
)
override_values = st.one_of(
    st.text(max_size=20),
    toml_values.map(_toml_value),
    # What people type: most of these fit some setting, so that overrides also load.
    st.sampled_from(["3", "0", "0.5", "1e-3", "true", "'x'", "cpu", "[]", "['a']", "resnet34"]),
)


@FUZZ
@given(
    overrides=st.lists(
        st.one_of(
            st.builds(lambda k, v: f"{k}={v}", real_keys, override_values),
            st.builds(lambda k, v: f"{k}={v}", dotted_keys, override_values),
            st.text(max_size=30),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_set_overrides_load_or_are_refused_naming_their_key(overrides):
    try:
        raw = X.apply_overrides(_base("fine-tune"), overrides)
    except ExperimentError as exc:
        if exc.key is None:  # not key=value at all: the message quotes the override
            assert any(repr(o) in str(exc) for o in overrides), exc
        else:
            assert any(_within(_override_key(o), exc.key) for o in overrides), exc
        return
    outcome = _load_or_refuse(raw)
    if not isinstance(outcome, ExperimentError) or len(overrides) > 1:
        return
    key = _override_key(overrides[0])
    if key in ("method", "method.name"):
        return  # another method: the old method's parameters may be refused instead
    assert outcome.key and (_within(key, outcome.key) or _within(outcome.key, key)), outcome


def _override_key(override: str) -> str:
    """The dotted key of ``key=value`` as the loader reads it (spaces around dots dropped)."""
    return ".".join(part.strip() for part in override.partition("=")[0].split("."))


def _within(key: str, table: str) -> bool:
    """Whether dotted ``key`` is ``table`` or a key inside it."""
    return key == table or key.startswith(table + ".")


# --------------------------------------------------------------------------- regressions
# Each bug the fuzzer (or its first probes) found, with the minimal input; before the fix the
# exception named in the comment escaped from the place named.


def _fine_tune_with(section: str, key: str, value: Any) -> dict[str, Any]:
    raw = _base("fine-tune")
    _get(raw, section)[key] = value
    return raw


def test_an_integer_too_long_for_python_is_a_toml_error():
    # ValueError from tomllib's int() (Python refuses to parse over 4300 digits).
    with pytest.raises(ExperimentError, match="exp.toml is not usable TOML: .*over 4300 digits"):
        X.load_toml_text("a = 1" + "0" * 4300, "exp.toml")


def test_arrays_nested_too_deeply_are_a_toml_error():
    # RecursionError from tomllib's recursive parser.
    with pytest.raises(ExperimentError, match="exp.toml is not usable TOML: .*nested too deeply"):
        X.load_toml_text("a = " + "[" * 1000 + "]" * 1000, "exp.toml")


def test_an_integer_beyond_float_range_is_out_of_range():
    # OverflowError from float() in params.coerce_value. The fuzzer's example was a 402-digit
    # integer for train.lr; 2**1024 is the smallest that overflows.
    with pytest.raises(ExperimentError, match=r"^train.lr: .* is out of range"):
        X.from_mapping(_fine_tune_with("train", "lr", 2**1024), _method_params)


@pytest.mark.parametrize("dotted", ["train.epochs", "schema_version"])
def test_an_integer_too_long_to_print_is_described_not_printed(dotted):
    # ValueError from repr() while writing the error message (params.coerce_value, migrate).
    section, _, key = dotted.rpartition(".")
    with pytest.raises(ExperimentError, match=rf"^{dotted}: .*an integer of about 4301 digits"):
        X.from_mapping(_fine_tune_with(section, key, 10**4300), _method_params)


def test_an_integer_beyond_64_bits_is_refused():
    # TOML integers are 64-bit; train.seed = 2**64 loaded, then torch.manual_seed raised
    # "ValueError: Overflow when unpacking long long" when the run started.
    with pytest.raises(ExperimentError, match=r"^train.seed: .* is out of range"):
        X.from_mapping(_fine_tune_with("train", "seed", 2**64), _method_params)


def test_nan_is_refused():
    # augment.crop_scale_min = nan passed the range check (every comparison with NaN is false)
    # and loaded.
    with pytest.raises(ExperimentError, match=r"^augment.crop_scale_min: nan is not allowed"):
        X.from_mapping(_fine_tune_with("augment", "crop_scale_min", math.nan), _method_params)


@pytest.mark.parametrize("section, key", [("method.params", "freeze"), ("data", "label_columns")])
def test_a_date_in_a_list_setting_is_refused(section, key):
    # Loaded; to_toml() then raised "TypeError: cannot write datetime.date(2000, 1, 1) as TOML"
    # (params.toml_value), e.g. when a run wrote its experiment.toml.
    with pytest.raises(ExperimentError, match=rf"^{section}.{key}: entry 1 .* is not allowed"):
        X.from_mapping(_fine_tune_with(section, key, [dt.date(2000, 1, 1)]), _method_params)


def test_control_characters_in_strings_are_written_back_as_escapes():
    # data.path = "\x1f" loaded, but to_toml() wrote it raw: the file did not load back
    # (TOMLDecodeError "Illegal character '\x1f'").
    exp = X.from_mapping(_fine_tune_with("data", "path", "\x1f\r\x7f\t"), _method_params)
    assert tomllib.loads(exp.to_toml())["data"]["path"] == "\x1f\r\x7f\t"


@pytest.mark.parametrize(
    "table, key, suggestion",
    [("", "chema_version", "'schema_version'"), ("method", "ame", "'method.name'")],
)
def test_unknown_section_and_method_keys_suggest_the_close_one(table, key, suggestion):
    # No suggestion was given for the top level and the [method] table (sections had one).
    raw = _base("fine-tune")
    _get(raw, table)[key] = []
    with pytest.raises(ExperimentError, match=f"did you mean {suggestion}"):
        X.from_mapping(raw, _method_params)


def test_a_blank_top_level_key_is_shown():
    # "" = [] gave "unknown section in ...": the key at fault was nowhere in the message.
    with pytest.raises(ExperimentError, match="unknown section '' in"):
        X.from_mapping({**_base("fine-tune"), "": []}, _method_params)


def test_set_inside_a_value_names_the_dotted_key():
    # Was "path: is not a table; cannot set a key inside it".
    with pytest.raises(ExperimentError, match=r"^data.path: is not a table"):
        X.apply_overrides(_base("fine-tune"), ["data.path.adapt_logits="])


def test_set_with_an_empty_key_part_is_refused_as_malformed():
    # Was "unknown section in experiment; allowed: ..." (a section named "" was set).
    with pytest.raises(ExperimentError, match=r"'.adapt_logits=': the key has an empty part"):
        X.apply_overrides(_base("fine-tune"), [".adapt_logits="])


@pytest.mark.parametrize("value", ["1" + "0" * 4300, "[" * 1000 + "]" * 1000])
def test_set_values_tomllib_cannot_read_are_taken_as_text(value):
    # ValueError / RecursionError from tomllib escaped apply_overrides; now the value is the
    # bare text, which the setting then refuses naming its key.
    raw = X.apply_overrides(_base("fine-tune"), [f"train.seed={value}"])
    with pytest.raises(ExperimentError, match=r"^train.seed: expected an integer"):
        X.from_mapping(raw, _method_params)


def test_a_file_starting_with_a_byte_order_mark_loads(tmp_path):
    # Windows editors may write one; it was "Invalid statement (at line 1, column 1)".
    path = tmp_path / "exp.toml"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + X.new_experiment("fine-tune", _method_params("fine-tune")).to_toml().encode()
    )
    assert X.load(path, _method_params).method == "fine-tune"


def test_a_number_as_a_freeze_pattern_is_refused_before_the_run():
    # freeze = [1] loaded, then fine-tune failed at run time in freeze.path_matches
    # (AttributeError: 'int' object has no attribute ...).
    with pytest.raises(ExperimentError, match=r"^method.params.freeze: entry 1 \(1\) is not a"):
        X.from_mapping(_fine_tune_with("method.params", "freeze", [1]), _method_params)


def test_an_unfreeze_epoch_of_non_ascii_digits_gets_the_format_message():
    # "²".isdigit() is True, so int("²") raised "invalid literal for int()" as the message.
    with pytest.raises(ExperimentError, match=r"^method.params.unfreeze: .*'EPOCH:PATTERN'"):
        X.from_mapping(
            _fine_tune_with("method.params", "unfreeze", ["²:backbone.layer4"]), _method_params
        )
