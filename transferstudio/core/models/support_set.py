"""Prediction from a support set: few-shot runs (``MethodSpec.support_set``) learn no fixed
classes, so a small folder of class subfolders names the classes at prediction time.

:func:`read_support_folder` prepares the folder's images as the run prepared its own;
:func:`rebuild_method` sets the run's method up again, without data, with its modules loaded
from a checkpoint or a bundle; the method's ``classifier_from_support`` then turns the support
set into an ordinary classifier (images -> logits over the folder's classes).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferstudio.api import (
    DataError,
    PluginError,
    Preprocessing,
    TransferMethod,
    TransferStudioError,
    WeightsError,
)
from transferstudio.core.data.images import ImageProblem, image_files, load_rgb
from transferstudio.core.data.loaders import build_transform
from transferstudio.core.models.build import build_backbone, build_classifier, make_head
from transferstudio.core.settings import params as P


@dataclass
class SupportSet:
    """Preprocessed support images, their class indices and the class names (folder names)."""

    images: torch.Tensor
    targets: torch.Tensor
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of the files of the folder that were not used."""


def read_support_folder(folder: str | Path, preprocessing: Preprocessing) -> SupportSet:
    """The images of ``folder/<class>/...`` (classes: the subfolders, sorted), prepared with
    ``preprocessing`` (the run's). Unreadable files are skipped and reported; a folder with
    fewer than two classes, or a class without a readable image, is a :class:`DataError`."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(
            f"support folder {root} does not exist; give a folder with one subfolder of "
            "example images per class"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"support folder {root} has {len(classes)} class subfolder(s); it needs one "
            "subfolder of example images per class, at least two"
        )
    transform = build_transform(preprocessing, None)
    images: list[torch.Tensor] = []
    targets: list[int] = []
    skipped: list[tuple[str, str]] = []
    for index, name in enumerate(classes):
        paths, others = image_files(root / name)
        skipped += others
        found = 0
        for path in paths:
            try:
                images.append(transform(load_rgb(path)))
            except ImageProblem as exc:
                skipped.append((path, str(exc)))
                continue
            targets.append(index)
            found += 1
        if not found:
            raise DataError(
                f"support class folder {root / name} holds no readable image; add at least one"
            )
    return SupportSet(torch.stack(images), torch.tensor(targets), classes, skipped)


class _NotOffered(TransferStudioError, AttributeError):
    """A context service a rebuild does not offer (an AttributeError too, so ``hasattr`` and
    ``getattr(ctx, name, default)`` keep working)."""


class _SetupContext:
    """The method context of a rebuild: what ``setup`` needs to build modules, no data.
    Backbones are built untrained; their weights come from the checkpoint afterwards."""

    def __init__(self, host, meta: dict[str, Any], preprocessing: Preprocessing) -> None:
        experiment = meta.get("experiment", {})
        self._host = host
        self._spec = host.backbone(meta["backbone"])
        self._head_dropout = float(experiment.get("model", {}).get("head_dropout", 0.0))
        self.class_names = list(meta.get("class_names", []))
        self.num_classes = len(self.class_names)
        self.device = torch.device("cpu")
        self.epochs = 0
        self.batch_size = int(experiment.get("data", {}).get("batch_size", 32))
        self.feature_dim = self._spec.feature_dim
        self.augmenting = False
        self.seed = int(meta.get("seed") or 0)
        self.tasks: dict[str, list[str]] = {}
        self.backbone_name = self._spec.name
        self.preprocessing = preprocessing
        self.messages: list[str] = []

    def build_backbone(self, name: str | None = None, weights: str | None = None):
        spec = self._spec if name is None else self._host.backbone(name)
        return build_backbone(spec, None), spec.feature_dim

    def build_classifier(self) -> nn.Module:
        return build_classifier(self._spec, None, self.num_classes, dropout=self._head_dropout)

    def make_head(self, in_features: int, hidden: int = 0, dropout: float | None = None):
        d = self._head_dropout if dropout is None else dropout
        return make_head(in_features, self.num_classes, hidden, d)

    def log(self, text: str) -> None:
        self.messages.append(text)

    def __getattr__(self, name: str):
        raise _NotOffered(
            f"the method uses ctx.{name} in setup, which a run rebuilt for prediction does not "
            "offer (no data is loaded): build modules only in setup"
        )


def setup_without_data(meta: dict[str, Any], host) -> TransferMethod:
    """The method of ``meta`` (checkpoint-style: ``method``, ``backbone``, ``preprocessing``,
    ``experiment.method.params``) built and set up without data; its modules untrained."""
    name = meta.get("method")
    spec = host.method(name)
    raw_params = meta.get("experiment", {}).get("method", {}).get("params", {})
    params = P.build(spec.params, raw_params, "method.params.")
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    with _plugin_code(name, host, "setting up its modules"):
        method = spec.factory(params)
        method.setup(_SetupContext(host, meta, preprocessing))
    return method


def rebuild_method(
    meta: dict[str, Any], host, weights: dict[str, torch.Tensor], source: str
) -> TransferMethod:
    """The method of a checkpoint's metadata ``meta`` (its parameters from the stored
    experiment), set up again without data, in eval mode, with every module named in
    ``weights`` (``module.key -> tensor``, as checkpoints store them) loaded; a module the
    weights do not fit is a :class:`WeightsError` naming ``source``."""
    name = meta.get("method")
    method = setup_without_data(meta, host)
    loaded = 0
    for module_name, module in method.modules().items():
        prefix = module_name + "."
        state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        if not state:
            continue  # a bundle holds the predictor module only
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsError(
                f"{source}: the weights of module {module_name!r} do not fit method {name!r} "
                f"as it is installed now: {str(exc).splitlines()[0]}"
            ) from None
        loaded += 1
    if not loaded:
        raise WeightsError(f"{source} holds no weights of method {name!r}'s modules")
    method.eval()  # parameters keep requires_grad: a method may adapt them (MAML, on copies)
    return method


def predicts_from_support(meta: dict[str, Any], host) -> bool:
    """Whether a checkpoint's (or bundle's) model needs a support set to predict: recorded by
    the engine; for checkpoints older than that record, asked of the installed method."""
    if "support_set" in meta:
        return bool(meta["support_set"])
    spec = host.methods.get(meta.get("method") or "")
    return bool(spec is not None and spec.support_set)


def support_classifier(method: TransferMethod, support: SupportSet, name: str = "", host=None):
    """The method's classifier of the support set's classes (eval mode)."""
    with _plugin_code(name or type(method).__name__, host, "building a support-set classifier"):
        classifier = method.classifier_from_support(
            support.images, support.targets, len(support.class_names)
        )
        return classifier.eval()


@contextlib.contextmanager
def _plugin_code(method: str, host, doing: str):
    """Errors of a method's own code become a :class:`PluginError` naming it and its plugin."""
    try:
        yield
    except TransferStudioError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's code may raise anything
        plugin = host.plugin_in_traceback(exc.__traceback__) if host is not None else None
        where = f" (plugin {plugin})" if plugin else ""
        raise PluginError(
            f"method {method!r}{where} failed while {doing}: {type(exc).__name__}: {exc}"
        ) from exc
