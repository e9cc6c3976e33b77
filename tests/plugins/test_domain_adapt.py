"""``dan`` and ``dann``: the MMD, the gradient reversal layer and its schedule, and a real domain
shift on which both clearly beat source-only training on the target."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transferstudio_builtins.domain_adapt import (
    PairedBatches,
    grl_schedule,
    mk_mmd,
    reverse_gradient,
)

from tests.helpers import tiny_experiment
from transferstudio.api import ExperimentError, Preprocessing, Sample
from transferstudio.core.data.loaders import ImageDataset, build_transform
from transferstudio.core.data.roles import list_images
from transferstudio.core.inference.export import export_module
from transferstudio.core.models.build import build_classifier
from transferstudio.core.progress import events as E
from transferstudio.core.runs.checkpoint import CheckpointStore
from transferstudio.core.runs.workspace import RunStore
from transferstudio.core.training.engine import PlainState, run_experiment

# --------------------------------------------------------------------------- MK-MMD


@pytest.mark.parametrize("estimator", ["unbiased", "linear"])
def test_mmd_is_near_zero_for_one_distribution_and_clearly_positive_for_a_shift(estimator):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 16, generator=g), torch.randn(256, 16, generator=g)
    shifted = torch.randn(256, 16, generator=g) + 1.0
    same, different = (
        float(mk_mmd(a, b, estimator=estimator)),
        float(mk_mmd(a, shifted, estimator=estimator)),
    )
    assert abs(same) < 0.02
    assert different > 0.15
    assert different > 10 * abs(same)


def test_mmd_is_symmetric_handles_unequal_sizes_and_is_zero_on_identical_batches():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 8, generator=g), torch.randn(25, 8, generator=g) * 2
    assert torch.allclose(mk_mmd(a, b), mk_mmd(b, a), atol=1e-6)
    # The biased statistic of a batch with itself is exactly 0 (small-batch fallback).
    assert float(mk_mmd(a[:1], a[:1])) == pytest.approx(0.0, abs=1e-6)
    assert float(mk_mmd(a, b)) > 0.05


def test_minimising_mmd_pulls_one_sample_onto_the_other():
    g = torch.Generator().manual_seed(2)
    source = torch.randn(64, 4, generator=g)
    target = (torch.randn(64, 4, generator=g) + 3.0).requires_grad_(True)
    before = float(mk_mmd(source, target.detach()))
    optimizer = torch.optim.Adam([target], lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        mk_mmd(source, target).backward()
        optimizer.step()
    assert float(mk_mmd(source, target.detach())) < before / 10
    # The means were 6 apart (3 in each of 4 dimensions).
    assert float((target.detach().mean(0) - source.mean(0)).norm()) < 1.5


# --------------------------------------------------------------------------- gradient reversal


def test_gradient_reversal_is_identity_forward_and_negates_scaled_gradient_backward():
    x = torch.randn(5, 3, requires_grad=True)
    y = reverse_gradient(x, 0.7)
    assert torch.equal(y, x)
    upstream = torch.randn(5, 3)
    y.backward(upstream)
    assert torch.allclose(x.grad, -0.7 * upstream)


def test_grl_schedule_rises_from_zero_to_one_monotonically():
    assert grl_schedule(0.0) == 0.0
    assert grl_schedule(1.0) == pytest.approx(1.0, abs=1e-3)
    values = [grl_schedule(p / 100) for p in range(101)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert grl_schedule(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert grl_schedule(-1.0) == 0.0 and grl_schedule(2.0) == grl_schedule(1.0)


def test_paired_batches_cycle_the_target_and_count_progress_across_epochs():
    source = [(torch.full((2,), i), torch.zeros(2)) for i in range(5)]
    target = [(torch.full((2,), 100 + i), -torch.ones(2)) for i in range(2)]
    epoch1 = list(PairedBatches(source, target, epoch=1, epochs=2))
    assert len(PairedBatches(source, target, epoch=1, epochs=2)) == 5
    assert [int(t[0]) for _, _, t, _ in epoch1] == [100, 101, 100, 101, 100]
    assert [p for *_, p in epoch1] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])


# --------------------------------------------------------------------------- a real domain shift

CLASSES = ("cross", "ring", "square")


def _shape_mask(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.25, 0.38) * size
    cx, cy = rng.uniform(0.4, 0.6, 2) * size
    width = int(rng.integers(2, 4))
    if kind == "cross":
        draw.line((cx - r, cy, cx + r, cy), fill=255, width=width)
        draw.line((cx, cy - r, cx, cy + r), fill=255, width=width)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=255, width=width)
    else:
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), outline=255, width=width)
    return np.asarray(image, dtype=np.float32)[..., None] / 255


def write_shapes(root: Path, domain: str, per_class: int, seed: int, size: int = 32) -> Path:
    """Outline shapes: light on a dark noisy background ("source"), or the same shapes dark on a
    light background ("target": inverted contrast, the shift to adapt to)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            mask = _shape_mask(kind, rng, size)
            noise = rng.uniform(0, 0.1, (size, size, 1))
            if domain == "source":
                pixels = noise * (1 - mask) + mask * rng.uniform(0.8, 1.0)
            else:
                pixels = (1 - noise) * (1 - mask) + mask * rng.uniform(0.0, 0.2)
            rgb = np.repeat(np.clip(pixels, 0, 1) * 255, 3, axis=2).astype(np.uint8)
            Image.fromarray(rgb, "RGB").save(root / kind / f"{kind}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def shift(tmp_path_factory):
    """Source (labeled), target (unlabeled) and target-eval folders. The target sets have other
    sizes than the source's train split, so shuffled batches never line up class by class."""
    root = tmp_path_factory.mktemp("shift")
    return {
        "source": write_shapes(root / "source", "source", 80, seed=1),
        "target": write_shapes(root / "target", "target", 50, seed=2),
        "target_eval": write_shapes(root / "target_eval", "target", 30, seed=3),
    }


def _experiment(shift, method: str = "fine-tune", params=None, **overrides):
    """Lenet at 32 px, batch 16, 10 epochs, seed 0: the same loop for every method."""
    settings = {
        "data__batch_size": 16,
        "model__backbone": "lenet",
        "train__epochs": 10,
        "train__lr": 0.001,
        "train__seed": 0,
        "method__name": method,
        "method__params": params or {"backbone_lr_mult": 1.0},
    }
    # fine-tune accepts the labeled target set too (it reports the source-only target accuracy)
    settings["data__target_eval_path"] = str(shift["target_eval"])
    if method != "fine-tune":
        settings["data__target_path"] = str(shift["target"])
    return tiny_experiment(shift["source"], **(settings | overrides))


def _target_accuracy(model, target_eval: Path, meta: dict) -> float:
    """Accuracy of ``model`` on the labeled target images, evaluated here, outside the method."""
    paths, _ = list_images(target_eval)
    samples = [Sample(p, Path(p).parent.name) for p in paths]
    pre = Preprocessing.from_dict(meta["preprocessing"])
    dataset = ImageDataset(samples, meta["class_names"], build_transform(pre, None))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        predicted = model.eval()(images).argmax(1)
    return float((predicted == torch.tensor(dataset.targets)).float().mean())


def _last_model(folder: Path, host, bottleneck: int = 0):
    """A run's final classifier rebuilt from its checkpoint (with the DA bottleneck, if any)."""
    checkpoint = CheckpointStore(folder / "checkpoints").load("last")
    meta = checkpoint.meta
    model = build_classifier(host.backbone(meta["backbone"]), None, len(meta["class_names"]))
    if bottleneck:
        classes = len(meta["class_names"])
        model.head = torch.nn.Sequential(
            torch.nn.Linear(model.head[0].in_features, bottleneck),
            torch.nn.BatchNorm1d(bottleneck),
            torch.nn.ReLU(),
            torch.nn.Linear(bottleneck, classes),
        )
    model.load_state_dict(
        {k[len("model.") :]: v for k, v in checkpoint.weights.items() if k.startswith("model.")}
    )
    return model, meta


@pytest.fixture(scope="module")
def source_only(shift, tmp_path_factory):
    """Plain fine-tuning on the source: (source val accuracy, target accuracy)."""
    from transferstudio.core.plugins.host import load_plugins

    host = load_plugins(autoload=False)
    state = PlainState()
    result = run_experiment(_experiment(shift), host, state, tmp_path_factory.mktemp("ws"))
    assert result.status == "completed", result.message
    model, meta = _last_model(result.folder, host)
    last = [e for e in state.events if isinstance(e, E.EpochEnded)][-1]
    return (
        result.report["val"]["metrics"]["accuracy"],
        _target_accuracy(model, shift["target_eval"], meta),
        last.val["diag_target_accuracy"],
    )


def test_the_shift_defeats_source_only_training(source_only):
    source_val, target, _ = source_only
    assert source_val >= 0.9  # the source task itself is learned...
    assert target <= 0.6  # ...but it does not carry over to the target domain


def test_fine_tune_reports_the_source_only_target_accuracy(source_only):
    _, measured, reported = source_only
    assert reported == pytest.approx(measured, abs=1e-6)


def _run_adaptation(shift, host, tmp_path, method: str, **params):
    state = PlainState()
    result = run_experiment(_experiment(shift, method, params), host, state, tmp_path / "ws")
    assert result.status == "completed", result.message
    epochs = [e for e in state.events if isinstance(e, E.EpochEnded)]
    batches = [e for e in state.events if isinstance(e, E.BatchEnded)]
    return result, epochs, batches


def test_dan_beats_source_only_on_the_target(shift, source_only, host, tmp_path):
    result, epochs, batches = _run_adaptation(
        shift, host, tmp_path, "dan", bottleneck=64, backbone_lr_mult=1.0
    )
    assert all("mmd" in b.logs for b in batches)
    final = epochs[-1].val
    assert final["diag_mmd"] < epochs[0].val["diag_mmd"]  # the domains move together
    # The diagnostic is the final model's real target accuracy.
    model, meta = _last_model(result.folder, host, bottleneck=64)
    measured = _target_accuracy(model, shift["target_eval"], meta)
    assert final["diag_target_accuracy"] == pytest.approx(measured, abs=1e-6)
    # The predictor (bottleneck included) exports like any classifier.
    example = torch.randn(2, 3, 32, 32)
    exported = export_module(host.exporters["torchscript"], model, example, tmp_path / "dan.pt")
    assert exported.max_abs_diff is not None and exported.max_abs_diff <= 1e-4
    assert final["diag_target_accuracy"] >= source_only[1] + 0.3
    assert final["diag_target_accuracy"] >= 0.7


def test_dann_beats_source_only_on_the_target(shift, source_only, host, tmp_path):
    result, epochs, batches = _run_adaptation(
        shift,
        host,
        tmp_path,
        "dann",
        bottleneck=64,
        discriminator_hidden=256,
        backbone_lr_mult=1.0,
    )
    coefficients = [b.logs["grl_lambda"] for b in batches]
    assert coefficients[0] == 0.0 and coefficients[-1] > 0.99
    assert coefficients == sorted(coefficients)
    assert all(0.0 <= b.logs["domain_acc"] <= 1.0 for b in batches)
    final = epochs[-1].val
    assert 0.0 <= final["diag_domain_acc"] <= 1.0
    assert final["diag_target_accuracy"] >= source_only[1] + 0.3
    assert final["diag_target_accuracy"] >= 0.7
    # The discriminator is trained and checkpointed with the classifier.
    weights = CheckpointStore(result.folder / "checkpoints").load("last").weights
    assert any(k.startswith("discriminator.") for k in weights)


def test_dann_with_default_parameters_runs_on_resnet_without_a_target_eval_set(
    make_images, host, tmp_path
):
    source = make_images({"red": 6, "green": 6}, name="source")
    target = make_images({"red": 5, "green": 5}, name="target", seed=3)
    exp = tiny_experiment(
        source, data__target_path=str(target), method__name="dann", method__params={}
    )
    state = PlainState()
    result = run_experiment(exp, host, state, tmp_path / "ws")
    assert result.status == "completed", result.message
    final = [e for e in state.events if isinstance(e, E.EpochEnded)][-1].val
    assert "diag_domain_acc" in final and "diag_target_accuracy" not in final


def test_dan_without_target_images_fails_before_training_naming_the_key(shift, host, tmp_path):
    exp = _experiment(shift, "dan", data__target_path="")
    state = PlainState()
    with pytest.raises(ExperimentError, match="data.target_path"):
        run_experiment(exp, host, state, tmp_path / "ws")
    assert not any(isinstance(e, E.BatchEnded | E.RunStarted) for e in state.events)
    assert RunStore(tmp_path / "ws").list() == []
