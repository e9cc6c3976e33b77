"""``fusion``: several backbones, each on its own view of the image, feed one head.

Each branch is a backbone (``ctx.build_backbone``) with its own weights, trainable or frozen,
that sees a chosen view of the image (the full image or a half or the centre, resized back to
the input size so any backbone takes it). Their features are concatenated (``concat``) or
projected to a common width and summed with learned softmax weights (``weighted_sum``), then
one head (``ctx.make_head``) classifies. torch is imported inside the functions so that listing
plugins stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from transferstudio.api import (
    ROLE_LABELED,
    ExperimentError,
    MethodSpec,
    StepOutput,
    TransferMethod,
    param,
)

VIEWS = {
    # name: (top, left, height, width) as fractions of the image
    "full": (0.0, 0.0, 1.0, 1.0),
    "left": (0.0, 0.0, 1.0, 0.5),
    "right": (0.0, 0.5, 1.0, 0.5),
    "top": (0.0, 0.0, 0.5, 1.0),
    "bottom": (0.5, 0.0, 0.5, 1.0),
    "center": (0.25, 0.25, 0.5, 0.5),
}
"""The image part each view crops."""

TRAINABLE = {"trainable": True, "frozen": False, True: True, False: False}


@dataclass
class FusionParams:
    """Knowledge fusion: several backbones' features feed one head."""

    backbones: list[str] = param(
        [],
        help="backbone ids to fuse, e.g. ['resnet18', 'mobilenet_v3_small']; an empty entry or "
        "an empty list means the experiment's model.backbone",
    )
    weights: list[str] = param(
        [],
        help="weights per backbone, aligned with backbones: 'cache', 'none' or a file; an "
        "empty entry means model.weights for the experiment's own backbone (an empty "
        "backbones entry) and 'none' (random init) for a named one",
    )
    trainable: list[str] = param(
        [],
        help="'trainable' or 'frozen' per backbone (true/false also accepted); a single entry "
        "applies to every backbone; empty = all trainable",
    )
    views: list[str] = param(
        [],
        help="the part of the image each backbone sees: " + ", ".join(VIEWS) + " (cropped and "
        "resized back to the input size); a single entry applies to all; empty = all 'full'",
    )
    mode: str = param(
        "concat",
        choices=["concat", "weighted_sum"],
        help="'concat' joins the features; 'weighted_sum' projects each to a common width and "
        "sums them with learned softmax weights",
    )
    width: int = param(
        256, min=1, max=16384, help="common width of the projections in weighted_sum mode"
    )
    backbone_lr_mult: float = param(
        0.1,
        min=0.0,
        max=10.0,
        help="learning rate of trainable backbones = train.lr times this",
    )

    def validate(self) -> None:
        self.branches()

    def branches(self) -> list[tuple[str | None, str | None, bool, str]]:
        """``(backbone, weights, trainable, view)`` per branch; ``None`` backbone or weights
        mean the experiment's own. Bad or misaligned lists are errors naming their key."""
        names = [str(b).strip() or None for b in self.backbones] or [None]
        n = len(names)
        weights = _aligned(self.weights, n, "weights", allow_single=False)
        trainable = _aligned(self.trainable, n, "trainable", allow_single=True)
        views = _aligned(self.views, n, "views", allow_single=True)
        out = []
        for i in range(n):
            w = weights[i]
            t = True if trainable[i] is None else trainable[i]
            if isinstance(t, str):
                t = t.strip().lower()
            if not isinstance(t, str | bool) or t not in TRAINABLE:
                raise ExperimentError(
                    f"{trainable[i]!r} is not 'trainable' or 'frozen'", "method.params.trainable"
                )
            v = "full" if views[i] is None else str(views[i]).strip().lower()
            if v not in VIEWS:
                raise ExperimentError(
                    f"{views[i]!r} is not a view; use one of {', '.join(VIEWS)}",
                    "method.params.views",
                )
            weight_source = (str(w).strip() or None) if w is not None else None
            out.append((names[i], weight_source, TRAINABLE[t], v))
        return out


def _aligned(values: list, n: int, key: str, allow_single: bool) -> list:
    if not values:
        return [None] * n
    if allow_single and len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise ExperimentError(
            f"has {len(values)} entries but there are {n} backbones; give one per backbone"
            + (" or a single one for all" if allow_single else ""),
            f"method.params.{key}",
        )
    return list(values)


def _branch_labels(names: list[str], views: list[str]) -> list[str]:
    """Readable, unique labels: the backbone id, its view when not 'full', a number if needed."""
    labels = [n if v == "full" else f"{n}_{v}" for n, v in zip(names, views, strict=True)]
    return [f"{label}_{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


# --------------------------------------------------------------------------- modules


def _fusion_modules():
    """The module classes, defined on first use so that importing this plugin skips torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ViewBranch(nn.Module):
        """A backbone that sees one part of the image, resized back to the input size."""

        def __init__(self, backbone: nn.Module, view: str) -> None:
            super().__init__()
            self.backbone = backbone
            self.view = view
            self.box = VIEWS[view]

        def forward(self, images):
            if self.view != "full":
                h, w = images.shape[-2], images.shape[-1]
                top, left, height, width = self.box
                y0, x0 = int(round(top * h)), int(round(left * w))
                y1, x1 = y0 + max(1, int(round(height * h))), x0 + max(1, int(round(width * w)))
                crop = images[..., y0:y1, x0:x1]
                images = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
            return self.backbone(images)

    class FusionClassifier(nn.Module):
        """Branch features -> concat, or per-branch projection and softmax-weighted sum -> head."""

        def __init__(self, branches, projections, head, weighted: bool) -> None:
            super().__init__()
            self.branches = nn.ModuleList(branches)
            self.projections = nn.ModuleList(projections)
            self.head = head
            self.weighted = weighted
            # Uniform at the start; the softmax keeps the weights positive and summing to one.
            self.fusion_logits = nn.Parameter(torch.zeros(len(branches)), requires_grad=weighted)

        def fusion_weights(self):
            return torch.softmax(self.fusion_logits, dim=0)

        def forward(self, images):
            features = [
                projection(branch(images))
                for branch, projection in zip(self.branches, self.projections, strict=True)
            ]
            if not self.weighted:
                return self.head(torch.cat(features, dim=1))
            weights = self.fusion_weights().to(features[0].dtype)
            fused = torch.stack(features, dim=0) * weights.view(-1, 1, 1)
            return self.head(fused.sum(dim=0))

    return ViewBranch, FusionClassifier


# --------------------------------------------------------------------------- the method


class Fusion(TransferMethod):
    """Backbones on their views, fused features, one head."""

    def __init__(self, params: FusionParams) -> None:
        self.params = params
        self.plan = params.branches()

    def setup(self, ctx) -> None:
        from torch import nn

        view_branch, fusion_classifier = _fusion_modules()
        branches, projections, dims, names = [], [], [], []
        self.trainable_flags = [t for _, _, t, _ in self.plan]
        for name, weights, trainable, view in self.plan:
            backbone, dim = ctx.build_backbone(name, weights)
            backbone.requires_grad_(trainable)
            branches.append(view_branch(backbone, view))
            dims.append(dim)
            names.append(name or ctx.backbone_name)
        weighted = self.params.mode == "weighted_sum"
        if weighted:
            projections = [nn.Linear(d, self.params.width) for d in dims]
            head = ctx.make_head(self.params.width)
        else:
            projections = [nn.Identity() for _ in dims]
            head = ctx.make_head(sum(dims))
        self.labels = _branch_labels(names, [v for *_, v in self.plan])
        for label, (name, weights, trainable, view) in zip(self.labels, self.plan, strict=True):
            source = weights or ("model.weights" if name is None else "none")
            state = "trainable" if trainable else "frozen"
            ctx.log(f"fusion branch {label}: weights {source}, {state}, view {view}")
        self.model = fusion_classifier(branches, projections, head, weighted).to(ctx.device)
        if not any(self.trainable_flags) and not weighted:
            ctx.log("every backbone is frozen: only the head trains")

    def modules(self):
        return {"model": self.model}

    def parameter_groups(self, lr: float):
        m = self.model
        fusion = [*m.head.parameters(), *m.projections.parameters()]
        if self.params.mode == "weighted_sum":
            fusion.append(m.fusion_logits)
        backbones = [
            p
            for branch, trainable in zip(m.branches, self.trainable_flags, strict=True)
            if trainable
            for p in branch.parameters()
        ]
        groups = [{"params": fusion, "lr": lr, "name": "fusion"}]
        if backbones:
            groups.append(
                {"params": backbones, "lr": lr * self.params.backbone_lr_mult, "name": "backbones"}
            )
        return groups

    def train(self) -> None:
        self.model.train()
        for branch, trainable in zip(self.model.branches, self.trainable_flags, strict=True):
            if not trainable:
                branch.eval()  # a frozen backbone keeps its BatchNorm statistics too

    def _weight_logs(self) -> dict[str, float]:
        if self.params.mode != "weighted_sum":
            return {}
        weights = self.model.fusion_weights().detach().cpu().tolist()
        return {f"w_{label}": w for label, w in zip(self.labels, weights, strict=True)}

    def training_step(self, batch, ctx) -> StepOutput:
        images, targets = batch
        logits = self.model(images)
        return StepOutput(ctx.loss(logits, targets), logits, targets, self._weight_logs())

    def validation_step(self, batch, ctx):
        images, targets = batch
        return self.model(images), targets

    def epoch_diagnostics(self, ctx) -> dict[str, float]:
        """The fusion weights at the end of the epoch (``weighted_sum`` mode)."""
        return self._weight_logs()

    def predictor(self):
        return self.model

    def state_summary(self):
        return {"branches": self.labels}


FUSION = MethodSpec(
    name="fusion",
    description="fuse several backbones (each on its own view of the image) into one head: "
    "concatenated or softmax-weighted features",
    params=FusionParams,
    factory=Fusion,
    data_roles=(ROLE_LABELED,),
    distributed=True,
)
