"""Helpers shared by the tests: small generated image sets and a fast experiment."""

from __future__ import annotations

import os
import random
import textwrap
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

CLI_ENV = {**os.environ, "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD": "1"}
"""The environment of a CLI subprocess: built-ins only, as the ``host`` fixture has."""


def run_cli(workspace: Path, *args: str):
    """``transferstudio --workspace WORKSPACE ARGS`` in a subprocess, to its end; raises when
    it fails. Returns the ``CompletedProcess`` (output captured)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "transferstudio", "--workspace", str(workspace), *args],
        check=True,
        env=CLI_ENV,
        capture_output=True,
        text=True,
    )


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
    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.settings.experiment import from_mapping

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


def write_glyphs(root, classes: int = 40, per_class: int = 20, seed: int = 0):
    """``root/<class>/<i>.png``: each class a random polyline, each image a jittered drawing."""
    import math

    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    size, centre = 28, 14
    for k in range(classes):
        points = [(rng.uniform(5, 23), rng.uniform(5, 23)) for _ in range(rng.randint(4, 5))]
        folder = root / f"glyph{k:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            dx, dy, angle = rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-0.25, 0.25)
            cos, sin = math.cos(angle), math.sin(angle)

            def place(p, dx=dx, dy=dy, cos=cos, sin=sin):
                x, y = p[0] - centre, p[1] - centre
                return (
                    cos * x - sin * y + centre + dx + rng.uniform(-1, 1),
                    sin * x + cos * y + centre + dy + rng.uniform(-1, 1),
                )

            image = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(image)
            width = rng.randint(1, 3)
            for a, b in zip(points, points[1:], strict=False):
                draw.line([place(a), place(b)], fill=255, width=width)
            pixels = np.asarray(image, dtype=np.float32) + noise.normal(0, 25, (size, size))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGB").save(
                folder / f"{i:02d}.png"
            )
    return root


def fewshot_experiment(tmp_path, host, method, data=None, epochs=1, test_split=0.3, **params):
    """conv4 at 28 px on class-split glyphs: 8 val, 12 test and 20 train classes of 40."""
    raw = tiny_experiment(data or tmp_path / "glyphs").to_dict()
    raw["data"].update(val_split=0.2, test_split=test_split, image_size=28, batch_size=16)
    raw["augment"] = {"random_resized_crop": False, "hflip": False}
    raw["model"] = {"backbone": "conv4", "weights": "none"}
    raw["train"].update(epochs=epochs, lr=0.003, schedule="constant", weight_decay=0.0, seed=0)
    raw["method"] = {"name": method, "params": params}
    from transferstudio.core.settings.experiment import from_mapping

    return from_mapping(raw, host.method_params)


def exploding_loss_plugin(explode_at_step: int):
    """A plugin with method ``exploding``: a classifier whose loss turns NaN at a chosen step."""
    from dataclasses import dataclass

    from transferstudio.api import MethodSpec, StepOutput, TransferMethod, param
    from transferstudio.core.plugins.host import plugin_from_namespace

    @dataclass
    class Params:
        """A method whose loss turns NaN at a chosen step (fault injection)."""

        scale: float = param(1.0, help="unused")

    class Exploding(TransferMethod):
        def __init__(self, params):
            self.steps = 0

        def setup(self, ctx):
            self.model = ctx.build_classifier()

        def modules(self):
            return {"model": self.model}

        def training_step(self, batch, ctx):
            images, targets = batch
            logits = self.model(images)
            loss = ctx.loss(logits, targets)
            self.steps += 1
            if self.steps == explode_at_step:
                loss = loss * float("nan")
            return StepOutput(loss, logits, targets)

        def validation_step(self, batch, ctx):
            return self.model(batch[0]), batch[1]

        def predictor(self):
            return self.model

    spec = MethodSpec("exploding", "test", Params, Exploding)
    return plugin_from_namespace("exploding_plugin", transferstudio_methods=lambda: [spec])


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux: read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def torchrun_rank(pid: int) -> int | None:
    """The ``RANK`` torchrun gave process ``pid``, or None."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def install_like_pip_target(folder, name: str) -> None:
    """What ``pip install --target folder`` leaves: the module and its dist-info."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(
        textwrap.dedent(
            f'''
            from transferstudio.api import BackboneSpec, hookimpl

            TRANSFERSTUDIO_API_VERSION = "1.2"

            def build():
                import torch
                return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))

            @hookimpl
            def transferstudio_backbones():
                return [BackboneSpec("{name}_net", "test", 4, build, classifier="1")]
            '''
        ),
        "utf-8",
    )
    info = folder / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[transferstudio]\n{name} = {name}\n")
