"""Every built-in exporter round-trips the whole model and a sub-module, verified."""

from __future__ import annotations

import pytest
import torch

from transferstudio.api import TransferStudioError
from transferstudio.core.inference.export import export_module, sample_input
from transferstudio.core.models.build import build_classifier


@pytest.fixture(scope="module")
def model():
    from transferstudio.core.plugins.host import load_plugins

    torch.manual_seed(0)
    return build_classifier(load_plugins(autoload=False).backbone("resnet18"), None, 3).eval()


@pytest.mark.parametrize("fmt", ["safetensors", "state_dict", "bundle", "torchscript", "onnx"])
@pytest.mark.parametrize("module_path", ["", "backbone.layer4", "head"])
def test_export_round_trips_and_verifies(host, model, tmp_path, fmt, module_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    spec = host.exporters[fmt]
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    module = model.get_submodule(module_path) if module_path else model
    example = sample_input(model, module_path, batch)
    target = tmp_path / f"out{spec.suffix}"
    result = export_module(spec, module, example, target, {"backbone": "resnet18"})
    assert target.is_file() and result.max_abs_diff is not None
    assert result.max_abs_diff <= 1e-4
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_sub_module_example_has_the_shape_it_sees_in_the_model(model):
    batch = torch.zeros(1, 3, 64, 64)
    assert sample_input(model, "backbone.layer4", batch).shape == (1, 256, 4, 4)
    assert sample_input(model, "head", batch).shape == (1, 512)


def test_a_failed_verification_leaves_no_file(host, model, tmp_path):
    import dataclasses

    # an exporter checked by its own verify (no load), which reports a difference of 0.5
    spec = dataclasses.replace(host.exporters["safetensors"], load=None, verify=lambda m, e, p: 0.5)
    target = tmp_path / "model.safetensors"
    target.write_text("previous file")
    with pytest.raises(TransferStudioError, match="max abs difference 0.5"):
        export_module(spec, model.head, torch.zeros(1, 512), target)
    assert target.read_text() == "previous file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
