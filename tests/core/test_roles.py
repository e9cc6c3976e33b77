"""Data roles and the API 1.1 context services, exercised through small test-only methods."""

from __future__ import annotations

import csv
from dataclasses import dataclass

import pytest
import torch

from tests.helpers import tiny_experiment, write_class_images
from transferstudio.api import (
    ROLE_EPISODES,
    ROLE_LABELED,
    ROLE_LABELED_TARGET,
    ROLE_MULTILABEL,
    ROLE_UNLABELED,
    ROLE_UNLABELED_TARGET,
    DataError,
    ExperimentError,
    MethodSpec,
    StepOutput,
    TransferMethod,
)
from transferstudio.core.plugins.host import load_plugins, plugin_from_namespace
from transferstudio.core.progress import events as E
from transferstudio.core.settings.experiment import from_mapping
from transferstudio.core.training.engine import PlainState, run_experiment


@dataclass
class NoParams:
    """No parameters."""


class Probe(TransferMethod):
    """Records what the context hands out for each role; trains a linear head on features."""

    seen: dict = {}

    def __init__(self, params) -> None:
        self.params = params

    def setup(self, ctx) -> None:
        self.backbone, width = ctx.build_backbone()
        self.head = torch.nn.Linear(width, max(ctx.num_classes, 2))
        Probe.seen = {"tasks": ctx.tasks, "num_classes": ctx.num_classes}

    def modules(self):
        return {"model": torch.nn.ModuleDict({"backbone": self.backbone, "head": self.head})}

    def training_step(self, batch, ctx) -> StepOutput:
        images, targets = batch
        if isinstance(images, list):  # two views
            Probe.seen["views"] = len(images)
            images = images[0]
        logits = self.head(self.backbone(images))
        Probe.seen.setdefault("targets", targets.detach().cpu())
        return StepOutput(logits.pow(2).mean())

    def evaluate(self, ctx, split):
        return {"loss": 1.0, "custom": 0.5}

    def epoch_diagnostics(self, ctx):
        out = {"probe": 0.25}
        if ctx.has_role(ROLE_LABELED_TARGET):
            n = sum(len(t) for _, t in ctx.loader("eval", role=ROLE_LABELED_TARGET))
            out["target_images"] = float(n)
        if ctx.has_role(ROLE_UNLABELED_TARGET):
            batch = next(iter(ctx.loader("train", role=ROLE_UNLABELED_TARGET)))
            out["target_label"] = float(batch[1][0])
        return out

    def predictor(self):
        return torch.nn.Sequential(self.backbone, self.head)


class TwoViews(Probe):
    def train_batches(self, ctx, epoch):
        return ctx.loader("train", role=ROLE_UNLABELED, views=2)


def _host(name, roles, optional=(), factory=Probe):
    spec = MethodSpec(name, "test", NoParams, factory, data_roles=roles, optional_roles=optional)
    return load_plugins(
        autoload=False, extra=[plugin_from_namespace(name, transferstudio_methods=lambda: [spec])]
    )


def _experiment(host, name, data, **data_settings):
    raw = tiny_experiment(data, train__epochs=1).to_dict()
    raw["method"] = {"name": name, "params": {}}
    raw["data"].update(data_settings)
    return from_mapping(raw, host.method_params)


def test_a_required_role_left_empty_is_named_before_the_run_exists(make_images, tmp_path):
    host = _host("da", (ROLE_LABELED, ROLE_UNLABELED_TARGET))
    exp = _experiment(host, "da", make_images({"a": 6, "b": 6}))
    with pytest.raises(ExperimentError, match="data.target_path") as info:
        run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert info.value.key == "data.target_path"
    assert not (tmp_path / "ws" / "runs").exists() or not any((tmp_path / "ws" / "runs").iterdir())


def test_target_roles_custom_evaluation_and_diagnostics_reach_events_and_files(
    make_images, tmp_path
):
    host = _host("da", (ROLE_LABELED, ROLE_UNLABELED_TARGET), (ROLE_LABELED_TARGET,))
    source = make_images({"a": 6, "b": 6}, name="source")
    target = make_images({"x": 5}, name="target", seed=3)  # folder names are ignored
    target_eval = make_images({"a": 2, "b": 3}, name="target_eval", seed=4)
    exp = _experiment(
        host, "da", source, target_path=str(target), target_eval_path=str(target_eval)
    )
    state = PlainState()
    result = run_experiment(exp, host, state, tmp_path / "ws")
    assert result.status == "completed", result.message
    epoch = next(e for e in state.events if isinstance(e, E.EpochEnded))
    assert epoch.val["custom"] == 0.5 and epoch.val["diag_probe"] == 0.25
    assert epoch.val["diag_target_images"] == 5 and epoch.val["diag_target_label"] == -1
    # accuracy is not measured by this method: early stopping fell back to the loss
    assert result.best_metric == 1.0
    header = (result.folder / "metrics.csv").read_text().splitlines()[0]
    assert "val_diag_probe" in header


def test_a_labeled_target_class_unknown_to_the_source_is_named(make_images, tmp_path):
    host = _host("da", (ROLE_LABELED, ROLE_UNLABELED_TARGET), (ROLE_LABELED_TARGET,))
    source = make_images({"a": 6, "b": 6}, name="source")
    target_eval = make_images({"a": 2, "zebra": 2}, name="target_eval")
    exp = _experiment(
        host, "da", source, target_path=str(target_eval), target_eval_path=str(target_eval)
    )
    with pytest.raises(DataError, match="'zebra'.*not a source class"):
        run_experiment(exp, host, PlainState(), tmp_path / "ws")


def test_unlabeled_role_reads_every_image_and_yields_two_views(tmp_path):
    host = _host("ssl", (ROLE_UNLABELED,), factory=TwoViews)
    folder = write_class_images(tmp_path / "unlabeled", {"any": 6, "nested": 6})
    (folder / "notes.txt").write_text("not an image")
    exp = _experiment(host, "ssl", folder)
    result = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert result.status == "completed", result.message
    assert Probe.seen["views"] == 2 and Probe.seen["num_classes"] == 0
    assert set(Probe.seen["targets"].tolist()) == {-1}


def test_episodes_split_classes_and_repeat_for_the_same_seed(tmp_path):
    from transferstudio.core.training.engine import EngineContext, TrainingSession

    data = write_class_images(tmp_path / "omni", {f"c{i:02d}": 6 for i in range(10)})
    host = _host("fs", (ROLE_EPISODES,))
    exp = _experiment(host, "fs", data, val_split=0.2, test_split=0.2)
    run = TrainingSession(exp, host, PlainState(), tmp_path / "ws", writer=False)
    run.prepare()
    splits = {s: {x.label for x in v} for s, v in run.scan.splits.items()}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert not (splits["train"] & splits["val"]) and not (splits["val"] & splits["test"])
    ctx = EngineContext(run)
    episodes = ctx.episodes("train", n_way=3, k_shot=2, queries=1, count=4, seed=5)
    assert len(episodes) == 4
    first = list(episodes)
    support, support_y, query, query_y = first[0]
    assert support.shape[0] == 6 and query.shape[0] == 3
    assert support_y.tolist() == [0, 0, 1, 1, 2, 2] and query_y.tolist() == [0, 1, 2]
    again = list(ctx.episodes("train", n_way=3, k_shot=2, queries=1, count=4, seed=5))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    with pytest.raises(DataError, match="3-way.*need 3 classes"):
        list(ctx.episodes("val", n_way=3, k_shot=1, queries=1, count=1))


def _multilabel_csv(tmp_path, columns=("colour", "size")):
    images = write_class_images(tmp_path / "imgs", {"red": 6, "green": 6})
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *columns])
        for i, image in enumerate(sorted(images.rglob("*.png"))):
            writer.writerow(
                [image.relative_to(tmp_path), image.parent.name, "big" if i % 2 else "small"]
            )
    return path


def test_multilabel_csv_yields_one_target_per_task(tmp_path):
    host = _host("mt", (ROLE_MULTILABEL,))
    exp = _experiment(host, "mt", _multilabel_csv(tmp_path), label_columns=["colour", "size"])
    result = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert result.status == "completed", result.message
    assert Probe.seen["tasks"] == {"colour": ["green", "red"], "size": ["big", "small"]}
    assert Probe.seen["targets"].shape[1] == 2


def test_multilabel_missing_column_names_the_column_and_the_file(tmp_path):
    host = _host("mt", (ROLE_MULTILABEL,))
    exp = _experiment(host, "mt", _multilabel_csv(tmp_path), label_columns=["colour", "shape"])
    with pytest.raises(ExperimentError, match="labels.csv has no column 'shape'"):
        run_experiment(exp, host, PlainState(), tmp_path / "ws")


def test_a_finished_run_reloads_as_predictor_and_as_backbone_weights(make_images, tmp_path):
    from transferstudio.core.training.engine import EngineContext, TrainingSession

    data = make_images({"red": 8, "green": 8, "blue": 8})
    host = load_plugins(autoload=False)
    exp = tiny_experiment(data, train__epochs=1, model__head_dropout=0.2)
    first = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    run = TrainingSession(exp, host, PlainState(), tmp_path / "ws", writer=False)
    run.prepare()
    ctx = EngineContext(run)
    teacher = ctx.load_run_model(first.run_id)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    from transferstudio.core.runs.checkpoint import CheckpointStore, load_module_weights

    trained = run.modules["model"]
    load_module_weights(
        run.modules, CheckpointStore(first.folder / "checkpoints").load("best").weights
    )
    trained.eval()
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(teacher(images), trained(images), atol=1e-6)
    # the run folder as weights: the backbone of the best checkpoint
    backbone, _ = ctx.build_backbone("resnet18", str(first.folder))
    backbone.eval()
    assert torch.allclose(backbone(images), trained.backbone(images), atol=1e-6)


def test_each_role_shuffles_in_its_own_order(tmp_path):
    """Source and target folders of equal size must not be shuffled identically: with one
    shared seed, image i of the source always met image i of the target in a batch."""
    from transferstudio.core.training.engine import TrainingSession

    source = tmp_path / "source"
    write_class_images(source / "train", {"a": 10, "b": 10})
    write_class_images(source / "val", {"a": 2, "b": 2})
    target = write_class_images(tmp_path / "target", {"x": 20}, seed=5)
    host = _host("da", (ROLE_LABELED, ROLE_UNLABELED_TARGET))
    run = TrainingSession(
        _experiment(host, "da", source, target_path=str(target)),
        host,
        PlainState(),
        tmp_path / "ws",
        writer=False,
    )
    run.prepare()
    run.epoch = 0
    labeled = list(run.loader("train").sampler)
    unlabeled = list(run.loader("train", ROLE_UNLABELED_TARGET).sampler)
    assert sorted(labeled) == sorted(unlabeled) == list(range(20))
    assert labeled != unlabeled
    assert labeled == list(run.loader("train").sampler)  # each stream is still seeded


class StopsWhileEvaluating(Probe):
    """Requests Stop as its own evaluation loop starts, then keeps looping."""

    state: PlainState | None = None
    batches_after_stop = 0

    def evaluate(self, ctx, split):
        StopsWhileEvaluating.state.stop = True
        for _ in range(50):
            for _batch in ctx.loader(split):
                StopsWhileEvaluating.batches_after_stop += 1
        return {"loss": 0.0}


def test_stop_interrupts_a_methods_own_evaluation_loop(make_images, tmp_path):
    host = _host("slow-eval", (ROLE_LABELED,), factory=StopsWhileEvaluating)
    state = PlainState()
    StopsWhileEvaluating.state = state
    result = run_experiment(
        _experiment(host, "slow-eval", make_images({"a": 6, "b": 6})), host, state, tmp_path / "ws"
    )
    assert result.status == "cancelled"
    assert StopsWhileEvaluating.batches_after_stop == 0


class DomainHead(Probe):
    """A predictor with a bottleneck head and a second module, as domain adaptation has."""

    def setup(self, ctx) -> None:
        from transferstudio.core.models.build import ClassifierModel

        backbone, width = ctx.build_backbone()
        head = torch.nn.Sequential(
            torch.nn.Linear(width, 8),
            torch.nn.BatchNorm1d(8),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.3),
            torch.nn.Linear(8, ctx.num_classes),
        )
        self.model = ClassifierModel(backbone, head)
        self.discriminator = torch.nn.Linear(8, 1)

    def modules(self):
        return {"discriminator": self.discriminator, "model": self.model}

    def training_step(self, batch, ctx) -> StepOutput:
        images, targets = batch
        logits = self.model(images)
        return StepOutput(ctx.loss(logits, targets) + 0 * self.discriminator.weight.sum())

    def evaluate(self, ctx, split):
        return None

    def validation_step(self, batch, ctx):
        return self.model(batch[0]), batch[1]

    def predictor(self):
        return self.model


def test_a_run_with_any_head_and_extra_modules_reloads_from_its_recipe(make_images, tmp_path):
    """The head is rebuilt from the recipe in the checkpoint (not guessed from weight shapes),
    and the backbone is found next to other modules when the run is used as weights."""
    host = _host("bottleneck", (ROLE_LABELED,), factory=DomainHead)
    exp = _experiment(host, "bottleneck", make_images({"a": 6, "b": 6, "c": 6}))
    first = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert first.status == "completed", first.message
    from transferstudio.core.runs.checkpoint import CheckpointStore
    from transferstudio.core.training.engine import EngineContext, TrainingSession

    meta = CheckpointStore(first.folder / "checkpoints").meta("best")
    assert meta["predictor_module"] == "model"
    assert [layer["type"] for layer in meta["head_recipe"]["layers"]] == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    run = TrainingSession(exp, host, PlainState(), tmp_path / "ws", writer=False)
    run.prepare()
    ctx = EngineContext(run)
    reloaded = ctx.load_run_model(str(first.folder))
    weights = CheckpointStore(first.folder / "checkpoints").load("best").weights
    images = torch.randn(3, 3, 32, 32)
    trained = DomainHead(None)
    trained.setup(ctx)
    trained.model.load_state_dict(
        {k[len("model.") :]: v for k, v in weights.items() if k.startswith("model.")}
    )
    trained.model.eval()
    assert torch.allclose(reloaded(images), trained.model(images), atol=1e-6)
    backbone, _ = ctx.build_backbone("resnet18", str(first.folder))
    assert torch.allclose(backbone.eval()(images), trained.model.backbone(images), atol=1e-6)


def test_a_run_whose_predictor_is_not_a_classifier_is_refused_as_teacher(make_images, tmp_path):
    host = _host("probe", (ROLE_LABELED,))
    exp = _experiment(host, "probe", make_images({"a": 6, "b": 6}))
    first = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    from transferstudio.api import WeightsError
    from transferstudio.core.runs.finished import load_run_predictor

    with pytest.raises(WeightsError, match="backbone \\+ head classifier"):
        load_run_predictor(str(first.folder), host, tmp_path / "ws")
