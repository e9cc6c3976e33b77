"""Transfer gain: the baseline re-runs a run's experiment with one thing taken away (the
pretrained weights; for domain adaptation the adaptation; for distillation the teacher), and
the gain compares the two runs' headline figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import tiny_experiment, write_class_images
from transferstudio.api import TransferStudioError
from transferstudio.core.runs.workspace import RunStore
from transferstudio.core.studies.baseline import (
    BASELINE_OF,
    baseline_experiment,
    differences,
    gains,
    headline,
    run_baseline,
)
from transferstudio.core.training.engine import run_experiment


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A LeNet trained on the task (run A) and a short fine-tune that starts from it (run B)."""
    from transferstudio.core.plugins.host import load_plugins

    host = load_plugins(autoload=False)
    tmp = tmp_path_factory.mktemp("gain")
    data = write_class_images(tmp / "data", {"a": 20, "b": 20, "c": 20}, 24, 0)
    workspace = tmp / "ws"
    settings = {
        "model__backbone": "lenet",
        "data__batch_size": 8,
        "train__early_stopping_metric": "loss",
    }
    source = run_experiment(
        tiny_experiment(data, train__epochs=3, train__lr=0.003, **settings), host, None, workspace
    )
    assert source.status == "completed"
    exp = tiny_experiment(
        data, model__weights=str(source.folder), train__epochs=1, train__lr=1e-4, **settings
    )
    transfer = run_experiment(exp, host, None, workspace)
    assert transfer.status == "completed"
    return tmp, data, workspace, exp, transfer


def test_the_baseline_of_a_fine_tune_changes_only_the_weights(pretrained, host):
    _, _, _, exp, _ = pretrained
    baseline, what = baseline_experiment(exp, host)
    assert what == "random initialisation"
    assert differences(exp, baseline) == {
        "name": (exp.name, f"{exp.name}-baseline"),
        "model.weights": (exp.model.weights, "none"),
    }


def test_a_run_from_random_initialisation_has_no_baseline(pretrained, host):
    _, data, _, _, _ = pretrained
    with pytest.raises(TransferStudioError, match="already starts from random initialisation"):
        baseline_experiment(tiny_experiment(data), host)


def test_domain_adaptation_is_compared_with_source_only_fine_tuning(pretrained, host, tmp_path):
    _, data, _, exp, _ = pretrained
    dann = tiny_experiment(
        data,
        model__weights=exp.model.weights,
        data__target_path=str(data),
        data__target_eval_path=str(data),
        method__name="dann",
        method__params={"backbone_lr_mult": 0.5, "domain_weight": 0.3},
    )
    baseline, what = baseline_experiment(dann, host)
    assert what == "fine-tune without dann"
    changed = differences(dann, baseline)
    assert changed.pop("method.name") == ("dann", "fine-tune")
    assert changed.pop("name")
    # only dann's own parameters go (or take fine-tune's); the shared multiplier stays 0.5
    assert baseline.method_params.backbone_lr_mult == 0.5
    assert all(key.startswith("method.params.") for key in changed), changed
    assert baseline.data.target_eval_path == dann.data.target_eval_path  # still evaluated there
    assert baseline.model.weights == dann.model.weights  # the same pretrained backbone


def test_distillation_is_compared_with_the_student_alone(pretrained, host):
    _, data, _, _, transfer = pretrained
    distill = tiny_experiment(
        data, method__name="distill", method__params={"teacher_run": str(transfer.folder)}
    )
    baseline, what = baseline_experiment(distill, host)
    assert baseline.method == "fine-tune" and what == "fine-tune without distill"
    assert baseline.model == distill.model  # the same student, as it was initialised
    assert all(
        k in ("name", "method.name") or k.startswith("method.params.")
        for k in differences(distill, baseline)
    )


def test_the_baseline_run_is_tagged_and_the_gain_is_reported(pretrained, host):
    _, _, workspace, exp, transfer = pretrained
    result, gain = run_baseline(transfer.run_id, host, workspace)
    assert result.status == "completed" and gain is not None
    store = RunStore(workspace)
    assert store.tags(result.run_id)[BASELINE_OF] == transfer.run_id
    # the same figure on both sides: the best validation loss here (no test split; early
    # stopping on loss)
    split, metric, value = headline(json.loads((transfer.folder / "report.json").read_text()))
    assert (split, metric) == ("val", "loss")
    assert (gain.split, gain.metric, gain.transfer_value) == (split, metric, value)
    # one epoch at lr 1e-4 from random weights stays near chance (ln 3 = 1.10); the pretrained
    # start is far below: the gain (lower loss is better) is positive
    assert gain.baseline_value > 0.9 and gain.gain > 0.5, gain
    assert gains(store)[transfer.run_id] == gain
    baseline_exp = (result.folder / "experiment.toml").read_text("utf-8")
    assert 'weights = "none"' in baseline_exp
    # the runs list shows it
    done = subprocess.run(
        [sys.executable, "-m", "transferstudio", "--workspace", str(workspace), "runs"],
        capture_output=True,
        text=True,
    )
    assert f"{gain.gain:+.4f} val loss over random initialisation" in done.stdout, done.stdout


def test_baseline_command_prints_the_comparison(pretrained, tmp_path):
    _, _, workspace, _, transfer = pretrained
    done = subprocess.run(
        [sys.executable, "-m", "transferstudio", "--workspace", str(workspace), "baseline"]
        + [transfer.run_id],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "model.weights:" in done.stdout and "-> 'none'" in done.stdout
    assert "val loss" in done.stdout and "transfer" in done.stdout and "gain" in done.stdout


def test_fusion_baseline_also_takes_away_each_branchs_pretrained_weights(pretrained, host):
    _, data, _, exp, _ = pretrained
    fusion = tiny_experiment(
        data,
        model__weights=exp.model.weights,
        method__name="fusion",
        method__params={"backbones": ["", "lenet"], "weights": ["", exp.model.weights]},
    )
    baseline, what = baseline_experiment(fusion, host)
    assert what == "random initialisation"
    assert baseline.method_params.weights == ["", "none"]  # "" follows model.weights = none
    assert set(differences(fusion, baseline)) == {"name", "model.weights", "method.params.weights"}
