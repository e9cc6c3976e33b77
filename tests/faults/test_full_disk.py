"""A real full disk: the workspace on a small tmpfs that fills up during a run.

The run stops with a message that says "no space left" (never a library's "unexpected pos" or
"disk I/O error", nor a traceback), the workspace stays readable with 0 bytes free, and once
space is freed the run resumes to exactly the figures of an uninterrupted run. Needs root (to
mount the tmpfs); skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import tiny_experiment, write_class_images
from transferstudio.core.runs.checkpoint import CheckpointStore
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


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode()[:200]}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Write until the disk refuses: a real ENOSPC for every later write."""
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 16))
                handle.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_says_so_keeps_the_workspace_readable_and_the_run_resumes(tmp_path, small_disk):
    data = write_class_images(tmp_path / "data", {"a": 8, "b": 8}, 28, 0)
    exp = tiny_experiment(
        data, model__backbone="lenet", data__image_size=28, train__epochs=40, train__lr=0.01
    )
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text(exp.to_toml(), "utf-8")
    reference = _cli(tmp_path / "reference", "run", str(exp_file))
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out
    (want,) = RunStore(tmp_path / "reference").list()

    workspace = small_disk / "ws"
    victim = _cli(workspace, "run", str(exp_file))
    deadline = time.monotonic() + 300
    while not any((workspace / "runs").glob("*/checkpoints/last.json")):
        assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()[0]
        time.sleep(0.01)
    filler = _fill(small_disk)
    out, _ = victim.communicate(timeout=300)
    assert victim.returncode == 1, out
    assert "no space left" in out
    for bad in ("Traceback", "unexpected pos", "please report", "weights_only"):
        assert bad not in out, out

    listing = subprocess.run(
        [sys.executable, "-m", "transferstudio", "--workspace", str(workspace), "runs"],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert listing.returncode == 0, listing.stderr  # with 0 bytes free
    (record,) = RunStore(workspace).list()
    assert record.status in ("failed", "interrupted")  # failed, if the index took the write
    assert CheckpointStore(Path(record.folder) / "checkpoints").load("last").weights

    filler.unlink()
    resumed = _cli(workspace, "run", "--resume", record.id)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    report = json.loads((Path(record.folder) / "report.json").read_text("utf-8"))
    reference_report = json.loads((Path(want.folder) / "report.json").read_text("utf-8"))
    assert report["val"] == reference_report["val"]
    assert RunStore(workspace).get(record.id).status == "completed"
