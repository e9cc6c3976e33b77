"""The :class:`transferstudio.api.MethodContext` the engine hands to methods: what a method may
ask of the run (its classes, device, data loaders, backbones, feature cache, log)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from transferstudio.api import ROLE_LABELED, DataError, WeightsError
from transferstudio.core.data.roles import EpisodeLoader
from transferstudio.core.models.build import (
    build_backbone,
    build_classifier,
    build_trained_classifier,
    make_head,
)
from transferstudio.core.models.detector import DetectorRecipe, build_detector
from transferstudio.core.runs.finished import load_run_predictor
from transferstudio.core.runs.weight_sources import resolve_weights
from transferstudio.core.training.seeding import epoch_seed

if TYPE_CHECKING:
    from transferstudio.core.training.session import TrainingSession

EPISODE_STREAMS = {"train": 1, "val": 2, "test": 3}
"""Distinct random streams per split, so val and test episodes never repeat train's draws."""


def read_only(settings: Any) -> Any:
    """A frozen copy of a settings dataclass: what a method may read but not change."""
    fields = dataclasses.fields(settings)
    frozen = dataclasses.make_dataclass(
        type(settings).__name__, [(f.name, f.type) for f in fields], frozen=True
    )
    return frozen(**{f.name: getattr(settings, f.name) for f in fields})


class EngineContext:
    """The :class:`transferstudio.api.MethodContext` of a :class:`TrainingSession`."""

    def __init__(self, session: TrainingSession) -> None:
        data = session.data
        self._session = session
        self.num_classes = len(data.scan.classes)
        self.class_names = list(data.scan.classes)
        self.device = session.device
        self.epochs = session.exp.train.epochs
        self.batch_size = session.exp.data.batch_size
        self.feature_dim = session.backbone_spec.feature_dim
        self.augmenting = session.exp.augment.any_random
        self.seed = session.exp.train.seed
        self.tasks: dict[str, list[str]] = dict(data.tasks)
        self._said_episodes_plain = False
        self.backbone_name = session.exp.model.backbone
        self.preprocessing = data.preprocessing
        self.train = read_only(session.exp.train)
        self.detector_recipes: dict[int, DetectorRecipe] = {}
        """The recipe of each detector ``build_detector`` built, by ``id`` of the module."""

    def build_classifier(self) -> torch.nn.Module:
        s = self._session
        model = build_classifier(
            s.backbone_spec, s.data.weights_file, self.num_classes, dropout=s.exp.model.head_dropout
        )
        return model.to(self.device)

    def build_detector(self, architecture: str = "faster_rcnn", **options: Any) -> torch.nn.Module:
        s = self._session
        recipe = detector_recipe(s, architecture, options)
        detector = build_detector(s.backbone_spec, s.data.weights_file, recipe).to(self.device)
        # Checkpoints record how to rebuild it, so that predict and export need no method.
        self.detector_recipes[id(detector)] = recipe
        return detector

    def make_head(
        self, in_features: int, hidden: int = 0, dropout: float | None = None
    ) -> torch.nn.Module:
        d = self._session.exp.model.head_dropout if dropout is None else dropout
        return make_head(in_features, self.num_classes, hidden, d).to(self.device)

    def loader(self, split: str, role: str = ROLE_LABELED, views: int = 1) -> Iterable[Any]:
        return StopChecked(self._session.loader(split, role, views), self._session.check_stop)

    def has_role(self, role: str) -> bool:
        return self._session.data.has_role(role)

    def build_backbone(
        self, name: str | None = None, weights: str | None = None
    ) -> tuple[torch.nn.Module, int]:
        s = self._session
        spec = s.backbone_spec if name is None else s.host.backbone(name)
        if weights is None and spec.name == s.backbone_spec.name:
            weights_file = s.data.weights_file
        else:
            weights_file = resolve_weights(
                spec, weights if weights is not None else "none", s.exp.base_dir
            )
        return build_backbone(spec, weights_file).to(self.device), spec.feature_dim

    def load_classifier(self, name: str, weights: str) -> torch.nn.Module:
        s = self._session
        spec = s.host.backbone(name)
        weights_file = resolve_weights(spec, weights, s.exp.base_dir)
        if weights_file is None:
            raise WeightsError(f"a trained classifier needs a weights file, not {weights!r}")
        model = build_trained_classifier(spec, weights_file, self.num_classes)
        return model.to(self.device).eval().requires_grad_(False)

    def load_run_model(self, ref: str) -> torch.nn.Module:
        s = self._session
        # A relative run folder is read against the experiment file's folder, as data paths are.
        folder = s.exp.resolve(ref)
        ref = folder if (Path(folder) / "checkpoints").is_dir() else ref
        return load_run_predictor(ref, s.host, s.workspace).to(self.device)

    def episodes(
        self, split: str, n_way: int, k_shot: int, queries: int, count: int, seed: int = 0
    ) -> Iterable[Any]:
        s = self._session
        if split not in s.data.scan.splits:
            raise DataError(f"no {split} classes for episodes; see data.val_split/test_split")
        if split == "train" and self.augmenting and not self._said_episodes_plain:
            self._said_episodes_plain = True
            s.log("episodes are not augmented: the [augment] settings do not apply to them")
        loader = EpisodeLoader(
            s.data.scan.splits[split],
            s.data.eval_transform,
            n_way,
            k_shot,
            queries,
            count,
            seed=epoch_seed(self.seed + seed, EPISODE_STREAMS.get(split, 4)),
            workers=s.data.workers,
            split=split,
        )
        return StopChecked(loader, s.check_stop)

    def epoch_generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(epoch_seed(self.seed, epoch))

    def cached_features(
        self, backbone: torch.nn.Module, split: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self._session
        return s.data.cached_features(backbone, split, s.device, s.check_stop, s.log)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, targets, label_smoothing=self._session.exp.train.label_smoothing
        )

    def log(self, message: str) -> None:
        self._session.log(message)


def detector_recipe(
    session: TrainingSession, architecture: str, options: dict[str, Any]
) -> DetectorRecipe:
    """The :class:`DetectorRecipe` a method's ``build_detector`` call asks for; an unknown
    option is a :class:`TypeError` naming it (a typo must not fall back to a default)."""
    known = set(DetectorRecipe.__dataclass_fields__) - {"backbone", "num_classes", "architecture"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"build_detector() got unknown option(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(known))}"
        )
    options = dict(options)
    if "min_size" in options:
        size = options["min_size"]
        options["min_size"] = tuple(size) if isinstance(size, list | tuple) else (int(size),)
    return DetectorRecipe(
        backbone=session.backbone_spec.name,
        num_classes=len(session.scan.classes),
        architecture=architecture,
        **options,
    )


class StopChecked:
    """A loader that honours Stop and Pause between batches, so that a method's own loops
    (custom evaluation over hundreds of episodes, feature caching) stay interruptible. Other
    attributes (``dataset``, ``batch_size``) are the wrapped loader's."""

    def __init__(self, loader: Any, check_stop: Callable[[], None]) -> None:
        self._loader, self._check_stop = loader, check_stop

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self._loader:
            self._check_stop()
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
