"""Helpers shared by the tests: small generated image sets and a fast experiment."""

from __future__ import annotations

import random
from pathlib import Path

ISSUE_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
    "densenet121",
    "regnet_y_400mf",
)
"""The torchvision families the built-ins promise."""

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_class_images(
    root: Path, per_class: dict[str, int], size: int = 24, seed: int = 0
) -> Path:
    """``root/<class>/<i>.png`` with a class-dependent colour, so a tiny network can learn it."""
    from PIL import Image

    rng = random.Random(seed)
    palette = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 200, 40)]
    for k, (name, count) in enumerate(per_class.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = palette[k % len(palette)]
            colour = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in base)
            image = Image.new("RGB", (size, size), colour)
            image.putpixel((rng.randrange(size), rng.randrange(size)), (255, 255, 255))
            image.save(folder / f"{name}_{i:03d}.png")
    return root


def tiny_experiment(data: Path, **overrides):
    """A fast fine-tune experiment (resnet18 at 32 px, CPU, no workers) on ``data``."""
    from transferstudio.core.experiment import from_mapping
    from transferstudio.core.plugins import load_plugins

    raw = {
        "schema_version": 1,
        "name": "tiny",
        "data": {
            "path": str(data),
            "val_split": 0.25,
            "batch_size": 4,
            "image_size": 32,
            "num_workers": 0,
        },
        "augment": {"random_resized_crop": False, "hflip": True},
        "model": {"backbone": "resnet18", "weights": "none"},
        "train": {"epochs": 3, "device": "cpu", "lr": 0.01, "seed": 1},
        "method": {"name": "fine-tune", "params": {"backbone_lr_mult": 1.0}},
    }
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    host = load_plugins(autoload=False)
    return from_mapping(raw, host.method_params)
