"""Freeze plans give exactly the expected trainable parameters, per epoch, and survive resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import tiny_experiment
from transferstudio.api import ExperimentError, FreezePlan, parse_unfreeze_schedule
from transferstudio.core.runs.checkpoint import CheckpointStore
from transferstudio.core.training.engine import PlainState, run_experiment


def _model() -> nn.Module:
    backbone = nn.Sequential()
    backbone.add_module("stem", nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    backbone.add_module("block1", nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)))
    backbone.add_module("block2", nn.Sequential(nn.Conv2d(4, 4, 3)))
    root = nn.Module()
    root.backbone = backbone
    root.head = nn.Linear(4, 2)
    return root


ALL = {
    "backbone.stem.0.weight",
    "backbone.stem.0.bias",
    "backbone.stem.1.weight",
    "backbone.stem.1.bias",
    "backbone.block1.0.weight",
    "backbone.block1.0.bias",
    "backbone.block1.1.weight",
    "backbone.block1.1.bias",
    "backbone.block2.0.weight",
    "backbone.block2.0.bias",
    "head.weight",
    "head.bias",
}


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_glob_pattern_freezes_matching_modules_only():
    model = _model()
    trainable = FreezePlan(patterns=["backbone.stem", "backbone.block1.0"]).apply(model)
    assert (
        trainable
        == _trainable(model)
        == ALL - {n for n in ALL if n.startswith(("backbone.stem.", "backbone.block1.0."))}
    )


def test_wildcard_and_regex_patterns():
    model = _model()
    assert FreezePlan(patterns=["backbone.*"]).apply(model) == {"head.weight", "head.bias"}
    trainable = FreezePlan(patterns=[r"re:backbone\.block[12]"]).apply(_model())
    assert trainable == {n for n in ALL if not n.startswith(("backbone.block1", "backbone.block2"))}


def test_up_to_freezes_everything_registered_before_and_including_the_module():
    trainable = FreezePlan(up_to="backbone.block1").apply(_model())
    assert trainable == {
        "backbone.block2.0.weight",
        "backbone.block2.0.bias",
        "head.weight",
        "head.bias",
    }


def test_bn_frozen_fixes_affine_parameters_and_statistics():
    model = _model()
    plan = FreezePlan(bn_mode="frozen")
    trainable = plan.apply(model)
    assert trainable == ALL - {
        "backbone.stem.1.weight",
        "backbone.stem.1.bias",
        "backbone.block1.1.weight",
        "backbone.block1.1.bias",
    }
    plan.set_train_mode(model)
    bn = model.backbone.stem[1]
    assert model.training and not bn.training
    before = bn.running_mean.clone()
    model.backbone(torch.randn(2, 3, 9, 9))
    assert torch.equal(before, bn.running_mean)


def test_bn_frozen_stats_keeps_statistics_but_trains_affine():
    model = _model()
    plan = FreezePlan(bn_mode="frozen-stats")
    assert plan.apply(model) == ALL
    plan.set_train_mode(model)
    assert not model.backbone.block1[1].training


def test_gradual_unfreezing_adds_blocks_at_the_given_epochs():
    plan = FreezePlan(
        patterns=["backbone"],
        unfreeze=parse_unfreeze_schedule(["3:backbone.block2", "2:backbone.block1"]),
    )
    model = _model()
    head = {"head.weight", "head.bias"}
    block1 = {n for n in ALL if n.startswith("backbone.block1")}
    block2 = {n for n in ALL if n.startswith("backbone.block2")}
    assert plan.apply(model, epoch=0) == head  # epochs are 0-based here, 1-based in the schedule
    assert plan.apply(model, epoch=1) == head | block1
    assert plan.apply(model, epoch=2) == head | block1 | block2


def test_unknown_pattern_is_reported():
    assert FreezePlan(patterns=["backbone.nope", "head"]).unknown_patterns(_model()) == [
        "backbone.nope"
    ]


@pytest.mark.parametrize(
    ("plan", "key", "message"),
    [
        (FreezePlan(up_to="backbone.blok1"), "freeze_up_to", "did you mean 'backbone.block1'?"),
        (FreezePlan(patterns=["backbone.nope"]), "freeze", "'backbone.nope' matches no module"),
        (
            FreezePlan(patterns=["head"], unfreeze=[(2, "backbone.block3")]),
            "unfreeze",
            "did you mean 'backbone.block2'?",
        ),
    ],
)
def test_check_names_the_field_a_plan_is_wrong_in(plan, key, message):
    with pytest.raises(ExperimentError, match=message) as caught:
        plan.check(_model())
    assert caught.value.key == f"method.params.{key}"
    FreezePlan(patterns=["backbone.block*"], up_to="backbone.stem").check(_model())  # no error


@pytest.mark.parametrize("entry", ["backbone.layer4", "x:backbone", "0:backbone", "3:"])
def test_bad_unfreeze_entries_are_refused(entry):
    with pytest.raises(ValueError, match="EPOCH:PATTERN"):
        parse_unfreeze_schedule([entry])


def test_fine_tune_reports_a_pattern_that_matches_nothing(make_images, host, tmp_path):
    exp = tiny_experiment(
        make_images({"a": 6, "b": 6}), method__params={"freeze": ["backbone.layer9"]}
    )
    with pytest.raises(ExperimentError, match="method.params.freeze: pattern 'backbone.layer9'"):
        run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert not (tmp_path / "ws" / "runs").exists()  # a settings error creates no run


def test_resume_mid_schedule_restores_the_same_freeze_state(make_images, host, tmp_path):
    data = make_images({"a": 6, "b": 6})
    params = {"freeze": ["backbone"], "unfreeze": ["2:backbone.layer4", "3:backbone.layer3"]}
    exp = tiny_experiment(data, train__epochs=3, method__params=params)
    full = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    full_state = CheckpointStore(full.folder / "checkpoints").meta("last")["method_state"]

    def stop_in_epoch_two(event):
        from transferstudio.core.progress import events as E

        if isinstance(event, E.BatchEnded) and event.epoch == 1:
            state.stop = True

    state = PlainState(stop_in_epoch_two)
    stopped = run_experiment(exp, host, state, tmp_path / "ws")
    assert stopped.status == "cancelled"
    epoch0 = CheckpointStore(stopped.folder / "checkpoints").meta("last")["method_state"]
    assert not any(n.startswith("backbone.layer4") for n in epoch0["trainable"])
    resumed = run_experiment(exp, host, PlainState(), tmp_path / "ws", resume=stopped.run_id)
    resumed_state = CheckpointStore(resumed.folder / "checkpoints").meta("last")["method_state"]
    assert resumed_state == full_state
    assert any(n.startswith("backbone.layer3") for n in resumed_state["trainable"])
    assert not any(n.startswith("backbone.layer2") for n in resumed_state["trainable"])
    a = CheckpointStore(full.folder / "checkpoints").load("last").weights
    b = CheckpointStore(resumed.folder / "checkpoints").load("last").weights
    assert all(torch.equal(a[k], b[k]) for k in a)
