"""The plugin's own tests, written as its author would: TransferStudio's test kit (the
``plugin_conformance`` and ``plugin_host`` fixtures come from its pytest plugin) and torch."""

from __future__ import annotations

import pytest
import torch

# Collected with TransferStudio's own tests: skipped, not an import error, where it is absent.
plugin = pytest.importorskip("transferstudio_efficientnet_lite")


def test_the_plugin_conforms(plugin_conformance):
    report = plugin_conformance(plugin)
    assert report.ok, report.text()
    (backbone,) = report.results
    assert "1280 features at 224 px" in backbone.detail
    assert "packaged weights" in backbone.detail and "loaded" in backbone.detail


def test_the_backbone_is_registered_with_tensorflow_normalisation(plugin_host):
    host = plugin_host(plugin)
    spec = host.backbone("efficientnet_lite0")
    assert spec.preprocessing.mean == (0.498, 0.498, 0.498)
    assert spec.preprocessing.std == (0.502, 0.502, 0.502)
    assert "efficientnet_lite0" not in plugin_host().backbones  # only what a test registers


def test_the_shipped_weights_fit_the_network_and_are_trained():
    state = torch.load(plugin.lite0_weights_file(), weights_only=True)  # no pickled code
    net = plugin.build_lite0()
    net.load_state_dict(state)  # strict: every key, every shape
    assert state["_fc.weight"].shape == (1000, plugin.LITE0_FEATURES)
    # Trained BatchNorm statistics, not the initial zeros and ones.
    assert not torch.allclose(state["_bn0.running_var"], torch.ones_like(state["_bn0.running_var"]))
