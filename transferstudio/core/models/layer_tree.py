"""A pure-Python tree of a model's modules: path, type, parameters, trainable state, output shape.

The window wraps it in a Qt item model whose check column is the freeze state; the same tree is
where a sub-module is picked for export. Freeze edits are expressed as a :class:`FreezePlan`, so
they are saved in the experiment and replayed headless exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


@dataclass
class LayerNode:
    """One module of the model. ``params`` counts the module's own and its children's."""

    path: str
    name: str
    type_name: str
    params: int
    own_params: int
    output_shape: tuple[int, ...] | None = None
    parent: LayerNode | None = field(default=None, repr=False)
    children: list[LayerNode] = field(default_factory=list)

    def walk(self):
        """This node and every descendant, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, path: str) -> LayerNode | None:
        for node in self.walk():
            if node.path == path:
                return node
        return None

    @property
    def row(self) -> int:
        return self.parent.children.index(self) if self.parent else 0


def build_tree(model: nn.Module, example: torch.Tensor | None = None) -> LayerNode:
    """The module tree of ``model``; with ``example`` (a batch), output shapes are recorded."""
    shapes: dict[str, tuple[int, ...]] = {}
    if example is not None:
        _record_shapes(model, example, shapes)
    nodes: dict[str, LayerNode] = {}
    for path, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        total = sum(p.numel() for p in module.parameters())
        node = LayerNode(
            path,
            path.rsplit(".", 1)[-1] if path else "model",
            type(module).__name__,
            total,
            own,
            shapes.get(path),
        )
        nodes[path] = node
        if path:
            parent = nodes[path.rsplit(".", 1)[0] if "." in path else ""]
            node.parent = parent
            parent.children.append(node)
    return nodes[""]


def _record_shapes(model: nn.Module, example: torch.Tensor, shapes: dict) -> None:
    import torch

    handles = []

    def hook(path):
        def record(module, inputs, output):
            if isinstance(output, torch.Tensor):
                shapes[path] = tuple(output.shape[1:])

        return record

    for path, module in model.named_modules():
        handles.append(module.register_forward_hook(hook(path)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
