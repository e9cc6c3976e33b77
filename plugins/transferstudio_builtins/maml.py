"""``maml``: model-agnostic meta-learning (Finn, Abbeel and Levine, ICML 2017).

The model is the experiment's backbone plus a linear head of ``n_way`` outputs. For each task
(an episode) a copy of its weights is adapted by a few gradient steps on the support images (the
inner loop); the meta-loss is the cross-entropy of the adapted weights on the query images, and
the engine's optimizer updates the initial weights with its gradient (the outer loop). The
inner loop is written with ``torch.func`` (``functional_call`` and ``grad``): the adapted
weights are functions of the initial ones, so the meta-gradient flows through every inner step
(second order). ``first_order`` drops the inner gradients from the graph (FOMAML), which is
cheaper and often close.

BatchNorm uses the statistics of the batch it sees, in training and in evaluation alike (the
running averages are removed): the support set is normalised with its own statistics while
adapting, the query set with its own when scored. This is the standard MAML practice (a
transductive setting: the queries of an episode are normalised together).

The trained model is a meta-learned initialisation, not a classifier of fixed classes: its
``n_way`` outputs mean something only after adapting to a support set
(:func:`adapt_and_predict`; ``transferstudio predict --support FOLDER`` with ``n_way`` classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transferstudio.api import (
    ROLE_EPISODES,
    DataError,
    ExperimentError,
    MethodSpec,
    StepOutput,
    TransferMethod,
    param,
)

from .fewshot import (
    MAX_IMAGE_BANK_BYTES,
    EpisodeGroups,
    EpisodicParams,
    episode_accuracy,
    evaluate_episodes,
    evaluate_streamed_episodes,
    split_bank,
    training_episodes,
)


def use_batch_statistics(module: Any) -> int:
    """Make every BatchNorm layer of ``module`` normalise with the statistics of its current
    batch, in eval mode too, by removing its running averages. Returns how many layers."""
    from torch import nn

    changed = 0
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.track_running_stats = False
            layer.running_mean = None
            layer.running_var = None
            layer.num_batches_tracked = None
            changed += 1
    return changed


def normalise_with(model: Any, images: Any) -> None:
    """Give every BatchNorm layer of ``model`` (which uses batch statistics) fixed statistics:
    those of ``images``. A classifier adapted to a support set then normalises every image with
    the support set's statistics, so a prediction no longer depends on which other images share
    its batch. Measured on the glyph runs of tests/plugins/test_fewshot_predict.py (5 unseen
    classes, 25 query images): with each batch's own statistics 0.60 one at a time, 0.52 in
    batches of one class and 0.72 all together; with the support set's, 0.68 in every case."""
    import torch
    from torch import nn

    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.track_running_stats = True
        layer.momentum = None  # a cumulative average: after one batch, exactly its statistics
        layer.running_mean = torch.zeros(layer.num_features, device=images.device)
        layer.running_var = torch.ones(layer.num_features, device=images.device)
        layer.num_batches_tracked = torch.tensor(0, device=images.device)
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()


def meta_parameters(model: Any) -> dict[str, Any]:
    """The weights MAML adapts and meta-learns: every parameter that requires a gradient."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def adapt(
    model: Any,
    weights: dict[str, Any],
    support: Any,
    support_targets: Any,
    steps: int,
    lr: float,
    create_graph: bool,
) -> dict[str, Any]:
    """The inner loop: ``steps`` gradient-descent steps of ``weights`` on the support loss.

    Returns the adapted weights (a dict for ``torch.func.functional_call``). With
    ``create_graph`` the inner gradients are part of the autograd graph, so a loss of the
    adapted weights back-propagates to ``weights`` through every step (second-order MAML);
    without it each step's gradient is computed on detached weights and treated as a constant
    (first order: the adapted weights still depend on ``weights`` through the identity).
    """
    import torch.nn.functional as F
    from torch.func import functional_call, grad

    def support_loss(current):
        return F.cross_entropy(functional_call(model, current, (support,)), support_targets)

    support_gradient = grad(support_loss)
    fast = dict(weights)
    for _ in range(steps):
        if create_graph:
            gradients = support_gradient(fast)
        else:
            gradients = support_gradient({k: w.detach() for k, w in fast.items()})
        fast = {name: w - lr * gradients[name] for name, w in fast.items()}
    return fast


def adapted_logits(
    model: Any, support: Any, support_targets: Any, images: Any, steps: int, lr: float
) -> Any:
    """Logits of ``images`` after adapting a copy of the model's weights to the support set
    (no meta-gradient; the model's own weights are not changed)."""
    import torch
    from torch.func import functional_call

    weights = {k: w.detach() for k, w in meta_parameters(model).items()}
    fast = adapt(model, weights, support, support_targets, steps, lr, create_graph=False)
    with torch.no_grad():
        return functional_call(model, fast, (images,))


def adapt_and_predict(
    model: Any, support: Any, support_targets: Any, images: Any, steps: int, lr: float
) -> tuple[Any, Any]:
    """Adapt a MAML model to a support set and classify ``images``:
    ``(predicted_index, probabilities)``. The model's own weights are not changed."""
    logits = adapted_logits(model, support, support_targets, images, steps, lr)
    probabilities = logits.float().softmax(dim=1)
    return probabilities.argmax(dim=1), probabilities


@dataclass
class MamlParams(EpisodicParams):
    """MAML: inner-loop steps and learning rate, tasks per meta-update, first or second order."""

    inner_steps: int = param(
        5, min=1, max=100, help="gradient steps on the support set per task while training"
    )
    eval_inner_steps: int = param(
        10, min=1, max=1000, help="gradient steps on the support set when evaluating a task"
    )
    inner_lr: float = param(
        0.4,
        min=0.0,
        max=10.0,
        help="inner-loop learning rate (the paper: 0.4 for Omniglot, 0.01 for miniImageNet)",
    )
    meta_batch: int = param(
        4, min=1, max=1000, help="tasks averaged per meta-update (one optimizer step)"
    )
    first_order: bool = param(
        False,
        help="first-order MAML: ignore the gradients through the inner loop (cheaper); "
        "false back-propagates through every inner step (second order)",
    )

    def validate(self) -> None:
        if self.eval_way not in (0, self.n_way):
            raise ExperimentError(
                f"MAML's head has n_way = {self.n_way} outputs, so evaluation episodes need "
                "as many classes; set eval_way to 0 or to n_way",
                "method.params.eval_way",
            )


class Maml(TransferMethod):
    """One module, ``meta_model`` (``backbone`` + ``head``), whose initial weights are
    meta-learned. It is deliberately not called ``model``: it is no classifier of the data's
    classes, so it must not be reloaded as one (e.g. as a distillation teacher)."""

    def __init__(self, params: MamlParams) -> None:
        self.params = params

    def setup(self, ctx) -> None:
        from collections import OrderedDict

        from torch import nn

        backbone, feature_dim = ctx.build_backbone()
        self.model = nn.Sequential(
            OrderedDict(backbone=backbone, head=nn.Linear(feature_dim, self.params.n_way))
        ).to(ctx.device)
        if use_batch_statistics(self.model):
            ctx.log("maml: BatchNorm layers use the statistics of each batch (no running averages)")

    def modules(self):
        return {"meta_model": self.model}

    def steps_per_epoch(self, ctx) -> int:
        return len(self._groups_of(range(self.params.episodes_per_epoch)))

    def _groups_of(self, episodes) -> EpisodeGroups:
        return EpisodeGroups(episodes, self.params.meta_batch)

    def train_batches(self, ctx, epoch: int):
        # Whole meta-batches: an epoch is ceil(episodes_per_epoch / meta_batch) updates.
        count = self.steps_per_epoch(ctx) * self.params.meta_batch
        return self._groups_of(training_episodes(ctx, self.params, epoch, count))

    def training_step(self, batch, ctx) -> StepOutput:
        import torch
        from torch.func import functional_call

        p = self.params
        weights = meta_parameters(self.model)
        losses, all_logits, all_targets = [], [], []
        for support, support_targets, query, query_targets in batch:
            fast = adapt(
                self.model,
                weights,
                support,
                support_targets,
                p.inner_steps,
                p.inner_lr,
                create_graph=not p.first_order,
            )
            logits = functional_call(self.model, fast, (query,))
            losses.append(ctx.loss(logits, query_targets))
            all_logits.append(logits)
            all_targets.append(query_targets)
        logits, targets = torch.cat(all_logits), torch.cat(all_targets)
        return StepOutput(
            torch.stack(losses).mean(),
            logits,
            targets,
            logs={"episode_acc": episode_accuracy(logits, targets)},
        )

    def evaluate(self, ctx, split: str):
        p = self.params
        count = p.evaluation_episodes(split)

        def score(support, support_targets, query):
            return adapted_logits(
                self.model, support, support_targets, query, p.eval_inner_steps, p.inner_lr
            )

        # Decode the split once when it fits in memory; every episode adapts on raw images.
        bank = split_bank(ctx, split, max_bytes=MAX_IMAGE_BANK_BYTES)
        if bank is None:
            return evaluate_streamed_episodes(ctx, split, p.n_way, p.shot, p.queries, count, score)
        images, targets = bank
        return evaluate_episodes(
            images, targets, p.n_way, p.shot, p.queries, count, score, split=split
        )

    def predictor(self):
        # The meta-learned initialisation: meaningful after adaptation (adapt_and_predict).
        return self.model

    def classifier_from_support(self, images, targets, num_classes: int):
        """A copy of the meta-model adapted to the support set (``eval_inner_steps`` steps of
        ``inner_lr``, as in evaluation), normalising with the support set's statistics (see
        :func:`normalise_with`) so that a prediction does not depend on its batch."""
        import copy

        import torch

        p = self.params
        if num_classes != p.n_way:
            raise DataError(
                f"this MAML model has n_way = {p.n_way} outputs, so its support folder needs "
                f"exactly {p.n_way} class subfolders, not {num_classes}"
            )
        device = next(self.model.parameters()).device
        weights = {k: w.detach() for k, w in meta_parameters(self.model).items()}
        with torch.enable_grad():
            fast = adapt(
                self.model,
                weights,
                images.to(device),
                targets.to(device),
                p.eval_inner_steps,
                p.inner_lr,
                create_graph=False,
            )
        adapted = copy.deepcopy(self.model).requires_grad_(False)
        for name, value in fast.items():
            adapted.get_parameter(name).copy_(value.detach())
        normalise_with(adapted, images.to(device))
        return adapted.eval()

    def state_summary(self):
        return {"output": "meta-initialisation", "n_way": self.params.n_way}


MAML = MethodSpec(
    name="maml",
    description="model-agnostic meta-learning (few-shot): an initialisation that adapts to new "
    "classes in a few gradient steps; second or first order",
    params=MamlParams,
    factory=Maml,
    data_roles=(ROLE_EPISODES,),
    support_set=True,
)
