"""Plugins of uneven quality: one that hangs (in a hook, or while being imported), one whose
training step raises, one that runs out of GPU memory. Each is reported with the plugin's name
or with advice, and everything else keeps working."""

from __future__ import annotations

import sys
import textwrap
import threading

import pytest
import torch

from tests.helpers import install_like_pip_target, tiny_experiment
from transferstudio.core.plugins.host import PluginHost, load_plugins, plugin_from_namespace
from transferstudio.core.runs.checkpoint import CheckpointStore
from transferstudio.core.runs.workspace import RunStore
from transferstudio.core.settings.experiment import from_mapping
from transferstudio.core.training.engine import PlainState, run_experiment

RELEASE = threading.Event()
"""Set at the end of each test so the deliberately hung plugin threads finish."""


@pytest.fixture(autouse=True)
def _release_hung_threads():
    RELEASE.clear()
    yield
    RELEASE.set()


def _write_module(folder, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


def test_a_plugin_hanging_in_a_hook_is_given_up_by_name_and_the_others_load(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERSTUDIO_PLUGIN_TIMEOUT", "1")
    exporter_called = threading.Event()

    def exporters():
        exporter_called.set()
        return []

    hung = plugin_from_namespace(
        "sleepy-plugin",
        transferstudio_backbones=lambda: RELEASE.wait(),
        transferstudio_exporters=exporters,
    )
    host = load_plugins(autoload=False, extra=[hung])
    record = host.records[-1]
    assert record.status == "failed"  # nothing usable: the one hook that ran hung
    assert record.errors == [
        "sleepy-plugin: transferstudio_backbones did not return within 1 s (it may hang); skipped"
    ]
    assert not exporter_called.is_set()  # one hang is enough: its other hooks are not awaited
    assert "resnet18" in host.backbones and "fine-tune" in host.methods


@pytest.mark.parametrize("setting, seconds", [("20s", 20.0), ("0", 1.0), ("nan", 20.0)])
def test_a_malformed_timeout_setting_falls_back_instead_of_stopping_the_app(
    monkeypatch, setting, seconds
):
    monkeypatch.setenv("TRANSFERSTUDIO_PLUGIN_TIMEOUT", setting)
    assert PluginHost().timeout == seconds


FAULTY_PLUGIN = """
from dataclasses import dataclass

import torch

from transferstudio.api import MethodSpec, StepOutput, TransferMethod, hookimpl, param

TRANSFERSTUDIO_API_VERSION = "1.2"
__version__ = "3.1.4"


@dataclass
class Params:
    \"\"\"Which fault to raise, and at which training step.\"\"\"

    fault: str = param("value", choices=["value", "oom"], help="the fault")
    at_step: int = param(7, min=1, help="training step that raises")


class Faulty(TransferMethod):
    def __init__(self, params):
        self.params, self.steps = params, 0

    def setup(self, ctx):
        self.model = ctx.build_classifier()

    def modules(self):
        return {"model": self.model}

    def training_step(self, batch, ctx):
        self.steps += 1
        if self.steps == self.params.at_step:
            if self.params.fault == "oom":  # what a CUDA allocation failure raises
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise ValueError("the step divided by zero")
        logits = self.model(batch[0])
        return StepOutput(ctx.loss(logits, batch[1]), logits, batch[1])

    def validation_step(self, batch, ctx):
        return self.model(batch[0]), batch[1]

    def predictor(self):
        return self.model


@hookimpl
def transferstudio_methods():
    return [MethodSpec("faulty", "raises on purpose", Params, Faulty)]
"""


@pytest.fixture
def faulty_host(tmp_path, monkeypatch):
    """The built-ins and the importable module ``faulty_plugin`` (a method that raises)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    _write_module(tmp_path, "faulty_plugin", FAULTY_PLUGIN)
    host = load_plugins(autoload=False)
    host.load_module("faulty_plugin")
    assert host.records[-1].status == "ok", host.records[-1].errors
    return host


def _faulty_run(host, make_images, tmp_path, **params):
    raw = tiny_experiment(make_images({"a": 8, "b": 8}), train__epochs=3).to_dict()
    raw["method"] = {"name": "faulty", "params": params}
    exp = from_mapping(raw, host.method_params)
    return run_experiment(exp, host, PlainState(), tmp_path / "ws")


def test_a_raising_training_step_fails_the_run_naming_the_plugin(
    faulty_host, make_images, tmp_path
):
    # 12 train images in batches of 4: 3 steps an epoch, so step 7 is in epoch 3.
    result = _faulty_run(faulty_host, make_images, tmp_path, fault="value", at_step=7)
    assert result.status == "failed"
    assert result.message.startswith(
        "ValueError raised by plugin faulty_plugin 3.1.4 at epoch 3 (after 6 training steps): "
        "the step divided by zero; the checkpoint of epoch 2 is kept"
    ), result.message
    assert "Traceback" in (result.folder / "log.txt").read_text()
    # The app goes on: the same host trains another run.
    again = _faulty_run(faulty_host, make_images, tmp_path, fault="value", at_step=99)
    assert again.status == "completed", again.message


def test_running_out_of_gpu_memory_stops_with_advice_and_keeps_the_checkpoint(
    faulty_host, make_images, tmp_path
):
    result = _faulty_run(faulty_host, make_images, tmp_path, fault="oom", at_step=5)
    assert result.status == "failed"
    message = result.message
    assert message.startswith("out of memory on CPU")  # the device, as describe() names it
    assert "at epoch 2 (after 4 training steps): lower data.batch_size" in message
    assert "(now 4; try 2)" in message and 'train.precision = "auto"' in message
    assert "checkpoint of epoch 1 is kept" in message and "--resume" in message
    store = CheckpointStore(result.folder / "checkpoints")
    assert store.load("last").meta["epoch"] == 0  # loads, epoch 1 (0-based)
    assert RunStore(tmp_path / "ws").get(result.run_id).status == "failed"
    assert torch.ones(2).sum() == 2  # torch itself is still usable in this process


def test_a_plugin_slow_to_import_is_named_while_the_start_waits(tmp_path, monkeypatch, capsys):
    # Imports cannot be time-boxed (main thread only); a slow one is named with what to do.
    folder = tmp_path / "plugins"
    install_like_pip_target(folder, "slow_plugin_x")
    module = folder / "slow_plugin_x.py"
    module.write_text("import time\ntime.sleep(1.5)\n" + module.read_text("utf-8"), "utf-8")
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored after the test
    monkeypatch.setenv("TRANSFERSTUDIO_PLUGIN_PATH", str(folder))
    monkeypatch.setenv("TRANSFERSTUDIO_PLUGIN_TIMEOUT", "1")
    try:
        host = load_plugins(autoload=True)
    finally:
        sys.modules.pop("slow_plugin_x", None)
    err = capsys.readouterr().err
    assert "still importing plugin 'slow_plugin_x' (module slow_plugin_x) after 1 s" in err
    assert (
        "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD=1" in err and "pip uninstall slow_plugin_x" in err
    )
    assert "slow_plugin_x_net" in host.backbones  # it loaded in the end
