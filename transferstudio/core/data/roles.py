"""Data for the roles a method declares beyond labeled class folders (API 1.1).

- ``unlabeled`` / ``unlabeled_target``: every image under a folder, labels ignored.
- ``labeled_target``: a labeled folder used only for evaluation, mapped onto the source classes.
- ``episodes``: class folders split *by class* (few-shot: test classes are never trained on),
  sampled as N-way K-shot episodes through a DataLoader (so workers decode images).
- ``multilabel``: a CSV with a ``path`` column and one label column per task.

Every reader checks images like the labeled scan does and names the file, key or column at
fault. Qt-free; torch is imported where datasets are built.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferstudio.api import DataError, ExperimentError, Sample, draw_episodes
from transferstudio.core.data import loaders as D
from transferstudio.core.data.images import ImageProblem, image_files, load_rgb

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from transferstudio.core.settings.experiment import DataSettings

UNLABELED = ""
"""The label of samples whose class is unknown or ignored."""


def require_path(value: str, key: str, role: str, method: str) -> None:
    """An empty path for a role the method requires is a settings error naming the key."""
    if not value:
        raise ExperimentError(
            f"method {method!r} needs data for its {role!r} role; set {key} to a folder", key
        )


# --------------------------------------------------------------------------- unlabeled


def list_images(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Every image file under ``root`` (recursively, sorted), checked; and the skipped files."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of images")
    paths, skipped = image_files(root)
    good, bad = D.check_samples([Sample(p, UNLABELED) for p in paths])
    return [s.path for s in good], skipped + bad


def scan_unlabeled(root: Path, settings: DataSettings, key: str = "data.path") -> D.ScanResult:
    """Unlabeled images split train/val by ``val_split`` (seeded), as a class-less ScanResult."""
    paths, skipped = list_images(root)
    if len(paths) < 2:
        raise DataError(f"{key}: {root} holds {len(paths)} usable image(s); need at least 2")
    rng = random.Random(settings.split_seed)
    order = paths[:]
    rng.shuffle(order)
    n_val = max(1, round(len(order) * settings.val_split)) if settings.val_split > 0 else 0
    splits = {"train": order[n_val:], "val": order[:n_val]}
    return D.ScanResult(
        classes=[],
        splits={s: [Sample(p, UNLABELED) for p in v] for s, v in splits.items() if v},
        skipped=skipped,
    )


class UnlabeledDataset:
    """Images without labels: ``(image, -1)``, or ``([view, view, ...], -1)`` for ``views > 1``
    (independent random transforms of the same image, for contrastive learning)."""

    def __init__(self, paths: Sequence[str], transform, views: int = 1) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.views = views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = _load(self.paths[i])
        if self.views == 1:
            return self.transform(image), -1
        return [self.transform(image) for _ in range(self.views)], -1


def _load(path: str):
    try:
        return load_rgb(path)
    except ImageProblem as exc:
        raise DataError(f"{path}: {exc} (the file changed after the data scan)") from None


# --------------------------------------------------------------------------- labeled target


def scan_labeled_target(
    spec, root: Path, source_classes: Sequence[str], key: str = "data.target_eval_path"
) -> list[Sample]:
    """A labeled folder (or CSV) whose classes are all source classes; every split pooled."""
    if not root.exists():
        raise ExperimentError(f"{root} does not exist", key)
    listing = D.list_source(spec, root)
    samples = [s for split in listing.splits.values() for s in split]
    good, _bad = D.check_samples(samples)
    unknown = sorted({s.label for s in good} - set(source_classes))
    if unknown:
        raise DataError(
            f"{key}: class {unknown[0]!r} in {root} is not a source class "
            f"({', '.join(source_classes)}); target classes must use the source's folder names"
        )
    if not good:
        raise DataError(f"{key}: no usable images in {root}")
    return good


# --------------------------------------------------------------------------- episodes


def split_classes(spec, root: Path, settings: DataSettings, key: str = "data.path") -> D.ScanResult:
    """Class folders assigned whole to train/val/test (fractions of the classes, seeded)."""
    listing = D.list_source(spec, root)
    samples = [s for split in listing.splits.values() for s in split]
    unique, repeated = D.check_duplicates(samples, root)
    good, skipped = D.check_samples(unique)
    skipped = list(listing.skipped) + repeated + skipped
    by_class: dict[str, list[Sample]] = {}
    for s in sorted(good, key=lambda s: s.path):
        by_class.setdefault(s.label, []).append(s)
    classes = sorted(by_class)
    D.check_class_names(classes, root)
    rng = random.Random(settings.split_seed)
    order = classes[:]
    rng.shuffle(order)
    n_val = round(len(order) * settings.val_split)
    n_test = round(len(order) * settings.test_split)
    assigned = {
        "val": order[:n_val],
        "test": order[n_val : n_val + n_test],
        "train": order[n_val + n_test :],
    }
    for split in ("train", "val"):
        if len(assigned[split]) < 2:
            raise DataError(
                f"{key}: few-shot {split} needs at least 2 classes, got "
                f"{len(assigned[split])} of {len(classes)} in {root}; add class folders or "
                f"change data.val_split / data.test_split (fractions of the classes)"
            )
    splits = {
        split: [s for c in sorted(names) for s in by_class[c]]
        for split, names in assigned.items()
        if names
    }
    return D.ScanResult(classes=classes, splits=splits, skipped=skipped)


class EpisodeLoader:
    """``count`` N-way K-shot episodes of one split: ``(support, support_y, query, query_y)``.

    Episodes are drawn by :func:`transferstudio.api.draw_episodes`, so the same seed gives the
    same episodes. Images are decoded by a
    DataLoader over per-episode index batches (worker processes when configured)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform,
        n_way: int,
        k_shot: int,
        queries: int,
        count: int,
        seed: int,
        workers: int = 0,
        split: str = "train",
    ) -> None:
        labels = [s.label for s in samples]
        self.batches = draw_episodes(labels, n_way, k_shot, queries, count, seed, split)
        self.dataset = _IndexedImages([s.path for s in samples], transform)
        self.n_way, self.k_shot, self.queries, self.workers = n_way, k_shot, queries, workers

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        import torch
        from torch.utils.data import DataLoader

        loader = DataLoader(self.dataset, batch_sampler=self.batches, num_workers=self.workers)
        need = self.k_shot + self.queries
        for images in loader:
            # Batch layout: class by class, k_shot support then queries (see __init__).
            images = images.view(self.n_way, need, *images.shape[1:])
            labels = torch.arange(self.n_way).repeat_interleave
            support = images[:, : self.k_shot].reshape(-1, *images.shape[2:])
            query = images[:, self.k_shot :].reshape(-1, *images.shape[2:])
            yield support, labels(self.k_shot), query, labels(self.queries)


class _IndexedImages:
    def __init__(self, paths: list[str], transform) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(_load(self.paths[i]))


# --------------------------------------------------------------------------- multi-label CSV


def scan_multilabel(
    csv_path: Path, settings: DataSettings
) -> tuple[D.ScanResult, dict[str, list[str]], dict[str, tuple[str, ...]]]:
    """A CSV with ``path`` and the label columns ``settings.label_columns`` (and an optional
    ``split`` column). Returns the scan (labelled by the first task, split stratified by it),
    ``{task: classes}`` and ``{path: labels per task}``."""
    columns = list(settings.label_columns)
    if not columns:
        raise ExperimentError(
            "name the CSV's label columns, one per task (e.g. ['shape', 'colour'])",
            "data.label_columns",
        )
    if not csv_path.is_file() or csv_path.suffix.lower() != ".csv":
        raise ExperimentError(f"{csv_path} is not a CSV file", "data.path")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in ["path", *columns] if c not in header]
            if missing:
                raise ExperimentError(
                    f"{csv_path} has no column {missing[0]!r} (columns: {', '.join(header)})",
                    "data.label_columns" if missing[0] != "path" else "data.path",
                )
            # (line where the row starts, row): a quoted field may span lines.
            rows, start = [], reader.line_num + 1
            for row in reader:
                rows.append((start, row))
                start = reader.line_num + 1
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(D.text_file_problem(csv_path, exc)) from None
    labels: dict[str, tuple[str, ...]] = {}
    lines: dict[str, int] = {}
    samples: dict[str, list[Sample]] = {}
    skipped: list[tuple[str, str]] = []
    for line, row in rows:
        values = tuple((row.get(c) or "").strip() for c in columns)
        raw_path = (row.get("path") or "").strip()
        if not raw_path or not all(values):
            skipped.append((f"{csv_path}:{line}", "empty path or label"))
            continue
        path = Path(raw_path)
        path = str(path if path.is_absolute() else (csv_path.parent / path).resolve())
        if path in labels:
            if labels[path] != values:
                raise DataError(
                    f"{csv_path}: {raw_path!r} is labelled {labels[path]} at line {lines[path]} "
                    f"and {values} at line {line}; an image has one label per task: remove one "
                    "of the rows"
                )
            skipped.append((f"{csv_path}:{line}", f"repeats line {lines[path]}; used once"))
            continue
        labels[path], lines[path] = values, line
        split = (row.get("split") or "all").strip() or "all"
        samples.setdefault(split, []).append(Sample(path, values[0]))
    checked: dict[str, list[Sample]] = {}
    for split, items in samples.items():
        good, bad = D.check_samples(items)
        checked[split] = good
        skipped += bad
    if "all" in checked:
        pool = checked.pop("all")
        checked.update(
            D.stratified_split(
                pool, settings.val_split, settings.test_split, settings.split_seed, checked
            )
        )
    tasks = {
        c: sorted({labels[s.path][t] for split in checked.values() for s in split})
        for t, c in enumerate(columns)
    }
    result = D.ScanResult(
        classes=tasks[columns[0]],
        splits={s: checked[s] for s in D.SPLITS if checked.get(s)},
        skipped=skipped,
    )
    D.validate(result, csv_path)
    for task, classes in tasks.items():
        if len(classes) < 2:
            raise DataError(f"task {task!r} in {csv_path} has one class only ({classes[0]!r})")
    return result, tasks, labels


class MultiLabelDataset:
    """``(image, targets)`` with ``targets[t]`` the class index of task ``t``."""

    def __init__(
        self,
        samples: Sequence[Sample],
        labels: dict[str, tuple[str, ...]],
        tasks: dict[str, list[str]],
        transform,
    ) -> None:
        index = [{c: i for i, c in enumerate(classes)} for classes in tasks.values()]
        self.paths = [s.path for s in samples]
        self.targets = [tuple(index[t][v] for t, v in enumerate(labels[s.path])) for s in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        import torch

        return self.transform(_load(self.paths[i])), torch.tensor(self.targets[i])
