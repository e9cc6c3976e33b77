"""The engine end to end on tiny generated data: events, files, cancel/resume, NaN, metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers import exploding_loss_plugin, tiny_experiment
from transferstudio.api import MethodSpec, StepOutput, TransferMethod
from transferstudio.core.plugins.host import load_plugins, plugin_from_namespace
from transferstudio.core.progress import events as E
from transferstudio.core.runs.checkpoint import CheckpointStore
from transferstudio.core.runs.workspace import RunStore
from transferstudio.core.training.engine import PlainState, run_experiment


@pytest.fixture
def data(make_images):
    return make_images({"red": 8, "green": 8, "blue": 8})


def test_run_completes_writes_every_file_and_indexes_the_run(data, host, tmp_path):
    exp = tiny_experiment(data, data__test_split=0.25, train__epochs=2)
    state = PlainState()
    result = run_experiment(exp, host, state, tmp_path / "ws")
    assert result.status == "completed", result.message
    kinds = [type(e) for e in state.events]
    assert kinds[0] is E.LogMessage and E.RunStarted in kinds and kinds[-1] is E.RunFinished
    assert sum(k is E.EpochEnded for k in kinds) == 2
    assert sum(k is E.BatchEnded for k in kinds) == 2 * math.ceil(12 / 4)  # 4 train images a class
    folder = result.folder
    for name in ("experiment.toml", "metrics.csv", "log.txt", "report.json"):
        assert (folder / name).is_file(), name
    report = json.loads((folder / "report.json").read_text())
    assert set(report["val"]["metrics"]) >= {
        "accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "f1_weighted",
        "loss",
    }
    assert len(report["test"]["confusion"]) == 3
    assert sum(map(sum, report["test"]["confusion"])) == 6
    lines = (folder / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss") and len(lines) == 3
    store = RunStore(tmp_path / "ws")
    record = store.get(result.run_id)
    assert record.status == "completed" and record.epochs_done == 2
    assert len(store.epoch_metrics(result.run_id)["val"]["accuracy"]) == 2
    ck = CheckpointStore(folder / "checkpoints").load("last")
    assert ck.meta["class_names"] == ["blue", "green", "red"]
    assert ck.meta["preprocessing"]["crop"] == 32
    assert "transferstudio" in ck.meta["plugin_versions"]


def test_training_learns_the_colour_task(data, host, tmp_path):
    exp = tiny_experiment(data, train__epochs=6)
    result = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert result.best_metric is not None and result.best_metric >= 0.8


def _final_weights(folder):
    return CheckpointStore(folder / "checkpoints").load("last").weights


def test_cancel_then_resume_equals_the_uninterrupted_run(data, host, tmp_path):
    exp = tiny_experiment(data, train__epochs=3)
    full = run_experiment(exp, host, PlainState(), tmp_path / "ws")

    def stop_after_first_epoch(event):
        if isinstance(event, E.BatchEnded) and event.epoch == 1 and event.batch == 1:
            state.stop = True

    state = PlainState(stop_after_first_epoch)
    stopped = run_experiment(exp, host, state, tmp_path / "ws")
    assert stopped.status == "cancelled" and stopped.epochs_done == 1
    assert RunStore(tmp_path / "ws").get(stopped.run_id).status == "cancelled"
    resumed = run_experiment(exp, host, PlainState(), tmp_path / "ws", resume=stopped.run_id)
    assert resumed.status == "completed" and resumed.run_id == stopped.run_id
    assert resumed.best_metric == full.best_metric
    a, b = _final_weights(full.folder), _final_weights(resumed.folder)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.report["val"] == full.report["val"]


def test_pause_holds_the_loop_until_released(data, host, tmp_path):
    import threading
    import time

    exp = tiny_experiment(data, train__epochs=1)
    state = PlainState()
    state.pause = True
    released = []

    def release():
        time.sleep(0.5)
        released.append(sum(isinstance(e, E.BatchEnded) for e in state.events))
        state.pause = False

    thread = threading.Thread(target=release)
    thread.start()
    result = run_experiment(exp, host, state, tmp_path / "ws")
    thread.join()
    assert result.status == "completed"
    assert released == [0]  # no batch ran while paused


@pytest.mark.parametrize("schedule", ["constant", "step", "cosine", "onecycle"])
def test_schedules_and_optimizers_run(data, host, tmp_path, schedule):
    exp = tiny_experiment(
        data,
        train__epochs=2,
        train__schedule=schedule,
        train__optimizer="sgd" if schedule == "step" else "adamw",
        train__nesterov=True,
        train__warmup_epochs=0.5,
        train__grad_clip=1.0,
        train__label_smoothing=0.1,
        model__head_dropout=0.2,
    )
    state = PlainState()
    assert run_experiment(exp, host, state, tmp_path / "ws").status == "completed"
    lrs = [e.lr for e in state.events if isinstance(e, E.BatchEnded)]
    assert all(lr > 0 for lr in lrs)
    if schedule != "constant":
        assert len(set(lrs)) > 1


def test_early_stopping_stops_after_patience(data, host, tmp_path):
    # lr 0 and fixed BN statistics: the model never changes, so the val loss never improves.
    exp = tiny_experiment(
        data,
        train__epochs=10,
        train__lr=0.0,
        train__patience=2,
        train__early_stopping_metric="loss",
        method__params={"bn_mode": "frozen-stats"},
    )
    result = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert result.status == "completed"
    assert result.epochs_done == 3  # the first epoch sets the best; two more without improvement


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_precision_on_cuda(data, host, tmp_path):  # pragma: no cover - GPU machines only
    exp = tiny_experiment(data, train__device="cuda", train__epochs=1)
    state = PlainState()
    assert run_experiment(exp, host, state, tmp_path / "ws").status == "completed"
    started = next(e for e in state.events if isinstance(e, E.RunStarted))
    assert started.precision in ("bfloat16", "float16")


# --------------------------------------------------------------------------- NaN


def test_nan_loss_stops_the_run_naming_epoch_and_batch_and_keeps_last_checkpoint(data, tmp_path):
    host = load_plugins(autoload=False, extra=[exploding_loss_plugin(explode_at_step=7)])
    raw = tiny_experiment(data).to_dict()
    raw["method"] = {"name": "exploding", "params": {}}
    from transferstudio.core.settings.experiment import from_mapping

    exp = from_mapping(raw, host.method_params)
    state = PlainState()
    result = run_experiment(exp, host, state, tmp_path / "ws")
    assert result.status == "failed"
    # 18 training images in batches of 4 make 5 batches: step 7 is epoch 2, batch 2.
    assert "at epoch 2, batch 2" in result.message
    failed = [e for e in state.events if isinstance(e, E.RunFailed)]
    assert failed and "epoch 2, batch 2" in failed[0].message
    store = CheckpointStore(result.folder / "checkpoints")
    assert store.meta("last")["epoch"] == 0
    weights = store.load("last").weights
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    assert RunStore(tmp_path / "ws").get(result.run_id).status == "failed"


def _broken_host(fail_in: str):
    from dataclasses import dataclass

    @dataclass
    class P:
        """Raises."""

    class Broken(TransferMethod):
        def __init__(self, params):
            pass

        def setup(self, ctx):
            if fail_in == "setup":
                raise RuntimeError("head factory broke")
            self.model = ctx.build_classifier()

        def modules(self):
            return {"model": self.model}

        def training_step(self, batch, ctx):
            if fail_in == "step":
                raise RuntimeError("step broke")
            images, targets = batch
            logits = self.model(images)
            return StepOutput(ctx.loss(logits, targets), logits, targets)

        # No validation_step: the base class's raises NotImplementedError.

    spec = MethodSpec("broken", "test", P, Broken)
    return load_plugins(
        autoload=False, extra=[plugin_from_namespace("b", transferstudio_methods=lambda: [spec])]
    )


def _broken_experiment(data, host):
    from transferstudio.core.settings.experiment import from_mapping

    raw = tiny_experiment(data).to_dict()
    raw["method"] = {"name": "broken", "params": {}}
    return from_mapping(raw, host.method_params)


def test_a_method_raising_in_its_step_fails_the_run_with_its_traceback(data, tmp_path):
    host = _broken_host("step")
    state = PlainState()
    result = run_experiment(_broken_experiment(data, host), host, state, tmp_path / "ws")
    assert result.status == "failed" and "step broke" in result.message
    failed = next(e for e in state.events if isinstance(e, E.RunFailed))
    assert "Traceback" in failed.traceback
    assert "step broke" in (result.folder / "log.txt").read_text()


def test_a_method_without_a_step_the_engine_needs_is_named_as_at_fault(data, tmp_path):
    host = _broken_host("nothing")  # trains, but has no validation_step
    result = run_experiment(_broken_experiment(data, host), host, PlainState(), tmp_path / "ws")
    assert result.status == "failed"
    assert "does not implement validation_step()" in result.message
    assert "its plugin must define it" in result.message


def test_a_method_raising_in_setup_is_a_plugin_error_naming_the_method(data, tmp_path):
    from transferstudio.api import PluginError

    host = _broken_host("setup")
    with pytest.raises(PluginError, match="method 'broken' failed .*head factory broke"):
        run_experiment(_broken_experiment(data, host), host, PlainState(), tmp_path / "ws")


def test_deterministic_switch_runs_and_is_reset_afterwards(data, host, tmp_path):
    exp = tiny_experiment(data, train__epochs=1, train__deterministic=True)
    assert run_experiment(exp, host, PlainState(), tmp_path / "ws").status == "completed"
    assert torch.are_deterministic_algorithms_enabled()
    run_experiment(tiny_experiment(data, train__epochs=1), host, PlainState(), tmp_path / "ws")
    assert not torch.are_deterministic_algorithms_enabled()


def test_report_lists_the_most_confident_mistakes_with_their_files(data, host, tmp_path):
    exp = tiny_experiment(data, train__epochs=1, train__lr=0.0)  # an untrained model errs
    result = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    mistakes = result.report["val"]["misclassified"]
    confusion = result.report["val"]["confusion"]
    wrong = sum(sum(row) for row in confusion) - sum(confusion[i][i] for i in range(3))
    assert len(mistakes) == wrong > 0
    first = mistakes[0]
    assert first["true"] != first["predicted"] and first["true"] in first["path"]
    assert [m["confidence"] for m in mistakes] == sorted(
        (m["confidence"] for m in mistakes), reverse=True
    )


class _StatsState(PlainState):
    """A state that shows layer statistics only while ``wants_layer_stats`` is set (as the
    window does while its layer tree is visible)."""

    def __init__(self, wants: bool) -> None:
        super().__init__()
        self.wants_layer_stats = wants


def test_layer_stats_measure_drift_and_gradients_only_when_wanted(data, host, tmp_path):
    exp = tiny_experiment(data, train__epochs=1, method__params__freeze=["backbone.layer1.*"])
    state = _StatsState(True)
    assert run_experiment(exp, host, state, tmp_path / "ws").status == "completed"
    stats = [e for e in state.events if isinstance(e, E.LayerStats)]
    assert len(stats) >= 2
    last = stats[-1].stats
    frozen = last["model.backbone.layer1.0.conv1.weight"]
    assert frozen[0] == 0 and frozen[2] == 0 and frozen[1] > 0
    head = last["model.head.0.weight"]
    assert head[0] > 0 and head[2] > 0
    # a state that could show them but does not want them now gets none
    quiet = _StatsState(False)
    run_experiment(exp, host, quiet, tmp_path / "ws")
    assert not [e for e in quiet.events if isinstance(e, E.LayerStats)]


def test_stats_reference_equals_the_plain_sums_of_squares():
    from transferstudio.core.training.layer_stats import StatsReference

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 2))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference = StatsReference({"model": model})
    model(torch.randn(3, 5)).sum().backward()
    model[1].bias.grad = None  # a parameter without a gradient counts as 0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    measured = reference.measure()
    for name, p in model.named_parameters():
        drift, start_sq, grad_sq = measured[f"model.{name}"]
        p = p.detach()
        assert drift == pytest.approx(float((p - start[name]).pow(2).sum()), rel=1e-5)
        assert start_sq == pytest.approx(float(start[name].pow(2).sum()), rel=1e-5)
        grad = dict(model.named_parameters())[name].grad
        expected_grad = float(grad.pow(2).sum()) if grad is not None else 0.0
        assert grad_sq == pytest.approx(expected_grad, rel=1e-5)


def test_a_method_reads_the_train_settings_and_logs_from_setup_into_log_txt(data, tmp_path):
    """``ctx.train`` (API 1.4) is the experiment's train section, read-only; ``ctx.log`` in
    ``setup()``, before the run folder exists, reaches ``log.txt`` (it went to stdout only)."""
    import dataclasses

    from transferstudio.core.settings.experiment import from_mapping

    seen = {}

    @dataclasses.dataclass
    class P:
        pass

    class Reader(TransferMethod):
        def __init__(self, params):
            pass

        def setup(self, ctx):
            seen["lr"], seen["epochs"] = ctx.train.lr, ctx.train.epochs
            with pytest.raises(dataclasses.FrozenInstanceError):
                ctx.train.lr = 1.0
            ctx.log(f"reader set up with lr {ctx.train.lr}")
            self.model = ctx.build_classifier()

        def modules(self):
            return {"model": self.model}

        def predictor(self):
            return self.model

        def validation_step(self, batch, ctx):
            images, targets = batch
            return self.model(images), targets

        def training_step(self, batch, ctx):
            from transferstudio.api import StepOutput

            images, targets = batch
            logits = self.model(images)
            return StepOutput(ctx.loss(logits, targets), logits, targets)

    spec = MethodSpec("reader", "test", P, Reader)
    host = load_plugins(
        autoload=False, extra=[plugin_from_namespace("r", transferstudio_methods=lambda: [spec])]
    )
    raw = tiny_experiment(data, train__epochs=1, train__lr=0.004).to_dict()
    raw["method"] = {"name": "reader", "params": {}}
    exp = from_mapping(raw, host.method_params)
    result = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert result.status == "completed", result.message
    assert seen == {"lr": 0.004, "epochs": 1}
    assert "reader set up with lr 0.004" in (result.folder / "log.txt").read_text("utf-8")


def test_a_method_missing_a_required_function_is_named_not_blamed_on_transferstudio(data, tmp_path):
    """A method without ``validation_step`` was reported as "NotImplementedError raised by
    TransferStudio itself (please report it)"."""
    import dataclasses

    from transferstudio.api import StepOutput
    from transferstudio.core.settings.experiment import from_mapping

    @dataclasses.dataclass
    class P:
        pass

    class NoValidation(TransferMethod):
        def __init__(self, params):
            pass

        def setup(self, ctx):
            self.model = ctx.build_classifier()

        def modules(self):
            return {"model": self.model}

        def training_step(self, batch, ctx):
            logits = self.model(batch[0])
            return StepOutput(ctx.loss(logits, batch[1]), logits, batch[1])

    spec = MethodSpec("novalid", "test", P, NoValidation)
    host = load_plugins(
        autoload=False, extra=[plugin_from_namespace("n", transferstudio_methods=lambda: [spec])]
    )
    raw = tiny_experiment(data, train__epochs=1).to_dict()
    raw["method"] = {"name": "novalid", "params": {}}
    result = run_experiment(from_mapping(raw, host.method_params), host, PlainState(), tmp_path)
    assert result.status == "failed"
    assert "method 'novalid'" in result.message and "validation_step()" in result.message
    assert "please report it" not in result.message


def test_an_image_size_the_backbone_cannot_take_is_refused_naming_the_key(data, tmp_path):
    """convnext_tiny at 20 px failed in its first batch with torch's "Kernel size can't be
    greater than actual input size", as a failed run in the history."""
    from transferstudio.api import ExperimentError
    from transferstudio.core.runs.workspace import RunStore

    exp = tiny_experiment(data, model__backbone="convnext_tiny", data__image_size=20)
    with pytest.raises(ExperimentError, match="cannot take 20 px images.*224 px") as caught:
        run_experiment(exp, load_plugins(autoload=False), PlainState(), tmp_path / "ws")
    assert caught.value.key == "data.image_size"
    assert RunStore(tmp_path / "ws").list() == []  # refused before the run exists
