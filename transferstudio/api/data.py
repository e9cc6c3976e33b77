"""Data in the plugin API: the data roles a method asks for, the data-source formats
(:class:`DatasetSpec`) and what they list, and few-shot episode drawing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transferstudio.api.detection import ROLE_DETECTION, TASK_CLASSIFICATION
from transferstudio.api.errors import DataError

__all__ = [
    "ROLE_EPISODES",
    "ROLE_KEYS",
    "ROLE_LABELED",
    "ROLE_LABELED_TARGET",
    "ROLE_MULTILABEL",
    "ROLE_UNLABELED",
    "ROLE_UNLABELED_TARGET",
    "IMAGE_SUFFIXES",
    "DatasetSpec",
    "Sample",
    "SourceListing",
    "draw_episodes",
]

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
    ROLE_DETECTION: "data.path",
}
"""The experiment key each data role reads."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
"""File suffixes data sources treat as images (compare lower-cased)."""


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
    ``task`` (API 1.6) is the task whose data this format holds: a ``TASK_DETECTION`` format's
    ``list_samples`` returns a :class:`transferstudio.api.DetectionListing`, and its
    ``write_example`` writes images with boxes.
    """

    name: str
    description: str
    detect: Callable[[str], bool]
    list_samples: Callable[[str], Any]
    write_example: Callable[[str], str] | None = None
    task: str = TASK_CLASSIFICATION


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
