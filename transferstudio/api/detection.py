"""Tasks and object detection in the plugin API (API 1.6).

An experiment has a task (:data:`TASKS`); methods (``MethodSpec.task``) and data formats
(``DatasetSpec.task``) say which task they serve, so a later task is one more plugin set, not a
new engine. For detection, a data format's ``list_samples`` returns a :class:`DetectionListing`
of :class:`DetectionSample` (an image and its :class:`Box` list) instead of a ``SourceListing``.

Boxes are written as the annotation file has them (absolute pixels, ``xmin < xmax`` expected).
The host checks every box against its image when it scans the data: a box reaching outside the
image is clipped (and counted), an inverted or zero-area box and a box of an unknown class are
left out, each named with its file, so a format plugin only parses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ROLE_DETECTION",
    "TASK_CLASSIFICATION",
    "TASK_DETECTION",
    "TASKS",
    "Box",
    "DetectionListing",
    "DetectionSample",
]

TASK_CLASSIFICATION = "classification"
"""One class per image (the default task)."""
TASK_DETECTION = "detection"
"""Boxes with a class each, any number per image (none: a negative image)."""
TASKS = (TASK_CLASSIFICATION, TASK_DETECTION)

ROLE_DETECTION = "detection"
"""Images with boxes from ``data.path`` (a detection data format), split train/val/test."""


@dataclass(frozen=True)
class Box:
    """One object: its class name and corners in pixels of the original image (``x`` right,
    ``y`` down, ``xmax``/``ymax`` exclusive as in COCO's ``x + w``)."""

    label: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def width(self) -> float:
        return self.xmax - self.xmin

    @property
    def height(self) -> float:
        return self.ymax - self.ymin

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


@dataclass(frozen=True)
class DetectionSample:
    """One image file and its boxes (none: a negative image). ``annotation`` is the file the
    boxes were read from, named in messages about them (the image itself when empty)."""

    path: str
    boxes: tuple[Box, ...] = ()
    annotation: str = ""

    @property
    def label(self) -> str:
        """The most frequent class among the boxes ("" for a negative image): what splitting
        stratifies by, so every class lands in every split where it can."""
        if not self.boxes:
            return ""
        labels = [b.label for b in self.boxes]
        return max(sorted(set(labels)), key=labels.count)


@dataclass
class DetectionListing:
    """What a detection data format found, before the host opens any image.

    ``splits`` maps ``train``/``val``/``test`` (or ``"all"``, which the host splits with the
    experiment's ratio and seed) to samples. ``classes`` lists the declared classes in their
    order (a VOC folder has none: ``None`` derives them from the boxes, sorted). ``skipped``
    holds ``(file, reason)`` for what the format itself could not use: an annotation without its
    image, an unparsable file or line, a class id outside the class list.
    """

    splits: dict[str, list[DetectionSample]]
    classes: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
