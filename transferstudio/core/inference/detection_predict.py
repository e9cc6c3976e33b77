"""Prediction with a detector: boxes, labels and scores per image above a score threshold,
written as COCO results JSON, CSV, or images with the boxes drawn. An image that cannot be read
is reported with its reason and skipped; the rest go on."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transferstudio.core.data.box_drawing import draw_boxes, labelled_boxes
from transferstudio.core.data.images import ImageProblem, load_rgb
from transferstudio.core.files.atomic import write_text_atomic
from transferstudio.core.files.safe_text import csv_row, display_path

DEFAULT_SCORE_THRESHOLD = 0.5
"""Boxes scoring below this are not reported by default (the Predict panel's slider and
``predict --score-threshold`` change it)."""


@dataclass(frozen=True)
class Detection:
    """One detected object: class name, score, corners in pixels of the original image."""

    label: str
    score: float
    xmin: float
    ymin: float
    xmax: float
    ymax: float


@dataclass
class ImageDetections:
    """The detections of one image, best score first, and the image's size."""

    path: str
    width: int
    height: int
    detections: list[Detection]

    def above(self, threshold: float) -> list[Detection]:
        return [d for d in self.detections if d.score >= threshold]


@dataclass
class DetectionReport:
    images: list[ImageDetections] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of every input that was not predicted."""


def detect(
    model: torch.nn.Module,
    class_names: Sequence[str],
    paths: Sequence[str],
    score_threshold: float = 0.0,
    batch_size: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
) -> DetectionReport:
    """Every readable image of ``paths`` through the detector ``model`` (eval mode), in order,
    keeping detections scoring ``score_threshold`` or more; ``on_progress(done, total)`` after
    each batch."""
    from torchvision.transforms.v2 import functional as F

    device = next(model.parameters()).device
    report = DetectionReport()
    total = len(paths)
    for start in range(0, total, batch_size):
        batch_paths, tensors = [], []
        for path in paths[start : start + batch_size]:
            try:
                image = F.to_dtype(F.pil_to_tensor(load_rgb(path)), torch.float32, scale=True)
            except ImageProblem as exc:
                report.skipped.append((path, str(exc)))
                continue
            batch_paths.append(path)
            tensors.append(image.to(device))
        if tensors:
            with torch.no_grad():
                outputs = model(tensors)
            for path, image, out in zip(batch_paths, tensors, outputs, strict=True):
                found = [
                    Detection(class_names[int(label) - 1], float(score), *map(float, box))
                    for box, score, label in zip(
                        out["boxes"].cpu(), out["scores"].cpu(), out["labels"].cpu(), strict=True
                    )
                    if float(score) >= score_threshold and 1 <= int(label) <= len(class_names)
                ]
                found.sort(key=lambda d: -d.score)
                report.images.append(
                    ImageDetections(path, int(image.shape[-1]), int(image.shape[-2]), found)
                )
        if on_progress is not None:
            on_progress(min(start + batch_size, total), total)
    return report


def coco_results(report: DetectionReport, class_names: Sequence[str], threshold: float) -> list:
    """The detections as COCO results (``image_id`` 1-based in input order, ``category_id``
    1-based in class order, ``bbox`` as ``[x, y, width, height]``), each with its
    ``file_name`` so that the list stands alone."""
    index = {c: i + 1 for i, c in enumerate(class_names)}
    return [
        {
            "image_id": n,
            "file_name": display_path(image.path),
            "category_id": index[d.label],
            "category": d.label,
            "bbox": [d.xmin, d.ymin, d.xmax - d.xmin, d.ymax - d.ymin],
            "score": round(d.score, 6),
        }
        for n, image in enumerate(report.images, start=1)
        for d in image.above(threshold)
    ]


def write_coco_json(path: str | Path, report, class_names, threshold: float) -> None:
    """:func:`coco_results` as a JSON file (written atomically)."""
    write_text_atomic(Path(path), json.dumps(coco_results(report, class_names, threshold)))


def write_detections_csv(path: str | Path, report: DetectionReport, threshold: float) -> None:
    """``path,label,score,xmin,ymin,xmax,ymax`` rows, one per box (an image without boxes
    gets one row with the path alone, so every image is in the file)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "score", "xmin", "ymin", "xmax", "ymax"])
        for image in report.images:
            found = image.above(threshold)
            if not found:
                writer.writerow(csv_row([display_path(image.path)]))
            for d in found:
                writer.writerow(
                    csv_row(
                        [display_path(image.path), d.label, f"{d.score:.6f}"]
                        + [f"{v:.2f}" for v in (d.xmin, d.ymin, d.xmax, d.ymax)]
                    )
                )


def draw_detections(image: ImageDetections, class_names: Sequence[str], threshold: float):
    """The image with its detections above ``threshold`` drawn (PIL image)."""
    found = image.above(threshold)
    boxes = labelled_boxes(
        [(d.label, d.xmin, d.ymin, d.xmax, d.ymax) for d in found],
        class_names,
        [d.score for d in found],
    )
    return draw_boxes(load_rgb(image.path), boxes)


def write_drawn_images(
    folder: str | Path, report: DetectionReport, class_names, threshold: float
) -> list[Path]:
    """Every predicted image with its boxes drawn, as ``folder/<name>.png`` (a number is added
    when two inputs share a name); returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for image in report.images:
        stem = Path(image.path).stem
        name, n = f"{stem}.png", 1
        while name in used:
            n += 1
            name = f"{stem}-{n}.png"
        used.add(name)
        target = folder / name
        draw_detections(image, class_names, threshold).save(target)
        written.append(target)
    return written
