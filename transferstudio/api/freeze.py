"""Freeze plans: which parameters train, per epoch, and how BatchNorm behaves.

A plan is pure data (saved in the experiment file, edited by the layer tree) and applying it is a
pure function of ``(model, epoch)``, so a resumed run reaches exactly the same freeze state as an
uninterrupted one.

Patterns name module paths of the model (``backbone.layer1``, ``head``). A glob pattern
(``backbone.layer[12]``, ``backbone.features.*``) or a regular expression prefixed with ``re:``
must match a module path (or a parameter's full name) in full; a parameter is frozen when it or
any of its enclosing modules matches.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from transferstudio.api.errors import ExperimentError

__all__ = [
    "BN_MODES",
    "FreezePlan",
    "parse_unfreeze_schedule",
]

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

BN_MODES = ("train", "frozen-stats", "frozen")
"""``train``: normal BatchNorm; ``frozen-stats``: running statistics are not updated (BN layers
stay in eval mode) but their affine parameters train; ``frozen``: statistics and affine
parameters are both fixed."""


def check_pattern(pattern: str) -> None:
    """Raise ``ValueError`` naming ``pattern`` when it is a ``re:`` regular expression that does
    not compile (found when the experiment loads, not halfway through setting up the model)."""
    if isinstance(pattern, str) and pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except (re.error, RecursionError, OverflowError) as exc:
            # Deep nesting and huge repeat counts fail as RecursionError/OverflowError.
            reason = exc if isinstance(exc, re.error) else type(exc).__name__
            raise ValueError(
                f"pattern {pattern!r} is not a valid regular expression ({reason}); fix the part "
                "after 're:', or write a glob such as 'backbone.layer[12]'"
            ) from None


def path_matches(path: str, pattern: str) -> bool:
    """Whether a module path matches a glob pattern or a ``re:`` regular expression, in full."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], path) is not None
    return fnmatch.fnmatchcase(path, pattern)


def _scopes(param_name: str) -> list[str]:
    """The paths a pattern may name to reach a parameter: each enclosing module, and the
    parameter itself (``backbone.class_token`` belongs to no module of its own)."""
    parts = param_name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def parse_unfreeze_schedule(entries: Sequence[str]) -> list[tuple[int, str]]:
    """Parse ``["3:backbone.layer4", "6:backbone.layer3"]`` into ``[(3, ...), (6, ...)]``
    (1-based epochs: ``3:`` means "from the third epoch on")."""
    schedule = []
    for entry in entries:
        epoch, sep, pattern = str(entry).partition(":")
        # isdecimal, not isdigit: "²" is a digit to Python but not a number int() reads.
        digits = epoch.strip()
        if (
            not sep
            or not (digits.isascii() and digits.isdecimal())
            or int(digits) < 1
            or not pattern.strip()
        ):
            raise ValueError(
                f"unfreeze entry {entry!r} must look like 'EPOCH:PATTERN', e.g. '3:backbone.layer4'"
            )
        check_pattern(pattern.strip())
        schedule.append((int(epoch), pattern.strip()))
    return sorted(schedule)


@dataclass
class FreezePlan:
    """Which modules are frozen, from which epoch they train again, and the BatchNorm mode.

    ``patterns`` freeze matching modules; ``up_to`` freezes every parameter registered up to and
    including the module at that path; ``unfreeze`` lists ``(epoch, pattern)`` pairs making
    matching modules trainable from that epoch on (epochs counted from 1, as users see them;
    ``apply`` takes the engine's 0-based epoch index); ``bn_mode`` is one of :data:`BN_MODES`.
    """

    patterns: list[str] = field(default_factory=list)
    up_to: str = ""
    bn_mode: str = "train"
    unfreeze: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode {self.bn_mode!r} is not one of {', '.join(BN_MODES)}")
        for pattern in [*self.patterns, *(p for _, p in self.unfreeze)]:
            check_pattern(pattern)

    def frozen_names(self, model: nn.Module, epoch: int = 0) -> set[str]:
        """Names of the parameters this plan freezes at 0-based epoch index ``epoch``."""
        names = [name for name, _ in model.named_parameters()]
        frozen: set[str] = set()
        if self.up_to:
            module_paths = {p for p, _ in model.named_modules()}
            if self.up_to not in module_paths:
                raise KeyError(self.up_to)
            prefix = self.up_to + "."
            last = max((i for i, n in enumerate(names) if n.startswith(prefix)), default=-1)
            frozen.update(names[: last + 1])
        for name in names:
            if any(path_matches(a, p) for a in _scopes(name) for p in self.patterns):
                frozen.add(name)
        if self.bn_mode == "frozen":
            frozen.update(_batchnorm_param_names(model))
        for start, pattern in self.unfreeze:
            if epoch + 1 >= start:
                frozen -= {n for n in frozen if any(path_matches(a, pattern) for a in _scopes(n))}
        return frozen

    def apply(self, model: nn.Module, epoch: int = 0) -> set[str]:
        """Set ``requires_grad`` on every parameter; returns the names of trainable ones."""
        frozen = self.frozen_names(model, epoch)
        trainable = set()
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name not in frozen)
            if name not in frozen:
                trainable.add(name)
        return trainable

    def set_train_mode(self, model: nn.Module) -> None:
        """``model.train()``, then BatchNorm layers to eval mode unless ``bn_mode`` is ``train``.

        Frozen modules whose parameters are all frozen keep dropout active; only BN statistics
        depend on the mode, which is what the folded-BN pretrained weights need.
        """
        model.train()
        if self.bn_mode != "train":
            for module in _batchnorm_modules(model):
                module.eval()

    def check(self, model: nn.Module) -> None:
        """Raise :class:`ExperimentError` when ``up_to`` or a pattern names nothing in ``model``.

        The error's key is the fine-tune parameter a user edits (``method.params.freeze_up_to``,
        ``.freeze`` or ``.unfreeze``), the names every method embedding a freeze plan uses, so
        the window can mark the field while the user types and the run refuses the same plan.
        """
        paths = [p for p, _ in model.named_modules() if p]
        if self.up_to and self.up_to not in paths:
            raise ExperimentError(
                f"{self.up_to!r} is not a module of this model{_did_you_mean(self.up_to, paths)}"
                f"; top-level modules: {', '.join(_top_level(paths))}",
                "method.params.freeze_up_to",
            )
        unknown = self.unknown_patterns(model)
        if unknown:
            field_name = "freeze" if unknown[0] in self.patterns else "unfreeze"
            raise ExperimentError(
                f"pattern {unknown[0]!r} matches no module{_did_you_mean(unknown[0], paths)}; "
                f"module paths look like {', '.join(_top_level(paths))}",
                f"method.params.{field_name}",
            )

    def unknown_patterns(self, model: nn.Module) -> list[str]:
        """Patterns (freeze and unfreeze) that match no module or parameter: likely typos."""
        paths = [p for p, _ in model.named_modules() if p] + [
            n for n, _ in model.named_parameters()
        ]
        candidates: Iterable[str] = list(self.patterns) + [p for _, p in self.unfreeze]
        return [pat for pat in candidates if not any(path_matches(p, pat) for p in paths)]


def _top_level(paths: list[str]) -> list[str]:
    """The first dozen paths at most one dot deep: what a user needs to write a pattern."""
    out: list[str] = []
    for path in paths:
        if path.count(".") <= 1 and path not in out:
            out.append(path)
    return out[:12]


def _did_you_mean(name: str, paths: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, paths, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _batchnorm_modules(model: nn.Module) -> list[nn.Module]:
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def _batchnorm_param_names(model: nn.Module) -> set[str]:
    from torch.nn.modules.batchnorm import _BatchNorm

    names = set()
    for path, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            names.update(
                f"{path}.{n}" if path else n for n, _ in module.named_parameters(recurse=False)
            )
    return names
