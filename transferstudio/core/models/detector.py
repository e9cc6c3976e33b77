"""Detectors on any backbone: torchvision's Faster R-CNN with a feature pyramid, built on the
stages a backbone plugin declares (``BackboneSpec.stages``) with that backbone's weights.

The backbone network is built and loaded exactly as for classification (its classifier replaced,
:func:`transferstudio.core.models.build.build_backbone`), then cut at its stages by forward
hooks (:mod:`transferstudio.core.models.stage_outputs`, no ``torch.fx`` trace), so module paths
stay those of the plugin's network (``backbone.body.layer3``) and the layer tree, freeze patterns
and weight drift work unchanged.
The images' normalisation is the backbone's own preprocessing (its mean and std).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from transferstudio.api import BackboneSpec, ExperimentError
from transferstudio.core.models.build import build_backbone
from transferstudio.core.models.stage_outputs import StageOutputs, prune_unused

ARCHITECTURES = ("faster_rcnn", "retinanet", "fcos")
"""Detector architectures :func:`build_detector` builds."""
BODY = "backbone.body"
"""Where the backbone network sits in a detector (torchvision's layout)."""


@dataclass(frozen=True)
class DetectorRecipe:
    """Everything that fixes a detector's architecture (saved with checkpoints and bundles, so
    the same detector can be rebuilt without the experiment). ``num_classes`` counts object
    classes, without torchvision's background class 0."""

    backbone: str
    num_classes: int
    architecture: str = "faster_rcnn"
    pyramid_levels: int = 3
    fpn_channels: int = 128
    min_size: tuple[int, ...] = (320,)
    max_size: int = 512
    score_threshold: float = 0.05
    detections_per_image: int = 100

    def to_dict(self) -> dict:
        return {**self.__dict__, "min_size": list(self.min_size)}

    @classmethod
    def from_dict(cls, data: dict) -> DetectorRecipe:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["min_size"] = tuple(int(x) for x in known.get("min_size", (320,)))
        return cls(**known)


class PyramidBackbone(nn.Module):
    """A backbone's stage outputs through a feature pyramid (FPN, plus a max-pooled level).
    ``body`` is the plugin's network cut at its stages; ``out_channels`` is what torchvision's
    detection heads read."""

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int) -> None:
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


DEFAULT_TRAINABLE_STAGES = 3
"""Backbone stages a new detection experiment trains (torchvision's ``trainable_backbone_layers``
default for pretrained backbones): the earlier ones, and the stem, stay frozen."""


def freeze_up_to_for(spec: BackboneSpec, trainable: int = DEFAULT_TRAINABLE_STAGES) -> str:
    """The ``freeze_up_to`` path (in the detector) that trains only the last ``trainable``
    stages of ``spec``'s backbone, with the pyramid and heads; "" trains everything."""
    if trainable >= len(spec.stages):
        return ""
    if trainable <= 0:
        return BODY
    return f"{BODY}.{spec.stages[-trainable - 1]}"


def stage_body(spec: BackboneSpec, weights_file: Path | None, levels: int) -> nn.Module:
    """The backbone network returning its last ``levels`` stage outputs as ``{"0": ..., ...}``
    (shallow first)."""
    if not spec.stages:
        raise ExperimentError(
            f"backbone {spec.name!r} declares no feature-map stages (BackboneSpec.stages), so "
            "it cannot carry a detector; choose a convolutional backbone such as resnet18 or "
            "mobilenet_v2",
            "model.backbone",
        )
    if not 1 <= levels <= len(spec.stages):
        raise ExperimentError(
            f"{levels} pyramid levels asked; backbone {spec.name!r} has {len(spec.stages)} stages",
            "method.params.pyramid_levels",
        )
    network = build_backbone(spec, weights_file)
    stages = spec.stages[-levels:]
    try:
        prune_unused(network, stages[-1], torch.zeros(1, 3, 64, 64))
        body = StageOutputs(network, stages)
        stage_channels(body)  # the cut network still runs
    except Exception as exc:  # noqa: BLE001 - a plugin's network can raise anything
        raise ExperimentError(
            f"backbone {spec.name!r}: its network cannot be cut at its stages "
            f"{', '.join(stages)} ({type(exc).__name__}: {exc}); the plugin's "
            "BackboneSpec.stages must name modules that build()'s network calls in its forward",
            "model.backbone",
        ) from exc
    return body


def stage_shapes(body: nn.Module, size: int = 64) -> list[tuple[int, int]]:
    """``(channels, stride)`` of each stage output, from one small forward pass."""
    was_training = body.training
    body.eval()
    with torch.no_grad():
        outputs = body(torch.zeros(1, 3, size, size))
    body.train(was_training)
    return [(int(t.shape[1]), max(1, size // int(t.shape[-1]))) for t in outputs.values()]


def stage_channels(body: nn.Module, size: int = 64) -> list[int]:
    """The channel count of each stage output, from one small forward pass."""
    return [channels for channels, _ in stage_shapes(body, size)]


def build_detector(
    spec: BackboneSpec,
    weights_file: Path | None,
    recipe: DetectorRecipe,
) -> nn.Module:
    """A torchvision detector for ``recipe.num_classes`` object classes on ``spec``'s
    backbone, its backbone weights read from ``weights_file`` (random initialisation when
    ``None``); the pyramid and heads are new.

    ``recipe.architecture``: ``faster_rcnn`` (two stages: region proposals, then a box head on
    pooled regions; torchvision's most accurate on small data), ``retinanet`` (one stage,
    focal loss over anchors) or ``fcos`` (one stage, anchor-free: each pyramid cell predicts
    the distances to the box around it). Labels are 1-based in all three: torchvision's class
    0 is the background of Faster R-CNN and unused by the one-stage heads."""
    from transferstudio.core.models.detector_resize import exact_resize

    if recipe.architecture not in ARCHITECTURES:
        raise ExperimentError(
            f"detector {recipe.architecture!r} is not one of {', '.join(ARCHITECTURES)}",
            "method.params.architecture",
        )
    if recipe.architecture == "fcos" and recipe.fpn_channels % 32:
        raise ExperimentError(
            f"fcos normalises its heads in 32 groups: fpn_channels ({recipe.fpn_channels}) "
            "must be a multiple of 32",
            "method.params.fpn_channels",
        )
    body = stage_body(spec, weights_file, recipe.pyramid_levels)
    shapes = stage_shapes(body)
    backbone = PyramidBackbone(body, [c for c, _ in shapes], recipe.fpn_channels)
    strides = [s for _, s in shapes] + [shapes[-1][1] * 2]  # the FPN's max-pooled level on top
    pre = spec.preprocessing
    common = {
        "num_classes": recipe.num_classes + 1,  # torchvision's label 0 is background
        "min_size": recipe.min_size,
        "max_size": recipe.max_size,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
    }
    build = {"faster_rcnn": _faster_rcnn, "retinanet": _retinanet, "fcos": _fcos}
    detector = build[recipe.architecture](backbone, recipe, strides, common)
    # The same image size in Python, TorchScript and ONNX (torchvision's differs by a pixel).
    return exact_resize(detector)


def _faster_rcnn(backbone, recipe: DetectorRecipe, strides: list[int], common: dict) -> nn.Module:
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    levels = len(strides)
    # One anchor size per level, doubling with the level (as torchvision's FPN detectors),
    # starting from 32 px: the smallest objects a stride-8 map still separates.
    sizes = tuple((32 * 2**i,) for i in range(levels))
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * levels)
    pooler = MultiScaleRoIAlign(
        featmap_names=[str(i) for i in range(recipe.pyramid_levels)],
        output_size=7,
        sampling_ratio=2,
    )
    return FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        box_roi_pool=pooler,
        box_score_thresh=recipe.score_threshold,
        box_detections_per_img=recipe.detections_per_image,
        **common,
    )


def _retinanet(backbone, recipe: DetectorRecipe, strides: list[int], common: dict) -> nn.Module:
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    # torchvision's RetinaNet anchors: three scales an octave apart at each level, three
    # ratios; the base size doubles with the level from 32 px as for Faster R-CNN.
    sizes = tuple(
        tuple(round(32 * 2**i * 2 ** (k / 3)) for k in range(3)) for i in range(len(strides))
    )
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(strides))
    return RetinaNet(
        backbone,
        anchor_generator=anchors,
        score_thresh=recipe.score_threshold,
        detections_per_img=recipe.detections_per_image,
        **common,
    )


def _fcos(backbone, recipe: DetectorRecipe, strides: list[int], common: dict) -> nn.Module:
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    # FCOS places one point per cell: its "anchor" at each level is the level's stride, which
    # its centre sampling and regression ranges are measured in.
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in strides), aspect_ratios=((1.0,),) * len(strides)
    )
    return FCOS(
        backbone,
        anchor_generator=anchors,
        score_thresh=recipe.score_threshold,
        detections_per_img=recipe.detections_per_image,
        **common,
    )


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` is one of the detectors :func:`build_detector` builds."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    return isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform)


def detection_heads(model: nn.Module) -> nn.Module | None:
    """The module holding a detector's ``nms_thresh``, ``detections_per_img`` and score
    threshold: Faster R-CNN's RoI heads, or the one-stage detector itself."""
    heads = getattr(model, "roi_heads", model)
    return heads if hasattr(heads, "nms_thresh") and hasattr(heads, "detections_per_img") else None


def detector_from_recipe(
    spec: BackboneSpec, recipe: dict, state: dict[str, torch.Tensor], source: str
) -> nn.Module:
    """A trained detector rebuilt from its recipe (a checkpoint's ``detector_recipe``) and
    weights, in eval mode and frozen; weights that do not fit are a ``WeightsError`` naming
    ``source``."""
    from transferstudio.api import WeightsError

    model = build_detector(spec, None, DetectorRecipe.from_dict(recipe))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(
            f"the weights in {source} do not fit the detector its recipe describes: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return model.eval().requires_grad_(False)
