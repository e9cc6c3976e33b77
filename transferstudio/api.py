"""The public plugin API of TransferStudio.

Everything a plugin author (and every built-in plugin) may use lives here: the ``hookimpl``
marker, the spec dataclasses the hooks return, the :class:`TransferMethod` base class, the
:class:`MethodContext` the engine hands to a method, the parameter helper :func:`param`, and the
error types whose messages are shown to users.

A plugin module declares the API version it was written for::

    TRANSFERSTUDIO_API_VERSION = "1.5"

The host accepts a plugin when the major versions match and the plugin's minor version is not
newer than the host's (:func:`is_compatible`). This module does not import torch, so listing
plugins stays fast; torch is imported where models are built or trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

from transferstudio.core.settings.freeze import BN_MODES, FreezePlan, parse_unfreeze_schedule

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn

__all__ = [
    "API_VERSION",
    "BN_MODES",
    "BUNDLE_MANIFEST_ENTRY",
    "BUNDLE_WEIGHTS_ENTRY",
    "IMAGENET_MEAN",
    "IMAGE_SUFFIXES",
    "IMAGENET_STD",
    "BackboneSpec",
    "DataError",
    "DatasetSpec",
    "ExperimentError",
    "ExporterSpec",
    "FreezePlan",
    "LayerTreeSpec",
    "MethodContext",
    "MethodSpec",
    "PluginError",
    "Preprocessing",
    "ROLE_EPISODES",
    "ROLE_LABELED",
    "ROLE_LABELED_TARGET",
    "ROLE_MULTILABEL",
    "ROLE_UNLABELED",
    "ROLE_UNLABELED_TARGET",
    "Sample",
    "SourceListing",
    "StepOutput",
    "TransferMethod",
    "TransferStudioError",
    "WeightsError",
    "draw_episodes",
    "hookimpl",
    "is_compatible",
    "param",
    "parse_unfreeze_schedule",
]

API_VERSION = "1.5"
"""Version of this API. Minor bumps only add; a major bump may remove or change.

1.1 added data roles (``ROLE_*``, ``MethodSpec.optional_roles``), ``MethodContext.build_backbone``,
``load_run_model``, ``episodes``, ``tasks``, ``has_role``, ``backbone_name``,
``preprocessing``, ``loader(role=, views=)``, :func:`draw_episodes`, ``ExporterSpec.load``, and
``TransferMethod.evaluate``, ``epoch_diagnostics`` and ``steps_per_epoch``.

1.2 added ``MethodSpec.distributed`` (training under torchrun), ``MethodSpec.support_set`` and
``TransferMethod.classifier_from_support``: methods that
learn no fixed classes (few-shot) predict the classes of a support folder given at prediction
time; the bundle entry names ``BUNDLE_WEIGHTS_ENTRY``, ``BUNDLE_MANIFEST_ENTRY``; and
``BackboneSpec.packaged_weights`` (pretrained weights shipped with the plugin) and
``DatasetSpec.write_example`` (a small example of a data format, for the test kit).

1.3 added ``MethodSpec.baseline``: the method that trains the same model without this method's
transfer, for the transfer-gain baseline (``transferstudio baseline``).

1.4 added ``MethodContext.train``: the experiment's ``train`` settings (read-only), so a
method can read ``lr``, ``weight_decay``, ``epochs`` or ``seed``.

1.5 added ``MethodSpec.layer_tree`` (:class:`LayerTreeSpec`): a method declares that it honours
the window's layer tree, which module the tree shows and which settings carry the freeze plan
and the BN mode."""

ROLE_LABELED = "labeled"
"""Labeled images from ``data.path`` (class folders or CSV), split train/val/test."""
ROLE_UNLABELED_TARGET = "unlabeled_target"
"""Unlabeled images of the target domain from ``data.target_path`` (domain adaptation)."""
ROLE_LABELED_TARGET = "labeled_target"
"""Labeled target images from ``data.target_eval_path``, used only for evaluation."""
ROLE_EPISODES = "episodes"
"""Class folders from ``data.path``, split by class, sampled as N-way K-shot episodes."""
ROLE_MULTILABEL = "multilabel"
"""A CSV at ``data.path`` with one label column per task (``data.label_columns``)."""
ROLE_UNLABELED = "unlabeled"
"""Images under ``data.path`` without labels (self-supervised pretraining)."""

ROLE_KEYS = {
    ROLE_LABELED: "data.path",
    ROLE_UNLABELED_TARGET: "data.target_path",
    ROLE_LABELED_TARGET: "data.target_eval_path",
    ROLE_EPISODES: "data.path",
    ROLE_MULTILABEL: "data.path",
    ROLE_UNLABELED: "data.path",
}
"""The experiment key each data role reads."""

PROJECT_NAME = "transferstudio"
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Decorator marking a function as a TransferStudio hook implementation."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
"""File suffixes data sources treat as images (compare lower-cased)."""

BUNDLE_WEIGHTS_ENTRY = "weights.safetensors"
BUNDLE_MANIFEST_ENTRY = "manifest.json"
"""(API 1.2) The two entries of a model bundle (``.tsmodel``, a zip): the module's weights as
safetensors and the JSON manifest (architecture recipe, class names, preprocessing, provenance).
See docs/exporting.md."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_compatible(plugin_version: str, host_version: str = API_VERSION) -> bool:
    """True when a plugin written for ``plugin_version`` can run on ``host_version``."""
    try:
        p_major, p_minor = (int(x) for x in str(plugin_version).split(".")[:2])
        h_major, h_minor = (int(x) for x in host_version.split(".")[:2])
    except ValueError:
        return False
    return p_major == h_major and p_minor <= h_minor


# --------------------------------------------------------------------------- errors


class TransferStudioError(Exception):
    """An error whose message is meant for the user: it says what is wrong and what to do."""


class ExperimentError(TransferStudioError):
    """A bad experiment file or setting. ``key`` is the dotted key at fault, when there is one."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class DataError(TransferStudioError):
    """The data cannot be used as given (no images in a class, a single class, ...)."""


class WeightsError(TransferStudioError):
    """Weights could not be loaded (missing file, key mismatch, unsafe pickle)."""


class PluginError(TransferStudioError):
    """A plugin is missing, broken or incompatible."""


# --------------------------------------------------------------------------- episodes


def draw_episodes(
    labels: Sequence[Any],
    way: int,
    shot: int,
    queries: int,
    count: int,
    seed: int,
    split: str = "this",
) -> list[list[int]]:
    """``count`` few-shot episodes over items with class ``labels``: each a list of item indices,
    class by class, ``shot`` support items then ``queries`` query items per class (so
    ``way * (shot + queries)`` long). Classes and items are drawn from ``random.Random(seed)``:
    the same labels and seed give the same episodes. Raises :class:`DataError` naming ``split``
    when fewer than ``way`` classes have ``shot + queries`` items."""
    import random

    by_class: dict[Any, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    need = shot + queries
    usable = sorted(c for c, members in by_class.items() if len(members) >= need)
    if len(usable) < way:
        raise DataError(
            f"{split} split: {way}-way {shot}-shot episodes with {queries} queries need {way} "
            f"classes with at least {need} images; {len(usable)} have that. Lower the episode "
            "sizes (ways, shots, queries) or add classes or images"
        )
    rng = random.Random(seed)
    return [
        [i for c in rng.sample(usable, way) for i in rng.sample(by_class[c], need)]
        for _ in range(count)
    ]


# --------------------------------------------------------------------------- parameters


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


# --------------------------------------------------------------------------- backbones


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a backbone: resize the short side, centre-crop, normalise."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls(
            resize=int(data["resize"]),
            crop=int(data["crop"]),
            mean=tuple(float(x) for x in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in data["std"]),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", "bilinear")),
        )

    def resized_for(self, crop: int) -> Preprocessing:
        """The same preprocessing at another crop size, keeping the resize/crop ratio."""
        return dataclasses.replace(self, crop=crop, resize=round(crop * self.resize / self.crop))


@dataclass(frozen=True)
class BackboneSpec:
    """A network that turns an image batch into a feature vector per image.

    ``build()`` returns the architecture with its original classifier, uninitialised or
    randomly initialised, and must not download anything. ``classifier`` is the dotted path of
    the layer the host replaces by its own head (e.g. ``"fc"``); ``feature_dim`` is that layer's
    input width. ``cache_files`` name pretrained weights files as they sit in the local torch
    cache (``$TORCH_HOME/hub/checkpoints``), preferred first, for the ``weights = "cache"`` source.
    ``packaged_weights`` (API 1.2) returns the path of a pretrained weights file the plugin ships
    itself (inside its wheel, say); ``weights = "cache"`` prefers it to the torch cache.
    """

    name: str
    family: str
    feature_dim: int
    build: Callable[[], nn.Module]
    classifier: str
    preprocessing: Preprocessing = Preprocessing()
    cache_files: tuple[str, ...] = ()
    description: str = ""
    approx_params: int | None = None
    convert_state_dict: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Optional: rename keys of a stored state dict (legacy checkpoints) before loading."""
    packaged_weights: Callable[[], str] | None = None


# --------------------------------------------------------------------------- data sources


@dataclass(frozen=True)
class Sample:
    """One image file and its class name."""

    path: str
    label: str


@dataclass
class SourceListing:
    """What a data source found, before the host opens any image.

    ``splits`` maps split names (``train``, ``val``, ``test``) to samples. A source that has no
    predefined split returns everything under ``"all"``; the host then splits it stratified by
    class with the experiment's ratio and seed. ``skipped`` holds ``(path, reason)`` pairs for
    entries the source rejected itself (a bad CSV row, a file with a non-image suffix).
    ``classes`` lists every class the source declares (e.g. every class folder, even an empty
    one), so the host can name a class that has no images; ``None`` derives it from the samples.
    """

    splits: dict[str, list[Sample]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    classes: list[str] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A data-source format, e.g. an image folder or a CSV file.

    ``detect(path)`` says whether this source recognises ``path`` (used when the experiment says
    ``source = "auto"``); ``list_samples(path)`` returns a :class:`SourceListing`.
    ``write_example(folder)`` (API 1.2) writes a small example of the format (a few images of
    two or more classes) under ``folder`` and returns the path to give as ``data.path``: the
    test kit (``transferstudio.testing``) checks the source on it.
    """

    name: str
    description: str
    detect: Callable[[str], bool]
    list_samples: Callable[[str], SourceListing]
    write_example: Callable[[str], str] | None = None


# --------------------------------------------------------------------------- exporters


@dataclass(frozen=True)
class ExporterSpec:
    """A model file format. ``export(module, example_input, path, metadata)`` writes the file.
    ``load(module, path)`` (API 1.1) returns the written file reloaded as a callable
    ``images -> outputs``: the host compares it with the module on the example and on
    validation images (max abs difference, top-1 agreement). Exporters without ``load`` may give
    ``verify(module, example_input, path)``, returning the max abs difference on the example."""

    format: str
    suffix: str
    export: Callable[..., None]
    description: str = ""
    verify: Callable[..., float] | None = None
    load: Callable[..., Callable[[Any], Any]] | None = None


# --------------------------------------------------------------------------- methods


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
