"""Detectors on any backbone: stages cut with torch.fx, pretrained weights transferred into the
detector's body, freeze presets by stage, and a third-party backbone carrying a detector."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from transferstudio.api import BackboneSpec, ExperimentError
from transferstudio.core.models.detector import (
    DetectorRecipe,
    build_detector,
    freeze_up_to_for,
)
from transferstudio.core.models.stage_outputs import Pruned
from transferstudio.core.training.context import detector_recipe


class TinyNet(nn.Module):
    """A third-party CNN: two stages, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.pool(self.block2(self.block1(self.stem(x)))).flatten(1))


TINY = BackboneSpec("tiny", "test", 32, TinyNet, "fc", stages=("block1", "block2"))


def _images_and_targets():
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [
        {"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return images, targets


def test_a_third_party_backbone_with_stages_carries_a_detector():
    recipe = DetectorRecipe("tiny", num_classes=2, pyramid_levels=2, min_size=(64,), max_size=96)
    detector = build_detector(TINY, None, recipe)
    names = {n for n, _ in detector.named_modules()}
    assert {"backbone.body.block1", "backbone.body.block2", "backbone.fpn", "rpn"} <= names
    # Cut at the last stage: the classifier and pooling stay as weightless stand-ins.
    assert isinstance(detector.get_submodule("backbone.body.fc"), Pruned)
    assert not [n for n, _ in detector.named_parameters() if n.startswith("backbone.body.fc")]
    images, targets = _images_and_targets()
    losses = detector.train()(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert detector.backbone.body.get_submodule("block1.0").weight.grad is not None
    out = detector.eval()(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
    # num_classes + background
    assert detector.roi_heads.box_predictor.cls_score.out_features == 3


def test_pretrained_weights_land_in_the_detectors_body(tmp_path):
    source = TinyNet()
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)
    detector = build_detector(TINY, path, DetectorRecipe("tiny", 1, pyramid_levels=2))
    assert torch.equal(
        detector.backbone.body.get_submodule("block2.0").weight, source.block2[0].weight
    )
    random_init = build_detector(TINY, None, DetectorRecipe("tiny", 1, pyramid_levels=2))
    assert not torch.equal(
        random_init.backbone.body.get_submodule("block2.0").weight, source.block2[0].weight
    )


def test_a_backbone_without_stages_is_refused_with_the_reason():
    flat = BackboneSpec("flat", "test", 32, TinyNet, "fc")
    with pytest.raises(ExperimentError, match="declares no feature-map stages") as info:
        build_detector(flat, None, DetectorRecipe("flat", 1))
    assert info.value.key == "model.backbone"
    with pytest.raises(ExperimentError, match="3 pyramid levels asked"):
        build_detector(TINY, None, DetectorRecipe("tiny", 1, pyramid_levels=3))


def test_a_stage_that_is_no_module_names_the_plugins_declaration():
    wrong = BackboneSpec("wrong", "test", 32, TinyNet, "fc", stages=("block1", "nope"))
    with pytest.raises(ExperimentError, match="BackboneSpec.stages"):
        build_detector(wrong, None, DetectorRecipe("wrong", 1, pyramid_levels=2))


def test_freeze_preset_trains_the_last_stages_like_torchvision():
    resnet = SimpleNamespace(stages=("layer1", "layer2", "layer3", "layer4"))
    assert freeze_up_to_for(resnet, 3) == "backbone.body.layer1"
    assert freeze_up_to_for(resnet, 1) == "backbone.body.layer3"
    assert freeze_up_to_for(resnet, 0) == "backbone.body"
    assert freeze_up_to_for(resnet, 4) == ""


def test_builtin_backbones_declare_stages_that_build(host):
    for name in ("resnet18", "mobilenet_v3_small"):
        spec = host.backbone(name)
        detector = build_detector(spec, None, DetectorRecipe(name, 2, min_size=(64,)))
        images, targets = _images_and_targets()
        assert torch.isfinite(sum(detector.train()(images, targets).values()))
    assert not host.backbone("vit_b_16").stages  # one resolution: classification only


def test_unknown_detector_options_are_named():
    session = SimpleNamespace(backbone_spec=TINY, scan=SimpleNamespace(classes=["a", "b"]))
    recipe = detector_recipe(session, "faster_rcnn", {"min_size": 100, "pyramid_levels": 2})
    assert recipe.min_size == (100,) and recipe.num_classes == 2
    assert DetectorRecipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(TypeError, match="min_szie"):
        detector_recipe(session, "faster_rcnn", {"min_szie": 100})


def test_detectors_built_on_several_threads_at_once_all_build():
    """Builds on several threads at once, as the window's tree and a run do. With the torch.fx
    cut, EfficientNet-Lite0 (its blocks share one activation module) failed 3 builds in 4."""
    import threading

    from transferstudio.core.models.detector import stage_body
    from transferstudio.core.plugins.host import load_plugins

    host = load_plugins()
    if "efficientnet_lite0" not in host.backbones:
        pytest.skip("the EfficientNet-Lite plugin is not installed (python3 tasks.py installs it)")
    spec = host.backbone("efficientnet_lite0")
    errors: list[str] = []

    def build() -> None:
        try:
            stage_body(spec, None, 3)
        except ExperimentError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_a_model_runs_on_one_thread_while_detectors_are_built_on_another():
    """The stage cut uses forward hooks, not a torch.fx trace, which patched
    Module.__call__ for the whole process while it traced: a run training on its thread failed
    when the window built a detector for its layer tree at that moment."""
    import threading

    from transferstudio.core.models.detector import stage_body
    from transferstudio.core.plugins.host import load_plugins

    spec = load_plugins(autoload=False).backbone("mobilenet_v3_small")
    running = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    errors: list[str] = []
    building = threading.Event()

    def build() -> None:
        try:
            for _ in range(3):
                stage_body(spec, None, 3)
        finally:
            building.set()

    builder = threading.Thread(target=build)
    builder.start()
    forwards = 0
    while not building.is_set():
        try:
            running(torch.rand(2, 3, 16, 16))
            forwards += 1
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(f"{type(exc).__name__}: {exc}")
    builder.join()
    assert errors == [] and forwards > 0


def test_a_copied_body_returns_its_own_stage_outputs():
    """The hooks of a deep copy (the export's copy, a snapshot) record into the copy."""
    import copy

    from transferstudio.core.models.detector import stage_body
    from transferstudio.core.plugins.host import load_plugins

    body = stage_body(load_plugins(autoload=False).backbone("resnet18"), None, 2).eval()
    clone = copy.deepcopy(body)
    with torch.no_grad():
        clone.layer4[1].conv2.weight.zero_()
        clone.layer4[1].bn2.bias.fill_(1.0)
        x = torch.rand(1, 3, 64, 64)
        original, copied = body(x), clone(x)
    assert list(copied) == ["0", "1"]
    torch.testing.assert_close(copied["0"], original["0"])  # layer3: untouched
    assert not torch.allclose(copied["1"], original["1"])  # layer4: the copy's weights
    assert isinstance(body.fc, Pruned)  # called after the last stage
