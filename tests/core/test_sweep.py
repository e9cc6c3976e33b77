"""Hyperparameter sweeps on Optuna: the space comes from the settings dataclasses, every trial
is a run in the run store, bad trials are pruned, and a sweep continues after an interruption
(a Stop, or the process killed) with the interrupted trial tried again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import tiny_experiment, write_class_images
from transferstudio.api import ExperimentError, TransferStudioError
from transferstudio.core.runs.workspace import RunStore
from transferstudio.core.studies.sweep import (
    Dimension,
    default_space,
    dimension,
    load_sweep,
    parse_space,
    run_sweep,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_class_images(tmp_path_factory.mktemp("sweep") / "data", {"a": 12, "b": 12}, 24)


def _experiment(data, **overrides):
    settings = {"model__backbone": "lenet", "data__batch_size": 8, "train__epochs": 3}
    return tiny_experiment(data, **{**settings, **overrides})


def test_the_space_comes_from_the_settings_dataclasses(data):
    exp = _experiment(data)
    space = {d.key: d for d in default_space(exp)}
    assert space["train.lr"] == Dimension("train.lr", "float", 1e-5, 1e-1, log=True)
    assert space["train.weight_decay"].log and space["train.weight_decay"].high == 1e-1
    # fine-tune's bounded parameter, with the range its dataclass declares
    mult = space["method.params.backbone_lr_mult"]
    assert (mult.kind, mult.low, mult.high, mult.log) == ("float", 0.0, 10.0, False)
    assert dimension(exp, "train.optimizer").choices == ("adamw", "sgd")
    assert dimension(exp, "train.nesterov").choices == (False, True)
    assert dimension(exp, "train.epochs", "2:5") == Dimension("train.epochs", "int", 2, 5)
    assert dimension(exp, "data.batch_size", "8,16").choices == (8, 16)
    assert parse_space(exp, ["train.lr=1e-4:1e-2:log"])[0].low == 1e-4


@pytest.mark.parametrize(
    "key, spec, reason",
    [
        ("train.lrr", "", "no such setting"),
        ("lr", "", "SECTION.KEY"),
        ("train.lr", "1e-5:20", "leaves the setting's limits"),
        ("train.lr", "1:0.1", "is empty"),
        ("train.lr", "a:b", "write LOW:HIGH"),
        ("model.backbone", "", "without choices"),
        ("train.grad_clip", "", "has no range"),
        ("train.epochs", "2.5:5", "whole numbers"),
    ],
)
def test_a_bad_dimension_names_the_key_and_the_reason(data, key, spec, reason):
    with pytest.raises(ExperimentError) as info:
        dimension(_experiment(data), key, spec)
    assert reason in str(info.value) and key in str(info.value)


def test_every_trial_is_a_run_and_bad_trials_are_pruned(data, host, tmp_path):
    # Validation loss, minimised: the colour task is so easy that even an untrained LeNet can
    # score full accuracy, while its loss stays at chance.
    exp = _experiment(data, train__early_stopping_metric="loss")
    space = [Dimension("train.lr", "choice", choices=(1e-3, 1e-9))]
    workspace = tmp_path / "ws"
    # trials=0 only creates the sweep; then two good trials and a hopeless one are queued
    assert run_sweep(exp, host, workspace, "pr", trials=0, space=space).trials == []
    study, _ = load_sweep(workspace, "pr", host)
    for lr in (1e-3, 1e-3, 1e-9):
        study.enqueue_trial({"train.lr": lr})
    seen = []
    summary = run_sweep(None, host, workspace, "pr", trials=3, on_trial=seen.append)
    assert [t.state for t in summary.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert len(seen) == 3 and summary.stopped_because == "3 trials finished"
    store = RunStore(workspace)
    runs = {t.number: store.get(t.run_id) for t in summary.trials}
    assert [runs[n].status for n in range(3)] == ["completed", "completed", "pruned"]
    assert runs[2].epochs_done == 2  # stopped after the epoch the median rule looked at
    for t in summary.trials:
        assert store.tags(t.run_id) == {"sweep": "pr", "trial": str(t.number)}
        toml = Path(store.get(t.run_id).folder, "experiment.toml").read_text("utf-8")
        assert f"lr = {t.params['train.lr']!r}" in toml
    assert summary.direction == "minimize" and summary.best.number in (0, 1)
    values = [t.value for t in summary.trials[:2]]
    assert summary.best.value == min(values) < 0.5  # chance is ln 2 = 0.69
    assert summary.best_so_far() == [(0, values[0]), (1, min(values))]
    assert set(store.tagged("sweep", "pr")) == {t.run_id for t in summary.trials}


def test_a_stopped_sweep_continues_and_retries_the_stopped_trial(data, host, tmp_path):
    exp = _experiment(data)
    workspace = tmp_path / "ws"
    space = parse_space(exp, ["train.lr=1e-4:1e-2:log"])
    epochs = []
    stop_in_trial_1 = lambda: len(epochs) >= 4  # noqa: E731 - during trial 1's first epoch+

    def count(event):
        if type(event).__name__ == "EpochEnded":
            epochs.append(event)

    first = run_sweep(
        exp, host, workspace, "st", trials=3, space=space, sampler="random",
        on_event=count, should_stop=stop_in_trial_1,
    )  # fmt: skip
    assert first.stopped_because == "stopped by the user"
    assert [t.state for t in first.trials] == ["COMPLETE", "FAIL"]
    stopped = first.trials[1]
    assert RunStore(workspace).get(stopped.run_id).status == "cancelled"
    again = run_sweep(None, host, workspace, "st", trials=3)
    states = [t.state for t in again.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 3
    assert again.trials[2].params == stopped.params  # the stopped trial, tried again


@pytest.mark.skipif(sys.platform == "win32", reason="kills with SIGKILL")
def test_a_killed_sweep_resumes_from_the_command_line(data, host, tmp_path):
    exp = _experiment(data, train__epochs=4)
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text(exp.to_toml(), "utf-8")
    workspace = tmp_path / "ws"
    command = [sys.executable, "-m", "transferstudio", "--workspace", str(workspace), "sweep"]
    command += [str(exp_file), "--trials", "3", "--name", "k", "--sampler", "random"]
    env = {**os.environ, "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD": "1"}
    victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        # kill during the second trial: once two runs exist in the store (rows, not folders:
        # a folder is made just before its row, and a kill between them leaves no run to check)
        while time.monotonic() < deadline and victim.poll() is None:
            if (workspace / "runs.sqlite").is_file() and len(RunStore(workspace).list()) >= 2:
                break
            time.sleep(0.05)
        assert victim.poll() is None, "the sweep ended before it could be killed"
        # while it runs, a second process on the same sweep is refused (it would take the
        # running trial for an interrupted one); the victim has a trial and a half to go
        with pytest.raises(TransferStudioError, match="'k' is running in another process"):
            run_sweep(exp, host, workspace, "k", trials=3, sampler="random")
        assert victim.poll() is None
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.wait()
        victim.stderr.close()
    # the OS freed the killed process's lock: the same command continues the sweep
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "best: trial #" in done.stdout
    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.studies.sweep import summarize

    study, _ = load_sweep(workspace, "k", load_plugins(autoload=False))
    summary = summarize(study)
    finished = [t for t in summary.trials if t.state in ("COMPLETE", "PRUNED")]
    failed = [t for t in summary.trials if t.state == "FAIL"]
    assert len(finished) == 3 and len(failed) == 1
    assert any(t.params == failed[0].params for t in finished)  # retried after the kill
    store = RunStore(workspace)
    assert store.get(failed[0].run_id).status == "cancelled"
    for t in finished:
        assert store.get(t.run_id).status in ("completed", "pruned")


def test_choices_outside_the_settings_limits_are_refused_before_anything_runs(data):
    with pytest.raises(ExperimentError) as info:
        dimension(_experiment(data), "train.lr", "0.01,20")
    assert "train.lr" in str(info.value)


def test_a_sweep_whose_trials_keep_failing_stops_and_says_why(data, host, tmp_path):
    exp = _experiment(data)
    space = parse_space(exp, ["model.backbone=nosuchnet"])
    summary = run_sweep(exp, host, tmp_path / "ws", "f", trials=5, space=space)
    assert "3 trials in a row failed" in summary.stopped_because
    assert [t.state for t in summary.trials] == ["FAIL"] * 3
    assert all("nosuchnet" in t.message for t in summary.trials)


def test_continuing_a_sweep_with_another_experiment_or_sampler_is_refused(data, host, tmp_path):
    exp = _experiment(data)
    workspace = tmp_path / "ws"
    run_sweep(exp, host, workspace, "c", trials=0, sampler="random")
    changed = _experiment(data, train__epochs=5)
    with pytest.raises(ExperimentError, match="differs in train.epochs"):
        run_sweep(changed, host, workspace, "c", trials=1)
    with pytest.raises(ExperimentError, match="sampler 'random', not 'tpe'"):
        run_sweep(None, host, workspace, "c", trials=1, sampler="tpe")
    # the same experiment (as the CLI passes it again) continues
    assert len(run_sweep(exp, host, workspace, "c", trials=1).trials) == 1


def test_a_metric_the_method_does_not_measure_stops_the_sweep_with_the_key(data, host, tmp_path):
    from transferstudio.core.settings.experiment import from_mapping

    exp = _experiment(data, train__early_stopping_metric="f1_macro", train__epochs=1)

    raw = exp.to_dict()
    raw["method"] = {"name": "simclr", "params": {}}
    exp = from_mapping(raw, host.method_params)
    space = parse_space(exp, ["train.lr=1e-4:1e-2:log"])
    with pytest.raises(ExperimentError) as info:
        run_sweep(exp, host, tmp_path / "ws", "m", trials=2, space=space)
    assert "does not measure val f1_macro" in str(info.value)
    assert "train.early_stopping_metric" in str(info.value)


def test_a_detection_sweep_maximises_validation_map(host, tmp_path):
    """A sweep of a detection experiment: every trial is a detection run, scored by its
    validation mAP@0.5 (the experiment's early-stopping metric), maximised."""
    import json

    from tests.core.test_detection_engine import detection_experiment
    from transferstudio.core.data.detection_demo import generate_detection_data

    data = generate_detection_data(tmp_path / "shapes", images=16, seed=1)
    exp = detection_experiment(data, train__epochs=1)
    space = [Dimension("train.lr", "choice", choices=(0.01, 0.02))]
    summary = run_sweep(exp, host, tmp_path / "ws", "det", trials=2, space=space)
    assert summary.metric == "map50" and summary.direction == "maximize"
    assert [t.state for t in summary.trials] == ["COMPLETE", "COMPLETE"]
    store = RunStore(tmp_path / "ws")
    for trial in summary.trials:
        report = Path(store.get(trial.run_id).folder, "report.json").read_text("utf-8")
        assert trial.value == pytest.approx(json.loads(report)["val"]["metrics"]["map50"])
    assert summary.best.value == max(t.value for t in summary.trials)
