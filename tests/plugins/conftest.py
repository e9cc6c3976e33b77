"""Fixtures of the method tests: one intra-op thread, and a host with a small test CNN."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def _one_intra_op_thread():
    """The method tests train small networks on tiny batches: a second intra-op thread saves
    little, and on a busy 2-core machine OpenMP threads waiting for each other made these runs
    several times slower (81 s against 11 s for a LeNet domain-adaptation run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_small_cnn():
    """Three conv-BN-ReLU blocks (16, 32, 64 channels), global average pool, a classifier."""
    from collections import OrderedDict

    from torch import nn

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    features = nn.Sequential(
        *block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64)
    )
    return nn.Sequential(
        OrderedDict(
            features=features,
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(64, 10),
        )
    )


@pytest.fixture
def small_cnn_host():
    """Built-ins plus a test-only backbone ``small-cnn`` (64-d features, 24 px input) that
    trains in seconds on two CPU cores, where a resnet18 would take minutes."""
    from transferstudio.api import BackboneSpec, Preprocessing
    from transferstudio.core.plugins.host import load_plugins, plugin_from_namespace

    spec = BackboneSpec(
        name="small-cnn",
        family="test",
        feature_dim=64,
        build=build_small_cnn,
        classifier="fc",
        preprocessing=Preprocessing(resize=27, crop=24),
    )
    plugin = plugin_from_namespace("small_cnn_plugin", transferstudio_backbones=lambda: [spec])
    return load_plugins(autoload=False, extra=[plugin])
