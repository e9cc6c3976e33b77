"""Folded BatchNorm in pretrained weights: found, explained, and answered with frozen-stats
(core/models/bn_check.py, the engine's warning, ``init --weights``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import run_cli, tiny_experiment
from transferstudio.core.models.bn_check import batchnorm_stats, folded_batchnorm_reason
from transferstudio.core.models.weights import read_state_dict
from transferstudio.core.training.engine import PlainState, run_experiment

SHARED_MOBILENET = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "data"
    / "weights"
    / "mobilenet_v2_imagenet.pth"
)


def conv4_weights(folder: Path, folded: bool, host) -> Path:
    """conv4's weights with folded BatchNorm (statistics left at mean 0, variance 1 - eps) or
    with statistics a network trained in train mode would have."""
    model = host.backbone("conv4").build()
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            if folded:
                module.running_var.fill_(1 - module.eps)
            else:
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.2, 3.0)
    path = folder / ("folded.pth" if folded else "trained.pth")
    torch.save(model.state_dict(), path)
    return path


def test_identity_statistics_are_found_and_explained(tmp_path, host):
    folded = read_state_dict(conv4_weights(tmp_path, True, host))
    stats = batchnorm_stats(folded)
    assert stats.layers == 4 and stats.identity == 4 and stats.folded
    reason = folded_batchnorm_reason(folded, "folded.pth")
    assert reason.startswith("4 of 4 BatchNorm layers in folded.pth hold identity statistics")
    assert "frozen-stats" in reason

    trained = read_state_dict(conv4_weights(tmp_path, False, host))
    assert batchnorm_stats(trained).identity == 0
    assert folded_batchnorm_reason(trained, "trained.pth") == ""
    # a network without BatchNorm has nothing to fold
    assert folded_batchnorm_reason({"fc.weight": torch.ones(2, 2)}, "x") == ""


def test_one_real_statistics_layer_among_few_is_not_enough(tmp_path, host):
    state = read_state_dict(conv4_weights(tmp_path, True, host))
    keys = [k for k in state if k.endswith("running_mean")]
    state[keys[0]] = torch.full_like(state[keys[0]], 0.3)
    state[keys[1]] = torch.full_like(state[keys[1]], 0.3)
    assert batchnorm_stats(state).identity == 2
    assert not batchnorm_stats(state).folded  # 2 of 4: below the 80 % share


@pytest.mark.skipif(not SHARED_MOBILENET.is_file(), reason="../shared/data weights not present")
def test_the_shared_mobilenet_is_recognised_as_folded():
    stats = batchnorm_stats(read_state_dict(SHARED_MOBILENET))
    assert stats.layers == 52 and stats.identity == 52
    reason = folded_batchnorm_reason(read_state_dict(SHARED_MOBILENET), SHARED_MOBILENET.name)
    assert reason.startswith("52 of 52 BatchNorm layers in mobilenet_v2_imagenet.pth")


def test_a_resnet_that_has_seen_data_in_train_mode_is_not_folded():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2)
    # untouched, its statistics are BatchNorm's initial ones: indistinguishable from folded
    assert batchnorm_stats(model.state_dict()).folded
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 64, 64) * 2 + 0.5)
    stats = batchnorm_stats(model.state_dict())
    assert stats.layers == 20 and stats.identity == 0
    assert folded_batchnorm_reason(model.state_dict(), "resnet18.pth") == ""


def test_a_run_warns_when_folded_weights_train_their_statistics(make_images, host, tmp_path):
    data = make_images({"a": 6, "b": 6})
    weights = conv4_weights(tmp_path, True, host)
    exp = tiny_experiment(data, model__backbone="conv4", model__weights=str(weights))
    exp.train.epochs = 1
    result = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    log = (Path(result.folder) / "log.txt").read_text()
    assert "WARNING: 4 of 4 BatchNorm layers in folded.pth hold identity statistics" in log
    assert 'bn_mode = "frozen-stats"' in log

    exp.method_params.bn_mode = "frozen-stats"
    result = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert "identity statistics" not in (Path(result.folder) / "log.txt").read_text()


def test_init_takes_weights_and_sets_frozen_stats_for_folded_ones(tmp_path, host):
    def init(weights):
        args = ("init", "--method", "fine-tune", "--backbone", "conv4", "--weights", str(weights))
        return run_cli(tmp_path / "ws", *args)

    folded = conv4_weights(tmp_path, True, host)
    out = init(folded)
    assert f'weights = "{folded}"' in out.stdout
    assert 'bn_mode = "frozen-stats"' in out.stdout
    assert "4 of 4 BatchNorm layers" in out.stderr

    out = init(conv4_weights(tmp_path, False, host))
    assert 'bn_mode = "train"' in out.stdout and out.stderr == ""


def test_init_refuses_missing_weights_and_suggests_names(tmp_path):
    import subprocess
    import sys

    from tests.helpers import CLI_ENV

    def init(*args):
        return subprocess.run(
            [sys.executable, "-m", "transferstudio", "init", "--method", "fine-tune", *args],
            env=CLI_ENV,
            capture_output=True,
            text=True,
        )

    missing = init("--weights", str(tmp_path / "gone.pth"))
    assert missing.returncode != 0 and "gone.pth does not exist" in missing.stderr
    typo = init("--backbone", "resnt18")
    assert typo.returncode != 0 and "did you mean 'resnet18'?" in typo.stderr
    method = init("--method", "fine-tun")  # the last --method counts
    assert "did you mean 'fine-tune'?" in method.stderr


def test_a_new_experiment_starts_from_pretrained_weights_when_they_are_here(host):
    from transferstudio.core.models.weights import default_weights

    assert default_weights(host.backbone("lenet")) == "none"  # no pretrained file exists
    if "efficientnet_lite0" in host.backbones:  # its plugin ships its ImageNet weights
        assert default_weights(host.backbone("efficientnet_lite0")) == "cache"
