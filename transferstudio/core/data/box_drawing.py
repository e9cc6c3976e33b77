"""Boxes drawn on images (PIL): the data scan's thumbnails, predicted images and the gallery of
the worst validation images all draw them the same way, one colour per class."""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

MISSED = (230, 40, 40)
"""Ground truth the detector did not find (the worst-images gallery)."""
FALSE_POSITIVE = (250, 170, 0)
"""Detections that match no ground truth (the worst-images gallery)."""
TRUE_BOX = (40, 200, 80)
"""Ground-truth boxes the detector found."""


@dataclass(frozen=True)
class DrawnBox:
    """A box to draw: corners in pixels of the image, a caption, an RGB colour."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    caption: str
    colour: tuple[int, int, int]


def class_colour(index: int) -> tuple[int, int, int]:
    """A distinct, saturated colour for class ``index`` (golden-angle hues)."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(image: Image.Image, boxes: Iterable[DrawnBox], scale: float = 1.0) -> Image.Image:
    """A copy of ``image`` with ``boxes`` drawn (outline and a caption above each box);
    ``scale`` multiplies the coordinates (for a thumbnail of the image)."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(1, round(min(out.size) / 160))
    for box in boxes:
        x0, y0 = box.xmin * scale, box.ymin * scale
        x1, y1 = box.xmax * scale, box.ymax * scale
        draw.rectangle([x0, y0, x1, y1], outline=box.colour, width=width)
        if box.caption:
            left, top, right, bottom = draw.textbbox((0, 0), box.caption)
            h = bottom - top + 2
            ty = y0 - h if y0 - h >= 0 else y0
            draw.rectangle([x0, ty, x0 + right - left + 4, ty + h], fill=box.colour)
            draw.text((x0 + 2, ty), box.caption, fill=(0, 0, 0))
    return out


def labelled_boxes(
    boxes: Sequence[tuple[str, float, float, float, float]],
    classes: Sequence[str],
    scores: Sequence[float] | None = None,
) -> list[DrawnBox]:
    """``(label, xmin, ymin, xmax, ymax)`` boxes (and scores) as :class:`DrawnBox` in their
    class colours, captioned with the label (and score)."""
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for n, (label, x0, y0, x1, y1) in enumerate(boxes):
        caption = label if scores is None else f"{label} {scores[n]:.2f}"
        out.append(DrawnBox(x0, y0, x1, y1, caption, class_colour(index.get(label, 0))))
    return out
