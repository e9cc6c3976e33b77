"""Weights come from local files only, load safely, and a mismatch names the keys."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from tests.helpers import ISSUE_BACKBONES
from transferstudio.api import WeightsError
from transferstudio.core.models.build import build_backbone, build_classifier
from transferstudio.core.models.weights import find_cached, read_state_dict
from transferstudio.core.runs.weight_sources import resolve_weights


def test_classifier_shape_of_the_file_is_ignored(tmp_path, host):
    spec = host.backbone("resnet18")
    source = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    model = build_classifier(spec, path, num_classes=3)
    assert model.head[-1].out_features == 3
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)


def test_safetensors_and_wrapped_checkpoints_load(tmp_path, host):
    spec = host.backbone("mobilenet_v3_small")
    source = torchvision.models.mobilenet_v3_small(num_classes=7)
    save_file(source.state_dict(), tmp_path / "m.safetensors")
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    for name in ("m.safetensors", "wrapped.pt"):
        backbone = build_backbone(spec, tmp_path / name)
        assert torch.equal(backbone.features[0][0].weight, source.features[0][0].weight)


def test_key_mismatch_names_missing_and_unexpected_keys(tmp_path, host):
    state = torchvision.models.resnet18().state_dict()
    del state["layer4.1.bn2.running_var"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        build_backbone(host.backbone("resnet18"), path)
    message = str(info.value)
    assert "missing keys (1): layer4.1.bn2.running_var" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "bad.pth" in message


def test_wrong_architecture_reports_shape_mismatch(tmp_path, host):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit backbone 'resnet18'"):
        build_backbone(host.backbone("resnet18"), path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv.weight": _Evil(str(marker))}, handle)
    torch.save({"x": _Evil(str(marker))}, tmp_path / "evil2.pt")
    for name in ("evil.pth", "evil2.pt"):
        with pytest.raises(WeightsError, match="refused"):
            read_state_dict(tmp_path / name)
    assert not marker.exists()


def test_cache_source_uses_the_local_torch_cache_and_never_downloads(tmp_path, host, monkeypatch):
    spec = host.backbone("resnet18")
    with pytest.raises(WeightsError, match="never downloads"):
        find_cached(spec)
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cache / spec.cache_files[0])
    assert resolve_weights(spec, "cache", tmp_path) == cache / spec.cache_files[0]
    assert build_backbone(spec, find_cached(spec)) is not None


def test_weights_setting_is_checked(tmp_path, host):
    spec = host.backbone("resnet18")
    assert resolve_weights(spec, "none", tmp_path) is None
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights(spec, "missing.pth", tmp_path)
    with pytest.raises(WeightsError, match=r"\.pt, \.pth, \.safetensors or \.tsmodel"):
        resolve_weights(spec, "weights.bin", tmp_path)


@pytest.mark.parametrize("name", ISSUE_BACKBONES)
def test_every_builtin_backbone_yields_its_declared_feature_dimension(host, name):
    spec = host.backbone(name)
    model = build_classifier(spec, None, num_classes=5).eval()
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 224, 224))
        logits = model(torch.zeros(1, 3, 224, 224))
    assert features.shape == (1, spec.feature_dim)
    assert logits.shape == (1, 5)


def test_densenet_legacy_checkpoint_keys_are_converted(tmp_path, host):
    spec = host.backbone("densenet121")
    state = torchvision.models.densenet121().state_dict()
    legacy = {
        k.replace("norm1.", "norm.1.").replace("conv1.", "conv.1.") if "denselayer" in k else k: v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    assert legacy.keys() != state.keys()
    torch.save(legacy, tmp_path / "dn.pth")
    backbone = build_backbone(spec, tmp_path / "dn.pth")
    layer = backbone.features.denseblock1.denselayer1
    assert torch.equal(layer.norm1.weight, state["features.denseblock1.denselayer1.norm1.weight"])
