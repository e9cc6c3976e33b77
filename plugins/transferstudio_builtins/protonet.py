"""``protonet``: prototypical networks (Snell, Swersky and Zemel, NeurIPS 2017).

An encoder (the experiment's backbone without its classifier) embeds images; a class's prototype
is the mean embedding of its support images, and a query is scored by minus its squared
euclidean distance to each prototype. Training minimises the cross-entropy of those scores on
episodes of training classes, so the encoder learns an embedding in which new classes, given a
few examples, are separable by distance to their mean.

Prediction needs a support set: :func:`predict_with_support` classifies images against support
images held in memory, and :func:`prototype_classifier` turns an encoder plus support images
into an ordinary classifier module (images -> logits over the support classes), which is what
``transferstudio predict --support FOLDER`` uses. torch is imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transferstudio.api import (
    ROLE_EPISODES,
    DataError,
    MethodSpec,
    StepOutput,
    TransferMethod,
)

from .fewshot import (
    EpisodicParams,
    episode_accuracy,
    evaluate_episodes,
    split_bank,
    training_episodes,
)


def class_prototypes(embeddings: Any, targets: Any, num_classes: int) -> Any:
    """The mean embedding of each class ``0..num_classes-1``: ``[num_classes, dim]``.

    Support images need not be grouped by class; a class without support images is an error
    (its prototype would be undefined)."""
    import torch

    counts = torch.bincount(targets, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = int((counts == 0).nonzero()[0])
        raise DataError(f"class {missing} has no support image, so it has no prototype")
    sums = torch.zeros(
        num_classes, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device
    )
    sums = sums.index_add(0, targets, embeddings)
    return sums / counts.to(embeddings.dtype).unsqueeze(1)


def prototype_logits(query_embeddings: Any, prototypes: Any) -> Any:
    """Minus the squared euclidean distance of every query to every prototype:
    ``[queries, classes]``. Computed as an explicit difference (not ``cdist``) so that it is
    exact and its gradient is defined when a query sits on a prototype."""
    difference = query_embeddings.unsqueeze(1) - prototypes.unsqueeze(0)
    return -difference.pow(2).sum(dim=2)


def predict_with_support(
    encoder: Any, support_images: Any, support_labels: Any, images: Any
) -> tuple[Any, Any]:
    """Classify ``images`` against a support set: ``(predicted_index, probabilities)``.

    ``support_labels`` are class indices ``0..C-1`` (every class needs at least one support
    image); ``predicted_index`` is ``[N]`` and ``probabilities`` is ``[N, C]`` (softmax of the
    prototype logits). The encoder runs in eval mode without gradients and is left in the mode
    it was in.
    """
    import torch

    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            labels = torch.as_tensor(support_labels, dtype=torch.long, device=support_images.device)
            prototypes = class_prototypes(
                encoder(support_images).float(), labels, int(labels.max()) + 1
            )
            probabilities = prototype_logits(encoder(images).float(), prototypes).softmax(dim=1)
    finally:
        encoder.train(was_training)
    return probabilities.argmax(dim=1), probabilities


def prototype_classifier(encoder: Any, support_images: Any, support_labels: Any, num_classes: int):
    """An ordinary classifier of new classes given by support images (preprocessed, class
    indices ``0..num_classes-1``): images -> logits (minus squared distances to the classes'
    prototypes, computed once here), usable and evaluable like any classifier. It holds
    ``encoder`` (not a copy), put in eval mode."""
    import torch
    from torch import nn

    class PrototypeClassifier(nn.Module):
        """Encoder + fixed class prototypes: images -> prototype logits."""

        def __init__(self, encoder: nn.Module, prototypes: torch.Tensor) -> None:
            super().__init__()
            self.encoder = encoder
            self.register_buffer("prototypes", prototypes)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return prototype_logits(self.encoder(images), self.prototypes)

    first = next(iter(encoder.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    encoder.eval()
    with torch.no_grad():
        prototypes = class_prototypes(
            encoder(support_images.to(device)).float(), support_labels.to(device), num_classes
        )
    return PrototypeClassifier(encoder, prototypes).eval()


@dataclass
class ProtoNetParams(EpisodicParams):
    """Prototypical networks: episode sizes for training and evaluation."""


class ProtoNet(TransferMethod):
    """The encoder is the only module; prototypes are recomputed in every episode."""

    def __init__(self, params: ProtoNetParams) -> None:
        self.params = params

    def setup(self, ctx) -> None:
        self.encoder, self.feature_dim = ctx.build_backbone()

    def modules(self):
        return {"encoder": self.encoder}

    def steps_per_epoch(self, ctx) -> int:
        return self.params.episodes_per_epoch

    def train_batches(self, ctx, epoch: int):
        return training_episodes(ctx, self.params, epoch, self.params.episodes_per_epoch)

    def episode_logits(self, support, support_targets, query, way: int):
        """Query logits of one episode. Support and query go through the encoder in one batch
        (as in the reference implementation), so in training BatchNorm sees both."""
        import torch

        embeddings = self.encoder(torch.cat([support, query]))
        prototypes = class_prototypes(embeddings[: len(support)], support_targets, way)
        return prototype_logits(embeddings[len(support) :], prototypes)

    def training_step(self, batch, ctx) -> StepOutput:
        support, support_targets, query, query_targets = batch
        logits = self.episode_logits(support, support_targets, query, self.params.n_way)
        return StepOutput(
            ctx.loss(logits, query_targets),
            logits,
            query_targets,
            logs={"episode_acc": episode_accuracy(logits, query_targets)},
        )

    def evaluate(self, ctx, split: str):
        import torch

        # In eval mode an image's embedding does not depend on the rest of its batch, so each
        # image of the split is embedded once and the episodes are drawn over the embeddings:
        # the same scores as embedding every episode, at a fraction of the cost.
        way = self.params.way
        self.encoder.eval()
        with torch.no_grad():
            embeddings, targets = split_bank(ctx, split, encode=lambda x: self.encoder(x).float())

        def score(support, support_targets, query):
            return prototype_logits(query, class_prototypes(support, support_targets, way))

        return evaluate_episodes(
            embeddings,
            targets,
            way,
            self.params.shot,
            self.params.queries,
            self.params.evaluation_episodes(split),
            score,
            split=split,
        )

    def predictor(self):
        # An embedding network: classifying needs a support set (classifier_from_support).
        return self.encoder

    def classifier_from_support(self, images, targets, num_classes: int):
        return prototype_classifier(self.encoder, images, targets, num_classes)

    def state_summary(self):
        return {"output": "embedding", "feature_dim": self.feature_dim}


PROTONET = MethodSpec(
    name="protonet",
    description="prototypical networks (few-shot): episodic training, classes scored by "
    "distance to the mean support embedding",
    params=ProtoNetParams,
    factory=ProtoNet,
    data_roles=(ROLE_EPISODES,),
    support_set=True,
)
