"""A run's status is true: a process that is gone never leaves a run "running", one process at
a time trains a run, and a run that never got its experiment file can still be deleted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import tiny_experiment
from transferstudio.cli import main
from transferstudio.core.runs.workspace import RunStore

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD": "1"}


def _cli(workspace: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "transferstudio", "--workspace", str(workspace), *args],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the run did not get there"
        time.sleep(0.02)


@pytest.fixture
def exp_file(tmp_path, make_images):
    path = tmp_path / "exp.toml"
    exp = tiny_experiment(make_images({"a": 8, "b": 8}), train__epochs=30)
    path.write_text(exp.to_toml(), "utf-8")
    return path


def _first_checkpoint(workspace: Path) -> bool:
    return any((workspace / "runs").glob("*/checkpoints/last.json"))


def test_a_killed_run_reads_as_interrupted_and_resumable(tmp_path, exp_file, capsys):
    workspace = tmp_path / "ws"
    victim = _cli(workspace, "run", str(exp_file))
    _wait_for(lambda: _first_checkpoint(workspace), victim)
    (record,) = RunStore(workspace).list()
    assert record.status == "running"  # its process holds the run's lock
    victim.kill()
    victim.communicate()
    (record,) = RunStore(workspace).list()
    assert record.status == "interrupted"
    assert f"run --resume {record.id}" in record.message
    assert main(["--workspace", str(workspace), "runs"]) == 0
    assert "interrupted" in capsys.readouterr().out


def test_sigterm_stops_a_run_cleanly_and_it_resumes(tmp_path, exp_file):
    workspace = tmp_path / "ws"
    victim = _cli(workspace, "run", str(exp_file), "--set", "train.epochs=3")
    _wait_for(lambda: _first_checkpoint(workspace), victim)
    victim.send_signal(signal.SIGTERM)  # what `timeout`, `kill` and a logout send
    out, _ = victim.communicate(timeout=300)
    assert victim.returncode == 130, out
    (record,) = RunStore(workspace).list()
    assert record.status == "cancelled"
    resumed = _cli(workspace, "run", "--resume", record.id)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert RunStore(workspace).get(record.id).status == "completed"


def test_a_second_process_on_the_same_run_is_refused(tmp_path, exp_file, capsys):
    workspace = tmp_path / "ws"
    first = _cli(workspace, "run", str(exp_file))
    try:
        _wait_for(lambda: _first_checkpoint(workspace), first)
        (record,) = RunStore(workspace).list()
        code = main(["--workspace", str(workspace), "run", "--resume", record.id])
        err = capsys.readouterr().err
        assert code == 2
        assert f"run {record.id} is being trained by another process" in err
        # ... and it cannot be deleted from under the training process either
        assert main(["--workspace", str(workspace), "runs", "delete", record.id, "--yes"]) == 2
        assert Path(record.folder).is_dir()
    finally:
        first.kill()
        first.communicate()
    (record,) = RunStore(workspace).list()
    assert record.status == "interrupted"


def test_a_run_without_its_experiment_file_can_be_deleted_not_resumed(tmp_path, capsys):
    workspace = tmp_path / "ws"
    store = RunStore(workspace)
    # What a process killed between registering a run and writing its experiment file left
    # (versions before 0.x wrote the file after the row).
    folder = store.create("20260101-000000-orphan-abcd", "orphan", "resnet18", "fine-tune", "loss")
    assert store.get("20260101-000000-orphan-abcd").status == "interrupted"
    assert main(["--workspace", str(workspace), "run", "--resume", "20260101-000000-orphan"]) == 2
    err = capsys.readouterr().err
    assert "was never written" in err and "runs delete 20260101-000000-orphan-abcd" in err
    assert (
        main(["--workspace", str(workspace), "runs", "delete", "20260101-000000-orphan", "-y"]) == 0
    )
    assert store.list() == [] and not folder.exists()


def test_ctrl_c_on_tasks_py_lets_the_child_stop_cleanly(tmp_path):
    """``python3 tasks.py demo`` used subprocess.run, which SIGKILLs the child a quarter
    second after Ctrl+C and prints a KeyboardInterrupt traceback."""
    child = (
        "import signal, sys, time\n"
        "asked = []\n"
        "signal.signal(signal.SIGINT, lambda *a: asked.append(1))\n"
        f"open({str(tmp_path / 'ready')!r}, 'w').close()\n"
        "while not asked: time.sleep(0.01)\n"
        "time.sleep(1.0)  # finishing the batch and saving the run\n"
        "sys.exit(42)\n"
    )
    parent = (
        "import sys; sys.path.insert(0, sys.argv[1]); import tasks\n"
        "sys.exit(tasks.run([sys.executable, '-c', sys.argv[2]]))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", parent, str(ROOT), child],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl+C in the terminal does
    _, err = process.communicate(timeout=60)
    assert process.returncode == 42  # the child's own clean exit, passed on
    assert "Traceback" not in err


def test_a_relative_run_folder_from_an_older_index_is_read_against_the_workspace(tmp_path):
    store = RunStore(tmp_path / "ws")
    folder = store.create("20260101-000000-old-abcd", "old", "resnet18", "fine-tune", "loss")
    with store._connect() as db:  # what versions that kept --workspace relative wrote
        db.execute("UPDATE runs SET folder=? WHERE id=?", ("ws/runs/x", "20260101-000000-old-abcd"))
    assert store.get("20260101-000000-old-abcd").folder == str(folder)


def test_the_workspace_deleted_during_a_run_fails_it_with_a_message(tmp_path, make_images):
    import shutil

    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.progress import events as E
    from transferstudio.core.training.engine import PlainState, run_experiment

    workspace = tmp_path / "ws"

    def delete_after_first_epoch(event):
        if isinstance(event, E.EpochEnded) and event.epoch == 0:
            shutil.rmtree(workspace)

    exp = tiny_experiment(make_images({"a": 6, "b": 6}), train__epochs=3)
    result = run_experiment(
        exp, load_plugins(autoload=False), PlainState(delete_after_first_epoch), workspace
    )
    assert result.status == "failed"
    assert "was deleted or moved during the run" in result.message
    assert not workspace.exists()  # not recreated holding only the newest files
