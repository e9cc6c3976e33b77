"""Pretrained weights whose BatchNorm layers hold identity statistics, and what to do about it.

Some weight files are saved with BatchNorm folded into the preceding convolutions: the conv
weights already carry the normalisation, and every BatchNorm layer is left with running mean 0
and running variance 1 (the shared ``mobilenet_v2_imagenet.pth`` is one: 52 of 52 layers, its
variance stored as 1 - eps). Fine-tuned with
BatchNorm in ``train`` mode, the first batches replace those statistics with the new data's,
which the folded convolutions never expected: the pretrained features are wrecked at once
(issue 18: MobileNetV2 on hymenoptera reached 0.46 validation accuracy after 2 epochs, every
image called "ants", against 0.93 with ``frozen-stats``). With ``frozen-stats`` the layers keep their statistics
and train only their affine parameters, which is what such weights need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

FOLDED_SHARE = 0.8
"""Weights count as folded when at least this share of their BatchNorm layers hold identity
statistics (a network may keep a few unused layers at their initial values)."""
MEAN_TOLERANCE = 1e-4
VAR_TOLERANCE = 1e-3
"""A folded layer's variance is often 1 - eps (so that var + eps is exactly 1): eps is 1e-5 in
torchvision's networks and 1e-3 in some ports."""


@dataclass(frozen=True)
class BatchNormStats:
    """How many BatchNorm layers ``weights`` has and how many hold identity statistics."""

    layers: int
    identity: int

    @property
    def folded(self) -> bool:
        return self.layers > 0 and self.identity >= FOLDED_SHARE * self.layers


def batchnorm_stats(state: Mapping[str, torch.Tensor]) -> BatchNormStats:
    """Count the BatchNorm layers of a state dict (``X.running_mean`` with ``X.running_var``)
    and those whose mean is all 0 and variance all 1."""
    layers = identity = 0
    for key, mean in state.items():
        if not key.endswith("running_mean"):
            continue
        var = state.get(key[: -len("running_mean")] + "running_var")
        if not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor):
            continue
        layers += 1
        mean, var = mean.detach().float(), var.detach().float()
        if mean.abs().max() <= MEAN_TOLERANCE and (var - 1).abs().max() <= VAR_TOLERANCE:
            identity += 1
    return BatchNormStats(layers, identity)


def folded_batchnorm_reason(state: Mapping[str, torch.Tensor], source: str) -> str:
    """Why ``bn_mode = "frozen-stats"`` is needed for these weights, or '' when it is not."""
    stats = batchnorm_stats(state)
    if not stats.folded:
        return ""
    return (
        f"{stats.identity} of {stats.layers} BatchNorm layers in {source} hold identity "
        "statistics (mean 0, variance 1): the weights were saved with BatchNorm folded into "
        "the convolutions. Training them with bn mode 'train' replaces those statistics with "
        "the new data's and wrecks the pretrained features; use bn mode 'frozen-stats'."
    )
