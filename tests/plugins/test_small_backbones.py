"""The small CNN backbones: shapes, registration with the host, and a real fine-tune run."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_experiment
from transferstudio.core.models.build import build_backbone, build_classifier
from transferstudio.core.training.engine import PlainState, run_experiment

SMALL = {"lenet": 100, "conv4": 64}


def test_the_host_lists_the_small_backbones(host):
    assert set(SMALL) <= set(host.backbones)
    for name, dim in SMALL.items():
        spec = host.backbone(name)
        assert spec.family == "small CNN"
        assert spec.feature_dim == dim
        assert spec.preprocessing.mean == (0.5, 0.5, 0.5)
        assert spec.cache_files == ()  # trained from scratch: nothing to look up, nothing to fetch
        assert spec.approx_params == sum(p.numel() for p in spec.build().parameters())


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("size", [28, 32])
def test_features_and_logits_have_the_declared_shapes(host, name, size):
    spec = host.backbone(name)
    torch.manual_seed(0)
    model = build_classifier(spec, None, num_classes=3).eval()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = model.backbone(images)
        logits = model(images)
    assert features.shape == (2, SMALL[name])
    assert logits.shape == (2, 3)
    # The features are not constant: the network reacts to its input.
    assert not torch.allclose(features[0], features[1])


def test_conv4_features_at_28_px_are_the_standard_unpooled_ones(host):
    # 28 -> 14 -> 7 -> 3 -> 1: the adaptive pool must be a no-op at the Omniglot size.
    backbone = build_backbone(host.backbone("conv4"), None).eval()
    images = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        maps = backbone.encoder(images)
        assert maps.shape == (2, 64, 1, 1)
        assert torch.equal(backbone(images), maps.flatten(1))


def test_lenet_fine_tune_run_learns_the_colour_task(make_images, host, tmp_path):
    data = make_images({"red": 8, "green": 8, "blue": 8}, size=32)
    exp = tiny_experiment(data, model__backbone="lenet", train__epochs=6, train__lr=0.003)
    result = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert result.status == "completed", result.message
    assert result.best_metric is not None and result.best_metric >= 0.8
