"""The built-in demo: a procedural image dataset (no download) and a short fine-tuning run.

Four classes of coloured shapes (circle, square, triangle, cross) drawn at random positions,
sizes, colours and rotations on noisy backgrounds: easy for people, not trivial for a network
trained from scratch in a minute.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

DEMO_CLASSES = ("circle", "square", "triangle", "cross")
IMAGE_SIZE = 64


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    kind: str,
    cx: float,
    cy: float,
    r: float,
    angle: float,
    colour: tuple[int, int, int],
) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        return
    if kind == "cross":
        w = r * 0.35
        arms = [(-r, -w), (r, -w), (r, w), (-r, w)]
        for rot in (0.0, math.pi / 2):
            pts = [_rotate(x, y, angle + rot, cx, cy) for x, y in arms]
            draw.polygon(pts, fill=colour)
        return
    corners = 4 if kind == "square" else 3
    radius = r * (1.15 if kind == "square" else 1.2)
    pts = [
        _rotate(
            radius * math.cos(2 * math.pi * k / corners),
            radius * math.sin(2 * math.pi * k / corners),
            angle,
            cx,
            cy,
        )
        for k in range(corners)
    ]
    draw.polygon(pts, fill=colour)


def _rotate(x: float, y: float, angle: float, cx: float, cy: float) -> tuple[float, float]:
    return (
        cx + x * math.cos(angle) - y * math.sin(angle),
        cy + x * math.sin(angle) + y * math.cos(angle),
    )


def make_image(kind: str, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """One demo image of a shape class."""
    background = tuple(rng.randint(0, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    noise = Image.effect_noise((size, size), rng.uniform(10, 40)).convert("RGB")
    image = Image.blend(image, noise, 0.25)
    draw = ImageDraw.Draw(image)
    # A contrasting colour: the shape must stay visible on its background.
    colour = tuple((c + rng.randint(90, 165)) % 256 for c in background)
    r = rng.uniform(size * 0.18, size * 0.32)
    cx = rng.uniform(r, size - r)
    cy = rng.uniform(r, size - r)
    _draw_shape(draw, kind, cx, cy, r, rng.uniform(0, 2 * math.pi), colour)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def generate_demo_data(folder: str | Path, per_class: int = 350, seed: int = 0) -> Path:
    """Write ``folder/<class>/<n>.png`` (skipped when already complete); returns ``folder``."""
    folder = Path(folder)
    rng = random.Random(seed)
    for kind in DEMO_CLASSES:
        class_dir = folder / kind
        if class_dir.is_dir() and len(list(class_dir.glob("*.png"))) == per_class:
            continue
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(kind, random.Random(rng.random() + i)).save(
                class_dir / f"{kind}_{i:04d}.png"
            )
    return folder


DEMO_EXPERIMENT = """\
# The built-in demo: fine-tune a ResNet-18 (random init, offline) on procedural shapes.
schema_version = 1
name = "demo"

[data]
path = "data"
val_split = 0.2
test_split = 0.1
batch_size = 32
image_size = 64

[augment]
random_resized_crop = false
hflip = true

[model]
backbone = "resnet18"
weights = "none"

[train]
epochs = 14
lr = 0.002
schedule = "onecycle"
weight_decay = 0.0005
seed = 0

[method]
name = "fine-tune"

[method.params]
backbone_lr_mult = 1.0
"""


def prepare_demo(workspace: str | Path) -> Path:
    """Generate the demo data and experiment file in ``workspace/demo``; returns the file.
    An existing ``demo.toml`` is kept: the user may have edited it."""
    folder = Path(workspace) / "demo"
    generate_demo_data(folder / "data")
    exp_path = folder / "demo.toml"
    if not exp_path.exists():
        exp_path.write_text(DEMO_EXPERIMENT, encoding="utf-8")
    return exp_path
