"""What the built-in detection formats (``voc_format``, ``coco_format``, ``yolo_format``) share:
finding images and split folders, short file names for messages, and the small example data set
each format writes in its own layout."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from transferstudio.api import IMAGE_SUFFIXES, Box

SPLITS = ("train", "val", "test")
Skipped = list[tuple[str, str]]
"""What a format could not use: ``(file, reason)`` pairs."""

SPLIT_DIR_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def child_dir(folder: Path, names: Iterable[str]) -> Path | None:
    """The first subfolder of ``folder`` whose lower-cased name is in ``names`` (in that order)."""
    try:
        children = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    except OSError:
        return None
    return next((children[n] for n in names if n in children), None)


def images_in(folder: Path, recursive: bool) -> list[Path]:
    """Image files in ``folder`` (sorted; hidden files and folders left out)."""
    if not recursive:
        return sorted(
            p for p in folder.iterdir() if not p.name.startswith(".") and is_image(p.name)
        )
    found = []
    # followlinks=False: a symlink loop cannot trap the walk.
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath, f) for f in sorted(filenames) if not f.startswith(".") and is_image(f)
        ]
    return found


def shown(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` where it lies inside it (shorter messages), else in full."""
    try:
        return (
            Path(os.path.relpath(path, root)).as_posix() if path.is_relative_to(root) else str(path)
        )
    except ValueError:  # another drive on Windows
        return str(path)


def finite_number(text: Any) -> float | None:
    """``text`` as a finite float, or None."""
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def all_left_out(count: int, kind: str) -> str:
    return (
        f"none of its {count} {kind} is usable (see the messages about them); the image is left "
        "out rather than used as a negative image"
    )


def read_split_list(list_file: Path, skipped: Skipped) -> list[tuple[int, str]]:
    """The non-empty lines of a split list as ``(line number, text)``."""
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        skipped.append((str(list_file), f"cannot read this split list: {exc}"))
        return []
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def split_of(name: str) -> str | None:
    """The split a file name stands for: train before val before test (``trainval`` trains)."""
    lowered = name.lower()
    return next((s for s in SPLITS if any(n in lowered for n in SPLIT_DIR_NAMES[s])), None)


EXAMPLE_CLASSES = ("circle", "square")
EXAMPLE_SIZE = (64, 64)
# (file stem, split, shapes as (class, xmin, ymin, xmax, ymax) with exclusive max corners):
# both classes in train, one image of both in val, and one negative image.
EXAMPLE_IMAGES = (
    ("both", "train", (("circle", 6, 8, 26, 28), ("square", 36, 34, 58, 54))),
    ("square", "train", (("square", 20, 12, 44, 40),)),
    ("empty", "train", ()),
    ("pair", "val", (("square", 4, 4, 24, 22), ("circle", 34, 30, 60, 58))),
)
EXAMPLE_COLOURS = {"circle": (220, 60, 40), "square": (40, 80, 220)}


def write_example_images(folder_of: Callable[[str], Path]) -> list[tuple[Path, str, list[Box]]]:
    """Draw the example images as PNGs in ``folder_of(split)``: ``(image, split, boxes)`` each,
    the boxes exactly around the drawn shapes."""
    from PIL import Image, ImageDraw

    written = []
    for stem, split, shapes in EXAMPLE_IMAGES:
        image = Image.new("RGB", EXAMPLE_SIZE, (235, 235, 225))
        draw = ImageDraw.Draw(image)
        boxes = []
        for label, x0, y0, x1, y1 in shapes:
            # PIL's corners are inclusive; a box's max corner is exclusive.
            corners = (x0, y0, x1 - 1, y1 - 1)
            if label == "circle":
                draw.ellipse(corners, fill=EXAMPLE_COLOURS[label])
            else:
                draw.rectangle(corners, fill=EXAMPLE_COLOURS[label])
            boxes.append(Box(label, x0, y0, x1, y1))
        target = folder_of(split)
        target.mkdir(parents=True, exist_ok=True)
        image.save(target / f"{stem}.png")
        written.append((target / f"{stem}.png", split, boxes))
    return written
