"""simclr: the NT-Xent loss against a plain reference, the step's augmentation, the checkpoint
layout as backbone weights, and the proof: pretraining helps a later linear probe."""

from __future__ import annotations

import math
import random

import pytest
import torch
from transferstudio_builtins.simclr import (
    StrongAugmentation,
    nt_xent_loss,
    pair_retrieval_accuracy,
)

from tests.helpers import tiny_experiment
from transferstudio.core.runs.checkpoint import CheckpointStore
from transferstudio.core.training.engine import PlainState, run_experiment

SHAPES = ("circle", "square", "triangle")
IMAGE_SIZE = 24
SEED = 0


# --------------------------------------------------------------------------- the loss


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """NT-Xent written out as in the SimCLR paper: l(i, j) over every ordered positive pair."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [float(z[i] @ z[k]) / temperature for k in range(2 * n)]
        denominator = sum(math.exp(s) for k, s in enumerate(sims) if k != i)
        total += -math.log(math.exp(sims[j]) / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_nt_xent_equals_the_reference(temperature):
    generator = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(7, 5, generator=generator), torch.randn(7, 5, generator=generator)
    loss = nt_xent_loss(z1, z2, temperature)
    assert float(loss) == pytest.approx(reference_nt_xent(z1, z2, temperature), rel=1e-5)


def test_nt_xent_is_lower_for_aligned_pairs_and_retrieval_finds_them():
    generator = torch.Generator().manual_seed(1)
    z1 = torch.randn(16, 8, generator=generator)
    aligned = z1 + 0.05 * torch.randn(16, 8, generator=generator)
    unrelated = torch.randn(16, 8, generator=generator)
    assert float(nt_xent_loss(z1, aligned, 0.5)) < float(nt_xent_loss(z1, unrelated, 0.5)) - 1
    assert pair_retrieval_accuracy(z1, aligned) == 1.0
    assert pair_retrieval_accuracy(z1, unrelated) < 0.5


def test_nt_xent_gradient_pulls_pairs_together():
    generator = torch.Generator().manual_seed(2)
    z1 = torch.randn(8, 4, generator=generator, requires_grad=True)
    z2 = torch.randn(8, 4, generator=generator)
    before = torch.nn.functional.cosine_similarity(z1.detach(), z2).mean()
    for _ in range(20):
        (gradient,) = torch.autograd.grad(nt_xent_loss(z1, z2, 0.5), z1)
        with torch.no_grad():
            z1 -= 0.5 * gradient
    after = torch.nn.functional.cosine_similarity(z1.detach(), z2).mean()
    assert float(after) > float(before) + 0.3


# --------------------------------------------------------------------------- augmentation


def test_strong_augmentation_differs_per_image_and_repeats_with_the_seed():
    image = torch.rand(1, 3, 16, 16)
    batch = image.expand(6, 3, 16, 16).clone()
    augment = StrongAugmentation(strength=1.0, crop_scale_min=0.2)
    torch.manual_seed(0)
    out = augment(batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype and torch.isfinite(out).all()
    differences = [float((out[0] - out[i]).abs().mean()) for i in range(1, 6)]
    assert min(differences) > 1e-3  # every copy of the same image got its own augmentation
    torch.manual_seed(0)
    assert torch.equal(augment(batch), out)
    assert torch.equal(StrongAugmentation(0.0, 0.2)(batch), batch)  # strength 0: off


# --------------------------------------------------------------------------- engine runs


def write_shape_images(root, per_class: int, seed: int = 0):
    """``root/<shape>/<i>.png``: a circle, square or triangle of random size and position, its
    colours drawn from a small palette shared by every class, so only the shape tells the
    class; 28 px, so the preprocessing resizes to 27 and crops 24 (cutting no shape)."""
    from PIL import Image, ImageDraw

    palette = [
        ((255, 255, 255), (0, 0, 0)),
        ((0, 0, 0), (255, 255, 255)),
        ((250, 50, 50), (20, 20, 120)),
        ((40, 200, 60), (90, 30, 10)),
    ]
    size = 28
    rng = random.Random(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fg, bg = rng.choice(palette)
            image = Image.new("RGB", (size, size), bg)
            draw = ImageDraw.Draw(image)
            r = rng.uniform(0.16, 0.3) * size
            margin = 0.08 * size + r
            cx, cy = rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)
            if shape == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
            elif shape == "square":
                s = 0.9 * r
                draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fg)
            else:
                draw.polygon(
                    [(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fg
                )
            image.save(root / shape / f"{shape}_{i:03d}.png")
    return root


def simclr_experiment(data, epochs: int, **overrides):
    """SimCLR on the tiny CNN. The defaults (temperature 0.5, strength 1, crops down to 20 %)
    are tuned for real photos and long runs; on 24 px shapes and a few hundred steps a milder
    augmentation and a sharper temperature learn within the test's time."""
    params = {"temperature": 0.2, "strength": 0.5, "crop_scale_min": 0.5}
    params.update(overrides.pop("params", {}))
    return tiny_experiment(
        data,
        model__backbone="small-cnn",
        data__image_size=IMAGE_SIZE,
        data__batch_size=32,
        data__val_split=0.1,
        augment__random_resized_crop=False,
        augment__hflip=False,
        train__epochs=epochs,
        train__lr=3e-3,
        train__schedule="constant",
        train__seed=SEED,
        # The val NT-Xent is steadier than retrieval accuracy on a few dozen val images.
        train__early_stopping_metric="loss",
        method__name="simclr",
        method__params=params,
        **overrides,
    )


def probe_experiment(data, weights: str):
    """A linear probe: feature-extract (frozen backbone, linear head, cached features)."""
    return tiny_experiment(
        data,
        train__seed=SEED,
        model__backbone="small-cnn",
        model__weights=weights,
        data__image_size=IMAGE_SIZE,
        data__batch_size=32,
        augment__random_resized_crop=False,
        augment__hflip=False,
        train__epochs=30,
        train__lr=0.05,
        train__schedule="constant",
        method__name="feature-extract",
        method__params={"head": "linear"},
    )


def test_checkpoint_is_backbone_weights_for_a_later_run(small_cnn_host, tmp_path):
    data = write_shape_images(tmp_path / "shapes", per_class=12)
    pretrain = run_experiment(
        simclr_experiment(data, epochs=2), small_cnn_host, PlainState(), tmp_path / "ws"
    )
    assert pretrain.status == "completed", pretrain.message
    val = pretrain.report["val"]["metrics"]
    assert set(val) >= {"loss", "accuracy"} and 0.0 <= val["accuracy"] <= 1.0
    store = CheckpointStore(pretrain.folder / "checkpoints")
    weights = store.load("best", with_state=False).weights
    assert {k.split(".")[1] for k in weights} == {"backbone", "head"}
    assert all(k.startswith("model.") for k in weights)
    weights_file = pretrain.folder / "checkpoints" / store.meta("best")["weights_file"]
    for source in (str(weights_file), str(pretrain.folder)):
        # A frozen backbone in eval mode keeps the loaded weights and statistics unchanged.
        probe = run_experiment(
            probe_experiment(data, source), small_cnn_host, PlainState(), tmp_path / "ws"
        )
        assert probe.status == "completed", probe.message
        probed = CheckpointStore(probe.folder / "checkpoints").load("last").weights
        backbone_keys = [k for k in weights if k.startswith("model.backbone.")]
        assert backbone_keys and all(torch.equal(probed[k], weights[k]) for k in backbone_keys)


def test_a_metric_simclr_does_not_measure_is_replaced_by_val_loss(small_cnn_host, tmp_path):
    exp = simclr_experiment(write_shape_images(tmp_path / "shapes", per_class=12), epochs=1)
    exp.train.early_stopping_metric = "f1"  # SimCLR reports loss and retrieval accuracy only
    result = run_experiment(exp, small_cnn_host, PlainState(), tmp_path / "ws")
    assert result.status == "completed", result.message
    assert result.report["metric"] == "loss"  # what the best epoch was chosen by
    log = (result.folder / "log.txt").read_text("utf-8")
    assert "val f1 is not measured by simclr; using val loss" in log
    assert "best val loss" in log


def test_simclr_pretraining_beats_a_random_backbone_in_a_linear_probe(small_cnn_host, tmp_path):
    data = write_shape_images(tmp_path / "shapes", per_class=150, seed=0)
    pretrain = run_experiment(
        simclr_experiment(data, epochs=22), small_cnn_host, PlainState(), tmp_path / "ws"
    )
    assert pretrain.status == "completed", pretrain.message
    pretrained = pretrain.report["val"]["metrics"]
    random_probe = run_experiment(
        probe_experiment(data, "none"), small_cnn_host, PlainState(), tmp_path / "ws"
    )
    simclr_probe = run_experiment(
        probe_experiment(data, str(pretrain.folder)), small_cnn_host, PlainState(), tmp_path / "ws"
    )
    random_accuracy = random_probe.best_metric
    simclr_accuracy = simclr_probe.best_metric
    print(
        f"linear probe val accuracy: random init {random_accuracy:.3f}, simclr "
        f"{simclr_accuracy:.3f} (simclr val NT-Xent {pretrained['loss']:.3f}, pair retrieval "
        f"{pretrained['accuracy']:.3f})"
    )
    # Measured while developing (data and train seeds 0-3): random 0.40-0.56, simclr 0.73-0.85.
    assert simclr_accuracy > random_accuracy + 0.15
