"""The headless commands, run as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import tiny_experiment


def _run(*args, workspace, check=True):
    env = {**os.environ, "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "transferstudio", "--workspace", str(workspace), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_demo_generates_data_and_trains(tmp_path):
    # Built-ins only (no EfficientNet-Lite plugin): the from-scratch demo, and why.
    out = _run("demo", "--epochs", "1", "--set", "train.epochs=1", workspace=tmp_path)
    assert "no transfer demo: the efficientnet_lite0 backbone is not installed" in out.stderr
    assert "pip install transferstudio-efficientnet-lite" in out.stderr
    assert "epoch 1/1" in out.stdout
    assert "validation (best epoch)" in out.stdout and "test (best checkpoint)" in out.stdout
    assert len(list((tmp_path / "demo" / "data").glob("*/*.png"))) == 4 * 350
    runs = _run("runs", workspace=tmp_path).stdout
    assert "demo" in runs and "completed" in runs


def test_the_transfer_demo_runs_its_baseline_and_prints_the_gain(tmp_path):
    import importlib.metadata as md

    import pytest

    from transferstudio.core.data.demo import TRANSFER_PLUGIN

    if not any(d.metadata["Name"] == TRANSFER_PLUGIN for d in md.distributions()):
        pytest.skip(f"{TRANSFER_PLUGIN} is not installed (python3 tasks.py test installs it)")
    out = subprocess.run(  # installed plugins loaded, as a user's 'transferstudio demo'
        [sys.executable, "-m", "transferstudio", "--workspace", str(tmp_path), "demo"]
        + ["--epochs", "1", "--set", "data.image_size=32"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1/2 efficientnet_lite0 from its pretrained weights (cache)" in out.stdout
    assert "2/2 its baseline: the same experiment from random initialisation" in out.stdout
    lines = out.stdout.splitlines()
    row = next(line.split() for line in lines if line.startswith("test accuracy"))
    transfer, baseline, gain = (float(v) for v in row[2:])
    assert gain == pytest.approx(transfer - baseline, abs=1e-4)
    assert any(line.startswith("transfer gain of run ") for line in lines)
    assert len(list((tmp_path / "demo" / "transfer-data").glob("*/*/*.png"))) == 4 * 105
    runs = _run("runs", workspace=tmp_path).stdout
    assert "transfer-demo-baseline" in runs and runs.count("completed") == 2


def test_gui_demo_settings_without_demo_are_a_usage_error(tmp_path):
    out = _run("gui", "--epochs", "2", workspace=tmp_path, check=False)
    assert out.returncode == 2 and "--epochs and --set go with --demo" in out.stderr


def test_run_with_overrides_then_list_and_show(tmp_path, make_images):
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text(tiny_experiment(make_images({"a": 6, "b": 6})).to_toml())
    out = _run(
        "run",
        str(exp_file),
        "--set",
        "train.epochs=1",
        "--set",
        "name=override-check",
        workspace=tmp_path / "ws",
    )
    assert "epoch 1/1" in out.stdout
    listing = _run("runs", workspace=tmp_path / "ws").stdout
    run_id = next(line.split()[0] for line in listing.splitlines() if "override-check" in line)
    shown = _run("runs", "show", run_id[:20], workspace=tmp_path / "ws").stdout
    assert "status       completed" in shown and "val_acc" in shown


def test_bad_experiment_is_a_clear_error_not_a_traceback(tmp_path):
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text('[method]\nname = "fine-tune"\n[train]\nepochs = -3\n')
    out = _run("run", str(exp_file), workspace=tmp_path, check=False)
    assert out.returncode == 2
    assert "error: train.epochs: -3 is out of range" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_data_folder_names_the_key(tmp_path):
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text('[data]\npath = "nowhere"\n[method]\nname = "fine-tune"\n')
    out = _run("run", str(exp_file), workspace=tmp_path, check=False)
    assert out.returncode == 2 and "data.path" in out.stderr and "nowhere" in out.stderr


def test_unknown_run_id_is_a_clear_error(tmp_path):
    out = _run("runs", "show", "nope", workspace=tmp_path, check=False)
    assert out.returncode == 2 and "no run 'nope'" in out.stderr


def test_version_and_help(tmp_path):
    assert "transferstudio 0.1.0" in _run("--version", workspace=tmp_path).stdout
    help_text = _run("--help", workspace=tmp_path).stdout
    for command in ("demo", "run", "init", "plugins", "runs"):
        assert command in help_text


def _two_runs(tmp_path):
    from transferstudio.core.runs.workspace import RunStore

    workspace = tmp_path / "ws"
    store = RunStore(workspace)
    ids = ["20260101-000000-first-aaaa", "20260101-000001-second-bbbb"]
    folders = [store.create(run_id, "x", "resnet18", "fine-tune", "loss") for run_id in ids]
    return workspace, store, ids, folders


def test_runs_delete_without_a_terminal_needs_yes(tmp_path):
    workspace, store, ids, folders = _two_runs(tmp_path)
    out = _run("runs", "delete", ids[0], workspace=workspace, check=False)  # stdin: not a tty
    assert out.returncode == 2
    assert f"asks before deleting ({ids[0]})" in out.stderr and "add --yes" in out.stderr
    assert len(store.list()) == 2 and folders[0].is_dir()


def test_runs_delete_yes_deletes_several_and_names_each(tmp_path):
    workspace, store, ids, folders = _two_runs(tmp_path)
    out = _run("runs", "delete", ids[0][:20], ids[1], ids[1], "--yes", workspace=workspace)
    assert out.stdout.count("deleted run ") == 2
    assert f"deleted run {ids[0]} and its folder {folders[0]}" in out.stdout
    assert store.list() == [] and not any(f.exists() for f in folders)


def test_runs_delete_an_unknown_id_deletes_nothing(tmp_path):
    workspace, store, ids, folders = _two_runs(tmp_path)
    out = _run("runs", "delete", ids[0], "nope", "--yes", workspace=workspace, check=False)
    assert out.returncode == 2 and "no run 'nope'" in out.stderr
    assert len(store.list()) == 2


def test_runs_delete_refuses_a_run_in_training_and_deletes_the_others(tmp_path, capsys):
    from transferstudio.cli import main

    workspace, store, ids, folders = _two_runs(tmp_path)
    with store.working_on(ids[0]):  # as a training process holds it
        code = main(["--workspace", str(workspace), "runs", "delete", *ids, "-y"])
    out, err = capsys.readouterr()
    assert code == 2
    assert f"run {ids[0]} not deleted: run {ids[0]} is being trained" in err
    assert f"deleted run {ids[1]}" in out
    assert [r.id for r in store.list()] == [ids[0]] and folders[0].is_dir()


def test_runs_delete_asks_at_a_terminal(tmp_path, monkeypatch, capsys):
    from transferstudio.cli import main

    workspace, store, ids, folders = _two_runs(tmp_path)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    answers = iter(["n", "y"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    assert main(["--workspace", str(workspace), "runs", "delete", ids[1]]) == 1
    assert "nothing deleted" in capsys.readouterr().out and len(store.list()) == 2
    assert main(["--workspace", str(workspace), "runs", "delete", ids[1]]) == 0
    assert [r.id for r in store.list()] == [ids[0]]
