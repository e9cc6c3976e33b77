"""Where a run's random numbers come from: one seed for the run, one derived stream per epoch.

Every epoch starts from RNG states derived from ``(seed, epoch)``, so a run resumed at an epoch
boundary draws exactly the augmentations, shuffles and dropout masks an uninterrupted run draws.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every RNG; ``deterministic`` restricts torch to deterministic kernels (set either
    way, since it is process-wide state a previous run may have changed)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of ``epoch``'s stream of the run seeded with ``seed``."""
    return (seed * 1_000_003 + epoch * 7919 + 1) % 2**63


def seed_epoch(seed: int, epoch: int) -> None:
    """Reseed torch, Python and NumPy for ``epoch`` (see the module docstring)."""
    s = epoch_seed(seed, epoch)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)
