"""``multitask``: one shared backbone, one classification head per label column of a CSV.

The loss is a weighted sum of the tasks' cross-entropies, with fixed weights or with the
homoscedastic-uncertainty weighting of Kendall, Gal & Cipolla ("Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018): each task ``t`` has
a learned log-variance ``s_t`` and contributes ``exp(-s_t) * CE_t + s_t``, so a task whose loss
stays high (noisy labels, a harder task) is weighted down without hand tuning.

The model is one module ``model`` with children ``backbone`` and ``head`` (a
:func:`multi_task_head`: the per-task heads, and the log-variances under uncertainty
weighting), so its checkpoint also serves as backbone weights of a later run. Its output, the
predictor's, is the tasks' logits concatenated in ``data.label_columns`` order; the attribute
``task_slices`` maps each task to its ``(start, stop)`` columns and ``task_classes`` to its
class names.

torch is imported inside functions so that listing plugins stays fast.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from transferstudio.api import (
    ROLE_MULTILABEL,
    ExperimentError,
    LayerTreeSpec,
    MethodSpec,
    StepOutput,
    TransferMethod,
    param,
)

WEIGHTINGS = ("fixed", "uncertainty")


@dataclass
class MultitaskParams:
    """Multi-task learning: a shared backbone, one head per label column, weighted losses."""

    weighting: str = param(
        "fixed",
        choices=WEIGHTINGS,
        help="'fixed': loss = sum of task_weights[t] * CE_t; 'uncertainty': learned weights "
        "exp(-s_t) with loss sum exp(-s_t) * CE_t + s_t (Kendall et al. 2018)",
    )
    task_weights: list[float] = param(
        [],
        help="fixed weighting: one weight per task, in data.label_columns order; empty means "
        "1 for every task; a task with weight 0 is not trained (its head stays frozen)",
    )
    head: str = param("linear", choices=["linear", "mlp"], help="the head of each task")
    hidden: int = param(256, min=1, max=16384, help="hidden width of each MLP head")
    uncertainty_lr_mult: float = param(
        1.0,
        min=0.0,
        max=1000.0,
        help="uncertainty weighting: learning rate of the log-variances s_t = train.lr times "
        "this (they take steps of about lr each, so at small lr they adapt slowly)",
    )

    def validate(self) -> None:
        for w in self.task_weights:
            if isinstance(w, bool) or not isinstance(w, int | float) or w < 0:
                raise ExperimentError(
                    f"task weights are numbers of 0 or more, got {w!r}",
                    "method.params.task_weights",
                )
        self.task_weights = [float(w) for w in self.task_weights]


@functools.cache
def _head_class():
    # Built on first use: torch is not imported when plugins are listed.
    import torch
    from torch import nn

    class MultiTaskHead(nn.Module):
        """Per-task heads on shared features; returns their logits concatenated."""

        def __init__(
            self, heads: list[nn.Module], tasks: dict[str, list[str]], log_variance: bool
        ) -> None:
            super().__init__()
            self.heads = nn.ModuleList(heads)
            self.task_classes = {t: list(c) for t, c in tasks.items()}
            self.task_slices: dict[str, tuple[int, int]] = {}
            start = 0
            for task, classes in tasks.items():
                self.task_slices[task] = (start, start + len(classes))
                start += len(classes)
            if log_variance:
                # s_t = log sigma_t^2, one per task; 0 means weight 1.
                self.log_variance = nn.Parameter(torch.zeros(len(heads)))

        def forward(self, features):
            return torch.cat([head(features) for head in self.heads], dim=1)

    return MultiTaskHead


def multi_task_head(in_features: int, tasks: dict[str, list[str]], hidden: int, uncertainty: bool):
    """A ``MultiTaskHead``: one linear head (or ``Linear-ReLU-Linear`` when ``hidden`` > 0) per
    task of ``tasks`` (``{task: class names}``), and learned log-variances when
    ``uncertainty``. Its output is every task's logits, concatenated in task order."""
    from torch import nn

    def head(n_classes: int):
        if hidden > 0:
            return nn.Sequential(
                nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_classes)
            )
        return nn.Linear(in_features, n_classes)

    return _head_class()([head(len(c)) for c in tasks.values()], tasks, uncertainty)


def macro_f1(predicted, targets, num_classes: int) -> float:
    """Mean F1 over the classes present in ``targets`` (as the engine's classification report
    does: a class absent from the split would otherwise score 0 through no fault of the
    model); a present class never predicted correctly scores 0."""
    import torch

    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_(
        (targets.long(), predicted.long()), torch.ones_like(targets, dtype=torch.long), True
    )
    tp = confusion.diag().double()
    support = confusion.sum(1).double()
    denominator = confusion.sum(0).double() + support
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.zeros_like(tp))
    present = support > 0
    return float(f1[present].sum()) / max(int(present.sum()), 1)


class Multitask(TransferMethod):
    """One backbone, one head per task; weighted sum of the tasks' cross-entropies."""

    def __init__(self, params: MultitaskParams) -> None:
        self.params = params

    def setup(self, ctx) -> None:
        from collections import OrderedDict

        from torch import nn

        self.tasks = list(ctx.tasks)
        if not self.tasks:
            raise ExperimentError(
                "multitask needs a CSV with label columns; set data.label_columns",
                "data.label_columns",
            )
        weights = list(self.params.task_weights) or [1.0] * len(self.tasks)
        if len(weights) != len(self.tasks):
            raise ExperimentError(
                f"{len(weights)} weight(s) for {len(self.tasks)} task(s) "
                f"({', '.join(self.tasks)}); give one per label column, or none",
                "method.params.task_weights",
            )
        self.uncertainty = self.params.weighting == "uncertainty"
        if self.uncertainty and self.params.task_weights:
            ctx.log("uncertainty weighting learns the task weights; task_weights is ignored")
        if not self.uncertainty and not any(w > 0 for w in weights):
            raise ExperimentError(
                "every task weight is 0, so nothing would train", "method.params.task_weights"
            )
        self.task_weights = weights
        backbone, feature_dim = ctx.build_backbone()
        head = multi_task_head(
            feature_dim,
            ctx.tasks,
            self.params.hidden if self.params.head == "mlp" else 0,
            self.uncertainty,
        )
        self.model = nn.Sequential(OrderedDict([("backbone", backbone), ("head", head)]))
        self.model.task_slices = dict(head.task_slices)
        self.model.task_classes = dict(head.task_classes)
        self.model.to(ctx.device)
        # Fixed weight 0: the head gets no gradient, so it is frozen rather than decayed.
        self.trained = [self.uncertainty or w > 0 for w in self.task_weights]
        for task, head_module, trained in zip(self.tasks, head.heads, self.trained, strict=True):
            head_module.requires_grad_(trained)
            if not trained:
                ctx.log(f"task {task!r} has weight 0: its head is not trained")

    def modules(self):
        return {"model": self.model}

    def parameter_groups(self, lr: float):
        head = self.model.head
        heads = [p for h in head.heads for p in h.parameters() if p.requires_grad]
        groups = [
            {"params": heads, "lr": lr, "name": "heads"},
            {"params": list(self.model.backbone.parameters()), "lr": lr, "name": "backbone"},
        ]
        if self.uncertainty:
            # No weight decay: it would pull every s_t to 0, i.e. back to equal weights.
            groups.append(
                {
                    "params": [head.log_variance],
                    "lr": lr * self.params.uncertainty_lr_mult,
                    "weight_decay": 0.0,
                    "name": "log_variance",
                }
            )
        return groups

    def _task_logits(self, images):
        logits = self.model(images)
        return [logits[:, start:stop] for start, stop in self.model.head.task_slices.values()]

    def training_step(self, batch, ctx) -> StepOutput:
        images, targets = batch
        logs: dict[str, float] = {}
        total = None
        for t, (task, logits) in enumerate(zip(self.tasks, self._task_logits(images), strict=True)):
            if not self.trained[t]:
                continue
            task_loss = ctx.loss(logits.float(), targets[:, t])
            logs[f"loss_{task}"] = float(task_loss.detach())
            if self.uncertainty:
                s = self.model.head.log_variance[t]
                term = (-s).exp() * task_loss + s
                logs[f"weight_{task}"] = float((-s).exp().detach())
            else:
                term = self.task_weights[t] * task_loss
            total = term if total is None else total + term
        return StepOutput(total, logs=logs)

    def evaluate(self, ctx, split: str) -> dict[str, float]:
        """Per task: ``<task>_loss``, ``<task>_accuracy``, ``<task>_f1_macro``; ``accuracy`` is
        the mean of the task accuracies; ``loss`` the weighted sum of the task losses (fixed
        weighting) or their plain sum (uncertainty weighting, whose learned weights are a
        training device, not a measure)."""
        import torch
        import torch.nn.functional as F

        predictions: list[list] = [[] for _ in self.tasks]
        labels: list[list] = [[] for _ in self.tasks]
        loss_sums = [0.0] * len(self.tasks)
        count = 0
        with torch.no_grad():
            for images, targets in ctx.loader(split):
                images, targets = images.to(ctx.device), targets.to(ctx.device)
                for t, logits in enumerate(self._task_logits(images)):
                    loss_sums[t] += float(
                        F.cross_entropy(logits.float(), targets[:, t], reduction="sum")
                    )
                    predictions[t].append(logits.argmax(dim=1).cpu())
                    labels[t].append(targets[:, t].cpu())
                count += len(targets)
        metrics: dict[str, float] = {}
        accuracies, total = [], 0.0
        for t, task in enumerate(self.tasks):
            predicted, truth = torch.cat(predictions[t]), torch.cat(labels[t])
            accuracy = float((predicted == truth).float().mean())
            task_loss = loss_sums[t] / max(count, 1)
            metrics[f"{task}_loss"] = task_loss
            metrics[f"{task}_accuracy"] = accuracy
            metrics[f"{task}_f1_macro"] = macro_f1(predicted, truth, len(ctx.tasks[task]))
            accuracies.append(accuracy)
            total += task_loss if self.uncertainty else self.task_weights[t] * task_loss
        metrics["accuracy"] = sum(accuracies) / len(accuracies)
        metrics["loss"] = total
        if self.uncertainty:
            for t, task in enumerate(self.tasks):
                metrics[f"{task}_weight"] = float((-self.model.head.log_variance[t]).exp())
        return metrics

    def predictor(self):
        """Backbone and heads: images to every task's logits, concatenated in task order; see
        the ``task_slices`` and ``task_classes`` attributes."""
        return self.model

    def state_summary(self):
        return {"tasks": self.tasks, "task_slices": self.model.head.task_slices}


MULTITASK = MethodSpec(
    name="multitask",
    description="one backbone, one head per CSV label column; fixed or learned "
    "(uncertainty) task weights",
    params=MultitaskParams,
    factory=Multitask,
    data_roles=(ROLE_MULTILABEL,),
    distributed=True,
    layer_tree=LayerTreeSpec(freeze=None, freeze_up_to=None, bn_mode=None),  # read-only, drift
)
