"""The learning-rate range test (Smith 2017; fastai's ``lr_find``).

A short sweep over exponentially increasing learning rates, one training step each, on the
experiment's own method, model, data and optimizer, records the loss. The loss stays flat while
the rate is too low, falls while it is useful and shoots up once it is too high; the suggested
rate lies on the longest fall of the smoothed loss (fastai's "valley"), before its minimum.
Nothing is written: no run, no checkpoint. Every parameter group keeps its ratio to
``train.lr`` (discriminative learning rates), and the rate reported is the one ``train.lr``
would have.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferstudio.api import TransferStudioError
from transferstudio.core.plugins.host import PluginHost
from transferstudio.core.settings.experiment import Experiment

SMOOTHING = 0.98  # exponential moving average of the loss, debiased (as fastai)
STOPPED_BY_USER = "stopped by the user"
DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum


@dataclass
class LrFinderResult:
    """The sweep: one point per step, and the suggestions drawn from it."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float | None = None  # half-way along the longest fall of the loss
    min_loss_lr: float | None = None  # where the smoothed loss was lowest
    stopped_because: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None]:
    """``(suggestion, minimum)`` from a sweep's smoothed losses.

    The suggestion is fastai's "valley": the longest stretch over which the loss keeps falling
    (the longest decreasing subsequence), taken half-way along it. It is robust to the noise of
    single batches, where the steepest point of a flat, noisy start would not be. The minimum
    is where the smoothed loss was lowest. ``None`` for a sweep too short or a loss that never
    fell."""
    n = len(smoothed)
    if n < 5:
        return None, None
    low = min(range(n), key=smoothed.__getitem__)
    longest = [1] * n  # length of the longest decreasing subsequence ending at i
    end = 0
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and longest[j] + 1 > longest[i]:
                longest[i] = longest[j] + 1
        if longest[i] > longest[end]:
            end = i
    if longest[end] < 3:
        return None, lrs[low]
    # As fastai: the valley is taken to be the ``longest`` points before its end (a plateau's
    # noise can add an early point to the subsequence, which would stretch an exact start).
    start = max(0, end - longest[end])
    sections = (end - start) / 3
    return lrs[start + int(sections) + int(sections / 2)], lrs[low]


def find_lr(
    exp: Experiment,
    host: PluginHost,
    workspace: str | Path,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    on_point: Callable[[int, float, float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LrFinderResult:
    """Run the range test: ``steps`` steps from ``start_lr`` to ``end_lr`` (geometric), stopping
    early when the loss diverges. ``on_point(step, lr, loss, smoothed)`` follows progress;
    ``should_stop()`` ends the sweep early (the points so far are kept)."""
    from transferstudio.core.training.engine import PlainState
    from transferstudio.core.training.session import RunCancelled, TrainingSession

    if not 0 < start_lr < end_lr:
        raise TransferStudioError(
            f"the sweep needs 0 < start < end learning rate (got {start_lr:g} and {end_lr:g})"
        )
    if steps < 5:
        raise TransferStudioError(f"the sweep needs at least 5 steps (got {steps})")
    # Base learning rates of 1 (times each group's multiplier): a step's factor is then the
    # swept rate itself, whatever train.lr is (0 included).
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, lr=1.0))
    # The run's state asks should_stop too: it is checked inside data loading (feature caches).
    session = TrainingSession(
        exp, host, PlainState(should_stop=should_stop), Path(workspace), writer=False
    )
    result = LrFinderResult()
    try:
        session.prepare()
        session.start_training()
        session.method.on_epoch_start(0, session.ctx)
        session.rebuild_optimizer()
        session.method.train()
        ratio = (end_lr / start_lr) ** (1 / (steps - 1))
        average, best = 0.0, math.inf
        epoch = 0
        while len(result.lrs) < steps and not result.stopped_because:
            session.seed_epoch(epoch)  # each pass over the data draws a new shuffle
            before = len(result.lrs)
            for batch in session.method.train_batches(session.ctx, epoch):
                i = len(result.lrs)
                if i >= steps:
                    break
                if should_stop is not None and should_stop():
                    result.stopped_because = STOPPED_BY_USER
                    break
                lr = start_lr * ratio**i
                out, loss, _ = session.train_step(batch, lr)
                if out is None:
                    result.stopped_because = f"the loss became {loss} at lr {lr:.3g}"
                    break
                average = SMOOTHING * average + (1 - SMOOTHING) * loss
                smoothed = average / (1 - SMOOTHING ** (i + 1))
                result.lrs.append(lr)
                result.losses.append(loss)
                result.smoothed.append(smoothed)
                if on_point is not None:
                    on_point(i, lr, loss, smoothed)
                best = min(best, smoothed)
                # "4 times the minimum", written so that it also holds for losses that can
                # go negative (learned task weights add log terms).
                if i > steps // 10 and smoothed - best > (DIVERGENCE - 1) * abs(best):
                    result.stopped_because = f"the loss diverged at lr {lr:.3g}"
                    break
            if len(result.lrs) == before and not result.stopped_because:
                raise TransferStudioError("the training split gave no batches to sweep over")
            epoch += 1
    except RunCancelled:  # stopped while the method prepared its data (a feature cache)
        result.stopped_because = STOPPED_BY_USER
    finally:
        session.close()
    result.suggestion, result.min_loss_lr = suggest(result.lrs, result.smoothed)
    if result.stopped_because == STOPPED_BY_USER:
        # A sweep stopped part-way covers only the low rates: its longest fall is where the
        # user stopped, not where the loss would have turned, so it suggests nothing.
        result.suggestion = None
    if not result.stopped_because:
        result.stopped_because = f"reached {steps} steps"
    return result
