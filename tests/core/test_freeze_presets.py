"""The layer tree's presets, without Qt (core/models/freeze_presets.py)."""

from __future__ import annotations

import pytest
from torch import nn

from transferstudio.core.models.freeze_presets import backbone_blocks, preset_frozen
from transferstudio.core.models.layer_tree import build_tree


def _classifier() -> nn.Module:
    """backbone.body = four blocks (one level down, as ResNet's stages), head = a linear."""
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.stem = nn.Identity()  # no parameters: not a block
    model.backbone.body = nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)])
    model.head = nn.Linear(4, 2)
    return model


def test_blocks_are_found_below_single_children():
    tree = build_tree(_classifier())
    blocks = backbone_blocks(tree.find("backbone"))
    assert [b.path for b in blocks] == [f"backbone.body.{i}" for i in range(4)]
    assert backbone_blocks(None) == []


def test_presets():
    model = _classifier()
    names = [n for n, _ in model.named_parameters()]
    root = build_tree(model)
    backbone = {n for n in names if n.startswith("backbone.")}
    assert preset_frozen("all", names, root) == set()
    assert preset_frozen("head", names, root) == backbone
    last_two = preset_frozen("last", names, root, last_blocks=2)
    assert last_two == {f"backbone.body.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    assert preset_frozen("last", names, root, last_blocks=10) == set()  # more than there are
    with pytest.raises(ValueError, match="unknown freeze preset"):
        preset_frozen("middle", names, root)
