"""The layer tree's freeze presets, without Qt: "Train all", "Head only", "Unfreeze last N".

A classifier is ``backbone`` + ``head`` (core/models/build.py); the presets freeze parameters of
the backbone only. "Unfreeze last N" counts the backbone's blocks: the children of the first
module, going down from ``backbone``, that has more than one child with parameters (ResNet's
stages sit one level down, a ViT's blocks two).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from transferstudio.core.models.layer_tree import LayerNode

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torch import nn

PRESETS = ("all", "head", "last")
"""``all``: nothing frozen; ``head``: the whole backbone frozen; ``last``: the backbone frozen
except its last N blocks."""
BACKBONE = "backbone"
DETECTOR_BACKBONE = "backbone.body"
"""Where a detector's backbone network sits (torchvision's layout)."""


def backbone_blocks(backbone: LayerNode | None) -> list[LayerNode]:
    """The backbone's block list: descend while there is a single child with parameters."""
    node = backbone
    while node is not None:
        with_params = [c for c in node.children if c.params]
        if len(with_params) != 1:
            return with_params
        node = with_params[0]
    return []


def preset_frozen(
    kind: str,
    param_names: Iterable[str],
    root: LayerNode,
    last_blocks: int = 1,
    stages: Sequence[str] = (),
) -> set[str]:
    """The parameter names the preset ``kind`` (one of :data:`PRESETS`) freezes in the model
    whose module tree is ``root``; ``last_blocks`` is N of "Unfreeze last N".

    In a detector the backbone is ``backbone.body`` (its pyramid and heads always train:
    "Head only" means "heads only"), and with the backbone plugin's ``stages`` "Unfreeze last
    N" trains the last N stages, as torchvision's ``trainable_backbone_layers``."""
    names = list(param_names)
    backbone = DETECTOR_BACKBONE if root.find(DETECTOR_BACKBONE) is not None else BACKBONE
    in_backbone = [n for n in names if n.startswith(backbone + ".")]
    if kind == "all":
        return set()
    if kind == "head":
        return set(in_backbone)
    if kind != "last":
        raise ValueError(f"unknown freeze preset {kind!r}; expected one of {', '.join(PRESETS)}")
    if backbone == DETECTOR_BACKBONE and stages:
        if last_blocks >= len(stages):
            return set()
        if last_blocks <= 0:
            return set(in_backbone)
        # Everything registered up to and including the last stage that stays frozen.
        prefix = f"{DETECTOR_BACKBONE}.{stages[-last_blocks - 1]}."
        last = max((i for i, n in enumerate(in_backbone) if n.startswith(prefix)), default=-1)
        return set(in_backbone[: last + 1])
    blocks = backbone_blocks(root.find(backbone))
    keep = {b.path for b in blocks[-last_blocks:]} if last_blocks > 0 else set()
    return {n for n in in_backbone if not any(n.startswith(k + ".") for k in keep)}


def patterns_for(model: nn.Module, frozen: set[str]) -> list[str]:
    """The fewest exact paths whose freezing yields exactly ``frozen`` (parameter names): whole
    modules where every parameter below is frozen, single parameters otherwise. Used when the
    layer tree edits a plan."""
    out: list[str] = []

    def visit(path: str, module: nn.Module) -> None:
        names = [f"{path}.{n}" if path else n for n, _ in module.named_parameters()]
        if not names:
            return
        if path and all(n in frozen for n in names):
            out.append(path)
            return
        for own, _ in module.named_parameters(recurse=False):
            name = f"{path}.{own}" if path else own
            if name in frozen:
                out.append(name)
        for child_name, child in module.named_children():
            visit(f"{path}.{child_name}" if path else child_name, child)

    visit("", model)
    return out
