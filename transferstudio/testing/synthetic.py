"""Small generated image sets for conformance checks: learnable (a class is a colour and a
shape), tiny (32 px PNGs), and the same for the same seed."""

from __future__ import annotations

import random
from pathlib import Path


def write_class_folders(
    root: str | Path, classes: int = 3, per_class: int = 8, size: int = 32, seed: int = 0,
    invert: bool = False,
) -> Path:  # fmt: skip
    """``root/class_<k>/<i>.png``: class ``k`` is a coloured shape on a noisy background.
    ``invert`` draws the same classes with inverted colours (a second domain)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    root = Path(root)
    for k in range(classes):
        hue = (37 * k) % 256
        colour = (hue, (hue * 7 + 90) % 256, (255 - hue) % 256)
        folder = root / f"class_{k:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            background = tuple(rng.randrange(0, 60) for _ in range(3))
            image = Image.new("RGB", (size, size), background)
            draw = ImageDraw.Draw(image)
            x, y = rng.randrange(2, size // 3), rng.randrange(2, size // 3)
            w = size // 2 + (k % 3) * 3
            box = [x, y, min(size - 1, x + w), min(size - 1, y + w)]
            (draw.ellipse if k % 2 else draw.rectangle)(box, fill=colour)
            if invert:
                image = Image.eval(image, lambda v: 255 - v)
            image.save(folder / f"{i:03d}.png")
    return root


def write_multilabel_csv(root: str | Path, per_class: int = 8, seed: int = 0) -> Path:
    """A CSV with a ``path`` column and two tasks, ``shape`` and ``tone``, over class folders."""
    import csv

    root = Path(root)
    images = write_class_folders(root / "images", classes=4, per_class=per_class, seed=seed)
    path = root / "labels.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "shape", "tone"])
        for folder in sorted(images.iterdir()):
            k = int(folder.name.split("_")[1])
            for image in sorted(folder.iterdir()):
                writer.writerow(
                    [image.relative_to(root).as_posix(), "round" if k % 2 else "square",
                     "warm" if k < 2 else "cool"]
                )  # fmt: skip
    return path
