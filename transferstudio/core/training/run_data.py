"""A run's data: the scanned splits of its primary role, the samples of its other roles
(unlabeled or labeled target folders), their transforms, datasets and loaders, and the feature
cache.

The six data roles (``transferstudio.api.ROLE_*``) a method can declare are set up here: the
first declared role is the primary one, whose splits are the run's ``train`` / ``val`` / ``test``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from transferstudio.api import (
    ROLE_DETECTION,
    ROLE_EPISODES,
    ROLE_KEYS,
    ROLE_LABELED,
    ROLE_LABELED_TARGET,
    ROLE_MULTILABEL,
    ROLE_UNLABELED,
    ROLE_UNLABELED_TARGET,
    BackboneSpec,
    DataError,
    MethodSpec,
    Preprocessing,
    Sample,
)
from transferstudio.core.data import loaders as D
from transferstudio.core.data.detection_loader import (
    DetectionDataset,
    collate_detection,
    detection_transform,
)
from transferstudio.core.data.detection_scan import choose_detection_source, scan_detection
from transferstudio.core.data.roles import (
    MultiLabelDataset,
    UnlabeledDataset,
    list_images,
    require_path,
    scan_labeled_target,
    scan_multilabel,
    scan_unlabeled,
    split_classes,
)
from transferstudio.core.models.features import FeatureCache, cache_key
from transferstudio.core.models.weights import file_digest
from transferstudio.core.plugins.host import PluginHost
from transferstudio.core.runs.weight_sources import resolve_weights
from transferstudio.core.settings.experiment import Experiment
from transferstudio.core.training.distributed import Distributed, EpochShardSampler
from transferstudio.core.training.seeding import epoch_seed

# Offsets that give each data role its own shuffling stream (see ``RunData.loader``).
ROLE_STREAMS = {
    ROLE_LABELED: 0,
    ROLE_UNLABELED_TARGET: 1,
    ROLE_LABELED_TARGET: 2,
    ROLE_EPISODES: 3,
    ROLE_MULTILABEL: 4,
    ROLE_UNLABELED: 5,
    ROLE_DETECTION: 6,
}


@dataclass
class RunData:
    """Everything a run reads images through; built by :meth:`prepare`."""

    exp: Experiment
    primary_role: str
    scan: D.ScanResult
    weights_file: Path | None
    weights_digest: str | None
    preprocessing: Preprocessing
    workers: int
    train_transform: Any
    eval_transform: Any
    feature_cache: FeatureCache
    tasks: dict[str, list[str]] = field(default_factory=dict)
    multilabels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    role_samples: dict[str, list[Sample]] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)
    eval_datasets: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def prepare(
        cls,
        exp: Experiment,
        host: PluginHost,
        method_spec: MethodSpec,
        backbone_spec: BackboneSpec,
        cache_folder: Path | None,
    ) -> RunData:
        """Scan the experiment's data for the roles ``method_spec`` declares; raises
        :class:`DataError` naming the setting when a role's data is missing or unusable."""
        data_path = exp.resolve(exp.data.path) if exp.data.path else None
        if data_path is None:
            raise DataError("data.path is empty: choose an image folder or CSV file")
        roles = method_spec.data_roles or (ROLE_LABELED,)
        primary_role = roles[0]
        for role in roles[1:]:
            key = ROLE_KEYS[role]
            require_path(getattr(exp.data, key.split(".")[1]), key, role, exp.method)
        tasks: dict[str, list[str]] = {}
        multilabels: dict[str, tuple[str, ...]] = {}
        if primary_role == ROLE_DETECTION:
            source = choose_detection_source(host.datasets, exp.data, data_path)
            scan = scan_detection(source, exp.data, data_path)
        elif primary_role == ROLE_UNLABELED:
            scan = scan_unlabeled(data_path, exp.data)
        elif primary_role == ROLE_MULTILABEL:
            scan, tasks, multilabels = scan_multilabel(data_path, exp.data)
        else:
            source = D.choose_source(host.datasets, exp.data, data_path)
            if primary_role == ROLE_EPISODES:
                scan = split_classes(source, data_path, exp.data)
            else:
                scan = D.scan(source, exp.data, data_path)
        role_samples: dict[str, list[Sample]] = {}
        if ROLE_UNLABELED_TARGET in roles or (
            ROLE_UNLABELED_TARGET in method_spec.optional_roles and exp.data.target_path
        ):
            paths, _ = list_images(exp.resolve(exp.data.target_path))
            if not paths:
                raise DataError(f"data.target_path: no usable images in {exp.data.target_path}")
            role_samples[ROLE_UNLABELED_TARGET] = [Sample(p, "") for p in paths]
        if exp.data.target_eval_path and ROLE_LABELED_TARGET in (
            *roles,
            *method_spec.optional_roles,
        ):
            target_path = exp.resolve(exp.data.target_eval_path)
            source = D.choose_source(host.datasets, exp.data, target_path)
            role_samples[ROLE_LABELED_TARGET] = scan_labeled_target(
                source, target_path, scan.classes
            )
        # Detectors resize and normalise images themselves: their loaders only augment.
        transforms = (
            (lambda _pre, augment: detection_transform(augment))
            if primary_role == ROLE_DETECTION
            else D.build_transform
        )
        weights_file = resolve_weights(backbone_spec, exp.model.weights, exp.base_dir)
        pre = backbone_spec.preprocessing
        preprocessing = pre.resized_for(exp.data.image_size) if exp.data.image_size else pre
        data = cls(
            exp=exp,
            primary_role=primary_role,
            scan=scan,
            weights_file=weights_file,
            weights_digest=file_digest(weights_file) if weights_file else None,
            preprocessing=preprocessing,
            workers=D.default_workers(exp.data.num_workers),
            train_transform=transforms(preprocessing, exp.augment),
            eval_transform=transforms(preprocessing, None),
            feature_cache=FeatureCache(cache_folder),
            tasks=tasks,
            multilabels=multilabels,
            role_samples=role_samples,
        )
        data.datasets = {
            s: data._dataset(samples, data.train_transform if s == "train" else data.eval_transform)
            for s, samples in scan.splits.items()
        }
        data.eval_datasets = {
            s: data._dataset(samples, data.eval_transform) for s, samples in scan.splits.items()
        }
        return data

    def _dataset(self, samples: list[Sample], transform: Any) -> Any:
        if self.primary_role == ROLE_DETECTION:
            return DetectionDataset(samples, self.scan.classes, transform)
        if self.primary_role == ROLE_MULTILABEL:
            return MultiLabelDataset(samples, self.multilabels, self.tasks, transform)
        if self.primary_role == ROLE_UNLABELED:
            return UnlabeledDataset([s.path for s in samples], transform)
        return D.ImageDataset(samples, self.scan.classes, transform)

    def has_role(self, role: str) -> bool:
        """Whether the run has data of ``role``."""
        return role in self.role_samples or role == self.primary_role

    def role_dataset(self, split: str, role: str, views: int) -> Any:
        """The dataset a method asks for; the primary role's splits are ``self.datasets``."""
        transform = self.train_transform if split == "train" else self.eval_transform
        if role in (self.primary_role, ROLE_LABELED) and role not in self.role_samples:
            if views > 1:
                return UnlabeledDataset([s.path for s in self.scan.splits[split]], transform, views)
            if split not in self.datasets:
                raise DataError(f"the data has no {split} split")
            return self.datasets[split]
        if role not in self.role_samples:
            raise DataError(
                f"method {self.exp.method!r} asked for {role!r} data, which this experiment "
                f"does not provide (set {ROLE_KEYS.get(role, 'the data settings')})"
            )
        samples = self.role_samples[role]
        if role == ROLE_LABELED_TARGET:
            return D.ImageDataset(samples, self.scan.classes, self.eval_transform)
        return UnlabeledDataset([s.path for s in samples], transform, views)

    def loader(
        self,
        split: str,
        role: str,
        views: int,
        epoch: int,
        dist: Distributed,
        device: torch.device,
    ) -> Any:
        """The loader of ``role``'s ``split`` for ``epoch``; under torchrun, this process's
        share of the training batches."""
        train = split == "train"
        dataset = self.role_dataset(split, role, views)
        # Each role shuffles with its own stream: with one shared seed, a source and a target
        # folder of equal size would be shuffled identically, pairing image i with image i in
        # every batch. The labeled role keeps offset 0 so its order is that of earlier versions.
        stream = ROLE_STREAMS.get(role, len(ROLE_STREAMS)) + (views > 1) * 101
        generator = torch.Generator().manual_seed(
            epoch_seed(self.exp.train.seed + stream * 1_000_000_007, epoch)
        )
        # Unlabeled training batches (target domain, contrastive views) drop a short last batch:
        # a batch of one breaks BatchNorm and pairs nothing. Labeled batches keep every image.
        unlabeled = role in (ROLE_UNLABELED, ROLE_UNLABELED_TARGET) or views > 1
        batch_size, sampler = self.exp.data.batch_size, None
        if train and dist.enabled:
            # Each process takes its share of the very permutation one process would use, so
            # the processes' batches together are the single-process batch. Evaluation stays
            # whole on every process: its report is exactly the single-process one.
            batch_size //= dist.world
            sampler = EpochShardSampler(dataset, dist.world, dist.rank, generator)
        return D.make_loader(
            dataset,
            batch_size,
            shuffle=train and sampler is None,
            workers=self.workers,
            pin_memory=device.type == "cuda",
            generator=generator,
            drop_last=train and unlabeled and len(dataset) > batch_size,
            sampler=sampler,
            collate_fn=collate_detection if isinstance(dataset, DetectionDataset) else None,
        )

    def cached_features(
        self,
        backbone: torch.nn.Module,
        split: str,
        device: torch.device,
        check_stop: Callable[[], None],
        log: Callable[[str], None],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``backbone``'s features of ``split`` (and the labels), computed once and cached by
        backbone, weights, preprocessing and files."""
        weights_id = (
            self.weights_digest
            if self.weights_file is not None
            else f"random-init-seed-{self.exp.train.seed}"
        )
        key = cache_key(
            {
                "backbone": self.exp.model.backbone,
                "weights": weights_id,
                "preprocessing": self.preprocessing.to_dict(),
                "split": split,
                "files": D.ScanResult(
                    self.scan.classes, {split: self.scan.splits[split]}
                ).fingerprint(),
            }
        )
        dataset = self.eval_datasets[split]

        def compute():
            log(
                f"computing {split} features once ({len(dataset)} images); later epochs and "
                "runs reuse them"
            )
            loader = D.make_loader(
                dataset,
                self.exp.data.batch_size,
                shuffle=False,
                workers=self.workers,
                pin_memory=device.type == "cuda",
            )
            was_training = backbone.training
            backbone.eval()
            feats, targets = [], []
            with torch.no_grad():
                for images, labels in loader:
                    check_stop()
                    feats.append(backbone(images.to(device, non_blocking=True)).float().cpu())
                    targets.append(labels)
            backbone.train(was_training)
            return torch.cat(feats), torch.cat(targets)

        return self.feature_cache.get_or_compute(key, compute)
