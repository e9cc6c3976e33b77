"""``fine-tune``: train a backbone and a new head, with a freeze plan, discriminative learning
rates and optional gradual unfreezing."""

from __future__ import annotations

from dataclasses import dataclass

from transferstudio.api import (
    BN_MODES,
    ROLE_LABELED_TARGET,
    ExperimentError,
    FreezePlan,
    LayerTreeSpec,
    MethodSpec,
    StepOutput,
    TransferMethod,
    param,
    parse_unfreeze_schedule,
)

from .target_eval import target_diagnostics


@dataclass
class FineTuneParams:
    """Fine-tuning: which layers train, at which learning rates, from which epoch."""

    freeze: list[str] = param(
        [],
        help="module paths to freeze: globs like 'backbone.layer1' or "
        "'backbone.features.*', or regexes prefixed 're:'",
    )
    freeze_up_to: str = param(
        "",
        help="freeze every module up to and including this path, "
        "e.g. 'backbone.layer3'; empty freezes nothing this way",
    )
    bn_mode: str = param(
        "train",
        choices=BN_MODES,
        help="BatchNorm: 'train' normally, "
        "'frozen-stats' keeps running statistics fixed, 'frozen' fixes them and "
        "their affine parameters",
    )
    backbone_lr_mult: float = param(
        0.1,
        min=0.0,
        max=10.0,
        help="backbone learning rate = train.lr times this (discriminative learning rates)",
    )
    unfreeze: list[str] = param(
        [],
        help="gradual unfreezing: 'EPOCH:PATTERN' entries, e.g. "
        "'3:backbone.layer4' trains layer4 from epoch 3 on",
    )

    def validate(self) -> None:
        for index, pattern in enumerate(self.freeze):
            if not isinstance(pattern, str):
                raise ExperimentError(
                    f"entry {index + 1} ({pattern!r}) is not a module path; write it as text, "
                    'e.g. "backbone.layer1"',
                    "method.params.freeze",
                )
            try:  # a "re:" pattern that does not compile is this key's fault, found at load
                FreezePlan(patterns=[pattern])
            except ValueError as exc:
                raise ExperimentError(f"entry {index + 1}: {exc}", "method.params.freeze") from None
        try:
            parse_unfreeze_schedule(self.unfreeze)
        except ValueError as exc:
            raise ExperimentError(str(exc), "method.params.unfreeze") from None

    def plan(self) -> FreezePlan:
        return FreezePlan(
            patterns=list(self.freeze),
            up_to=self.freeze_up_to,
            bn_mode=self.bn_mode,
            unfreeze=parse_unfreeze_schedule(self.unfreeze),
        )


class FineTune(TransferMethod):
    """Backbone and head train together under a :class:`FreezePlan`."""

    def __init__(self, params: FineTuneParams) -> None:
        self.params = params
        self.plan = params.plan()
        self.trainable: set[str] | None = None

    def setup(self, ctx) -> None:
        self.model = ctx.build_classifier()
        self.plan.check(self.model)

    def modules(self):
        return {"model": self.model}

    def on_epoch_start(self, epoch: int, ctx) -> bool:
        trainable = self.plan.apply(self.model, epoch)
        changed = trainable != self.trainable
        if changed and self.trainable is not None:
            ctx.log(
                f"epoch {epoch + 1}: {len(trainable - self.trainable)} more parameter "
                "tensors train now (gradual unfreezing)"
            )
        self.trainable = trainable
        return changed

    def parameter_groups(self, lr: float):
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        return [
            {"params": head, "lr": lr, "name": "head"},
            {"params": backbone, "lr": lr * self.params.backbone_lr_mult, "name": "backbone"},
        ]

    def train(self) -> None:
        self.plan.set_train_mode(self.model)

    def training_step(self, batch, ctx) -> StepOutput:
        images, targets = batch
        logits = self.model(images)
        return StepOutput(ctx.loss(logits, targets), logits, targets)

    def validation_step(self, batch, ctx):
        images, targets = batch
        return self.model(images), targets

    def epoch_diagnostics(self, ctx) -> dict[str, float]:
        # With data.target_eval_path set, the source-only baseline of domain adaptation.
        return target_diagnostics(ctx, self.predictor())

    def predictor(self):
        return self.model

    def state_summary(self):
        return {"trainable": sorted(self.trainable or ())}


FINE_TUNE = MethodSpec(
    name="fine-tune",
    description="train the backbone and a new head; freeze plan, discriminative learning rates, "
    "gradual unfreezing",
    params=FineTuneParams,
    factory=FineTune,
    distributed=True,
    optional_roles=(ROLE_LABELED_TARGET,),
    layer_tree=LayerTreeSpec(),  # freeze, freeze_up_to, bn_mode; the module "model"
)
