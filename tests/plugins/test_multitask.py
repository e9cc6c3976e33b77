"""multitask: every head learns its task, uncertainty weighting learns unequal weights, a zero
weight leaves its head untrained, a missing label column is named, the predictor exports."""

from __future__ import annotations

import csv
import random

import pytest
import torch
from transferstudio_builtins.exporters import builtin_exporters
from transferstudio_builtins.multitask import macro_f1

from tests.helpers import tiny_experiment
from transferstudio.api import ExperimentError
from transferstudio.core.inference.export import export_module
from transferstudio.core.models.build import build_backbone
from transferstudio.core.progress import events as E
from transferstudio.core.runs.checkpoint import CheckpointStore
from transferstudio.core.runs.weight_sources import resolve_weights
from transferstudio.core.training.engine import PlainState, run_experiment

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230)}
SHAPES = ("circle", "cross")
CHANCE = {"colour": 1 / 3, "shape": 1 / 2, "coin": 1 / 2}


@pytest.fixture
def labels_csv(tmp_path):
    """``labels.csv``: ``path, colour, shape, coin`` for 28 px images of a coloured circle or
    square at a random place. ``colour`` and ``shape`` are seen in the image; ``coin`` is a
    fair coin flip no image tells (a task whose loss cannot go down)."""
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    folder = tmp_path / "images"
    folder.mkdir()
    rows = []
    for i in range(144):
        colour = list(COLOURS)[i % 3]
        shape = SHAPES[(i // 3) % 2]
        image = Image.new("RGB", (28, 28), tuple(rng.randint(0, 60) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        r = rng.uniform(6, 9)
        cx, cy = rng.uniform(4 + r, 24 - r), rng.uniform(4 + r, 24 - r)
        fill = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in COLOURS[colour])
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:  # a plus sign: two bars a third of its width thick
            w = r / 3
            draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
            draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
        name = f"img_{i:03d}.png"
        image.save(folder / name)
        rows.append(
            {
                "path": f"images/{name}",
                "colour": colour,
                "shape": shape,
                "coin": rng.choice(["heads", "tails"]),
            }
        )
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "colour", "shape", "coin"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def multitask_experiment(csv_path, columns, epochs=20, **params):
    return tiny_experiment(
        csv_path,
        model__backbone="small-cnn",
        data__label_columns=columns,
        data__image_size=24,
        data__batch_size=16,
        augment__hflip=False,
        train__epochs=epochs,
        train__lr=0.01,
        train__schedule="constant",
        method__name="multitask",
        method__params=params,
    )


class StatsState(PlainState):
    """Asks the engine for layer statistics: each parameter's drift from its initial value."""

    wants_layer_stats = True


def _last_logs(state, key):
    return [e.logs[key] for e in state.events if isinstance(e, E.BatchEnded) and key in e.logs]


def test_every_head_learns_its_task(small_cnn_host, labels_csv, tmp_path):
    state = PlainState()
    exp = multitask_experiment(labels_csv, ["colour", "shape"])
    result = run_experiment(exp, small_cnn_host, state, tmp_path / "ws")
    assert result.status == "completed", result.message
    val = result.report["val"]["metrics"]
    print({k: round(v, 3) for k, v in val.items()})
    for task in ("colour", "shape"):
        assert val[f"{task}_accuracy"] >= CHANCE[task] + 0.35, (task, val)
        assert 0.0 <= val[f"{task}_f1_macro"] <= 1.0
        assert _last_logs(state, f"loss_{task}")  # per-task losses are plotted per batch
    assert val["accuracy"] == pytest.approx((val["colour_accuracy"] + val["shape_accuracy"]) / 2)
    assert val["loss"] == pytest.approx(val["colour_loss"] + val["shape_loss"])
    # The run folder serves as backbone weights of a later run (keys model.backbone.*).
    trained = CheckpointStore(result.folder / "checkpoints").load("best", with_state=False)
    spec = small_cnn_host.backbone("small-cnn")
    backbone = build_backbone(spec, resolve_weights(spec, str(result.folder), tmp_path))
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, trained.weights[f"model.backbone.{key}"]), key


def test_uncertainty_weighting_weighs_down_the_task_it_cannot_learn(
    small_cnn_host, labels_csv, tmp_path
):
    state = PlainState()
    exp = multitask_experiment(
        labels_csv, ["colour", "coin"], weighting="uncertainty", uncertainty_lr_mult=5.0
    )
    result = run_experiment(exp, small_cnn_host, state, tmp_path / "ws")
    assert result.status == "completed", result.message
    colour, coin = _last_logs(state, "weight_colour"), _last_logs(state, "weight_coin")
    print(f"weights after training: colour {colour[-1]:.2f}, coin {coin[-1]:.2f}")
    assert colour[0] == pytest.approx(1.0, abs=0.1) and coin[0] == pytest.approx(1.0, abs=0.1)
    # The optimum is exp(-s_t) = 1 / CE_t: large for the learnable task, ~1/ln 2 for the coin.
    assert colour[-1] > 2 * coin[-1]
    assert result.report["val"]["metrics"]["colour_accuracy"] >= CHANCE["colour"] + 0.35


def test_a_zero_weight_leaves_its_head_untrained(small_cnn_host, labels_csv, tmp_path):
    state = StatsState()
    exp = multitask_experiment(labels_csv, ["colour", "shape"], task_weights=[0.0, 1.0])
    result = run_experiment(exp, small_cnn_host, state, tmp_path / "ws")
    assert result.status == "completed", result.message
    drift = next(e for e in reversed(state.events) if isinstance(e, E.LayerStats)).stats
    untrained = [k for k in drift if k.startswith("model.head.heads.0.")]
    trained = [k for k in drift if k.startswith("model.head.heads.1.")]
    assert untrained and all(drift[k][0] == 0.0 for k in untrained)
    assert trained and all(drift[k][0] > 0.0 for k in trained)
    val = result.report["val"]["metrics"]
    print({k: round(v, 3) for k, v in val.items()})
    assert val["shape_accuracy"] >= CHANCE["shape"] + 0.35
    # A frozen random head on features the shape task shaped: 0.33-0.56 over seeds 0-4, where
    # the trained colour head reaches 1.0 (test_every_head_learns_its_task).
    assert val["colour_accuracy"] < 0.75
    assert not _last_logs(state, "loss_colour")  # an untrained task adds no loss term


def test_a_missing_label_column_names_the_column_and_the_csv(small_cnn_host, labels_csv, tmp_path):
    exp = multitask_experiment(labels_csv, ["colour", "texture"])
    with pytest.raises(ExperimentError) as caught:
        run_experiment(exp, small_cnn_host, PlainState(), tmp_path / "ws")
    assert "'texture'" in str(caught.value) and str(labels_csv) in str(caught.value)
    assert caught.value.key == "data.label_columns"


def test_task_weights_must_match_the_tasks(small_cnn_host, labels_csv, tmp_path):
    exp = multitask_experiment(labels_csv, ["colour", "shape"], task_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ExperimentError) as caught:
        run_experiment(exp, small_cnn_host, PlainState(), tmp_path / "ws")
    assert caught.value.key == "method.params.task_weights"
    for bad in ([1.0, -0.5], [1.0, "high"]):
        with pytest.raises(ExperimentError, match="task_weights"):
            multitask_experiment(labels_csv, ["colour", "shape"], task_weights=bad)


def test_predictor_exports_concatenated_logits_with_task_slices(
    small_cnn_host, labels_csv, tmp_path
):
    from transferstudio.core.training.engine import TrainingSession

    exp = multitask_experiment(labels_csv, ["colour", "shape", "coin"], head="mlp", hidden=8)
    run = TrainingSession(exp, small_cnn_host, PlainState(), tmp_path / "ws", writer=False)
    run.prepare()
    model = run.method.predictor().eval()
    assert model.task_slices == {"colour": (0, 3), "shape": (3, 5), "coin": (5, 7)}
    assert model.task_classes["colour"] == ["blue", "green", "red"]
    images = torch.randn(2, 3, 24, 24)
    assert model(images).shape == (2, 7)
    torchscript = next(s for s in builtin_exporters() if s.format == "torchscript")
    exported = export_module(torchscript, model, images, tmp_path / "multitask.pt")
    assert exported.max_abs_diff is not None and exported.max_abs_diff < 1e-5


def test_macro_f1_matches_a_hand_count():
    predicted = torch.tensor([0, 0, 1, 1, 2, 2])
    targets = torch.tensor([0, 1, 1, 1, 2, 0])
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 0, fn 1 -> 0.8; class 2: tp 1, fp 1,
    # fn 0 -> 2/3.
    assert macro_f1(predicted, targets, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # A class absent from the targets (3) does not count, even when predicted.
    predicted_absent = torch.tensor([0, 3])
    assert macro_f1(predicted_absent, torch.tensor([0, 0]), 4) == pytest.approx(2 / 3)
