"""Transfer methods in the plugin API: the :class:`TransferMethod` base class, the
:class:`MethodContext` the engine hands it, its declaration (:class:`MethodSpec`,
:class:`LayerTreeSpec`) and the parameter helper :func:`param`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from transferstudio.api.data import ROLE_LABELED
from transferstudio.api.detection import TASK_CLASSIFICATION
from transferstudio.api.models import Preprocessing

__all__ = [
    "LayerTreeSpec",
    "MethodContext",
    "MethodSpec",
    "StepOutput",
    "TransferMethod",
    "param",
]

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn


def param(
    default: Any,
    *,
    help: str = "",
    min: float | None = None,
    max: float | None = None,
    choices: Sequence[Any] | None = None,
) -> Any:
    """A dataclass field with the metadata that drives validation, the GUI form and ``init``.

    ``min``/``max`` bound numbers (inclusive), ``choices`` lists the allowed values, ``help`` is
    the tooltip and the comment written into generated experiment files. Mutable defaults
    (lists, dicts) are copied per instance.
    """
    metadata = {
        "help": help,
        "min": min,
        "max": max,
        "choices": tuple(choices) if choices else None,
    }
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class StepOutput:
    """What a training step returns: the loss to minimise, and for the running metrics the
    logits and targets of the batch (``None`` when the step has no classification output).
    ``logs`` holds extra scalars to plot (e.g. separate loss terms)."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    logs: dict[str, float] = field(default_factory=dict)


class MethodContext(Protocol):
    """Services the engine offers to a method. The engine builds it; methods only use it."""

    num_classes: int
    class_names: list[str]
    device: torch.device
    epochs: int
    batch_size: int
    feature_dim: int
    """Width of the selected backbone's features."""
    augmenting: bool
    """True when training images get random augmentation (so features differ every epoch)."""

    def build_classifier(self) -> nn.Module:
        """The selected backbone with the configured weights and a new head for
        ``num_classes``; a module with ``.backbone`` and ``.head`` children, on ``device``."""

    def make_head(
        self, in_features: int, hidden: int = 0, dropout: float | None = None
    ) -> nn.Module:
        """A classification head (linear, or MLP when ``hidden`` > 0) for ``num_classes``."""

    def loader(self, split: str, role: str = ROLE_LABELED, views: int = 1) -> Iterable[Any]:
        """Batches ``(images, targets)`` of a split (``train`` shuffles and augments). Other
        roles: see ``docs/method-api.md``; ``views=2`` yields two augmented views per image."""

    def cached_features(self, backbone: nn.Module, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of every (un-augmented) image of ``split`` with their targets, computed once
        and reused across epochs and across runs with the same backbone, weights and files."""

    def epoch_generator(self, epoch: int) -> torch.Generator:
        """A CPU generator seeded from the run's seed and ``epoch`` (for shuffling)."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with the experiment's label smoothing."""

    def log(self, message: str) -> None:
        """A line for the run's log (``log.txt``; lines logged in :meth:`TransferMethod.setup`,
        before the run folder exists, are written there once it does)."""

    # -- added in API 1.1 ------------------------------------------------------------------

    tasks: dict[str, list[str]]
    """``{task: class names}`` for the ``multilabel`` role (empty otherwise)."""
    backbone_name: str
    """Id of the experiment's backbone (``model.backbone``)."""
    preprocessing: Preprocessing
    """How the loaders prepare images (size, normalisation): what a method needs to undo the
    normalisation, for example to augment batches in pixel space."""
    train: Any
    """(API 1.4) The experiment's ``train`` settings, read-only: ``lr``, ``weight_decay``,
    ``epochs``, ``seed``, ``optimizer``, ``schedule``, ``label_smoothing`` ... (the fields of
    ``[train]`` in docs/experiments.md). Setting an attribute raises ``FrozenInstanceError``."""

    def has_role(self, role: str) -> bool:
        """True when the experiment provides data for ``role`` (required roles always do)."""

    def build_backbone(
        self, name: str | None = None, weights: str | None = None
    ) -> tuple[nn.Module, int]:
        """``(feature extractor, feature width)`` of any backbone plugin, on ``device``.
        ``weights``: ``"none"``, ``"cache"``, a weights file or a run folder (relative paths are
        read against the experiment file's folder). ``name=None`` is the experiment's
        ``model.backbone``; ``weights=None`` is its ``model.weights`` when the backbone is the
        experiment's, else random initialisation."""

    def load_classifier(self, name: str, weights: str) -> nn.Module:
        """Backbone plugin ``name``'s whole network, classifier included, from a weights file
        trained elsewhere on this experiment's classes (frozen, eval mode, on ``device``); a
        file for another number of classes is a ``WeightsError``."""

    def load_run_model(self, ref: str) -> nn.Module:
        """The predictor of a finished run (its best checkpoint), in eval mode on ``device``;
        ``ref`` is a run id of this workspace or a run folder (relative to the experiment
        file's folder)."""

    def episodes(
        self, split: str, n_way: int, k_shot: int, queries: int, count: int, seed: int = 0
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``count`` episodes ``(support, support_targets, query, query_targets)`` from the
        classes of ``split`` (``episodes`` role); targets are ``0..n_way-1``."""

    # -- added in API 1.6 ------------------------------------------------------------------

    def build_detector(self, architecture: str = "faster_rcnn", **options: Any) -> nn.Module:
        """A torchvision detector for ``class_names`` on the experiment's backbone (its
        ``BackboneSpec.stages`` give the feature pyramid) with the configured weights, on
        ``device``: in training mode ``model(images, targets)`` returns its loss terms, in eval
        mode ``model(images)`` returns ``{"boxes", "scores", "labels"}`` per image, label ``k``
        being ``class_names[k - 1]``. ``options``: ``pyramid_levels`` (stages used, deepest
        first, default 3), ``fpn_channels`` (128), ``min_size`` (short side in pixels, an int
        or a tuple to pick from at random in training: scale jitter; 320), ``max_size`` (512),
        ``score_threshold`` (0.05), ``detections_per_image`` (100)."""


class TransferMethod:
    """Base class of transfer methods: the method is the step, the engine is the loop.

    Override :meth:`setup`, :meth:`modules`, :meth:`training_step`, :meth:`validation_step` and
    :meth:`predictor`; the rest has sensible defaults. ``modules()`` are the modules saved in
    checkpoints (by name); parameters with ``requires_grad`` are optimised.
    """

    def setup(self, ctx: MethodContext) -> None:
        """Build the method's modules (e.g. ``ctx.build_classifier()``)."""
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        """The modules this method trains and checkpoints, by name."""
        raise NotImplementedError

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; each may carry its own ``lr``. Default: one group of every
        trainable parameter at ``lr``."""
        params = [p for m in self.modules().values() for p in m.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr}]

    def on_epoch_start(self, epoch: int, ctx: MethodContext) -> bool:
        """Called before each epoch (0-based). Return True when the set of trainable parameters
        changed, so the engine rebuilds the optimizer (gradual unfreezing)."""
        return False

    def train(self) -> None:
        """Put the modules in training mode (override to keep parts in eval mode)."""
        for module in self.modules().values():
            module.train()

    def eval(self) -> None:
        """Put the modules in evaluation mode."""
        for module in self.modules().values():
            module.eval()

    def train_batches(self, ctx: MethodContext, epoch: int) -> Iterable[Any]:
        """The batches of one training epoch. Default: ``ctx.loader("train")``."""
        return ctx.loader("train")

    def eval_batches(self, ctx: MethodContext, split: str) -> Iterable[Any]:
        """The batches of an evaluation split, in dataset order (the engine pairs prediction i
        with sample i for the misclassified gallery). Default: ``ctx.loader(split)``."""
        return ctx.loader(split)

    def training_step(self, batch: Any, ctx: MethodContext) -> StepOutput:
        """Turn one batch (already on ``ctx.device``) into a loss."""
        raise NotImplementedError

    def validation_step(self, batch: Any, ctx: MethodContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits, targets)`` for one evaluation batch (no gradients are tracked)."""
        raise NotImplementedError

    def predictor(self) -> nn.Module:
        """The module that maps preprocessed images to logits: what is exported and predicted."""
        raise NotImplementedError

    def state_summary(self) -> dict[str, Any]:
        """JSON-serialisable facts saved with checkpoints (e.g. the current freeze state)."""
        return {}

    # -- added in API 1.1 ------------------------------------------------------------------

    def evaluate(self, ctx: MethodContext, split: str) -> dict[str, float] | None:
        """Metrics of ``split`` for methods whose evaluation is not "logits against labels"
        (episodic accuracy, a self-supervised loss). ``None`` (default): the engine runs
        :meth:`validation_step` over :meth:`eval_batches` and builds the classification report."""
        return None

    def epoch_diagnostics(self, ctx: MethodContext) -> dict[str, float]:
        """Extra scalars measured after each epoch's validation (target accuracy, MMD, ...);
        stored with the validation metrics as ``diag_<name>`` and plotted by the window. Called
        right after validation: the modules are still in eval mode."""
        return {}

    def steps_per_epoch(self, ctx: MethodContext) -> int | None:
        """Training steps per epoch when not the labeled train set over the batch size
        (episodic training); used by the learning-rate schedule and progress."""
        return None

    # -- added in API 1.2 ------------------------------------------------------------------

    def classifier_from_support(
        self, images: torch.Tensor, targets: torch.Tensor, num_classes: int
    ) -> nn.Module:
        """For methods with ``MethodSpec.support_set``: a classifier of new classes given by a
        support set (preprocessed ``images``, class indices ``targets`` in ``0..num_classes-1``),
        mapping images to ``num_classes`` logits. Called after :meth:`setup` with the modules
        loaded from a checkpoint; the setup context offers ``build_backbone``, ``make_head``,
        ``build_classifier`` and ``log`` but no data. Must not change the method's modules."""
        raise NotImplementedError(
            f"{type(self).__name__} predicts its own classes; it takes no support set"
        )


@dataclass(frozen=True)
class LayerTreeSpec:
    """(API 1.5) A method's promise that it honours the window's layer tree.

    ``module``: the method module the tree shows (a key of what ``setup`` returns; its weight
    drift and gradient norms are drawn in the tree, and its parameters are what the tree's
    checks freeze). ``freeze``: the setting (a ``list[str]`` of module patterns) the tree's
    checks and presets write the freeze plan into; ``None``: the tree is read-only and shows
    the modules in ``frozen`` (paths such as ``"backbone"``) frozen. ``freeze_up_to``: the
    setting holding ``FreezePlan.up_to`` (cleared when the tree is edited); ``bn_mode``: the
    setting holding ``FreezePlan.bn_mode`` (one of ``BN_MODES``; the window proposes
    ``frozen-stats`` for weights with folded BatchNorm); ``None`` where the method has no such
    setting."""

    module: str = "model"
    freeze: str | None = "freeze"
    freeze_up_to: str | None = "freeze_up_to"
    bn_mode: str | None = "bn_mode"
    frozen: tuple[str, ...] = ()


@dataclass(frozen=True)
class MethodSpec:
    """A transfer method: its id, its parameter dataclass (every field made with :func:`param`),
    the data roles it requires and those it uses when given (``ROLE_*``), and
    ``factory(params) -> TransferMethod``. The first required role decides how ``data.path``
    is read."""

    name: str
    description: str
    params: type
    factory: Callable[[Any], TransferMethod]
    data_roles: tuple[str, ...] = (ROLE_LABELED,)
    optional_roles: tuple[str, ...] = ()
    support_set: bool = False
    """(API 1.2) The method learns no fixed classes: its predictor classifies the classes of a
    support set given at prediction time (``transferstudio predict --support FOLDER``), through
    :meth:`TransferMethod.classifier_from_support`. Its runs are not reloaded as classifiers of
    their training classes (as teachers, say)."""
    distributed: bool = False
    """(API 1.2) The method trains correctly in several processes (``torchrun``): the engine
    applies DistributedDataParallel to its trainable modules and shards the train batches, so
    every trainable module must be called through its own ``forward`` in each step and no
    state may depend on seeing the whole epoch. Other methods are refused under torchrun."""
    baseline: str | None = None
    """(API 1.3) What the transfer-gain baseline of a run of this method is. ``None``: the
    same experiment from random initialisation (``model.weights = "none"``), which measures
    what the pretrained weights bring. A method id: the same model and weights trained with
    that method instead (its parameters at their defaults, except those both methods share),
    which measures what this method brings over it: domain adaptation against source-only
    fine-tuning, distillation against the student trained alone."""
    layer_tree: LayerTreeSpec | None = None
    """(API 1.5) How the method honours the window's layer tree (:class:`LayerTreeSpec`).
    ``None`` (not declared): the tree shows the model's modules for export only, without the
    trainable checks, the freeze presets or the live drift columns."""
    task: str = TASK_CLASSIFICATION
    """(API 1.6) The task the method trains for (``TASK_*``): the window and ``init`` offer it
    for experiments of that task only, and an experiment of another task is refused."""
