"""A run killed with SIGKILL resumes (`run --resume`) to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers import tiny_experiment
from transferstudio.core.runs.checkpoint import CheckpointStore
from transferstudio.core.runs.workspace import RunStore


def _cli(workspace, *args, **kwargs):
    env = {**os.environ, "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "transferstudio", "--workspace", str(workspace), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_kill_nine_then_resume_equals_uninterrupted(make_images, tmp_path):
    data = make_images({"a": 16, "b": 16, "c": 16}, size=32)
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text(tiny_experiment(data, train__epochs=5, data__batch_size=8).to_toml())

    reference = _cli(tmp_path / "ref", "run", str(exp_file))
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out

    workspace = tmp_path / "ws"
    victim = _cli(workspace, "run", str(exp_file))
    deadline = time.monotonic() + 300
    meta_files = []
    while time.monotonic() < deadline and victim.poll() is None:
        meta_files = list((workspace / "runs").glob("*/checkpoints/last.json"))
        if meta_files:
            break
        time.sleep(0.01)
    assert victim.poll() is None, "the run ended before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    store = RunStore(workspace)
    (record,) = store.list()
    assert record.status == "interrupted"  # killed: its process is gone, nobody marked it finished
    assert store.integrity_ok()
    killed_epoch = CheckpointStore(meta_files[0].parent).meta("last")["epoch"]
    assert killed_epoch < 4

    resumed = _cli(workspace, "run", "--resume", record.id)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"resumed after epoch {killed_epoch + 1}" in out

    (ref_record,) = RunStore(tmp_path / "ref").list()
    ref_ck = CheckpointStore(f"{ref_record.folder}/checkpoints").load("last")
    res_ck = CheckpointStore(f"{record.folder}/checkpoints").load("last")
    assert all(torch.equal(ref_ck.weights[k], res_ck.weights[k]) for k in ref_ck.weights)
    ref_report = json.loads((Path(ref_record.folder) / "report.json").read_text())
    res_report = json.loads((Path(record.folder) / "report.json").read_text())
    assert ref_report["val"] == res_report["val"]
    assert store.get(record.id).status == "completed"
    assert len(store.epoch_metrics(record.id)["val"]["accuracy"]) == 5
