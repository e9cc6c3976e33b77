"""Unsupervised domain adaptation: ``dan`` (MK-MMD) and ``dann`` (gradient reversal).

Both train a classifier on labeled source images while pulling the features of unlabeled target
images towards the source's: ``dan`` by penalising the multi-kernel maximum mean discrepancy
(Long et al. 2015), ``dann`` with a domain discriminator behind a gradient reversal layer (Ganin &
Lempitsky 2015). Every training batch is a source batch paired with the next target batch.
torch is imported inside functions so that listing plugins stays fast.

Both methods share the source/target batch pairing, the target evaluation and the
diagnostics, so they sit in one module (a little over 400 lines) rather than two that import
each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from transferstudio.api import (
    ROLE_LABELED,
    ROLE_LABELED_TARGET,
    ROLE_UNLABELED_TARGET,
    DataError,
    LayerTreeSpec,
    MethodSpec,
    StepOutput,
    TransferMethod,
    param,
)

from .target_eval import target_diagnostics

# --------------------------------------------------------------------------- MK-MMD


def mk_mmd(source, target, kernels: int = 5, estimator: str = "unbiased"):
    """Squared multi-kernel MMD between two feature batches ``[m, d]`` and ``[n, d]``.

    The kernel is the average of ``kernels`` Gaussians ``exp(-||a-b||^2 / s_k)`` with bandwidths
    ``s_k = base * 2^k``, ``k`` centred on 0 (-2..2 for 5 kernels), ``base`` the mean pairwise
    squared distance of the pooled batch (not differentiated through), as in DAN with equal
    kernel weights. ``estimator``: ``"unbiased"`` (quadratic U-statistic, may dip slightly below
    0) or ``"linear"`` (Gretton et al. 2012's linear-time statistic over disjoint pairs, as in the
    DAN paper). Batches too small for the chosen estimator fall back to the biased statistic.
    """
    import torch

    source, target = source.float().flatten(1), target.float().flatten(1)
    m, n = len(source), len(target)
    exponents = [k - kernels // 2 for k in range(kernels)]
    if estimator == "linear" and min(m, n) >= 2:
        half = min(m, n) // 2
        x1, x2 = source[0 : 2 * half : 2], source[1 : 2 * half : 2]
        y1, y2 = target[0 : 2 * half : 2], target[1 : 2 * half : 2]
        pairs = [(x1, x2), (y1, y2), (x1, y2), (x2, y1)]
        distances = [(a - b).pow(2).sum(1) for a, b in pairs]
        base = torch.cat(distances).mean().detach().clamp_min(1e-12)
        xx, yy, xy, yx = (_kernel(d, base, exponents) for d in distances)
        return (xx + yy - xy - yx).mean()
    if estimator not in ("unbiased", "linear"):
        raise ValueError(f"unknown MMD estimator {estimator!r}")
    joint = torch.cat([source, target])
    norms = joint.pow(2).sum(1)
    # ||a-b||^2 = |a|^2 + |b|^2 - 2ab; clamped because rounding can make it slightly negative.
    distances = (norms[:, None] + norms[None, :] - 2 * joint @ joint.T).clamp_min(0)
    count = len(joint)
    base = (distances.sum() / max(count * count - count, 1)).detach().clamp_min(1e-12)
    k = _kernel(distances, base, exponents)
    kss, ktt, kst = k[:m, :m], k[m:, m:], k[:m, m:]
    if min(m, n) < 2:
        return kss.mean() + ktt.mean() - 2 * kst.mean()
    within_source = (kss.sum() - kss.diagonal().sum()) / (m * (m - 1))
    within_target = (ktt.sum() - ktt.diagonal().sum()) / (n * (n - 1))
    return within_source + within_target - 2 * kst.mean()


def _kernel(distances, base, exponents):
    return sum((-distances / (base * 2.0**e)).exp() for e in exponents) / len(exponents)


# --------------------------------------------------------------------------- gradient reversal


@cache
def _gradient_reversal():
    import torch

    class GradientReversal(torch.autograd.Function):
        """Identity forward; multiplies the gradient by ``-coeff`` backward."""

        @staticmethod
        def forward(ctx, x, coeff):
            ctx.coeff = coeff
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return -ctx.coeff * grad, None

    return GradientReversal


def reverse_gradient(x, coeff: float = 1.0):
    """``x`` unchanged, but the gradient flowing back through it is multiplied by ``-coeff``:
    the discriminator behind it learns to tell the domains apart while the features in front
    learn to make them indistinguishable."""
    return _gradient_reversal().apply(x, float(coeff))


def grl_schedule(progress: float, gamma: float = 10.0) -> float:
    """DANN's reversal coefficient ``2 / (1 + exp(-gamma p)) - 1`` at training progress ``p`` in
    [0, 1]: 0 at the start, when the features are still noise, rising to ~1 at the end."""
    p = min(max(progress, 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


# --------------------------------------------------------------------------- batches


class PairedBatches:
    """One epoch of ``(source_images, source_targets, target_images, progress)``.

    Each source batch takes the next target batch; the target loader starts over when it runs
    out, so the epoch's length is the source's. ``progress`` is the fraction of all training
    steps done before this one, derived from the epoch so that a resumed run continues the
    schedule where it stopped.
    """

    def __init__(self, source, target, epoch: int, epochs: int) -> None:
        self.source, self.target = source, target
        self.epoch, self.epochs = epoch, epochs

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self):
        steps = len(self.source)
        total = max(1, steps * self.epochs)
        target_batches = iter(self.target)
        for i, (images, targets) in enumerate(self.source):
            try:
                target_images = next(target_batches)[0]
            except StopIteration:
                target_batches = iter(self.target)
                try:
                    target_images = next(target_batches)[0]
                except StopIteration:
                    raise DataError(
                        "the unlabeled target set (data.target_path) is empty"
                    ) from None
            yield images, targets, target_images, (self.epoch * steps + i) / total


# --------------------------------------------------------------------------- shared method


class _DomainAdaptation(TransferMethod):
    """Backbone -> optional bottleneck -> classifier, trained on paired source/target batches.

    The predictor is ``model`` (``backbone`` then ``head``). The bottleneck layers are the first
    ``bottleneck_layers`` children of the head, so without a bottleneck the model is exactly
    the host's usual classifier; features for adaptation are the bottleneck's output.
    """

    def __init__(self, params) -> None:
        self.params = params
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def setup(self, ctx) -> None:
        from torch import nn

        self.model = ctx.build_classifier()
        width = self.params.bottleneck
        if width > 0:
            # BatchNorm matters here: without it the adversarial game on small networks
            # tended to collapse every target image into one class.
            bottleneck = [nn.Linear(ctx.feature_dim, width), nn.BatchNorm1d(width), nn.ReLU()]
            self.model.head = nn.Sequential(*bottleneck, *ctx.make_head(width).children()).to(
                ctx.device
            )
            self.bottleneck_layers = len(bottleneck)
        else:
            width, self.bottleneck_layers = ctx.feature_dim, 0
        self.adapted_dim = width

    def modules(self):
        return {"model": self.model}

    def parameter_groups(self, lr: float):
        groups = [
            {"params": list(self.model.head.parameters()), "lr": lr, "name": "head"},
            {
                "params": [p for p in self.model.backbone.parameters() if p.requires_grad],
                "lr": lr * self.params.backbone_lr_mult,
                "name": "backbone",
            },
        ]
        extra = [p for name, m in self.modules().items() if name != "model" for p in m.parameters()]
        if extra:
            groups.append({"params": extra, "lr": lr, "name": "adaptation"})
        return groups

    def train_batches(self, ctx, epoch: int):
        return PairedBatches(
            ctx.loader("train"), ctx.loader("train", role=ROLE_UNLABELED_TARGET), epoch, ctx.epochs
        )

    def _forward_pair(self, source_images, target_images):
        """Features and logits of source and target in one pass (one set of BatchNorm
        statistics over both domains, as in the reference implementations)."""
        import torch

        m = len(source_images)
        head, split = self.model.head, self.bottleneck_layers
        features = head[:split](self.model.backbone(torch.cat([source_images, target_images])))
        logits = head[split:](features)
        return features[:m], features[m:], logits[:m], logits[m:]

    def validation_step(self, batch, ctx):
        images, targets = batch
        return self.model(images), targets

    def predictor(self):
        return self.model

    def on_epoch_start(self, epoch: int, ctx) -> bool:
        # Epoch diagnostics average over this epoch's steps only.
        self._sums, self._counts = {}, {}
        return False

    def _accumulate(self, key: str, value: float, count: int = 1) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + value * count
        self._counts[key] = self._counts.get(key, 0) + count

    def epoch_diagnostics(self, ctx) -> dict[str, float]:
        out = {k: self._sums[k] / self._counts[k] for k in self._sums if self._counts[k]}
        return out | target_diagnostics(ctx, self.model)


# --------------------------------------------------------------------------- dan


@dataclass
class AdaptationParams:
    """What ``dan`` and ``dann`` share: the bottleneck and the backbone's learning rate."""

    bottleneck: int = param(
        256,
        min=0,
        max=4096,
        help="width of a Linear-BatchNorm-ReLU bottleneck between backbone and classifier "
        "whose output is adapted (by MMD or the discriminator); 0 adapts the backbone "
        "features directly",
    )
    backbone_lr_mult: float = param(
        0.1,
        min=0.0,
        max=10.0,
        help="backbone learning rate = train.lr times this (1.0 for a network trained from "
        "scratch)",
    )


@dataclass
class DanParams(AdaptationParams):
    """DAN: cross-entropy on the source plus the MK-MMD between source and target features."""

    mmd_weight: float = param(
        1.0,
        min=0.0,
        max=100.0,
        help="lambda: weight of the MK-MMD penalty; 0 adds no adaptation loss (target batches "
        "still share the BatchNorm statistics)",
    )
    kernels: int = param(
        5,
        min=1,
        max=11,
        help="number of Gaussian kernels; bandwidths are the mean pairwise squared "
        "distance times 2^k for k centred on 0 (-2..2 for 5)",
    )
    estimator: str = param(
        "unbiased",
        choices=["unbiased", "linear"],
        help="MMD estimator: 'unbiased' (quadratic, lower variance) or 'linear' (linear-time "
        "statistic of the DAN paper)",
    )
    adapt_logits: bool = param(
        False, help="also penalise the MK-MMD of the class logits (DAN adapts fc7 and fc8)"
    )


class Dan(_DomainAdaptation):
    """Deep Adaptation Network: source cross-entropy + lambda * MK-MMD^2(source, target)."""

    def training_step(self, batch, ctx) -> StepOutput:
        source_images, source_targets, target_images, _progress = batch
        fs, ft, ls, lt = self._forward_pair(source_images, target_images)
        p = self.params
        classification = ctx.loss(ls, source_targets)
        mmd = mk_mmd(fs, ft, p.kernels, p.estimator)
        if p.adapt_logits:
            mmd = mmd + mk_mmd(ls, lt, p.kernels, p.estimator)
        mmd_value = float(mmd.detach())
        self._accumulate("mmd", mmd_value)
        return StepOutput(
            classification + p.mmd_weight * mmd,
            ls,
            source_targets,
            {"classification_loss": float(classification.detach()), "mmd": mmd_value},
        )


# --------------------------------------------------------------------------- dann


@dataclass
class DannParams(AdaptationParams):
    """DANN: a domain discriminator behind a gradient reversal layer aligns the features."""

    domain_weight: float = param(
        1.0,
        min=0.0,
        max=10.0,
        help="lambda: the largest gradient reversal coefficient (how hard the features fight "
        "the discriminator); 0 adds no adaptation loss (target batches still share the "
        "BatchNorm statistics)",
    )
    schedule: str = param(
        "progressive",
        choices=["progressive", "constant"],
        help="'progressive' raises the coefficient from 0 to domain_weight as "
        "2/(1+exp(-gamma p))-1 over training progress p; 'constant' uses domain_weight "
        "throughout",
    )
    gamma: float = param(10.0, min=0.1, max=100.0, help="steepness of the progressive schedule")
    discriminator_hidden: int = param(
        1024, min=1, max=8192, help="width of the discriminator's two hidden layers"
    )


def domain_discriminator(in_features: int, hidden: int):
    """The DANN domain classifier: two ReLU hidden layers (with dropout) and one logit,
    positive for "source"."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(hidden, 1),
    )


class Dann(_DomainAdaptation):
    """Domain-Adversarial Neural Network: source cross-entropy + the discriminator's loss, whose
    gradient reaches the features reversed."""

    def setup(self, ctx) -> None:
        super().setup(ctx)
        self.discriminator = domain_discriminator(
            self.adapted_dim, self.params.discriminator_hidden
        ).to(ctx.device)

    def modules(self):
        return {"model": self.model, "discriminator": self.discriminator}

    def coefficient(self, progress: float) -> float:
        """The gradient reversal coefficient at training progress ``progress``."""
        p = self.params
        if p.schedule == "constant":
            return p.domain_weight
        return p.domain_weight * grl_schedule(progress, p.gamma)

    def training_step(self, batch, ctx) -> StepOutput:
        import torch
        import torch.nn.functional as F

        source_images, source_targets, target_images, progress = batch
        fs, ft, ls, _ = self._forward_pair(source_images, target_images)
        coeff = self.coefficient(float(progress))
        domain_logits = self.discriminator(reverse_gradient(torch.cat([fs, ft]), coeff))
        domain_logits = domain_logits.squeeze(1).float()
        is_source = torch.cat([torch.ones(len(fs)), torch.zeros(len(ft))]).to(domain_logits.device)
        domain_loss = F.binary_cross_entropy_with_logits(domain_logits, is_source)
        classification = ctx.loss(ls, source_targets)
        correct = ((domain_logits > 0).float() == is_source).float().mean()
        domain_acc = float(correct)
        self._accumulate("domain_acc", domain_acc, len(is_source))
        return StepOutput(
            classification + domain_loss,
            ls,
            source_targets,
            {
                "classification_loss": float(classification.detach()),
                "domain_loss": float(domain_loss.detach()),
                "domain_acc": domain_acc,
                "grl_lambda": coeff,
            },
        )


DAN = MethodSpec(
    name="dan",
    description="domain adaptation: source cross-entropy + multi-kernel MMD between source and "
    "unlabeled target features (Long et al. 2015)",
    params=DanParams,
    factory=Dan,
    data_roles=(ROLE_LABELED, ROLE_UNLABELED_TARGET),
    optional_roles=(ROLE_LABELED_TARGET,),
    baseline="fine-tune",  # source only: the same backbone, no adaptation
    layer_tree=LayerTreeSpec(freeze=None, freeze_up_to=None, bn_mode=None),  # read-only, drift
)

DANN = MethodSpec(
    name="dann",
    description="domain adaptation: a domain discriminator behind a gradient reversal layer "
    "(Ganin & Lempitsky 2015)",
    params=DannParams,
    factory=Dann,
    data_roles=(ROLE_LABELED, ROLE_UNLABELED_TARGET),
    optional_roles=(ROLE_LABELED_TARGET,),
    baseline="fine-tune",  # source only: the same backbone, no adaptation
    layer_tree=LayerTreeSpec(freeze=None, freeze_up_to=None, bn_mode=None),  # read-only, drift
)
