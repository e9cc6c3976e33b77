"""``detect``: object detection by transfer, a Faster R-CNN (or RetinaNet, or FCOS) with a
feature pyramid on the experiment's backbone (its pretrained weights transferred, new pyramid and heads), fine-tuned
under a freeze plan like ``fine-tune``'s: the layer tree, presets, discriminative learning rates
and gradual unfreezing work on the whole detector."""

from __future__ import annotations

from dataclasses import dataclass

from transferstudio.api import (
    BN_MODES,
    ROLE_DETECTION,
    TASK_DETECTION,
    ExperimentError,
    LayerTreeSpec,
    MethodSpec,
    StepOutput,
    param,
)

from .fine_tune import FineTune, FineTuneParams

BACKBONE = "backbone.body"
"""Where the backbone network sits in the detector (torchvision's layout)."""


@dataclass
class DetectParams(FineTuneParams):
    """Object detection: the detector built on the backbone, and which of its layers train."""

    # The freeze settings of fine-tune, with detection's defaults: BatchNorm fixed (batches of
    # a few images give useless statistics; torchvision's detectors freeze it too) and one
    # learning rate for the whole detector.
    bn_mode: str = param(
        "frozen",
        choices=BN_MODES,
        help="BatchNorm: 'frozen' fixes statistics and affine parameters (as torchvision's "
        "detectors), 'frozen-stats' fixes the statistics only, 'train' updates both",
    )
    backbone_lr_mult: float = param(
        1.0,
        min=0.0,
        max=10.0,
        help="backbone learning rate = train.lr times this (the pyramid and heads train at lr)",
    )
    architecture: str = param(
        "faster_rcnn",
        choices=["faster_rcnn", "retinanet", "fcos"],
        help="detector on the feature pyramid: 'faster_rcnn' (two stages: proposals, then a box "
        "head; the most accurate on small data), 'retinanet' (one stage, focal loss over "
        "anchors) or 'fcos' (one stage, anchor-free; fpn_channels a multiple of 32)",
    )
    pyramid_levels: int = param(
        3, min=1, max=5, help="backbone stages feeding the feature pyramid, deepest first"
    )
    fpn_channels: int = param(128, min=16, max=512, help="channels of the feature pyramid")
    min_size: int = param(
        320, min=64, max=2048, help="short side of the images inside the detector, in pixels"
    )
    max_size: int = param(
        512, min=64, max=4096, help="long side limit of the images inside the detector"
    )
    scale_jitter: bool = param(
        True, help="train at a short side picked from 0.8, 0.9, 1, 1.1 and 1.2 times min_size"
    )
    score_threshold: float = param(
        0.05,
        min=0.0,
        max=1.0,
        help="detections scoring below this are dropped before evaluation and export",
    )

    def validate(self) -> None:
        super().validate()
        if self.max_size < self.min_size:
            raise ExperimentError(
                f"max_size ({self.max_size}) is below min_size ({self.min_size}); raise it",
                "method.params.max_size",
            )

    def detector_options(self) -> dict:
        """What ``ctx.build_detector`` takes."""
        # torchvision picks a size at random in training and evaluates at the last one: the
        # configured size goes last, so that evaluation and prediction run at min_size.
        sizes = (
            tuple(round(self.min_size * f) for f in (0.8, 0.9, 1.1, 1.2, 1.0))
            if self.scale_jitter
            else (self.min_size,)
        )
        return {
            "pyramid_levels": self.pyramid_levels,
            "fpn_channels": self.fpn_channels,
            "min_size": sizes,
            "max_size": self.max_size,
            "score_threshold": self.score_threshold,
        }


class Detect(FineTune):
    """``fine-tune``'s freeze plan, epochs and gradual unfreezing on a detector (``self.model``):
    its loss is the sum of torchvision's terms (Faster R-CNN: RPN objectness and box regression,
    classifier and box regression; RetinaNet: classification and box regression; FCOS: those and
    centerness), each logged."""

    def setup(self, ctx) -> None:
        self.model = ctx.build_detector(self.params.architecture, **self.params.detector_options())
        self.plan.check(self.model)

    def modules(self):
        return {"detector": self.model}

    def parameter_groups(self, lr: float):
        backbone, heads = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (backbone if name.startswith(BACKBONE + ".") else heads).append(p)
        return [
            {"params": heads, "lr": lr, "name": "heads"},
            {"params": backbone, "lr": lr * self.params.backbone_lr_mult, "name": "backbone"},
        ]

    def training_step(self, batch, ctx) -> StepOutput:
        images, targets = batch
        losses = self.model(images, targets)
        total = sum(losses.values())
        return StepOutput(total, logs={k: float(v.detach()) for k, v in losses.items()})

    def epoch_diagnostics(self, ctx) -> dict[str, float]:
        return {}  # no labeled target set for detectors


DETECT = MethodSpec(
    name="detect",
    description="object detection: Faster R-CNN, RetinaNet or FCOS with a feature pyramid on "
    "the backbone, its "
    "pretrained weights transferred; freeze plan, gradual unfreezing",
    params=DetectParams,
    factory=Detect,
    data_roles=(ROLE_DETECTION,),
    layer_tree=LayerTreeSpec(module="detector"),
    task=TASK_DETECTION,
    distributed=True,
)
