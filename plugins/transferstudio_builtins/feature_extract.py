"""``feature-extract``: a frozen backbone and a new head trained on its features.

Without random augmentation the backbone's features never change, so they are computed once and
reused across epochs (and across runs with the same backbone, weights and files).
torch is imported inside the methods so that listing plugins stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from transferstudio.api import (
    ROLE_LABELED_TARGET,
    LayerTreeSpec,
    MethodSpec,
    StepOutput,
    TransferMethod,
    param,
)

from .target_eval import target_diagnostics


@dataclass
class FeatureExtractParams:
    """Feature extraction: frozen backbone, new head."""

    head: str = param("linear", choices=["linear", "mlp"], help="the new head")
    hidden: int = param(512, min=1, max=16384, help="hidden width of the MLP head")
    cache: str = param(
        "auto",
        choices=["auto", "off"],
        help="'auto' computes features once "
        "when training images are not augmented; 'off' recomputes every epoch",
    )


class FeatureExtract(TransferMethod):
    """Only the head trains; the backbone stays in eval mode."""

    def __init__(self, params: FeatureExtractParams) -> None:
        self.params = params

    def setup(self, ctx) -> None:
        self.model = ctx.build_classifier()
        self.model.head = ctx.make_head(
            ctx.feature_dim, hidden=self.params.hidden if self.params.head == "mlp" else 0
        )
        self.model.backbone.requires_grad_(False)
        self.use_cache = self.params.cache == "auto" and not ctx.augmenting
        if self.params.cache == "auto" and ctx.augmenting:
            ctx.log(
                "feature cache off: training images are augmented, so features change "
                "every epoch (turn augmentation off to train on cached features)"
            )

    def modules(self):
        return {"model": self.model}

    def parameter_groups(self, lr: float):
        return [{"params": list(self.model.head.parameters()), "lr": lr, "name": "head"}]

    def train(self) -> None:
        self.model.head.train()
        self.model.backbone.eval()

    def _feature_batches(self, ctx, split: str, generator=None):
        import torch

        features, targets = ctx.cached_features(self.model.backbone, split)
        order = (
            torch.randperm(len(targets), generator=generator)
            if generator is not None
            else torch.arange(len(targets))
        )
        size = ctx.batch_size
        return [
            (features[order[i : i + size]], targets[order[i : i + size]])
            for i in range(0, len(targets), size)
        ]

    def train_batches(self, ctx, epoch: int):
        if self.use_cache:
            return self._feature_batches(ctx, "train", ctx.epoch_generator(epoch))
        return ctx.loader("train")

    def eval_batches(self, ctx, split: str):
        if self.use_cache:
            return self._feature_batches(ctx, split)
        return ctx.loader(split)

    def _features(self, inputs):
        if self.use_cache:
            return inputs
        import torch

        with torch.no_grad():
            return self.model.backbone(inputs)

    def training_step(self, batch, ctx) -> StepOutput:
        inputs, targets = batch
        logits = self.model.head(self._features(inputs))
        return StepOutput(ctx.loss(logits, targets), logits, targets)

    def validation_step(self, batch, ctx):
        inputs, targets = batch
        return self.model.head(self._features(inputs)), targets

    def epoch_diagnostics(self, ctx) -> dict[str, float]:
        # With data.target_eval_path set, the source-only baseline of domain adaptation.
        return target_diagnostics(ctx, self.predictor())

    def predictor(self):
        return self.model


FEATURE_EXTRACT = MethodSpec(
    name="feature-extract",
    description="frozen backbone, new linear or MLP head; features cached when not augmenting",
    params=FeatureExtractParams,
    factory=FeatureExtract,
    optional_roles=(ROLE_LABELED_TARGET,),
    # The tree shows the frozen backbone, read-only: there is no freeze plan to edit.
    layer_tree=LayerTreeSpec(freeze=None, freeze_up_to=None, bn_mode=None, frozen=("backbone",)),
)
