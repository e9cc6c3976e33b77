"""``simclr``: contrastive self-supervised pretraining of a backbone on unlabeled images.

SimCLR (Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020): two augmented views of every image go through the backbone
and a projection MLP; the NT-Xent loss pulls each view's projection towards its partner and
away from the other ``2N - 2`` projections of the batch. The backbone learns what the
augmentations leave unchanged, so the augmentations are the method: on top of whatever the
experiment's ``augment`` settings do, every training view gets a strong random resized crop,
flip, colour distortion and grayscale here (``strength``).

The checkpoint holds one module ``model`` with children ``backbone`` and ``head`` (the
projection), so ``runs/<id>/checkpoints/best.safetensors`` has keys ``model.backbone.*`` and a
later fine-tune can use it as ``model.weights``.

torch is imported inside functions so that listing plugins stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from transferstudio.api import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ROLE_UNLABELED,
    LayerTreeSpec,
    MethodSpec,
    StepOutput,
    TransferMethod,
    param,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

EVAL_AUGMENT_SEED = 20200213
"""Validation views are augmented with this fixed seed, so the validation loss of every epoch
is measured on the same pairs and can drive early stopping."""


@dataclass
class SimclrParams:
    """SimCLR: contrastive pretraining of the backbone on two augmented views of each image."""

    temperature: float = param(
        0.5, min=0.01, max=10.0, help="NT-Xent temperature: lower sharpens the softmax over pairs"
    )
    projection_hidden: int = param(
        512, min=0, max=16384, help="hidden width of the projection MLP; 0 = the feature width"
    )
    projection_dim: int = param(
        128, min=1, max=16384, help="width of the projections the contrastive loss compares"
    )
    strength: float = param(
        1.0,
        min=0.0,
        max=2.0,
        help="strength of the extra augmentation applied to every view in the training step: "
        "colour jitter 0.8*strength (hue 0.2*strength) with probability 0.8, grayscale 0.2, "
        "plus random resized crop and flip; 0 turns the extra augmentation off",
    )
    crop_scale_min: float = param(
        0.2,
        min=0.05,
        max=1.0,
        help="smallest area of the extra random resized crop, as a fraction of the view",
    )


# --------------------------------------------------------------------------- the loss


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy) of a batch of positive pairs.

    ``z1[i]`` and ``z2[i]`` are the projections of two views of image ``i``. For each of the
    ``2N`` projections, the loss is the cross-entropy of picking its partner among the other
    ``2N - 1`` by cosine similarity over ``temperature``; the mean over all ``2N`` is returned.
    """
    logits, targets = _pair_logits(z1, z2, temperature)
    import torch.nn.functional as F

    return F.cross_entropy(logits, targets)


def pair_retrieval_accuracy(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """Fraction of the ``2N`` projections whose nearest other projection (cosine) is their
    partner: top-1 positive-pair retrieval within the batch."""
    logits, targets = _pair_logits(z1, z2, 1.0)
    return float((logits.argmax(dim=1) == targets).float().mean())


def _pair_logits(z1, z2, temperature: float):
    import torch
    import torch.nn.functional as F

    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    similarity = z @ z.T / temperature
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = similarity.masked_fill(self_pairs, float("-inf"))
    index = torch.arange(n, device=z.device)
    targets = torch.cat([index + n, index])
    return logits, targets


# --------------------------------------------------------------------------- augmentation


class StrongAugmentation:
    """SimCLR's augmentation of a batch of normalised image tensors, different per image.

    Images are de-normalised with the loaders' own statistics (``mean``, ``std``: the
    backbone's preprocessing, from ``ctx.preprocessing``), then each image gets a random resized crop to its own size and a horizontal flip
    (``torchvision.transforms.v2``), then, batched, a colour distortion (brightness, contrast,
    saturation, hue as a rotation in YIQ space) with probability 0.8 and grayscale with
    probability 0.2, and is normalised again. Random draws come from torch's global generator,
    which the engine seeds per epoch, so a resumed run augments as before.
    """

    def __init__(
        self,
        strength: float,
        crop_scale_min: float,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.strength = strength
        self.crop_scale_min = crop_scale_min
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.strength <= 0:
            return images
        import torch
        from torchvision.transforms import v2 as T

        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        with torch.autocast(images.device.type, enabled=False):
            x = (images.float() * std + mean).clamp(0, 1)
            geometric = T.Compose(
                [
                    T.RandomResizedCrop(
                        tuple(x.shape[-2:]), scale=(self.crop_scale_min, 1.0), antialias=True
                    ),
                    T.RandomHorizontalFlip(),
                ]
            )
            x = torch.stack([geometric(image) for image in x])
            x = colour_distortion(x, self.strength)
            return ((x - mean) / std).to(images.dtype)


def colour_distortion(images: torch.Tensor, strength: float) -> torch.Tensor:
    """SimCLR's colour distortion of ``[B, 3, H, W]`` images in ``[0, 1]``, drawn per image:
    with probability 0.8 brightness, contrast and saturation factors in ``1 +- 0.8*strength``
    and a hue rotation up to ``0.2*strength`` of a turn; then grayscale with probability 0.2."""
    import torch

    b, device = images.shape[0], images.device

    def draw(*shape):
        # Drawn on the CPU: the same seed gives the same augmentation on every device.
        return torch.rand(b, *shape).to(device)

    def factor(spread: float):
        return (1 + (2 * draw(1, 1, 1) - 1) * spread).clamp_min(0)

    jitter = 0.8 * strength
    x = (images * factor(jitter)).clamp(0, 1)
    mean_grey = _luminance(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (mean_grey + (x - mean_grey) * factor(jitter)).clamp(0, 1)
    grey = _luminance(x)
    x = (grey + (x - grey) * factor(jitter)).clamp(0, 1)
    x = _rotate_hue(x, (2 * draw() - 1) * min(0.5, 0.2 * strength) * 2 * math.pi)
    distorted = torch.where(draw(1, 1, 1) < 0.8, x, images)
    to_grey = draw(1, 1, 1) < 0.2
    return torch.where(to_grey, _luminance(distorted).expand_as(distorted), distorted)


def _luminance(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma plane (I, Q of YIQ) of each image by its ``angle`` (radians); torch's
    HSV hue shift costs ~17 ms per 32 px image on a CPU, this a single batched product."""
    import torch

    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
        device=x.device,
    )
    cos, sin = angle.cos(), angle.sin()
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rotation = torch.stack(
        [
            torch.stack([one, zero, zero], dim=1),
            torch.stack([zero, cos, -sin], dim=1),
            torch.stack([zero, sin, cos], dim=1),
        ],
        dim=1,
    )  # [B, 3, 3]
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq
    return torch.einsum("bij,bjhw->bihw", matrix, x).clamp(0, 1)


# --------------------------------------------------------------------------- the method


class Simclr(TransferMethod):
    """Backbone + projection MLP trained with NT-Xent on two views per image."""

    def __init__(self, params: SimclrParams) -> None:
        self.params = params

    def setup(self, ctx) -> None:
        from collections import OrderedDict

        from torch import nn

        pre = ctx.preprocessing
        self.augment = StrongAugmentation(
            self.params.strength, self.params.crop_scale_min, pre.mean, pre.std
        )

        backbone, feature_dim = ctx.build_backbone()
        hidden = self.params.projection_hidden or feature_dim
        projection = nn.Sequential(
            nn.Linear(feature_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, self.params.projection_dim),
        )
        # Named children "backbone" and "head": checkpoint keys model.backbone.* load as
        # backbone weights of a later run.
        self.model = nn.Sequential(OrderedDict([("backbone", backbone), ("head", projection)])).to(
            ctx.device
        )

    def modules(self):
        return {"model": self.model}

    def train_batches(self, ctx, epoch: int):
        return ctx.loader("train", role=ROLE_UNLABELED, views=2)

    def steps_per_epoch(self, ctx) -> int:
        # The view loader drops a short last batch, which a count of images over the batch
        # size would include.
        return len(ctx.loader("train", role=ROLE_UNLABELED, views=2))

    def _projections(self, views):
        import torch

        n = views[0].shape[0]
        z = self.model(torch.cat([views[0], views[1]]))  # one pass: BatchNorm sees both views
        return z[:n], z[n:]

    def training_step(self, batch, ctx) -> StepOutput:
        (view1, view2), _ = batch
        z1, z2 = self._projections((self.augment(view1), self.augment(view2)))
        loss = nt_xent_loss(z1, z2, self.params.temperature)
        logs = {"nt_xent": float(loss.detach()), "pair_accuracy": pair_retrieval_accuracy(z1, z2)}
        return StepOutput(loss, logs=logs)

    def evaluate(self, ctx, split: str) -> dict[str, float]:
        """``loss``: NT-Xent of the split's view pairs (extra augmentation drawn from a fixed
        seed); ``accuracy``: top-1 positive-pair retrieval within each batch."""
        import torch

        loss_sum, accuracy_sum, count = 0.0, 0.0, 0
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(EVAL_AUGMENT_SEED)
            for batch in ctx.loader(split, role=ROLE_UNLABELED, views=2):
                (view1, view2), _ = batch
                view1, view2 = view1.to(ctx.device), view2.to(ctx.device)
                n = view1.shape[0]
                if n < 2:  # a lone pair is trivially retrieved; it says nothing
                    continue
                z1, z2 = self._projections((self.augment(view1), self.augment(view2)))
                loss_sum += float(nt_xent_loss(z1, z2, self.params.temperature)) * n
                accuracy_sum += pair_retrieval_accuracy(z1, z2) * n
                count += n
        if count == 0:
            ctx.log(f"simclr: the {split} split has no batch of 2 or more images to pair")
            return {"loss": float("nan"), "accuracy": float("nan")}
        return {"loss": loss_sum / count, "accuracy": accuracy_sum / count}

    def predictor(self):
        """The backbone: images to features (the embedding later runs build on)."""
        return self.model.backbone


SIMCLR = MethodSpec(
    name="simclr",
    description="self-supervised contrastive pretraining (SimCLR, NT-Xent) on unlabeled images; "
    "its checkpoint serves as backbone weights",
    params=SimclrParams,
    factory=Simclr,
    data_roles=(ROLE_UNLABELED,),
    layer_tree=LayerTreeSpec(freeze=None, freeze_up_to=None, bn_mode=None),  # read-only, drift
)
