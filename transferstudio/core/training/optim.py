"""Optimizers and learning-rate schedules.

The schedule is a pure function of the global step, applied to each parameter group's
``base_lr`` before every optimizer step. Rebuilding the optimizer (gradual unfreezing) or resuming
therefore needs no scheduler object: the step count is the whole state.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from transferstudio.core.settings.experiment import TrainSettings


def build_optimizer(
    groups: list[dict[str, Any]],
    settings: TrainSettings,
    previous: torch.optim.Optimizer | None = None,
) -> torch.optim.Optimizer:
    """An optimizer over ``groups`` (each group's ``lr`` becomes its ``base_lr``). Per-parameter
    state (momentum, Adam moments) of ``previous`` carries over for parameters still trained."""
    groups = [dict(g, base_lr=g.get("lr", settings.lr)) for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters: the freeze plan freezes everything")
    if settings.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups,
            lr=settings.lr,
            momentum=settings.momentum,
            nesterov=settings.nesterov and settings.momentum > 0,
            weight_decay=settings.weight_decay,
        )
    else:
        opt = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    if previous is not None:
        for group in opt.param_groups:
            for p in group["params"]:
                if p in previous.state:
                    opt.state[p] = previous.state[p]
    return opt


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, settings: TrainSettings) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total_steps``."""
    warmup = int(round(settings.warmup_epochs * steps_per_epoch))
    if settings.schedule == "onecycle":
        # One-cycle (Smith 2018): from lr/25 up to lr over the warmup (30% when none is given),
        # then cosine down to lr/1e4.
        up = warmup if warmup > 0 else max(1, int(0.3 * total_steps))
        if step < up:
            return 1 / 25 + (1 - 1 / 25) * (1 - math.cos(math.pi * step / up)) / 2
        progress = (step - up) / max(1, total_steps - up)
        return 1e-4 + (1 - 1e-4) * (1 + math.cos(math.pi * min(1.0, progress))) / 2
    if step < warmup:
        return (step + 1) / warmup
    if settings.schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if settings.schedule == "step":
        return settings.step_gamma ** ((step // steps_per_epoch) // settings.step_epochs)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Apply a schedule factor to every group; returns the first group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
