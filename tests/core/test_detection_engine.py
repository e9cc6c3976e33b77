"""Detection through the same engine as classification: a run on generated shapes learns to
find them, writes its files with mAP and loss components, resumes exactly, and refuses a
method of another task."""

from __future__ import annotations

import json

import pytest
import torch

from transferstudio.api import ExperimentError
from transferstudio.core.data.detection_demo import generate_detection_data
from transferstudio.core.plugins.host import load_plugins
from transferstudio.core.progress import events as E
from transferstudio.core.runs.workspace import RunStore
from transferstudio.core.settings.experiment import from_mapping
from transferstudio.core.training.engine import PlainState, run_experiment

LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_detection_data(tmp_path_factory.mktemp("shapes"), images=24, seed=1)


def detection_experiment(data, **overrides):
    raw = {
        "schema_version": 1,
        "name": "shapes",
        "task": "detection",
        "data": {"path": str(data), "val_split": 0.25, "batch_size": 4, "num_workers": 0},
        "augment": {"random_resized_crop": False, "hflip": True},
        "model": {"backbone": "mobilenet_v3_small", "weights": "none"},
        "train": {
            "epochs": 2,
            "device": "cpu",
            "optimizer": "sgd",
            "lr": 0.01,
            "seed": 3,
            "early_stopping_metric": "map50",
        },
        "method": {
            "name": "detect",
            "params": {"min_size": 96, "max_size": 128, "scale_jitter": False},
        },
    }
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_mapping(raw, load_plugins(autoload=False).method_params)


def test_a_detection_run_reports_map_and_each_loss_term(shapes, tmp_path):
    host = load_plugins(autoload=False)
    state = PlainState()
    result = run_experiment(detection_experiment(shapes), host, state, tmp_path / "ws")
    assert result.status == "completed", result.message
    report = json.loads((result.folder / "report.json").read_text())
    assert report["metric"] == "map50"
    metrics = report["val"]["metrics"]
    assert {"map", "map50", "map75", "mar100"} <= set(metrics)
    assert 0.0 <= metrics["map"] <= metrics["map50"] <= 1.0
    assert [row["class"] for row in report["val"]["per_class"]] == [
        "circle",
        "square",
        "triangle",
    ]
    header = (result.folder / "metrics.csv").read_text().splitlines()[0]
    for term in LOSSES:
        assert f"train_{term}" in header
    batches = [e for e in state.events if isinstance(e, E.BatchEnded)]
    assert batches[0].images == 4  # a detection batch counts its images (the ETA's images/s)
    epochs = [e for e in state.events if isinstance(e, E.EpochEnded)]

    assert len(epochs) == 2 and all(set(LOSSES) <= set(e.train) for e in epochs)
    splits = json.loads((result.folder / "splits.json").read_text())
    assert splits["task"] == "detection"
    assert RunStore(tmp_path / "ws").get(result.run_id).status == "completed"


def test_a_classification_method_is_refused_for_a_detection_experiment(shapes, tmp_path):
    host = load_plugins(autoload=False)
    exp = detection_experiment(shapes, method__name="fine-tune", method__params={})
    with pytest.raises(ExperimentError, match="method 'fine-tune' is for classification") as info:
        run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert info.value.key == "method.name"
    assert not (tmp_path / "ws" / "runs").exists() or not any((tmp_path / "ws" / "runs").iterdir())


def test_the_task_is_checked_and_kept_in_the_experiment_file(shapes):
    host = load_plugins(autoload=False)
    exp = detection_experiment(shapes)
    assert exp.task == "detection"
    text = exp.to_toml()
    assert 'task = "detection"' in text
    with pytest.raises(ExperimentError, match="must be one of classification, detection"):
        detection_experiment(shapes, task="segmentation")
    plain = from_mapping({"method": {"name": "fine-tune"}}, host.method_params)
    assert plain.task == "classification" and "\ntask =" not in plain.to_toml()


def test_the_baseline_of_a_detector_trains_it_whole_from_random_init(shapes, tmp_path):
    import torchvision

    from transferstudio.core.studies.baseline import baseline_experiment

    weights = tmp_path / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    exp = detection_experiment(
        shapes,
        model__weights=str(weights),
        method__params={"freeze_up_to": "backbone.body.features.3", "bn_mode": "frozen"},
    )
    base, what = baseline_experiment(exp, load_plugins(autoload=False))
    assert base.model.weights == "none" and base.task == "detection"
    assert base.method_params.freeze_up_to == "" and base.method_params.bn_mode == "train"
    assert "whole detector" in what
    # Everything else is the same budget.
    assert base.train == exp.train and base.data == exp.data
    assert base.method_params.min_size == exp.method_params.min_size


def test_a_stopped_detection_run_resumes_to_the_uninterrupted_result(shapes, tmp_path):
    from tests.core.test_engine import _final_weights

    host = load_plugins(autoload=False)
    # Augmented (flip, IoU crop, photometric) and scale-jittered: the random streams resume too.
    exp = detection_experiment(
        shapes,
        augment__random_resized_crop=True,
        augment__color_jitter=0.2,
        method__params={"min_size": 96, "max_size": 128, "scale_jitter": True},
    )
    full = run_experiment(exp, host, PlainState(), tmp_path / "ws")

    def stop_in_the_second_epoch(event):
        if isinstance(event, E.BatchEnded) and event.epoch == 1 and event.batch == 1:
            state.stop = True

    state = PlainState(stop_in_the_second_epoch)
    stopped = run_experiment(exp, host, state, tmp_path / "ws")
    assert stopped.status == "cancelled" and stopped.epochs_done == 1
    resumed = run_experiment(exp, host, PlainState(), tmp_path / "ws", resume=stopped.run_id)
    assert resumed.status == "completed"
    a, b = _final_weights(full.folder), _final_weights(resumed.folder)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.report["val"]["metrics"] == full.report["val"]["metrics"]


def test_the_learning_rate_finder_runs_on_a_detector(shapes, tmp_path):
    from transferstudio.core.training.lr_finder import find_lr

    exp = detection_experiment(shapes)
    result = find_lr(exp, load_plugins(autoload=False), tmp_path / "ws", 1e-5, 1.0, steps=6)
    assert len(result.lrs) == len(result.losses) >= 3
    assert all(loss == loss for loss in result.losses)  # finite, not NaN


@pytest.mark.parametrize(
    "architecture, terms, kind",
    [
        ("retinanet", ("classification", "bbox_regression"), "RetinaNet"),
        ("fcos", ("classification", "bbox_regression", "bbox_ctrness"), "FCOS"),
    ],
)
def test_one_stage_detectors_train_through_the_same_engine(
    shapes, tmp_path, architecture, terms, kind
):
    """RetinaNet and FCOS on the same pyramid: their loss terms are logged, the run reports
    mAP, and the checkpoint's recipe rebuilds the same architecture."""
    from transferstudio.core.runs.finished import detector_from_checkpoint, load_best_checkpoint

    host = load_plugins(autoload=False)
    params = {"min_size": 96, "max_size": 128, "scale_jitter": False}
    exp = detection_experiment(shapes, method__params={**params, "architecture": architecture})
    result = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert result.status == "completed", result.message
    header = (result.folder / "metrics.csv").read_text().splitlines()[0]
    assert all(f"train_{term}" in header for term in terms)
    assert "train_loss_objectness" not in header
    metrics = json.loads((result.folder / "report.json").read_text())["val"]["metrics"]
    assert 0.0 <= metrics["map"] <= metrics["map50"] <= 1.0
    detector = detector_from_checkpoint(load_best_checkpoint(result.folder), host, "run")
    assert type(detector).__name__ == kind


def test_fcos_needs_pyramid_channels_in_groups_of_32(shapes, tmp_path):
    host = load_plugins(autoload=False)
    params = {"min_size": 96, "max_size": 128, "architecture": "fcos", "fpn_channels": 48}
    exp = detection_experiment(shapes, method__params=params)
    with pytest.raises(ExperimentError, match="multiple of 32") as info:
        run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert info.value.key == "method.params.fpn_channels"
