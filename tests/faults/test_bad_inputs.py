"""Bad inputs of issue 17 (points 6 and 7): each one a clear message naming the file, key or
value and saying what to do, or simply working; never a traceback.

The corpus is generated here, not committed: :data:`DATA_CASES` (files in a data folder or CSV),
:data:`SETTING_CASES` (experiment settings), :data:`ARGV_CASES` (command lines), plus the
hostile class names of :data:`HOSTILE_CLASSES`, which go through a real run, ``runs show``,
``export`` and ``predict --csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pytest

from tests.helpers import tiny_experiment, write_class_images
from transferstudio.api import DataError, ExperimentError
from transferstudio.core.data import loaders as D
from transferstudio.core.data.roles import scan_multilabel
from transferstudio.core.files.safe_text import csv_cell, printable
from transferstudio.core.settings import experiment as X

# --------------------------------------------------------------------------- data corpus


@dataclass(frozen=True)
class DataCase:
    """A data source made bad by ``write(root) -> path to scan``; the scan raises a DataError
    matching ``refused``, or skips a file with a reason matching ``skipped``."""

    name: str
    write: Callable[[Path], Path]
    refused: str = ""
    skipped: str = ""
    multilabel: bool = False  # scanned as a multi-task CSV (label columns shape, tone)


def _images(root: Path) -> Path:
    return write_class_images(root / "images", {"cat": 4, "dog": 4}, size=16)


def _non_utf8_file(root: Path) -> Path:
    folder = _images(root)
    # Linux keeps any bytes in a name: this one is Latin-1 "café.png", not UTF-8.
    good = folder / "cat" / "cat_000.png"
    os.link(good, os.path.join(os.fsencode(folder / "cat"), b"caf\xe9.png"))
    return folder


def _non_utf8_class(root: Path) -> Path:
    folder = _images(root)
    os.rename(folder / "dog", os.path.join(os.fsencode(folder), b"d\xf6g"))
    return folder


def _csv(root: Path, lines: list[bytes], name: str = "labels.csv") -> Path:
    _images(root)
    path = root / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _rows(n: int = 4) -> list[bytes]:
    return [f"images/{c}/{c}_{i:03d}.png,{c}".encode() for c in ("cat", "dog") for i in range(n)]


def _multilabel(root: Path, lines: list[bytes]) -> Path:
    rows = [
        f"images/{c}/{c}_{i:03d}.png,{c},{t}".encode()
        for c in ("cat", "dog")
        for i, t in enumerate(["dark", "light"] * 2)
    ]
    return _csv(root, [b"path,shape,tone", *rows, *lines])


DATA_CASES = [
    DataCase("file name not UTF-8", _non_utf8_file, skipped=r"caf\\xe9\.png"),
    DataCase("class folder name not UTF-8", _non_utf8_class, refused=r"class folder 'd\\xf6g'"),
    DataCase(
        "Latin-1 CSV",
        lambda r: _csv(r, [b"path,label", *_rows(), b"images/cat/cat_000.png,caf\xe9"]),
        refused=r"labels\.csv is not UTF-8 text at line 10; save it as UTF-8",
    ),
    DataCase(
        "CSV field over the csv module's limit",
        lambda r: _csv(r, [*_rows(), b"images/" + b"x" * 140_000 + b".png,cat"]),
        refused=r"labels\.csv line 9: a field is longer than 131,072 characters",
    ),
    DataCase(
        "CSV quote left open",
        lambda r: _csv(r, [*_rows(), b'"images/cat/cat_000.png,cat', *[b"y" * 100] * 2000]),
        refused=r"labels\.csv line 9: a field is longer than .* quote",
    ),
    DataCase(
        "CSV with a NUL byte",
        lambda r: _csv(r, [*_rows(), b"images/cat/cat\x00.png,cat"]),
        skipped=r"embedded null byte",  # Python 3.11's csv reads NUL; the image check skips it
    ),
    DataCase(
        "same image under two labels",
        lambda r: _csv(r, [*_rows(), b"./images/cat/cat_001.png,dog"]),
        refused=r"'./images/cat/cat_001.png' is labelled 'cat' at line 2 and 'dog' at line 9",
    ),
    DataCase(
        "same image listed twice",
        lambda r: _csv(r, [*_rows(), b"images/cat/cat_001.png,cat"]),
        skipped=r"repeats line 2; used once",
    ),
    DataCase(
        "multi-task CSV not UTF-8",
        lambda r: _multilabel(r, [b"images/cat/cat_000.png,caf\xe9,dark"]),
        refused=r"labels\.csv is not UTF-8 text at line 10",
        multilabel=True,
    ),
    DataCase(
        "multi-task CSV field over the limit",
        lambda r: _multilabel(r, [b"images/cat/cat_000.png,cat," + b"t" * 140_000]),
        refused=r"labels\.csv line 10: a field is longer than 131,072 characters",
        multilabel=True,
    ),
    DataCase(
        "multi-task image under two label sets",
        lambda r: _multilabel(r, [b"images/cat/cat_000.png,dog,dark"]),
        refused=r"'images/cat/cat_000.png' is labelled \('cat', 'dark'\) at line 2 and "
        r"\('dog', 'dark'\) at line 10",
        multilabel=True,
    ),
]


def _scan(case: DataCase, tmp_path: Path, host) -> D.ScanResult:
    path = case.write(tmp_path)
    settings = X.DataSettings(val_split=0.25, label_columns=["shape", "tone"])
    if case.multilabel:
        return scan_multilabel(path, settings)[0]
    return D.scan(D.choose_source(host.datasets, settings, path), settings, path, workers=2)


@pytest.mark.parametrize("case", [c for c in DATA_CASES if c.refused], ids=lambda c: c.name)
def test_bad_data_is_refused_naming_the_file(case, tmp_path, host):
    with pytest.raises(DataError, match=case.refused) as caught:
        _scan(case, tmp_path, host)
    assert "Traceback" not in str(caught.value)


@pytest.mark.parametrize("case", [c for c in DATA_CASES if c.skipped], ids=lambda c: c.name)
def test_odd_entries_are_skipped_with_a_reason_and_the_rest_is_usable(case, tmp_path, host):
    result = _scan(case, tmp_path, host)
    assert any(re.search(case.skipped, f"{p}: {r}") for p, r in result.skipped), result.skipped
    # What a run writes from the scan (splits.json, the log, the fingerprint) must not fail
    # on the skipped names.
    json.dumps(result.to_dict(), ensure_ascii=False).encode("utf-8")
    result.report().encode("utf-8")
    assert sum(len(v) for v in result.splits.values()) == 8


def test_non_utf8_file_name_does_not_fail_a_run(tmp_path, host):
    """The issue's crash came after the run was registered: the run now completes."""
    from transferstudio.core.training.engine import run_experiment

    data = _non_utf8_file(tmp_path)
    result = run_experiment(tiny_experiment(data, train__epochs=1), host, workspace=tmp_path / "ws")
    assert result.status == "completed", result.message
    splits = json.loads((Path(result.folder) / D.SPLITS_FILE).read_text(encoding="utf-8"))
    assert all(b"\xe9" not in os.fsencode(p) for s in splits["splits"].values() for p, _ in s)
    assert "caf\\xe9.png" in (Path(result.folder) / "log.txt").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- settings corpus


@dataclass(frozen=True)
class SettingCase:
    """Experiment overrides (``section__key``) refused at load, naming ``key`` and ``says``."""

    name: str
    overrides: dict
    key: str
    says: str


SETTING_CASES = [
    SettingCase(
        "freeze regex that does not compile",
        {"method__params__freeze": ["re:("]},
        "method.params.freeze",
        r"pattern 're:\(' is not a valid regular expression",
    ),
    SettingCase(
        "freeze regex nested too deeply",
        {"method__params__freeze": ["re:" + "(" * 5000]},
        "method.params.freeze",
        r"not a valid regular expression \(RecursionError\)",
    ),
    SettingCase(
        "unfreeze regex that does not compile",
        {"method__params__unfreeze": ["2:re:["]},
        "method.params.unfreeze",
        r"pattern 're:\[' is not a valid regular expression",
    ),
    SettingCase(
        "val and test splits sum over 1",
        {"data__val_split": 0.9, "data__test_split": 0.9},
        "data.val_split",
        r"data\.val_split \(0\.9\) \+ data\.test_split \(0\.9\) = 1\.8 leaves nothing",
    ),
    SettingCase(
        "val and test splits sum to 1 in floating point",
        {"data__val_split": 0.7, "data__test_split": 0.3},
        "data.val_split",
        r"less than 1",
    ),
    SettingCase(
        "image size 1",
        {"data__image_size": 1},
        "data.image_size",
        r"1 pixels is too small .* use 0 .* or at least 16",
    ),
    SettingCase(
        "data path of an unknown user",
        {"data__path": "~nosuchuser-ts17/x"},
        "data.path",
        r"'~nosuchuser-ts17/x' starts with '~nosuchuser-ts17', but this computer has no such",
    ),
    SettingCase(
        "weights path of an unknown user",
        {"model__weights": "~nosuchuser-ts17/w.pth"},
        "model.weights",
        r"no such user",
    ),
    SettingCase(
        "target path of an unknown user",
        {"data__target_path": "~nosuchuser-ts17"},
        "data.target_path",
        r"no such user",
    ),
]


@pytest.mark.parametrize("case", SETTING_CASES, ids=lambda c: c.name)
def test_bad_setting_is_refused_at_load_naming_its_key(case, tmp_path):
    with pytest.raises(ExperimentError, match=case.says) as caught:
        tiny_experiment(tmp_path, **case.overrides)
    assert caught.value.key == case.key
    assert str(caught.value).startswith(case.key + ": ")


@pytest.mark.parametrize(
    "overrides",
    [
        {"data__image_size": 16},
        {"data__image_size": 0},
        {"data__val_split": 0.6, "data__test_split": 0.3},
    ],
    ids=str,
)
def test_settings_at_the_limits_still_load(overrides, tmp_path):
    tiny_experiment(tmp_path, **overrides)


def test_set_with_bytes_that_are_not_utf8_is_refused(tmp_path):
    raw = tiny_experiment(tmp_path).to_dict()
    item = os.fsdecode(b"name=caf\xe9")  # how Python hands a Latin-1 terminal's argv over
    with pytest.raises(ExperimentError, match=r"--set name=caf\\udce9: holds bytes that are not"):
        X.apply_overrides(raw, [item])


# --------------------------------------------------------------------------- command lines


def _cli(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD": "1"}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "transferstudio", *args], capture_output=True, cwd=cwd, env=env
    )


ARGV_CASES = [
    (
        ["predict", "model.tsmodel", "x.png", "--batch-size", "0"],
        "--batch-size: must be at least 1",
    ),
    (
        ["predict", "model.tsmodel", "x.png", "--batch-size", "-1"],
        "--batch-size: must be at least 1",
    ),
    (["predict", "model.tsmodel", "x.png", "--top-k", "0"], "--top-k: must be at least 1"),
    (["lr-find", "exp.toml", "--steps", "0"], "--steps: must be at least 1"),
    (["--workspace", "~nosuchuser-ts17/ws", "runs"], "--workspace: '~nosuchuser-ts17/ws' starts"),
    (["init", "--method", "fine-tune", "--data", "~nosuchuser-ts17"], "--data: '~nosuchuser-ts17'"),
]


@pytest.mark.parametrize(
    "argv,says", ARGV_CASES, ids=lambda a: " ".join(a) if isinstance(a, list) else ""
)
def test_bad_command_line_is_a_message_not_a_traceback(argv, says, tmp_path, capsys):
    from transferstudio.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and says in err, err
    assert "Traceback" not in err


def test_set_from_a_latin1_terminal_is_a_message(tmp_path):
    """Real argv bytes, as a Latin-1 terminal sends them."""
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text(tiny_experiment(tmp_path).to_toml(), encoding="utf-8")
    out = _cli("--workspace", str(tmp_path / "ws"), "run", str(exp_file), "--set", b"name=caf\xe9")
    assert out.returncode == 2, out.stderr
    assert b"holds bytes that are not UTF-8" in out.stderr and b"Traceback" not in out.stderr


def test_a_run_under_a_relative_workspace_exports_from_another_folder(tmp_path, make_images):
    """``--workspace ../ws`` was stored relative in the run index: from any other folder the
    run's checkpoint was not found ("has no checkpoint yet")."""
    exp_file = tmp_path / "exp.toml"
    exp = tiny_experiment(make_images({"a": 4, "b": 4}), train__epochs=1)
    exp_file.write_text(exp.to_toml(), encoding="utf-8")
    for name in ("here", "elsewhere"):
        (tmp_path / name).mkdir()
    run = _cli("--workspace", "../ws", "run", str(exp_file), cwd=tmp_path / "here")
    assert run.returncode == 0, run.stderr
    record = json.loads(_cli("--workspace", str(tmp_path / "ws"), "runs", "--json").stdout)[0]
    assert Path(record["folder"]) == tmp_path / "ws" / "runs" / record["id"]
    exported = _cli(
        "--workspace",
        str(tmp_path / "ws"),
        "export",
        record["id"],
        "-o",
        "m.safetensors",
        cwd=tmp_path / "elsewhere",
    )
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "elsewhere" / "m.safetensors").is_file()


# --------------------------------------------------------------------------- hostile names


HOSTILE_CLASSES = ["\x1b]0;pwned\x07\x1b[2Jevil", "=cmd|' \\C calc'!A0", "+1+2", "@SUM(A1)"]
"""Class folder names that a terminal or a spreadsheet would obey: an OSC title change, a
screen clear, DDE and formula payloads."""


def test_hostile_class_names_are_shown_and_written_inert(tmp_path):
    """A run with a relative --workspace, exported and predicted from another folder; the
    terminal output never carries the escape codes and the CSV never a live formula."""
    data = write_class_images(tmp_path / "data", {n: 6 for n in HOSTILE_CLASSES}, size=16)
    exp_file = tmp_path / "exp.toml"
    exp = tiny_experiment(data, train__epochs=1, data__val_split=0.34)
    exp_file.write_text(exp.to_toml(), encoding="utf-8")
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()

    run = _cli("--workspace", "../ws", "run", str(exp_file), cwd=tmp_path / "here")
    assert run.returncode == 0, run.stderr
    assert b"\x1b" not in run.stdout and b"\x07" not in run.stdout
    assert b"\\x1b]0;pwned\\x07" in run.stdout  # shown, as an escape

    listing = _cli("--workspace", str(tmp_path / "ws"), "runs", "--json").stdout
    record = json.loads(listing)[0]
    assert Path(record["folder"]).is_absolute(), record["folder"]

    shown = _cli("--workspace", str(tmp_path / "ws"), "runs", "show", record["id"])
    assert shown.returncode == 0 and b"\x1b" not in shown.stdout, shown.stderr

    bundle = tmp_path / "model.tsmodel"
    exported = _cli(
        "--workspace",
        "../ws",
        "export",
        record["id"],
        "--format",
        "bundle",
        "-o",
        str(bundle),
        cwd=tmp_path / "here",
    )
    assert exported.returncode == 0, exported.stderr

    out_csv = tmp_path / "predictions.csv"
    images = data / HOSTILE_CLASSES[1]
    predicted = _cli(
        "predict",
        str(bundle),
        str(images),
        "--top-k",
        "4",
        "--csv",
        str(out_csv),
        cwd=tmp_path / "elsewhere",
    )
    assert predicted.returncode == 0, predicted.stderr
    assert b"\x1b" not in predicted.stdout + predicted.stderr
    with out_csv.open(newline="", encoding="utf-8") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    live = [
        c
        for c in cells
        if c.startswith(("=", "+", "@", "\t", "\r")) or (c.startswith("-") and not _is_number(c))
    ]
    assert not live, live
    assert "'=cmd|' \\C calc'!A0" in cells


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    "value,written",
    [
        ("=1+1", "'=1+1"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("+1", "+1"),  # a plain number stays a number
        ("-0.5", "-0.5"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("cat", "cat"),
        (0.25, 0.25),
    ],
)
def test_csv_cells_never_start_a_formula(value, written):
    assert csv_cell(value) == written


def test_printable_escapes_controls_but_keeps_lines_and_text():
    assert printable("a\x1b[2Jb\x07\x9b\u202e") == "a\\x1b[2Jb\\x07\\x9b\\u202e"
    assert printable("line 1\n\tline 2 é 猫 👩‍👩‍👧") == "line 1\n\tline 2 é 猫 👩‍👩‍👧"
    assert printable(os.fsdecode(b"caf\xe9")) == "caf\\udce9"


def test_a_failure_is_printed_once(tmp_path, make_images):
    """A failing run's "run failed: ..." line was printed twice (the engine logged it, then
    the console printed the RunFailed event); the window's log showed it twice too."""
    from transferstudio.api import MethodSpec, TransferMethod
    from transferstudio.console import ConsoleProgress
    from transferstudio.core.plugins.host import load_plugins, plugin_from_namespace
    from transferstudio.core.settings.experiment import from_mapping
    from transferstudio.core.training.engine import run_experiment

    @dataclasses.dataclass
    class P:
        pass

    class Breaks(TransferMethod):
        def __init__(self, params):
            pass

        def setup(self, ctx):
            self.model = ctx.build_classifier()

        def modules(self):
            return {"model": self.model}

        def training_step(self, batch, ctx):
            raise RuntimeError("class 'x' vanished")

    spec = MethodSpec("breaks", "test", P, Breaks)
    host = load_plugins(
        autoload=False, extra=[plugin_from_namespace("b", transferstudio_methods=lambda: [spec])]
    )
    raw = tiny_experiment(make_images({"a": 4, "b": 4}), train__epochs=1).to_dict()
    raw["method"] = {"name": "breaks", "params": {}}
    out = StringIO()
    result = run_experiment(
        from_mapping(raw, host.method_params), host, ConsoleProgress(out), tmp_path / "ws"
    )
    assert result.status == "failed"
    assert out.getvalue().count("run failed: ") == 1, out.getvalue()
    assert "Traceback" not in out.getvalue()  # in log.txt, as the message says
    log = (result.folder / "log.txt").read_text("utf-8")
    assert "run failed: " in log and "Traceback" in log
