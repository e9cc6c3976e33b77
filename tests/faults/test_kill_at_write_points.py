"""A run killed at any of its writes resumes to exactly the files of an uninterrupted run.

The victim imports ``tests/faults/write_points.py``, which numbers every durable write of a
run (each atomic file write when its temporary file is complete and again after its rename,
and each committed write to the run index) and SIGKILLs the process at point ``n``. After each
kill, ``run --resume`` must leave *every* artefact equal to the uninterrupted reference run's:
the best and last weights and their epochs, ``metrics.csv``, ``report.json`` (validation and
test), the run index (status, best figure, every epoch's metrics).

CI kills at a short series of points (the first writes, the last epoch's writes and a spread
between); ``TS_KILL_POINTS=all`` kills at every point (the figures in docs/reliability.md).
The experiment stops early (patience 1), so killing after the stopping epoch is covered too.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import tiny_experiment, write_class_images
from transferstudio.core.runs.checkpoint import CheckpointStore
from transferstudio.core.runs.workspace import RunStore

ROOT = Path(__file__).resolve().parents[2]
BOOT = (
    "import sys; import tests.faults.write_points; from transferstudio.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)
# The series on a GPU: TS_KILL_DEVICE=cuda (CI has none).
DEVICE = os.environ.get("TS_KILL_DEVICE", "cpu")
# Report fields that legitimately differ between two runs of one experiment.
VOLATILE = {"run_id", "duration_s"}


def _cli(workspace: Path, args: list[str], env: dict, shim: bool) -> subprocess.CompletedProcess:
    code = BOOT if shim else BOOT.replace("import tests.faults.write_points; ", "")
    return subprocess.run(
        [sys.executable, "-c", code, "--workspace", str(workspace), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def artefacts(workspace: Path) -> dict:
    """Everything a finished run leaves, minus what differs between any two runs."""
    store = RunStore(workspace)
    (record,) = store.list()
    folder = Path(record.folder)
    checkpoints = CheckpointStore(folder / "checkpoints")
    out: dict = {}
    for kind in ("best", "last"):
        meta = checkpoints.meta(kind)
        out[f"{kind}_epoch"] = meta["epoch"]
        out[f"{kind}_metrics"] = meta["metrics"]
        out[f"{kind}_weights"] = load_file(str(checkpoints.folder / meta["weights_file"]))
    report = json.loads((folder / "report.json").read_text("utf-8"))
    out["report"] = {k: v for k, v in report.items() if k not in VOLATILE}
    with open(folder / "metrics.csv", newline="", encoding="utf-8") as handle:
        out["metrics.csv"] = list(csv.reader(handle))
    out["index"] = (
        record.status,
        record.epochs_done,
        record.best_metric,
        record.best_epoch,
        record.metric_name,
        store.epoch_metrics(record.id),
    )
    return out


def differences(got: dict, want: dict) -> list[str]:
    found = []
    for key, value in want.items():
        if key.endswith("_weights"):
            if got[key].keys() != value.keys():
                found.append(f"{key}: other tensors")
            else:
                n = sum(not torch.equal(got[key][k], value[k]) for k in value)
                if n:
                    found.append(f"{key}: {n} of {len(value)} tensors differ")
        elif got[key] != value:
            found.append(f"{key} differs")
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The experiment, its uninterrupted run's artefacts and the run's numbered write points."""
    tmp = tmp_path_factory.mktemp("writepoints")
    data = write_class_images(tmp / "data", {"a": 10, "b": 10, "c": 10}, 32, 0)
    exp_file = tmp / "exp.toml"
    exp = tiny_experiment(
        data,
        train__device=DEVICE,
        train__deterministic=DEVICE != "cpu",  # cuDNN's fastest kernels vary run to run
        train__epochs=3,
        train__patience=1,
        data__val_split=0.3,
        data__test_split=0.2,
        data__batch_size=8,
    )
    exp_file.write_text(exp.to_toml(), "utf-8")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": path}
    log = tmp / "points.txt"
    done = _cli(tmp / "reference", ["run", str(exp_file)], {**env, "TS_WRITE_LOG": str(log)}, True)
    assert done.returncode == 0, done.stdout + done.stderr
    points = log.read_text("utf-8").splitlines()
    return tmp, exp_file, env, artefacts(tmp / "reference"), points


def chosen_points(points: list[str]) -> list[int]:
    """Every point with ``TS_KILL_POINTS=all``; else the first three writes (registration),
    the last epoch's checkpoint writes up to the report, and every fifth point between."""
    n = len(points)
    if os.environ.get("TS_KILL_POINTS") == "all":
        return list(range(1, n + 1))
    last_json = max(i for i, p in enumerate(points, 1) if p.endswith("renamed last.json"))
    chosen = {1, 2, 3, *range(5, n + 1, 5), *range(last_json - 1, min(n, last_json + 4) + 1)}
    return sorted(chosen)


def test_the_reference_run_stopped_early_and_wrote_every_kind_of_file(reference):
    """The series means something only if the reference run passes the points it aims at."""
    _, _, _, want, points = reference
    written = {p.split()[2] for p in points}
    assert {"experiment.toml", "last.json", "best.json", "metrics.csv", "report.json"} <= written
    assert want["last_epoch"] < 2 or want["report"]["epochs_done"] == 3
    assert want["report"]["test"] is not None and want["report"]["val"] is not None


def test_a_run_killed_at_any_write_resumes_to_the_uninterrupted_files(reference):
    tmp, exp_file, env, want, points = reference
    failures = []
    chosen = chosen_points(points)
    print(f"\nkilling at {len(chosen)} of the run's {len(points)} write points")
    for n in chosen:
        workspace = tmp / f"kill-at-{n}"
        killed = _cli(workspace, ["run", str(exp_file)], {**env, "TS_KILL_AT": str(n)}, True)
        where = f"point {n} ({points[n - 1]})"
        if killed.returncode != -9:
            failures.append(f"{where}: not killed (exit {killed.returncode})")
            continue
        store = RunStore(workspace)
        assert store.integrity_ok(), where
        records = store.list()
        if not records:  # killed before the run was registered: nothing exists to resume
            continue
        (record,) = records
        print(f"{where}: killed, shown as {record.status}")
        if record.status == "completed":  # killed after its last write: nothing to resume
            assert n == len(points), f"{where}: completed before its last write"
        else:
            assert record.status == "interrupted", f"{where}: shown as {record.status}"
            resumed = _cli(workspace, ["run", "--resume", record.id], env, False)
            if resumed.returncode != 0:
                failures.append(f"{where}: resume failed: {resumed.stderr[-500:]}")
                continue
        leftovers = [p.name for p in Path(record.folder).rglob(".*.tmp")]
        if leftovers:
            failures.append(f"{where}: temporary files left after the resume: {leftovers}")
        try:
            found = differences(artefacts(workspace), want)
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable file is a finding
            found = [f"{type(exc).__name__}: {exc}"]
        if found:
            failures.append(f"{where}: " + "; ".join(found))
    assert not failures, "\n".join(failures)
