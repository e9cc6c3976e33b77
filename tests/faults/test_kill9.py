"""SIGKILL of a headless run at random moments, during an epoch and in the middle of a
checkpoint write: the workspace is never corrupted (SQLite ``PRAGMA integrity_check``, every
checkpoint on disk loads), and ``run --resume`` ends with exactly the metrics of an
uninterrupted run.

CI runs ``TS_KILL_TRIALS`` trials (default 4: half aimed at an epoch, half at a checkpoint
write); the reliability figures in docs/reliability.md come from
``TS_KILL_TRIALS=24 pytest tests/faults/test_kill9.py``. Each trial is seeded by its number, so
a failing trial repeats.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import tiny_experiment
from transferstudio.core.runs.checkpoint import CheckpointStore
from transferstudio.core.runs.workspace import RunStore

TRIALS = int(os.environ.get("TS_KILL_TRIALS", "4"))
EPOCHS = 4
ROOT = Path(__file__).resolve().parents[2]
# The victim imports the write announcer before running the CLI (aimed trials only).
BOOT = "import sys; {shim}from transferstudio.cli import main; sys.exit(main(sys.argv[1:]))"


def _start(workspace: Path, args: list[str], env: dict, shim: bool) -> subprocess.Popen:
    code = BOOT.format(shim="import tests.faults.slow_writes; " if shim else "")
    return subprocess.Popen(
        [sys.executable, "-c", code, "--workspace", str(workspace), *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The experiment file and the report of its uninterrupted run."""
    from tests.helpers import write_class_images

    tmp = tmp_path_factory.mktemp("kill9")
    data = write_class_images(tmp / "data", {"a": 12, "b": 12, "c": 12}, 32, 0)
    exp_file = tmp / "exp.toml"
    exp_file.write_text(
        tiny_experiment(data, train__epochs=EPOCHS, data__batch_size=8).to_toml(), "utf-8"
    )
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": path}
    reference = _start(tmp / "reference", ["run", str(exp_file)], env, shim=False)
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out
    (record,) = RunStore(tmp / "reference").list()
    report = json.loads((Path(record.folder) / "report.json").read_text("utf-8"))
    return tmp, exp_file, env, report, record.duration_s


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def _check_workspace(workspace: Path) -> list:
    """Every run's checkpoints load and the index passes SQLite's integrity check."""
    store = RunStore(workspace)
    assert store.integrity_ok()
    records = store.list()
    for record in records:
        checkpoints = CheckpointStore(Path(record.folder) / "checkpoints")
        for kind in ("best", "last"):
            if checkpoints.exists(kind):
                loaded = checkpoints.load(kind)  # weights and training state, read fully
                assert loaded.weights and (loaded.state or kind == "best")  # best: weights only
    return records


def _kill_once(workspace, exp_file, env, aimed: bool, marker, write: int, delay: float):
    """Start a run and SIGKILL it at checkpoint write ``write`` (aimed) or ``delay`` seconds
    after it started. Returns ``(killed, moment)``; ``killed`` is False when the run ended
    first."""
    victim = _start(workspace, ["run", str(exp_file)], env, shim=aimed)
    try:
        if aimed:
            reached = _wait_for(lambda: Path(f"{marker}.{write}").exists(), victim)
            moment = f"checkpoint write {write}"
        else:  # the run has started when its log appears
            reached = _wait_for(lambda: any((workspace / "runs").glob("*/log.txt")), victim)
            time.sleep(delay)
            moment = f"{delay:.2f} s after the run started"
        if not reached or victim.poll() is not None:
            return False, moment
        os.kill(victim.pid, signal.SIGKILL)
        return True, moment
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.communicate()


@pytest.mark.parametrize("trial", range(TRIALS))
def test_a_killed_run_leaves_a_sound_workspace_and_resumes_to_the_same_metrics(setup, trial):
    tmp, exp_file, env, reference, duration = setup
    rng = random.Random(trial)
    aimed = trial % 2 == 1  # odd trials: in the middle of a checkpoint write
    fraction = rng.uniform(0.02, 0.8)
    write = rng.randint(1, 12)
    # A random delay can outlast a run that goes faster than the reference did; then the same
    # trial is tried again, earlier, in a fresh workspace (a run that simply ended proves
    # nothing about kills).
    for attempt in range(4):
        workspace = tmp / f"trial-{trial}-{attempt}"
        marker = tmp / f"marker-{trial}-{attempt}"
        killed, moment = _kill_once(
            workspace, exp_file, {**env, "TS_FAULT_MARKER": str(marker)}, aimed, marker,
            write, fraction / 2**attempt * duration,
        )  # fmt: skip
        if killed:
            break
    assert killed, f"trial {trial}: every attempt ended before its kill ({moment})"
    print(f"trial {trial}: killed at {moment}")

    records = _check_workspace(workspace)
    if not records:  # killed before the run was indexed: nothing to resume, nothing lost
        return
    (record,) = records
    resumed = _start(workspace, ["run", "--resume", record.id], env, shim=False)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, f"trial {trial} ({moment}): {out}"
    _check_workspace(workspace)
    report = json.loads((Path(record.folder) / "report.json").read_text("utf-8"))
    assert report["val"] == reference["val"], f"trial {trial} ({moment})"
    assert RunStore(workspace).get(record.id).status == "completed"
