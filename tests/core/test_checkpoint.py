"""Checkpoints and file writes are atomic: an interrupted write leaves the previous one intact."""

from __future__ import annotations

import pytest
import torch

from transferstudio.core.files import atomic
from transferstudio.core.runs.checkpoint import CheckpointStore


def _save(store, value, epoch):
    return store.save(
        "last", {"model.w": torch.full((3,), float(value))}, {"epoch": epoch}, {"step": epoch}
    )


def test_save_and_load_round_trip(tmp_path):
    store = CheckpointStore(tmp_path)
    _save(store, 1, 0)
    ck = store.load("last")
    assert torch.equal(ck.weights["model.w"], torch.ones(3))
    assert ck.meta["epoch"] == 0 and ck.state == {"step": 0}


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    _save(store, 1, 0)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        _save(store, 2, 1)
    monkeypatch.setattr(torch, "save", real_save)
    ck = store.load("last")
    assert ck.meta["epoch"] == 0 and torch.equal(ck.weights["model.w"], torch.ones(3))
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind
    _save(store, 3, 2)  # and the next save works and cleans up older generations
    assert store.load("last").meta["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last-2.safetensors",
        "last-2.state.pt",
        "last.json",
    ]


def test_atomic_text_write_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "report.json"
    atomic.write_text_atomic(target, "old")

    def writer(path):
        path.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write_atomic(target, writer)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_best_shares_the_weights_file_of_last_and_survives_its_replacement(tmp_path):
    store = CheckpointStore(tmp_path)
    _save(store, 1, 0)
    store.save("best", {}, {"epoch": 0}, {}, same_weights_as="last")
    _save(store, 2, 1)  # last moves on; its old weights file is unlinked
    assert torch.equal(store.load("best").weights["model.w"], torch.ones(3))
    assert torch.equal(store.load("last").weights["model.w"], torch.full((3,), 2.0))
