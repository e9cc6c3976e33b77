"""Synthetic detection data: coloured shapes on noisy backgrounds, written as Pascal VOC.

Each image holds zero to ``max_objects`` shapes (circle, square, triangle) that do not overlap;
every box is the bounding box of its shape's drawn pixels, measured on the shape's own mask, so a
perfect detector scores an mAP of exactly 1. Used by the tests (seconds to train on) and by
``transferstudio demo --task detection``; no download.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from transferstudio.core.data.demo import _draw_shape

DETECTION_CLASSES = ("circle", "square", "triangle")
MARGIN = 2
"""Pixels kept free between shapes, so that no box holds part of another shape."""


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    colour = tuple(rng.randint(0, 255) for _ in range(3))
    image = Image.new("RGB", (width, height), colour)
    pixels = np.random.default_rng(rng.getrandbits(64)).normal(128, 25, (height, width))
    noise = Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).convert("RGB")
    return Image.blend(image, noise, 0.25)


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    return any(
        x0 < b[2] + MARGIN and b[0] < x1 + MARGIN and y0 < b[3] + MARGIN and b[1] < y1 + MARGIN
        for b in others
    )


def make_detection_image(
    rng: random.Random, width: int = 128, height: int = 96, max_objects: int = 3
) -> tuple[Image.Image, list[tuple[str, tuple[int, int, int, int]]]]:
    """One image and its ``(class, (xmin, ymin, xmax, ymax))`` boxes (``xmax``/``ymax``
    exclusive, as PIL's ``getbbox`` gives them)."""
    image = _background(rng, width, height)
    mean = np.asarray(image, dtype=np.float32).mean(axis=(0, 1))
    objects: list[tuple[str, tuple[int, int, int, int]]] = []
    for _ in range(rng.randint(0, max_objects)):
        kind = rng.choice(DETECTION_CLASSES)
        for _attempt in range(20):
            r = rng.uniform(min(width, height) * 0.1, min(width, height) * 0.22)
            # Triangles and squares reach 1.2 r from their centre: keep them whole in the image.
            reach = 1.25 * r + 1
            cx, cy = rng.uniform(reach, width - reach), rng.uniform(reach, height - reach)
            mask = Image.new("L", (width, height), 0)
            _draw_shape(ImageDraw.Draw(mask), kind, cx, cy, r, rng.uniform(0, 2 * math.pi), 255)
            box = mask.getbbox()
            if box and not _overlaps(box, [b for _, b in objects]):
                break
        else:
            continue  # no free place for this shape: the image gets fewer objects
        # A colour far from the background's mean, so every shape stays visible.
        colour = tuple(int((m + rng.randint(90, 165)) % 256) for m in mean)
        image.paste(Image.new("RGB", (width, height), colour), mask=mask)
        objects.append((kind, box))
    # Blur after the boxes are measured would grow the shapes by a pixel: keep it light.
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.4))), objects


def voc_xml(filename: str, width: int, height: int, objects) -> str:
    """A Pascal VOC annotation of one image. Corners are written as measured (``xmax``
    exclusive); readers take VOC coordinates as written, as torchvision's references do."""
    parts = [
        "<annotation>",
        f"  <filename>{escape(filename)}</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for kind, (x0, y0, x1, y1) in objects:
        parts += [
            "  <object>",
            f"    <name>{escape(kind)}</name><difficult>0</difficult>",
            f"    <bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
            f"<ymax>{y1}</ymax></bndbox>",
            "  </object>",
        ]
    return "\n".join([*parts, "</annotation>", ""])


def generate_detection_data(
    folder: str | Path,
    images: int = 60,
    seed: int = 0,
    width: int = 128,
    height: int = 96,
    max_objects: int = 3,
) -> Path:
    """Write ``folder/images/NNNN.png`` and ``folder/annotations/NNNN.xml`` (Pascal VOC, no
    split lists: the experiment's split settings divide them); returns ``folder``. The same
    arguments write the same files; a folder already holding ``images`` annotations is kept."""
    root = Path(folder)
    done = root / "annotations"
    if done.is_dir() and len(list(done.glob("*.xml"))) == images:
        return root  # written before (the last file written is an annotation)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(images):
        image, objects = make_detection_image(rng, width, height, max_objects)
        name = f"{i:04d}.png"
        image.save(root / "images" / name)
        (root / "annotations" / f"{i:04d}.xml").write_text(
            voc_xml(name, width, height, objects), encoding="utf-8"
        )
    return root
