"""From checked splits to tensors: transforms, the image dataset and DataLoaders.

The data scan (listing, checking and splitting the files) is :mod:`.scanning`; its names are
importable from here too, as callers (``loaders as D``) always have.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from transferstudio.api import DataError, Preprocessing, Sample
from transferstudio.core.data.images import ImageProblem, load_rgb
from transferstudio.core.data.scanning import (
    NOT_UTF8_NAME,
    SPLITS,
    SPLITS_FILE,
    ScanResult,
    check_class_names,
    check_duplicates,
    check_samples,
    choose_source,
    list_source,
    scan,
    stratified_split,
    text_file_problem,
    validate,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from transferstudio.core.settings.experiment import AugmentSettings

__all__ = [
    "NOT_UTF8_NAME",
    "SPLITS",
    "SPLITS_FILE",
    "ImageDataset",
    "ScanResult",
    "build_transform",
    "check_class_names",
    "check_duplicates",
    "check_samples",
    "choose_source",
    "default_workers",
    "list_source",
    "make_loader",
    "scan",
    "stratified_split",
    "text_file_problem",
    "validate",
]


def build_transform(pre: Preprocessing, augment: AugmentSettings | None):
    """The torchvision transform of a split: augmented for training, resize+crop otherwise."""
    import torch
    from torchvision.transforms import v2 as T

    interp = (
        T.InterpolationMode.BICUBIC
        if pre.interpolation == "bicubic"
        else T.InterpolationMode.BILINEAR
    )
    steps: list[Any] = []
    if augment is not None and augment.random_resized_crop:
        steps.append(
            T.RandomResizedCrop(
                pre.crop, scale=(augment.crop_scale_min, 1.0), interpolation=interp, antialias=True
            )
        )
    else:
        steps += [
            T.Resize(pre.resize, interpolation=interp, antialias=True),
            T.CenterCrop(pre.crop),
        ]
    if augment is not None:
        if augment.hflip:
            steps.append(T.RandomHorizontalFlip())
        if augment.rotation > 0:
            steps.append(T.RandomRotation(augment.rotation))
        if augment.color_jitter > 0:
            j = augment.color_jitter
            steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=j))
    steps += [
        T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=list(pre.mean), std=list(pre.std)),
    ]
    return T.Compose(steps)


class ImageDataset:
    """A map-style dataset over checked samples (a ``torch.utils.data.Dataset`` by protocol)."""

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], transform) -> None:
        index = {c: i for i, c in enumerate(classes)}
        self.paths = [s.path for s in samples]
        self.targets = [index[s.label] for s in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            image = load_rgb(self.paths[i])
        except ImageProblem as exc:
            # The file changed after the scan; name it rather than failing somewhere in collate.
            raise DataError(
                f"{self.paths[i]}: {exc} (the file changed after the data scan)"
            ) from None
        return self.transform(image), self.targets[i]


def default_workers(requested: int) -> int:
    """DataLoader workers: as asked, or one per spare core (at most 8) for ``-1``."""
    if requested >= 0:
        return requested
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    return max(0, min(8, cores - 1))


def make_loader(
    dataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    pin_memory: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    sampler=None,
    collate_fn=None,
):
    """A DataLoader. Workers are re-created every epoch (not persistent) so that their random
    streams derive from the epoch's generator and a resumed run augments exactly as before.
    ``sampler`` (e.g. a DistributedSampler) replaces ``shuffle``; ``collate_fn`` replaces
    stacking (detection batches are lists)."""
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=False,
        collate_fn=collate_fn,
    )
