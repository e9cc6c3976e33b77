"""A training session: what every use of a method for training shares, the epoch loop
(:mod:`~transferstudio.core.training.loop`) and the learning-rate finder alike.

It sets up the device and precision, joins the other processes of a torchrun launch, reads the
data (:class:`~transferstudio.core.training.run_data.RunData`), builds the method and its
modules, and then offers the pieces of training: the optimizer over the method's parameter
groups, one optimizer step, per-epoch seeding and the stop / pause check. It writes no files:
the run's folder is :class:`~transferstudio.core.runs.run_files.RunFiles`'.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from transferstudio.api import (
    ROLE_LABELED,
    BackboneSpec,
    ExperimentError,
    MethodSpec,
    PluginError,
    StepOutput,
    TransferMethod,
    TransferStudioError,
)
from transferstudio.core.plugins.host import PluginHost
from transferstudio.core.runs.run_log import RunLog
from transferstudio.core.settings.experiment import Experiment
from transferstudio.core.training.context import EngineContext
from transferstudio.core.training.device import choose_device, choose_precision
from transferstudio.core.training.distributed import Distributed, replicate_trainable
from transferstudio.core.training.optim import build_optimizer, set_lr
from transferstudio.core.training.run_data import RunData
from transferstudio.core.training.seeding import seed_epoch, seed_everything


class RunState(Protocol):
    """What the engine asks of its caller."""

    def stop_requested(self) -> bool: ...

    def pause_requested(self) -> bool: ...

    def emit(self, event: Any) -> None: ...


class RunCancelled(Exception):
    """Raised inside the loop when the state asks to stop."""


class TrainingSession:
    """One method training on one experiment's data, in this process.

    Call :meth:`prepare` first (it raises :class:`TransferStudioError` for bad settings or
    data, before any run exists); then :meth:`start_training`, and per epoch
    :meth:`seed_epoch`, :meth:`rebuild_optimizer` when the trainable parameters change, and
    :meth:`train_step` per batch. :meth:`close` leaves the process group."""

    def __init__(
        self,
        exp: Experiment,
        host: PluginHost,
        state: RunState,
        workspace: Path,
        writer: bool,
        log: RunLog | None = None,
    ) -> None:
        self.exp = exp
        self.host = host
        self.state = state
        self.workspace = Path(workspace)
        self.writer = writer  # only the writer process caches features on disk
        self.run_log = log if log is not None else RunLog(state.emit)
        self.dist = Distributed()  # one process until prepare() reads torchrun's environment
        self.device = torch.device("cpu")
        self.amp_dtype: torch.dtype | None = None
        self.method_spec: MethodSpec | None = None
        self.backbone_spec: BackboneSpec | None = None
        self.data: RunData | None = None
        self.method: TransferMethod | None = None
        self.ctx: EngineContext | None = None
        self.modules: dict[str, torch.nn.Module] = {}
        self.batchnorm_warning = ""
        self.epoch = 0  # the epoch the loaders shuffle for
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.step = 0  # optimizer steps taken in the run
        self.replicated: list[str] | None = None  # modules under DDP, once applied
        self.evaluating_alone = False  # rank 0 tests the best checkpoint while others leave

    # ----------------------------------------------------------- shortcuts

    @property
    def scan(self):
        """The primary role's scanned splits."""
        return self.data.scan

    def log(self, message: str, quiet: bool = False) -> None:
        """A line for the run's log file; also emitted as an event unless ``quiet``."""
        self.run_log.write(message, quiet)

    def loader(self, split: str, role: str = ROLE_LABELED, views: int = 1) -> Any:
        """The loader of ``role``'s ``split`` for the current epoch."""
        return self.data.loader(split, role, views, self.epoch, self.dist, self.device)

    # ----------------------------------------------------------- set-up

    def prepare(self) -> None:
        """Device, precision, the torchrun join, the data and the method's modules."""
        exp = self.exp
        seed_everything(exp.train.seed, exp.train.deterministic)
        self.device = choose_device(exp.train.device)
        self.amp_dtype = choose_precision(self.device, exp.train.precision)
        self.method_spec = self.host.method(exp.method)
        self.backbone_spec = self.host.backbone(exp.model.backbone)
        if self.method_spec.task != exp.task:
            raise ExperimentError(
                f"method {exp.method!r} is for {self.method_spec.task}, but this experiment's "
                f"task is {exp.task}; choose a {exp.task} method (transferstudio methods) or "
                "set task",
                "method.name",
            )
        self.dist = Distributed.from_env()
        if self.dist.enabled:
            self.join_processes()
        self.data = RunData.prepare(
            exp,
            self.host,
            self.method_spec,
            self.backbone_spec,
            self.workspace / "cache" / "features" if self.writer else None,
        )
        self.epoch = 0
        self._setup_method()

    def join_processes(self) -> None:
        """Checks and set-up of a multi-process launch (torchrun), before the run exists."""
        exp, world = self.exp, self.dist.world
        if not self.method_spec.distributed:
            raise ExperimentError(
                f"method {exp.method!r} does not support training in several processes (its "
                f"plugin does not declare MethodSpec.distributed); run it with one process, "
                "without torchrun",
                "method.name",
            )
        if exp.data.batch_size % world:
            raise ExperimentError(
                f"{exp.data.batch_size} is the global batch, shared by {world} processes: make "
                f"it a multiple of {world}",
                "data.batch_size",
            )
        if self.device.type == "mps":
            raise ExperimentError(
                "several processes train on CUDA GPUs or on the CPU; Apple's MPS has no "
                'distributed backend: set train.device = "cpu", or run one process',
                "train.device",
            )
        if self.device.type == "cuda":  # one GPU per process, as torchrun numbers them
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.dist.start(self.device.type)

    def _setup_method(self) -> None:
        # Before the run exists: a bad freeze pattern or head setting is a settings error, not a
        # failed run in the history.
        name = self.exp.method
        try:
            self.method = self.method_spec.factory(self.exp.method_params)
            self.ctx = EngineContext(self)
            self.method.setup(self.ctx)
            self.modules = self.method.modules()
        except TransferStudioError:
            raise
        except Exception as exc:
            raise PluginError(
                f"method {name!r} failed while setting up its modules: {type(exc).__name__}: {exc}"
            ) from exc
        for module in self.modules.values():
            module.to(self.device)
        self._check_input_size()
        self.batchnorm_warning = self._folded_batchnorm_warning()

    def _folded_batchnorm_warning(self) -> str:
        """A warning when pretrained weights with folded BatchNorm (identity statistics) are
        about to train with ``bn_mode = "train"``, which wrecks them (core/models/bn_check.py).
        Read from the modules the method built, before any checkpoint is restored: no second
        read of the weights file."""
        from transferstudio.core.models.bn_check import folded_batchnorm_reason

        weights_file = self.data.weights_file
        if weights_file is None or getattr(self.exp.method_params, "bn_mode", None) != "train":
            return ""
        state = {
            f"{name}.{key}": value
            for name, module in self.modules.items()
            for key, value in module.state_dict().items()
        }
        reason = folded_batchnorm_reason(state, weights_file.name)
        return (
            f'WARNING: {reason} Set method.params.bn_mode = "frozen-stats" (the window '
            "proposes it when you pick such weights; 'transferstudio init --weights' sets it)."
            if reason
            else ""
        )

    def _check_input_size(self) -> None:
        """A backbone that cannot take ``data.image_size`` (convnext_tiny under 32 px, a ViT
        at anything but its own size) is refused here, naming the key, before the run exists;
        it failed in the first batch with torch's words. One forward of two blank images."""
        size, native = self.exp.data.image_size, self.backbone_spec.preprocessing.crop
        if not size or size == native:
            return
        try:
            predictor = self.method.predictor()
        except Exception:  # noqa: BLE001 - a method without one is checked by its own run
            return
        modes = [(m, m.training) for m in predictor.modules()]
        predictor.eval()

        def forward(px: int) -> None:
            with torch.no_grad():
                predictor(torch.zeros(2, 3, px, px, device=self.device))

        try:
            forward(size)
        except Exception as exc:  # noqa: BLE001 - decided by whether the native size works
            try:
                forward(native)
            except Exception:  # noqa: BLE001 - not a size problem: the run reports it
                return
            first_line = (str(exc).strip().splitlines() or [""])[0][:160]
            raise ExperimentError(
                f"backbone {self.exp.model.backbone!r} cannot take {size} px images "
                f"({type(exc).__name__}: {first_line}); it works at its own size, {native} px: "
                f"set data.image_size = 0 (its own size) or another size it accepts",
                "data.image_size",
            ) from None
        finally:
            for module, training in modes:
                module.train(training)

    # ----------------------------------------------------------- training

    def start_training(self) -> None:
        """Fresh loop state: no optimizer yet, no steps taken, a new gradient scaler."""
        self.optimizer = None
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.step = 0

    def seed_epoch(self, epoch: int) -> None:
        """Make ``epoch`` the current one and reseed every RNG for it."""
        self.epoch = epoch
        seed_epoch(self.exp.train.seed, epoch)

    def rebuild_optimizer(self) -> None:
        """An optimizer over the method's current parameter groups (state carried over)."""
        groups = self.method.parameter_groups(self.exp.train.lr)
        try:
            self.optimizer = build_optimizer(groups, self.exp.train, previous=self.optimizer)
        except ValueError as exc:
            raise TransferStudioError(f"{exc}; unfreeze at least the head") from None
        trainable = sum(p.numel() for g in self.optimizer.param_groups for p in g["params"])
        self.log(
            f"optimizer {self.exp.train.optimizer}: {trainable:,} trainable parameters in "
            f"{len(self.optimizer.param_groups)} group(s)"
        )

    def train_step(self, batch: Any, factor: float) -> tuple[StepOutput | None, float, float]:
        """One training step of the method on ``batch`` with every group's learning rate at
        ``factor`` times its base: ``(output, loss, lr of the first group)``. A non-finite loss
        is not stepped on: the output is then ``None`` (the caller says what that means)."""
        batch = self.to_device(batch)
        lr = set_lr(self.optimizer, factor)
        with self.autocast():
            out: StepOutput = self.method.training_step(batch, self.ctx)
        loss_value = float(out.loss.detach())
        if not np.isfinite(loss_value):
            return None, loss_value, lr
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        if self.exp.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.exp.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return out, loss_value, lr

    def replicate_once(self, trainable_changed: bool, shares_evaluation: bool) -> None:
        """DistributedDataParallel on the trainable modules, once their trainable parameters
        are set (DDP fixes the set it synchronises when it is built)."""
        if self.replicated is None:
            self.replicated = replicate_trainable(self.modules)
            self.log(
                f"{self.dist.world} processes ({self.device.type}): DistributedDataParallel on "
                f"{', '.join(self.replicated)}; {self.exp.data.batch_size // self.dist.world} "
                "images per process and step; validation "
                + (
                    "shared out"
                    if shares_evaluation
                    else "whole in every process (the method's batches)"
                )
            )
        elif trainable_changed:
            raise TransferStudioError(
                "gradual unfreezing (method.params.unfreeze) is not supported with several "
                "processes: DistributedDataParallel synchronises the parameters that train when "
                "it starts. Remove the schedule, or train with one process"
            )

    def check_stop(self) -> None:
        """Wait out a pause; raise :class:`RunCancelled` when asked to stop (under torchrun,
        when any process is: they all stop at the same batch)."""
        if self.state.pause_requested():
            self.log("paused")
            while self.state.pause_requested() and not self.state.stop_requested():
                time.sleep(0.05)
            if not self.state.stop_requested():
                self.log("resumed")
        stop = self.state.stop_requested()
        if self.dist.enabled and not self.evaluating_alone:
            # Every process stops at the same batch, or the others would wait for it forever.
            stop = self.dist.all_reduce_sum([float(stop)])[0] > 0
        if stop:
            raise RunCancelled

    def to_device(self, batch: Any) -> Any:
        """``batch`` (tensors, possibly nested in lists, tuples and dicts) on the device."""
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, list | tuple):
            return type(batch)(self.to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        return batch

    def autocast(self) -> Any:
        """The mixed-precision context of the session (disabled in fp32)."""
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def close(self, together: bool = True) -> None:
        """Leave the process group (``together``: the others are leaving too)."""
        self.dist.stop(together=together)
