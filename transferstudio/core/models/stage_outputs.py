"""A backbone network cut at its stages: :class:`StageOutputs` runs the plugin's own forward,
keeps what each stage returns (forward hooks) and stops after the last one.

This replaces ``torchvision``'s ``create_feature_extractor``, which traces the network with
``torch.fx``. While fx traces, it patches ``torch.nn.Module.__call__`` and ``__getattr__`` for
the whole process, so any module run on another thread at that moment fails ("module is not
installed as a submodule"): a detector built for the window's layer tree, for a prediction or
for an export would break a run training on its own thread. Hooks touch nothing outside the
network, run the network's real code in its real mode (no separate train and eval graphs), and
need no trace at all.

Module paths stay those of the plugin's network (``features.3``, ``layer2``), exactly as fx
kept them, so checkpoints, freeze patterns and the layer tree read the same names. Modules the
network does not call before its last stage ends (the classifier, a last 1x1 convolution) are
replaced by a weightless :class:`Pruned` (fx removed them): they would hold weights that never
train.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import torch
from torch import nn


class _LastStageDone(Exception):  # noqa: N818 - a signal, not an error
    """Raised by the last stage's hook: the rest of the network's forward is not needed."""


class StageOutputs(nn.Module):
    """``network`` returning ``{"0": first stage's output, "1": ..., ...}`` for ``stages``
    (module paths in ``network``, shallow first). Its children are the network's children, so
    its parameters and state-dict keys are the network's under the same names."""

    def __init__(self, network: nn.Module, stages: Sequence[str]) -> None:
        super().__init__()
        self.stage_names = list(stages)
        # The network's modules, parameters and buffers are registered here under their own
        # names; the network object itself is kept in a tuple, which nn.Module does not
        # register, so that each weight is listed once.
        for name, child in network.named_children():
            self.add_module(name, child)
        for name, param in network.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buffer in network.named_buffers(recurse=False):
            self.register_buffer(name, buffer)
        self._network = (network,)
        self._outputs: dict[str, torch.Tensor] = {}
        last = len(self.stage_names) - 1
        for i, stage in enumerate(self.stage_names):
            # A partial of a bound method: a deep copy of this module rebinds it to the copy.
            hook = functools.partial(self._keep, str(i), i == last)
            network.get_submodule(stage).register_forward_hook(hook)

    def _keep(self, key: str, last: bool, module, args, output) -> None:
        self._outputs[key] = output
        if last:
            raise _LastStageDone

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._outputs = {}
        with contextlib.suppress(_LastStageDone):
            self._network[0](x)
        outputs, self._outputs = self._outputs, {}
        if len(outputs) != len(self.stage_names):
            missing = [s for i, s in enumerate(self.stage_names) if str(i) not in outputs]
            raise RuntimeError(
                f"the network's forward did not call its stage(s) {', '.join(missing)}"
            )
        return outputs

    def train(self, mode: bool = True) -> StageOutputs:
        super().train(mode)
        self._network[0].training = mode  # its own forward may read it
        return self


class Pruned(nn.Identity):
    """Stands in for a module the network calls only after its last stage (never run here)."""


def prune_unused(network: nn.Module, last_stage: str, example: torch.Tensor) -> list[str]:
    """Replace by :class:`Pruned` the modules of ``network`` that its forward does not call
    before ``last_stage`` returns, on ``example``; returns their paths. A module is kept when
    it or a module inside it is called (a ModuleList is never called itself)."""
    called: set[str] = set()
    handles = [
        module.register_forward_pre_hook(functools.partial(_mark, called, name))
        for name, module in network.named_modules()
        if name
    ]
    handles.append(network.get_submodule(last_stage).register_forward_hook(_stop))
    was_training = network.training
    try:
        network.eval()
        with torch.no_grad():
            network(example)
    except _LastStageDone:
        pass
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    removed = []
    for name, _ in list(network.named_modules()):
        if not name or any(name.startswith(r + ".") for r in removed):
            continue
        if name in called or any(c.startswith(name + ".") for c in called):
            continue
        parent, _, child = name.rpartition(".")
        # Replaced, not deleted: a forward such as ``self.fc(self.pool(self.block(x)))`` reads
        # ``self.fc`` before it calls the stage.
        setattr(network.get_submodule(parent), child, Pruned())
        removed.append(name)
    return removed


def _mark(called: set[str], name: str, module, args) -> None:
    called.add(name)


def _stop(module, args, output) -> None:
    raise _LastStageDone
