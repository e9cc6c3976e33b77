"""fusion: branches on their own views, fused features beating every branch alone.

The task is built so that each half of the image holds half of the answer: the class is the
pair (colour of the left half, colour of the right half). A backbone that sees only the left
half (``views = ["left"]``) can tell at most 2 of the 4 classes apart, so can one that sees only
the right half; fusing the two sees both.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from transferstudio_builtins.fusion import FusionParams

from tests.helpers import tiny_experiment
from transferstudio.api import ExperimentError
from transferstudio.core.plugins.host import load_plugins, plugin_from_namespace
from transferstudio.core.progress import events as E
from transferstudio.core.runs.checkpoint import CheckpointStore
from transferstudio.core.training.engine import PlainState, run_experiment

LEFT = {"red": (210, 50, 50), "green": (50, 190, 70)}
RIGHT = {"blue": (60, 80, 220), "yellow": (220, 200, 50)}


def write_halves(root, per_class: int, seed: int, size: int = 32):
    """``root/<left>-<right>/<i>.png``: each half a noisy shade of its colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for left_name, left in LEFT.items():
        for right_name, right in RIGHT.items():
            folder = root / f"{left_name}-{right_name}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = np.empty((size, size, 3))
                image[:, : size // 2] = np.array(left) + rng.normal(0, 25, 3)
                image[:, size // 2 :] = np.array(right) + rng.normal(0, 25, 3)
                image += rng.normal(0, 20, image.shape)
                pixels = np.clip(image, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    root = tmp_path_factory.mktemp("halves")
    write_halves(root / "train", 12, seed=1)
    write_halves(root / "val", 15, seed=2)
    return root


def _experiment(data, params: dict, epochs: int = 6, **overrides):
    settings = {
        "model__backbone": "lenet",
        "data__image_size": 0,
        "data__batch_size": 8,
        "augment__hflip": False,  # a flip would swap the halves
        "train__epochs": epochs,
        "train__lr": 2e-3,
        "method__name": "fusion",
        "method__params": {"backbone_lr_mult": 1.0, **params},
    }
    return tiny_experiment(data, **{**settings, **overrides})


def _val_accuracy(data, host, tmp_path, params, state=None):
    result = run_experiment(_experiment(data, params), host, state or PlainState(), tmp_path)
    assert result.status == "completed", result.message
    return result.report["val"]["metrics"]["accuracy"]


def test_fusing_two_half_views_beats_each_view_alone(halves, host, tmp_path):
    left = _val_accuracy(halves, host, tmp_path, {"backbones": ["lenet"], "views": ["left"]})
    right = _val_accuracy(halves, host, tmp_path, {"backbones": ["lenet"], "views": ["right"]})
    fused = _val_accuracy(
        halves, host, tmp_path, {"backbones": ["lenet", "lenet"], "views": ["left", "right"]}
    )
    assert max(left, right) <= 0.6  # one half tells 2 of the 4 classes apart
    assert fused >= max(left, right) + 0.3
    assert fused >= 0.9


def test_weighted_sum_logs_softmax_weights_per_backbone(halves, host, tmp_path):
    state = PlainState()
    params = {
        "backbones": ["lenet", "lenet"],
        "views": ["left", "right"],
        "mode": "weighted_sum",
        "width": 32,
    }
    assert _val_accuracy(halves, host, tmp_path, params, state) >= 0.9
    logs = [e.logs for e in state.events if isinstance(e, E.BatchEnded)]
    assert set(logs[-1]) == {"w_lenet_left", "w_lenet_right"}
    assert sum(logs[-1].values()) == pytest.approx(1.0)
    assert logs[0]["w_lenet_left"] == pytest.approx(0.5, abs=0.01)  # uniform at the start
    last = [e for e in state.events if isinstance(e, E.EpochEnded)][-1]
    assert last.val["diag_w_lenet_left"] + last.val["diag_w_lenet_right"] == pytest.approx(1.0)


def test_a_frozen_backbone_keeps_its_weights_and_the_trainable_one_learns(halves, host, tmp_path):
    from transferstudio_builtins.small_backbones import build_lenet

    torch.manual_seed(5)
    weights = tmp_path / "lenet.pth"
    torch.save(build_lenet().state_dict(), weights)
    params = {
        "backbones": ["lenet", "lenet"],
        "weights": [str(weights), str(weights)],
        "trainable": ["frozen", "trainable"],
        "views": ["left", "right"],
    }
    result = run_experiment(_experiment(halves, params, epochs=1), host, PlainState(), tmp_path)
    assert result.status == "completed", result.message
    trained = CheckpointStore(result.folder / "checkpoints").load("last").weights
    original = torch.load(weights, weights_only=True)
    key = "features.0.weight"
    assert torch.equal(trained[f"model.branches.0.backbone.{key}"], original[key])
    assert not torch.equal(trained[f"model.branches.1.backbone.{key}"], original[key])


def test_branches_default_to_the_experiment_backbone_and_lists_must_align():
    assert FusionParams().branches() == [(None, None, True, "full")]
    params = FusionParams(backbones=["lenet", "conv4"], trainable=["frozen"], views=["top"])
    assert params.branches() == [
        ("lenet", None, False, "top"),
        ("conv4", None, False, "top"),
    ]
    with pytest.raises(ExperimentError, match="method.params.weights"):
        replace(params, weights=["none"]).branches()
    with pytest.raises(ExperimentError, match="method.params.views"):
        replace(params, views=["diagonal"]).branches()
    with pytest.raises(ExperimentError, match="method.params.trainable"):
        replace(params, trainable=["maybe"]).branches()
    assert replace(params, trainable=[True, False]).branches()[1][2] is False


def test_the_trained_fused_predictor_exports_to_torchscript(halves, tmp_path):
    from transferstudio_builtins.exporters import builtin_exporters
    from transferstudio_builtins.fusion import FUSION, Fusion

    from transferstudio.core.inference.export import export_module

    instances = []

    def keep(params):
        instances.append(Fusion(params))
        return instances[-1]

    probe = plugin_from_namespace(
        "fusion_probe",
        transferstudio_methods=lambda: [replace(FUSION, name="fusion-probe", factory=keep)],
    )
    host = load_plugins(autoload=False, extra=[probe])
    params = {"backbones": ["lenet", "lenet"], "views": ["left", "center"], "mode": "weighted_sum"}
    exp = replace(_experiment(halves, params, epochs=1), method="fusion-probe")
    assert run_experiment(exp, host, PlainState(), tmp_path).status == "completed"
    torchscript = next(s for s in builtin_exporters() if s.format == "torchscript")
    example = torch.randn(2, 3, 28, 28)
    result = export_module(torchscript, instances[0].predictor(), example, tmp_path / "fused.pt")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5
