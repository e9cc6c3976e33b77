"""``torchrun --nproc-per-node 2 -m transferstudio run``: two CPU processes (Gloo) train with
DistributedDataParallel and end with the metrics of one process at the same global batch size;
rank 0 alone writes; a method that does not declare support is refused; a run whose rank 1 is
killed resumes under torchrun to the uninterrupted result.

LeNet (no BatchNorm, no dropout) and no augmentation: with them the two processes' gradients
average to exactly the single-process gradient, up to float summation order."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import child_pids, tiny_experiment, torchrun_rank, write_class_images
from transferstudio.core.runs.workspace import RunStore

ENV = {**os.environ, "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}


def _experiment(tmp: Path, method: str | None = None, params=None, **overrides) -> Path:
    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.settings.experiment import from_mapping

    data = write_class_images(tmp / "data", {"a": 10, "b": 10, "c": 10}, 32, 0)  # 24 train
    overrides = {"data__batch_size": 8, "train__lr": 0.001, **overrides}
    raw = tiny_experiment(data, model__backbone="lenet", **overrides).to_dict()
    raw["augment"]["hflip"] = False
    if method:
        raw["method"] = {"name": method, "params": params or {}}
    path = tmp / f"exp-{len(list(tmp.glob('exp-*.toml')))}.toml"
    path.write_text(
        from_mapping(raw, load_plugins(autoload=False).method_params).to_toml(), "utf-8"
    )
    return path


def _launch(workspace: Path, *args: str, processes: int = 1, **popen) -> subprocess.Popen:
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        if processes > 1
        else []
    )
    return subprocess.Popen(
        [sys.executable, *launcher, "-m", "transferstudio", "--workspace", str(workspace), *args],
        env=popen.pop("env", ENV),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def _finish(process: subprocess.Popen, timeout: float = 600, hung: str = "") -> tuple[int, str]:
    """Wait for a launch; one still running after ``timeout`` s is killed with its workers
    (they hold the pipe open) and fails the test with ``hung`` and its output."""
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in child_pids(process.pid):
            os.kill(pid, signal.SIGKILL)
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"{hung or 'the job hung'}:\n{out}")
    return process.returncode, out


def _only_run(workspace: Path):
    (record,) = RunStore(workspace).list()
    report = json.loads((Path(record.folder) / "report.json").read_text("utf-8"))
    with (Path(record.folder) / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return record, report, rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process and two processes on the same experiment (3 epochs, global batch 8)."""
    tmp = tmp_path_factory.mktemp("ddp")
    exp = _experiment(tmp, train__epochs=3)
    code, out = _finish(_launch(tmp / "one", "run", str(exp)))
    assert code == 0, out
    code, out = _finish(_launch(tmp / "two", "run", str(exp), processes=2))
    assert code == 0, out
    return tmp, exp, _only_run(tmp / "one"), _only_run(tmp / "two")


def test_two_processes_end_with_the_metrics_of_one(reference):
    _, _, (_, one, one_rows), (record, two, two_rows) = reference
    assert two["val"]["metrics"]["accuracy"] == one["val"]["metrics"]["accuracy"]
    assert two["val"]["metrics"]["loss"] == pytest.approx(one["val"]["metrics"]["loss"], abs=1e-4)
    # Every epoch's training loss, reduced over both processes, is the single-process one.
    for a, b in zip(one_rows, two_rows, strict=True):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), abs=1e-4)
    # The report covers the whole validation split (6 images), not one process's share.
    assert sum(row["support"] for row in two["val"]["per_class"]) == 6
    log = (Path(record.folder) / "log.txt").read_text("utf-8")
    assert "2 processes (cpu): DistributedDataParallel on model; 4 images per process" in log
    assert "validation shared out" in log


def test_rank_zero_alone_writes(reference):
    tmp, _, _, (record, _, _) = reference
    assert len(list((tmp / "two" / "runs").iterdir())) == 1  # no folder of rank 1
    assert RunStore(tmp / "two").get(record.id).status == "completed"


def test_methods_without_distributed_support_and_odd_batches_are_refused(reference):
    tmp, _, _, _ = reference
    exp = _experiment(tmp, method="feature-extract")
    code, out = _finish(_launch(tmp / "refused", "run", str(exp), processes=2))
    assert code != 0 and "does not support training in several processes" in out
    exp = _experiment(tmp, data__batch_size=7)
    code, out = _finish(_launch(tmp / "odd", "run", str(exp), processes=2))
    assert code != 0 and "make it a multiple of 2" in out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers in /proc")
def test_a_run_whose_rank_one_is_killed_resumes_to_the_uninterrupted_result(reference):
    tmp, exp, _, (_, uninterrupted, _) = reference
    workspace = tmp / "killed"
    launch = _launch(workspace, "run", str(exp), processes=2)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and launch.poll() is None:
        if any((workspace / "runs").glob("*/checkpoints/last.json")):
            break
        time.sleep(0.01)
    workers = [p for p in child_pids(launch.pid) if torchrun_rank(p) == 1]
    assert launch.poll() is None and workers, "the run ended before rank 1 could be killed"
    os.kill(workers[0], signal.SIGKILL)
    code, out = _finish(launch)
    assert code != 0  # torchrun ends the whole job when a rank dies
    (record,) = RunStore(workspace).list()
    assert record.status != "completed"
    code, out = _finish(_launch(workspace, "run", "--resume", record.id, processes=2))
    assert code == 0, out
    _, resumed, _ = _only_run(workspace)
    assert resumed["val"]["metrics"] == pytest.approx(uninterrupted["val"]["metrics"])


def _multitask(tmp: Path, weighting: str):
    from transferstudio.testing.synthetic import write_multilabel_csv

    labels = write_multilabel_csv(tmp / "data", per_class=10)  # 32 train, 8 val
    return tiny_experiment(
        labels,
        model__backbone="lenet",
        data__label_columns=["shape", "tone"],
        data__batch_size=8,
        data__val_split=0.2,
        augment__hflip=False,
        train__epochs=3,
        train__lr=0.001,
        method__name="multitask",
        method__params={"weighting": weighting},
    )


def _fusion(tmp: Path, mode: str):
    data = write_class_images(tmp / "data", {"a": 10, "b": 10, "c": 10}, 32, 0)  # 24 train
    return tiny_experiment(
        data,
        model__backbone="lenet",
        data__batch_size=8,
        augment__hflip=False,
        train__epochs=3,
        train__lr=0.001,
        method__name="fusion",
        method__params={"backbones": ["", "lenet"], "mode": mode},
    )


def test_rank_zero_tests_the_best_checkpoint_alone_and_the_job_ends(tmp_path):
    """With a test split, rank 0 alone tests the best checkpoint while the others leave: no
    collective may run there. Before, its per-batch stop check waited for the others, and the
    job hung for good after the last epoch."""
    exp = _experiment(tmp_path, train__epochs=2, data__test_split=0.2)
    reports = {}
    for name, processes in (("one", 1), ("two", 2)):
        launch = _launch(tmp_path / name, "run", str(exp), processes=processes)
        code, out = _finish(launch, timeout=240, hung=f"{processes} process(es) did not end")
        assert code == 0, out
        assert out.count("run folder:") == 1  # rank 0 alone reports
        _, reports[name], _ = _only_run(tmp_path / name)
    one, two = reports["one"]["test"], reports["two"]["test"]
    assert sum(row["support"] for row in two["per_class"]) == 6  # the whole test split
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, abs=1e-4), key


def _one_and_two_processes_agree(tmp_path: Path, exp: Path) -> str:
    """Run ``exp`` with 1 and with 2 processes; every validation metric and every epoch's
    training loss agree within 1e-4. Returns the 2-process run's log."""
    for name, processes in (("one", 1), ("two", 2)):
        code, out = _finish(_launch(tmp_path / name, "run", str(exp), processes=processes))
        assert code == 0, out
    _, one, one_rows = _only_run(tmp_path / "one")
    record, two, two_rows = _only_run(tmp_path / "two")
    for key, value in one["val"]["metrics"].items():
        assert two["val"]["metrics"][key] == pytest.approx(value, abs=1e-4), key
    for a, b in zip(one_rows, two_rows, strict=True):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), abs=1e-4)
    return (Path(record.folder) / "log.txt").read_text("utf-8")


@pytest.mark.parametrize(
    "make, variant",
    [
        (_multitask, "fixed"),
        (_multitask, "uncertainty"),
        (_fusion, "concat"),
        (_fusion, "weighted_sum"),
    ],
    ids=["multitask-fixed", "multitask-uncertainty", "fusion-concat", "fusion-weighted_sum"],
)
def test_other_methods_in_two_processes_end_with_the_metrics_of_one(tmp_path, make, variant):
    """multitask and fusion declare distributed support: their one model (heads, learned task
    weights, fusion weights, both branches) is synchronised like fine-tune's, so 2 processes
    end where 1 does."""
    exp = make(tmp_path, variant)
    path = tmp_path / "exp.toml"
    path.write_text(exp.to_toml(), "utf-8")
    log = _one_and_two_processes_agree(tmp_path, path)
    assert "2 processes (cpu): DistributedDataParallel on model" in log


def test_distillation_in_two_processes_ends_with_the_metrics_of_one(tmp_path):
    """distill declares distributed support: the student and its hint projections (called
    through their own forward) are synchronised; the frozen teacher runs, and caches its
    outputs, in each process."""
    teacher_exp = _experiment(tmp_path / "teacher", train__epochs=2)
    code, out = _finish(_launch(tmp_path / "teacher-ws", "run", str(teacher_exp)))
    assert code == 0, out
    teacher, _, _ = _only_run(tmp_path / "teacher-ws")
    hints = {"hint_layers": ["backbone.features=backbone.features"], "hint_weight": 10.0}
    params = {"teacher_run": teacher.folder, **hints}
    exp = _experiment(tmp_path, "distill", params, train__epochs=3, train__lr=0.005)
    log = _one_and_two_processes_agree(tmp_path, exp)
    assert "DistributedDataParallel on model, hint_projections" in log
    assert "validation whole in every process" in log  # distill keeps its own batches


RANK0_FAILS = """
import os
from dataclasses import replace

from transferstudio.api import hookimpl
from transferstudio_builtins.fine_tune import FINE_TUNE, FineTune

TRANSFERSTUDIO_API_VERSION = "1.3"


class FailsOnRankZero(FineTune):
    steps = 0

    def training_step(self, batch, ctx):
        FailsOnRankZero.steps += 1
        if os.environ.get("RANK") == "0" and FailsOnRankZero.steps == 4:
            raise RuntimeError("rank 0 broke at step 4")
        return super().training_step(batch, ctx)


@hookimpl
def transferstudio_methods():
    return [replace(FINE_TUNE, name="fails-on-rank-0", factory=FailsOnRankZero)]
"""


def test_a_rank_that_fails_alone_ends_the_job_instead_of_waiting_for_the_others(tmp_path):
    """Rank 0 fails mid-epoch while rank 1 is inside a gradient all-reduce: rank 0 must leave
    the group at once (no barrier the others never reach), so torchrun ends the job. Before,
    the job hung until Gloo's 30-minute timeout."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "rank0_fails.py").write_text(RANK0_FAILS, "utf-8")
    info = plugins / "rank0_fails-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rank0-fails\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[transferstudio]\nrank0_fails = rank0_fails\n")
    exp = _experiment(tmp_path, train__epochs=3)
    text = exp.read_text("utf-8").replace('name = "fine-tune"', 'name = "fails-on-rank-0"')
    exp.write_text(text, "utf-8")
    env = {k: v for k, v in ENV.items() if k != "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD"}
    launch = _launch(tmp_path / "ws", "run", str(exp), processes=2, env={
        **env, "TRANSFERSTUDIO_PLUGIN_PATH": str(plugins)})  # fmt: skip
    code, out = _finish(launch, timeout=240, hung="the job hung after rank 0 failed")
    assert code != 0
    assert "rank 0 broke at step 4" in out


@pytest.mark.parametrize("n, world", [(6, 2), (7, 2), (7, 3), (1, 2), (0, 2)])
def test_evaluation_shares_cover_every_item_and_go_back_in_order(n, world):
    import torch

    from transferstudio.core.training.distributed import Distributed, interleave_shards

    shares = [Distributed(rank=r, world=world).shard(n) for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # as many batches in every process
    assert set().union(*shares) == set(range(n))
    parts = [torch.tensor(s, dtype=torch.float32).reshape(-1, 1) for s in shares]  # row = item
    assert interleave_shards(parts, n).flatten().tolist() == list(range(n))


def test_detection_trains_in_two_processes(tmp_path):
    """detect declares distributed support: the detector is synchronised like fine-tune's
    model, each process trains on its half of every batch, and each evaluates the whole
    validation split (detection batches are lists of images, not shared out). The RPN and RoI
    heads sample anchors and proposals at random in each process, so the run is not bit-equal
    to one process the way LeNet's is."""
    from tests.core.test_detection_engine import detection_experiment
    from transferstudio.core.data.detection_demo import generate_detection_data

    data = generate_detection_data(tmp_path / "shapes", images=16, seed=1)
    exp = tmp_path / "detect.toml"
    exp.write_text(detection_experiment(data, train__epochs=2).to_toml(), "utf-8")
    code, out = _finish(_launch(tmp_path / "ws", "run", str(exp), processes=2))
    assert code == 0, out
    record, report, rows = _only_run(tmp_path / "ws")
    assert record.status == "completed"
    log = (Path(record.folder) / "log.txt").read_text("utf-8")
    assert "2 processes (cpu): DistributedDataParallel on detector; 2 images per process" in log
    assert "validation whole in every process" in log
    assert report["val"]["metrics"]["images"] == 4  # the whole split, not one share
    assert 0.0 <= report["val"]["metrics"]["map50"] <= 1.0
    assert len(rows) == 2 and all(float(r["train_loss"]) > 0 for r in rows)
    # Rank 0 alone wrote: one run folder, one checkpoint set.
    assert len(list((tmp_path / "ws" / "runs").iterdir())) == 1
