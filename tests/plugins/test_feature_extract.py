"""feature-extract: cached features equal freshly computed ones and are reused across runs."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_experiment
from transferstudio.core.models import features
from transferstudio.core.progress import events as E
from transferstudio.core.runs.checkpoint import CheckpointStore
from transferstudio.core.training.engine import PlainState, run_experiment


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    features.clear_memory()
    yield
    features.clear_memory()


def _exp(data, **kw):
    params = {"head": "linear", "cache": kw.pop("cache", "auto")}
    return tiny_experiment(
        data,
        method__name="feature-extract",
        method__params=params,
        augment__hflip=False,
        train__lr=0.05,
        **kw,
    )


def _weights_file(tmp_path):
    import torchvision

    torch.manual_seed(3)
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return str(path)


def test_cached_features_equal_freshly_computed_ones(make_images, host, tmp_path):
    from transferstudio.core.data.images import load_rgb
    from transferstudio.core.data.loaders import build_transform
    from transferstudio.core.models.build import build_backbone

    data = make_images({"a": 6, "b": 6})
    weights = _weights_file(tmp_path)
    result = run_experiment(
        _exp(data, model__weights=weights, train__epochs=1), host, PlainState(), tmp_path / "ws"
    )
    assert result.status == "completed"
    files = list((tmp_path / "ws" / "cache" / "features").glob("*.safetensors"))
    assert len(files) == 2  # train and val
    from safetensors.torch import load_file

    meta = CheckpointStore(result.folder / "checkpoints").meta("last")
    from transferstudio.api import Preprocessing

    pre = Preprocessing.from_dict(meta["preprocessing"])
    backbone = build_backbone(host.backbone("resnet18"), tmp_path / "r18.pth").eval()
    transform = build_transform(pre, None)
    from transferstudio_builtins.datasets import image_folder_source

    from transferstudio.core.data.loaders import scan
    from transferstudio.core.settings.experiment import DataSettings

    split = scan(image_folder_source(), DataSettings(path=str(data), val_split=0.25), data)
    val_paths = [s.path for s in split.splits["val"]]
    with torch.no_grad():
        fresh = backbone(torch.stack([transform(load_rgb(p)) for p in val_paths]))
    cached = [load_file(str(f)) for f in files]
    match = [c for c in cached if c["features"].shape[0] == len(val_paths)]
    assert match, "no cached entry with the val split's size"
    torch.testing.assert_close(match[0]["features"], fresh, rtol=1e-5, atol=1e-5)


def test_second_run_reuses_the_disk_cache_and_matches(make_images, host, tmp_path):
    data = make_images({"a": 6, "b": 6})
    weights = _weights_file(tmp_path)
    first_state = PlainState()
    first = run_experiment(_exp(data, model__weights=weights), host, first_state, tmp_path / "ws")
    features.clear_memory()  # a new process: only the disk cache is left
    second_state = PlainState()
    second = run_experiment(_exp(data, model__weights=weights), host, second_state, tmp_path / "ws")

    def computed(s):
        return [
            e for e in s.events if isinstance(e, E.LogMessage) and e.text.startswith("computing")
        ]

    assert len(computed(first_state)) == 2 and computed(second_state) == []
    assert first.report["val"] == second.report["val"]


def test_cache_off_gives_the_same_features_path(make_images, host, tmp_path):
    data = make_images({"a": 6, "b": 6})
    weights = _weights_file(tmp_path)
    state = PlainState()
    result = run_experiment(
        _exp(data, model__weights=weights, cache="off"), host, state, tmp_path / "ws"
    )
    assert result.status == "completed"
    assert not (tmp_path / "ws" / "cache" / "features").exists()


def test_augmentation_turns_the_cache_off_with_a_log_line(make_images, host, tmp_path):
    data = make_images({"a": 6, "b": 6})
    state = PlainState()
    exp = _exp(data, train__epochs=1)
    exp.augment.hflip = True
    run_experiment(exp, host, state, tmp_path / "ws")
    assert any("feature cache off" in e.text for e in state.events if isinstance(e, E.LogMessage))


def test_backbone_is_frozen_and_only_the_head_changes(make_images, host, tmp_path):
    data = make_images({"a": 6, "b": 6})
    weights = _weights_file(tmp_path)
    result = run_experiment(
        _exp(data, model__weights=weights, train__epochs=2), host, PlainState(), tmp_path / "ws"
    )
    trained = CheckpointStore(result.folder / "checkpoints").load("last").weights
    original = torch.load(weights, weights_only=True)
    assert torch.equal(trained["model.backbone.conv1.weight"], original["conv1.weight"])
    assert torch.equal(trained["model.backbone.bn1.running_mean"], original["bn1.running_mean"])
