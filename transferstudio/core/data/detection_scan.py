"""From a detection data format to checked splits: the detection scan.

A format plugin only parses (:class:`transferstudio.api.DetectionListing`); here every image is
opened once (in threads) and every box checked against it. A box reaching outside its image is
clipped to it and counted; an inverted or zero-area box, one left with no area after clipping,
and one of a class the format does not declare are left out; each is named with its file in
:attr:`DetectionScan.problems`. An unreadable image is skipped with its reason. Images without
boxes stay, as negatives. Splits the format gives are kept; the rest is split with the
experiment's ratios and seed, stratified by each image's most frequent class.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferstudio.api import (
    TASK_DETECTION,
    Box,
    DataError,
    DatasetSpec,
    DetectionListing,
    DetectionSample,
    ExperimentError,
)
from transferstudio.core.data.images import ImageProblem, check_image, load_rgb
from transferstudio.core.data.scanning import (
    SPLITS,
    ScanResult,
    check_class_names,
    choose_source,
    file_stamp,
    list_source,
    stratified_split,
)
from transferstudio.core.files.safe_text import display_path

if TYPE_CHECKING:  # pragma: no cover
    from transferstudio.core.settings.experiment import DataSettings

SIZE_BINS = (("small", 32**2), ("medium", 96**2), ("large", float("inf")))
"""COCO's box-size classes by area in pixels (< 32², < 96², the rest)."""


@dataclass
class DetectionScan(ScanResult):
    """Checked detection data: ``splits`` hold :class:`DetectionSample` with checked boxes;
    ``problems`` are ``(file, message)`` for boxes that were clipped or left out; ``clipped``
    counts the clipped boxes."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    clipped: int = 0
    task: str = TASK_DETECTION

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class: boxes}}`` (zeros included)."""
        out = {}
        for split, samples in self.splits.items():
            counter = Counter(b.label for s in samples for b in s.boxes)
            out[split] = {c: counter.get(c, 0) for c in self.classes}
        return out

    def image_counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class: images with at least one such box, "(no boxes)": negatives}}``."""
        out = {}
        for split, samples in self.splits.items():
            counter = Counter(label for s in samples for label in {b.label for b in s.boxes})
            row = {c: counter.get(c, 0) for c in self.classes}
            row["(no boxes)"] = sum(1 for s in samples if not s.boxes)
            out[split] = row
        return out

    def size_counts(self) -> dict[str, int]:
        """Boxes of every split by COCO size class (small, medium, large)."""
        out = dict.fromkeys((name for name, _ in SIZE_BINS), 0)
        for samples in self.splits.values():
            for sample in samples:
                for box in sample.boxes:
                    out[next(name for name, limit in SIZE_BINS if box.area < limit)] += 1
        return out

    def targets(self, split: str) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        return [index.get(s.label, -1) for s in self.splits[split]]

    def fingerprint(self) -> str:
        """A hash of every file (path, size, mtime) and box: same data, same fingerprint."""
        digest = hashlib.sha256()
        for split in sorted(self.splits):
            for sample in self.splits[split]:
                stamp = file_stamp(sample.path)
                boxes = ";".join(
                    f"{b.label},{b.xmin:g},{b.ymin:g},{b.xmax:g},{b.ymax:g}" for b in sample.boxes
                )
                line = f"{split}|{sample.path}|{boxes}|{stamp}\n"
                digest.update(line.encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:16]

    def to_dict(self) -> dict:
        """Classes and every split's ``[path, [[label, xmin, ymin, xmax, ymax], ...],
        annotation file]``."""
        return {
            "task": TASK_DETECTION,
            "classes": list(self.classes),
            "fingerprint": self.fingerprint(),
            "splits": {
                k: [
                    [
                        s.path,
                        [[b.label, b.xmin, b.ymin, b.xmax, b.ymax] for b in s.boxes],
                        s.annotation,
                    ]
                    for s in v
                ]
                for k, v in self.splits.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> DetectionScan:
        """Inverse of :meth:`to_dict` (files are not checked again)."""
        splits = {
            k: [
                DetectionSample(
                    entry[0],
                    tuple(Box(str(b[0]), *map(float, b[1:])) for b in entry[1]),
                    entry[2] if len(entry) > 2 else "",
                )
                for entry in v
            ]
            for k, v in data["splits"].items()
        }
        return cls(list(data["classes"]), splits)

    def report(self) -> str:
        """Images and boxes per class and split, box sizes, then skipped files and problems."""
        counts, images = self.counts(), self.image_counts()
        splits = [s for s in SPLITS if s in counts]
        width = max([len(c) for c in self.classes] + [10])
        lines = [f"{'class':<{width}}  " + "  ".join(f"{s + ' img/box':>15}" for s in splits)]
        for c in [*self.classes, "(no boxes)"]:
            cells = [
                f"{images[s][c]:>7}/{counts[s][c]:<7}" if c in counts[s] else f"{images[s][c]:>7}/-"
                for s in splits
            ]
            lines.append(f"{c:<{width}}  " + "  ".join(f"{cell:>15}" for cell in cells))
        lines.append(
            f"{'total':<{width}}  "
            + "  ".join(
                f"{len(self.splits[s]):>7}/{sum(counts[s].values()):<7}".rjust(15) for s in splits
            )
        )
        sizes = self.size_counts()
        lines.append("box sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
        if self.clipped:
            lines.append(f"{self.clipped} box(es) reached outside their image and were clipped")
        for title, entries in (("skipped", self.skipped), ("box problems", self.problems)):
            if entries:
                lines.append(f"{title} ({len(entries)}):")
                lines.extend(f"  {p}: {r}" for p, r in entries[:50])
                if len(entries) > 50:
                    lines.append(f"  ... and {len(entries) - 50} more")
        return "\n".join(lines)


def image_size(path: str) -> tuple[int, int]:
    """Width and height of an image as training loads it (upright, as its EXIF orientation
    says); raises :class:`ImageProblem` with the reason when it cannot be decoded."""
    reason = check_image(path)
    if reason:
        raise ImageProblem(reason)
    return load_rgb(path).size


def check_boxes(
    sample: DetectionSample, size: tuple[int, int], classes: set[str] | None
) -> tuple[DetectionSample, list[str], int]:
    """``sample`` with its boxes checked against an image of ``size``: the usable ones (clipped
    to the image), a message for each box clipped or left out, and the number clipped."""
    width, height = size
    kept: list[Box] = []
    messages: list[str] = []
    clipped = 0
    for n, box in enumerate(sample.boxes, start=1):
        where = f"box {n} ({box.label!r} at {box.xmin:g},{box.ymin:g},{box.xmax:g},{box.ymax:g})"
        if classes is not None and box.label not in classes:
            messages.append(f"{where}: unknown class {box.label!r}; left out")
            continue
        if box.xmax < box.xmin or box.ymax < box.ymin:
            messages.append(f"{where}: inverted (max below min); left out")
            continue
        if box.width == 0 or box.height == 0:
            messages.append(f"{where}: zero area; left out")
            continue
        inside = Box(
            box.label,
            min(max(box.xmin, 0.0), width),
            min(max(box.ymin, 0.0), height),
            min(max(box.xmax, 0.0), width),
            min(max(box.ymax, 0.0), height),
        )
        if inside.width <= 0 or inside.height <= 0:
            messages.append(f"{where}: lies outside the {width}x{height} image; left out")
            continue
        if inside != box:
            clipped += 1
            messages.append(f"{where}: reaches outside the {width}x{height} image; clipped")
        kept.append(inside)
    return replace(sample, boxes=tuple(kept)), messages, clipped


def check_detection_samples(
    samples: Sequence[DetectionSample], classes: set[str] | None, workers: int | None = None
) -> tuple[list[DetectionSample], list[tuple[str, str]], list[tuple[str, str]], int]:
    """Open every image (in threads) and check its boxes: the usable samples in order,
    ``(image, reason)`` for unusable images, ``(file, message)`` box problems, boxes clipped."""

    def size_or_reason(sample: DetectionSample) -> tuple[int, int] | str:
        try:
            return image_size(sample.path)
        except ImageProblem as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot read the image ({exc.strerror or exc})"

    workers = workers or min(16, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        sizes = list(pool.map(size_or_reason, samples))
    good: list[DetectionSample] = []
    bad: list[tuple[str, str]] = []
    problems: list[tuple[str, str]] = []
    clipped = 0
    for sample, size in zip(samples, sizes, strict=True):
        if isinstance(size, str):
            bad.append((display_path(sample.path), size))
            continue
        checked, messages, n_clipped = check_boxes(sample, size, classes)
        source = display_path(sample.annotation or sample.path)
        problems.extend((source, m) for m in messages)
        clipped += n_clipped
        good.append(checked)
    return good, bad, problems, clipped


def choose_detection_source(
    sources: dict[str, DatasetSpec], settings: DataSettings, path: Path
) -> DatasetSpec:
    """The detection format named in ``data.source``, or the first that recognises ``path``."""
    return choose_source(sources, settings, path, TASK_DETECTION)


def scan_detection(
    spec: DatasetSpec, settings: DataSettings, path: Path, workers: int | None = None
) -> DetectionScan:
    """List, check and split detection data. Raises :class:`DataError` when it cannot train."""
    if not path.exists():
        raise ExperimentError(
            f"{path} does not exist; choose a detection data folder or file", "data.path"
        )
    listing = list_source(spec, path)
    if not isinstance(listing, DetectionListing):
        raise DataError(
            f"data format {spec.name!r} returned a {type(listing).__name__}, not a "
            "DetectionListing; its plugin declares task 'detection' but lists classification "
            "samples"
        )
    skipped = [(display_path(p), reason) for p, reason in listing.skipped]
    declared = set(listing.classes) if listing.classes is not None else None
    good: dict[str, list[DetectionSample]] = {}
    problems: list[tuple[str, str]] = []
    clipped = 0
    for split, samples in listing.splits.items():
        usable, bad, split_problems, n_clipped = check_detection_samples(samples, declared, workers)
        good[split] = usable
        skipped.extend(bad)
        problems.extend(split_problems)
        clipped += n_clipped
    if "all" in good:
        pool = good.pop("all")
        good.update(
            stratified_split(
                pool, settings.val_split, settings.test_split, settings.split_seed, existing=good
            )
        )
    if "val" not in good and settings.val_split > 0 and good.get("train"):
        # A format with train and test lists only (the Raccoon set): validation images come
        # out of train, seeded, so early stopping never looks at the test images.
        carved = stratified_split(
            good.pop("train"), settings.val_split, 0.0, settings.split_seed, existing=good
        )
        good.update(carved)
    classes = (
        list(listing.classes)
        if listing.classes is not None
        else sorted({b.label for samples in good.values() for s in samples for b in s.boxes})
    )
    result = DetectionScan(
        classes=classes,
        splits={s: good[s] for s in SPLITS if s in good},
        skipped=skipped,
        problems=problems,
        clipped=clipped,
    )
    validate_detection(result, path)
    return result


def validate_detection(result: DetectionScan, path: Path) -> None:
    """Refuse detection data that cannot train, naming what is missing."""
    train = result.splits.get("train", [])
    boxes = result.counts().get("train", {})
    if not train or not sum(boxes.values()):
        raise DataError(
            f"no training images with boxes in {display_path(path)}"
            + (f"; {len(result.skipped)} file(s) were skipped" if result.skipped else "")
            + (f" and {len(result.problems)} box problem(s) found" if result.problems else "")
            + ": see the data scan for each file"
        )
    check_class_names(result.classes, path)
    if not result.splits.get("val"):
        raise DataError(
            f"no validation images in {display_path(path)}: give a val list or folder, or "
            "set data.val_split above 0"
        )


def scan_from_dict(data: dict[str, Any]) -> ScanResult:
    """A run's ``splits.json`` back as the scan of its task."""
    if data.get("task") == TASK_DETECTION:
        return DetectionScan.from_dict(data)
    return ScanResult.from_dict(data)
