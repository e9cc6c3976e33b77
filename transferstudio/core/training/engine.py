"""The training engine: a plain function of ``(experiment, state)``.

The engine owns what every method shares (device, mixed precision, optimizer and parameter groups,
learning-rate schedule, epochs, validation, early stopping, checkpoints, cancellation, events); the
method plugin owns its modules and its step. ``state`` answers "was I asked to stop or pause?" and
receives events, so tests call the engine with a plain object, the GUI worker from a QThread, the
CLI with a console progress bar. Only the writer process (rank 0 of a distributed launch) writes
files; the others compute.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import random
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from transferstudio.api import (
    ROLE_EPISODES,
    ROLE_KEYS,
    ROLE_LABELED,
    ROLE_LABELED_TARGET,
    ROLE_MULTILABEL,
    ROLE_UNLABELED,
    ROLE_UNLABELED_TARGET,
    DataError,
    ExperimentError,
    PluginError,
    Sample,
    StepOutput,
    TransferMethod,
    TransferStudioError,
    WeightsError,
)
from transferstudio.core.data import loaders as D
from transferstudio.core.data.roles import (
    EpisodeLoader,
    MultiLabelDataset,
    UnlabeledDataset,
    list_images,
    require_path,
    scan_labeled_target,
    scan_multilabel,
    scan_unlabeled,
    split_classes,
)
from transferstudio.core.files.atomic import remove_leftovers, write_text_atomic
from transferstudio.core.files.safe_text import csv_row
from transferstudio.core.models.build import (
    build_backbone,
    build_classifier,
    build_trained_classifier,
    describe_head,
    make_head,
)
from transferstudio.core.models.bundle import backbone_plugin
from transferstudio.core.models.features import FeatureCache, cache_key
from transferstudio.core.models.weights import file_digest, resolve_weights
from transferstudio.core.plugins.host import PluginHost
from transferstudio.core.progress import events as E
from transferstudio.core.runs.checkpoint import (
    CheckpointStore,
    load_module_weights,
    module_weights,
    restore_rng,
    rng_state,
)
from transferstudio.core.runs.finished import load_run_predictor
from transferstudio.core.runs.workspace import RunStore, is_disk_full
from transferstudio.core.settings.experiment import Experiment
from transferstudio.core.training.device import choose_device, choose_precision, describe
from transferstudio.core.training.distributed import (
    Distributed,
    EpochShardSampler,
    process_rank,
    replicate_trainable,
)
from transferstudio.core.training.metrics import (
    ClassificationReport,
    MetricAccumulator,
    format_report,
    lower_is_better,
)
from transferstudio.core.training.optim import build_optimizer, lr_factor, set_lr

STATS_PER_EPOCH = 4
EPISODE_STREAMS = {"train": 1, "val": 2, "test": 3}
"""Distinct random streams per split, so val and test episodes never repeat train's draws."""
"""How often per epoch the layer statistics (weight drift, gradient norm) are emitted."""


class RunState(Protocol):
    """What the engine asks of its caller."""

    def stop_requested(self) -> bool: ...

    def pause_requested(self) -> bool: ...

    def emit(self, event: Any) -> None: ...


class PlainState:
    """A :class:`RunState` for scripts and tests: flags plus an event list and callback.
    ``should_stop``, when given, is asked too (a stop flag kept elsewhere)."""

    def __init__(self, on_event=None, should_stop: Callable[[], bool] | None = None) -> None:
        self.stop = False
        self.pause = False
        self.events: list[Any] = []
        self.on_event = on_event
        self.should_stop = should_stop

    def stop_requested(self) -> bool:
        return self.stop or (self.should_stop is not None and self.should_stop())

    def pause_requested(self) -> bool:
        return self.pause

    def emit(self, event: Any) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)


class RunCancelled(Exception):
    """Raised inside the loop when the state asks to stop."""


class NonFiniteLoss(TransferStudioError):
    """The loss became NaN or infinite."""


@dataclass
class RunResult:
    """The outcome of :func:`run_experiment`."""

    run_id: str
    folder: Path
    status: str  # completed | cancelled | failed
    message: str = ""
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_done: int = 0
    report: dict[str, Any] = field(default_factory=dict)


def read_only(settings: Any) -> Any:
    """A frozen copy of a settings dataclass: what a method may read but not change."""
    fields = dataclasses.fields(settings)
    frozen = dataclasses.make_dataclass(
        type(settings).__name__, [(f.name, f.type) for f in fields], frozen=True
    )
    return frozen(**{f.name: getattr(settings, f.name) for f in fields})


def is_writer_process() -> bool:
    """True unless this is a non-zero rank of a distributed launch (``RANK`` set by torchrun)."""
    return process_rank() == 0


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every RNG; ``deterministic`` restricts torch to deterministic kernels (set either
    way, since it is process-wide state a previous run may have changed)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 1) % 2**63


# Offsets that give each data role its own shuffling stream (see ``_Run.loader``).
_ROLE_STREAMS = {
    ROLE_LABELED: 0,
    ROLE_UNLABELED_TARGET: 1,
    ROLE_LABELED_TARGET: 2,
    ROLE_EPISODES: 3,
    ROLE_MULTILABEL: 4,
    ROLE_UNLABELED: 5,
}


# --------------------------------------------------------------------------- method context


class EngineContext:
    """The :class:`transferstudio.api.MethodContext` the engine hands to methods."""

    def __init__(self, engine: _Run) -> None:
        self._run = engine
        self.num_classes = len(engine.scan.classes)
        self.class_names = list(engine.scan.classes)
        self.device = engine.device
        self.epochs = engine.exp.train.epochs
        self.batch_size = engine.exp.data.batch_size
        self.feature_dim = engine.backbone_spec.feature_dim
        self.augmenting = engine.exp.augment.any_random
        self.seed = engine.exp.train.seed
        self.tasks: dict[str, list[str]] = dict(engine.tasks)
        self._said_episodes_plain = False
        self.backbone_name = engine.exp.model.backbone
        self.preprocessing = engine.preprocessing
        self.train = read_only(engine.exp.train)

    def build_classifier(self) -> torch.nn.Module:
        r = self._run
        model = build_classifier(
            r.backbone_spec, r.weights_file, self.num_classes, dropout=r.exp.model.head_dropout
        )
        return model.to(self.device)

    def make_head(
        self, in_features: int, hidden: int = 0, dropout: float | None = None
    ) -> torch.nn.Module:
        d = self._run.exp.model.head_dropout if dropout is None else dropout
        return make_head(in_features, self.num_classes, hidden, d).to(self.device)

    def loader(self, split: str, role: str = ROLE_LABELED, views: int = 1) -> Iterable[Any]:
        return _StopChecked(self._run.loader(split, role, views), self._run._check_stop)

    def has_role(self, role: str) -> bool:
        return role in self._run.role_samples or role == self._run.primary_role

    def build_backbone(
        self, name: str | None = None, weights: str | None = None
    ) -> tuple[torch.nn.Module, int]:
        r = self._run
        spec = r.backbone_spec if name is None else r.host.backbone(name)
        if weights is None and spec.name == r.backbone_spec.name:
            weights_file = r.weights_file
        else:
            weights_file = resolve_weights(
                spec, weights if weights is not None else "none", r.exp.base_dir
            )
        return build_backbone(spec, weights_file).to(self.device), spec.feature_dim

    def load_classifier(self, name: str, weights: str) -> torch.nn.Module:
        r = self._run
        spec = r.host.backbone(name)
        weights_file = resolve_weights(spec, weights, r.exp.base_dir)
        if weights_file is None:
            raise WeightsError(f"a trained classifier needs a weights file, not {weights!r}")
        model = build_trained_classifier(spec, weights_file, self.num_classes)
        return model.to(self.device).eval().requires_grad_(False)

    def load_run_model(self, ref: str) -> torch.nn.Module:
        # A relative run folder is read against the experiment file's folder, as data paths are.
        folder = self._run.exp.resolve(ref)
        ref = folder if (Path(folder) / "checkpoints").is_dir() else ref
        return load_run_predictor(ref, self._run.host, self._run.workspace).to(self.device)

    def episodes(
        self, split: str, n_way: int, k_shot: int, queries: int, count: int, seed: int = 0
    ) -> Iterable[Any]:
        r = self._run
        if split not in r.scan.splits:
            raise DataError(f"no {split} classes for episodes; see data.val_split/test_split")
        if split == "train" and self.augmenting and not self._said_episodes_plain:
            self._said_episodes_plain = True
            r.log("episodes are not augmented: the [augment] settings do not apply to them")
        loader = EpisodeLoader(
            r.scan.splits[split],
            r.eval_transform,
            n_way,
            k_shot,
            queries,
            count,
            seed=_epoch_seed(self.seed + seed, EPISODE_STREAMS.get(split, 4)),
            workers=r.workers,
            split=split,
        )
        return _StopChecked(loader, r._check_stop)

    def epoch_generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))

    def cached_features(
        self, backbone: torch.nn.Module, split: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run.cached_features(backbone, split)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=self._run.exp.train.label_smoothing)

    def log(self, message: str) -> None:
        self._run.log(message)


class _StopChecked:
    """A loader that honours Stop and Pause between batches, so that a method's own loops
    (custom evaluation over hundreds of episodes, feature caching) stay interruptible. Other
    attributes (``dataset``, ``batch_size``) are the wrapped loader's."""

    def __init__(self, loader: Any, check_stop: Callable[[], None]) -> None:
        self._loader, self._check_stop = loader, check_stop

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self._loader:
            self._check_stop()
            yield batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


# --------------------------------------------------------------------------- layer statistics


class _StatsReference:
    """The weights a run started from, for :class:`~transferstudio.core.progress.events.LayerStats`.

    ``measure()`` uses torch's multi-tensor ``_foreach`` kernels and one device-to-host copy per
    quantity: per-tensor Python loops with a ``float()`` each took ~105 ms per call on
    ResNet-18 (CPU), this ~25 ms, and it runs in the training thread a few times per epoch."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.params = [
            (f"{m}.{n}", p) for m, module in modules.items() for n, p in module.named_parameters()
        ]
        with torch.no_grad():
            self.initial = [p.detach().clone() for _, p in self.params]
            self.initial_sq = self._squared_norms(self.initial)

    @staticmethod
    def _squared_norms(tensors: list[torch.Tensor]) -> list[float]:
        if not tensors:
            return []
        norms = torch._foreach_norm([t.float() for t in tensors])
        return torch.stack(norms).double().pow(2).tolist()

    def measure(self) -> dict[str, tuple[float, float, float]]:
        """``name -> (sum((w - w0)^2), sum(w0^2), sum(grad^2))`` for every parameter."""
        with torch.no_grad():
            current = [p.detach() for _, p in self.params]
            drift = self._squared_norms(torch._foreach_sub(current, self.initial))
            grads = [
                p.grad if p.grad is not None else torch.zeros((), device=p.device)
                for _, p in self.params
            ]
            grad_sq = self._squared_norms(grads)
        return {
            name: (drift[i], self.initial_sq[i], grad_sq[i])
            for i, (name, _) in enumerate(self.params)
        }


# --------------------------------------------------------------------------- the run


class _Run:
    """State of one run while :func:`run_experiment` executes it."""

    def __init__(
        self,
        exp: Experiment,
        host: PluginHost,
        state: RunState,
        workspace: Path,
        resume_id: str | None,
        writer: bool,
    ) -> None:
        self.exp = exp
        self.host = host
        self.state = state
        self.writer = writer
        self.store = RunStore(workspace) if writer else None
        self.workspace = Path(workspace)
        self.resume_id = resume_id
        self.log_lines: list[str] = []  # logged before the run folder (and log.txt) exists
        self.log_file: io.TextIOBase | None = None
        self.started = time.monotonic()
        self.elapsed_before = 0.0
        self.dist = Distributed()  # one process until prepare() reads torchrun's environment
        self.replicated: list[str] | None = None  # modules under DDP, once applied
        self.evaluating_alone = False  # rank 0 tests the best checkpoint while others leave
        self.failed = False  # this process's run failed (other ranks may still be training)
        self.tags: dict[str, str] = {}  # labels for the run store, set when the run is created
        self.exits = contextlib.ExitStack()  # what close() releases (the run's lock)
        # The metric the best epoch is chosen by: val loss when the method does not measure
        # the configured one (found in the first epoch).
        self.metric_used = exp.train.early_stopping_metric

    # ----------------------------------------------------------- helpers

    def log(self, message: str, quiet: bool = False) -> None:
        """A line for the run's log file; also emitted as an event unless ``quiet``."""
        line = f"{time.strftime('%H:%M:%S')} {message}"
        if self.log_file is not None:
            try:
                self.log_file.write(line + "\n")
                self.log_file.flush()
            except OSError:  # a full disk: the line still reaches the user as an event
                pass
        else:  # before the run folder exists (a method's setup): written once it does
            self.log_lines.append(line)
        if not quiet:
            self.state.emit(E.LogMessage(message))

    def loader(self, split: str, role: str = ROLE_LABELED, views: int = 1):
        train = split == "train"
        dataset = self._role_dataset(split, role, views)
        # Each role shuffles with its own stream: with one shared seed, a source and a target
        # folder of equal size would be shuffled identically, pairing image i with image i in
        # every batch. The labeled role keeps offset 0 so its order is that of earlier versions.
        stream = _ROLE_STREAMS.get(role, len(_ROLE_STREAMS)) + (views > 1) * 101
        generator = torch.Generator().manual_seed(
            _epoch_seed(self.exp.train.seed + stream * 1_000_000_007, self.epoch)
        )
        # Unlabeled training batches (target domain, contrastive views) drop a short last batch:
        # a batch of one breaks BatchNorm and pairs nothing. Labeled batches keep every image.
        unlabeled = role in (ROLE_UNLABELED, ROLE_UNLABELED_TARGET) or views > 1
        batch_size, sampler = self.exp.data.batch_size, None
        if train and self.dist.enabled:
            # Each process takes its share of the very permutation one process would use, so
            # the processes' batches together are the single-process batch. Evaluation stays
            # whole on every process: its report is exactly the single-process one.
            batch_size //= self.dist.world
            sampler = EpochShardSampler(dataset, self.dist.world, self.dist.rank, generator)
        return D.make_loader(
            dataset,
            batch_size,
            shuffle=train and sampler is None,
            workers=self.workers,
            pin_memory=self.device.type == "cuda",
            generator=generator,
            drop_last=train and unlabeled and len(dataset) > batch_size,
            sampler=sampler,
        )

    def _role_dataset(self, split: str, role: str, views: int):
        """The dataset a method asks for; the primary role's splits are ``self.datasets``."""
        transform = self.train_transform if split == "train" else self.eval_transform
        if role in (self.primary_role, ROLE_LABELED) and role not in self.role_samples:
            if views > 1:
                return UnlabeledDataset([s.path for s in self.scan.splits[split]], transform, views)
            if split not in self.datasets:
                raise DataError(f"the data has no {split} split")
            return self.datasets[split]
        if role not in self.role_samples:
            raise DataError(
                f"method {self.exp.method!r} asked for {role!r} data, which this experiment "
                f"does not provide (set {ROLE_KEYS.get(role, 'the data settings')})"
            )
        samples = self.role_samples[role]
        if role == ROLE_LABELED_TARGET:
            return D.ImageDataset(samples, self.scan.classes, self.eval_transform)
        return UnlabeledDataset([s.path for s in samples], transform, views)

    def cached_features(self, backbone: torch.nn.Module, split: str):
        weights_id = (
            self.weights_digest
            if self.weights_file is not None
            else f"random-init-seed-{self.exp.train.seed}"
        )
        key = cache_key(
            {
                "backbone": self.exp.model.backbone,
                "weights": weights_id,
                "preprocessing": self.preprocessing.to_dict(),
                "split": split,
                "files": D.ScanResult(
                    self.scan.classes, {split: self.scan.splits[split]}
                ).fingerprint(),
            }
        )
        dataset = self.eval_datasets[split]

        def compute():
            self.log(
                f"computing {split} features once ({len(dataset)} images); later epochs and "
                "runs reuse them"
            )
            loader = D.make_loader(
                dataset,
                self.exp.data.batch_size,
                shuffle=False,
                workers=self.workers,
                pin_memory=self.device.type == "cuda",
            )
            was_training = backbone.training
            backbone.eval()
            feats, targets = [], []
            with torch.no_grad():
                for images, labels in loader:
                    self._check_stop()
                    feats.append(backbone(images.to(self.device, non_blocking=True)).float().cpu())
                    targets.append(labels)
            backbone.train(was_training)
            return torch.cat(feats), torch.cat(targets)

        return self.feature_cache.get_or_compute(key, compute)

    def _check_stop(self) -> None:
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

    def _to_device(self, batch: Any) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, list | tuple):
            return type(batch)(self._to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        return batch

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ----------------------------------------------------------- setup

    def prepare(self) -> None:
        exp = self.exp
        seed_everything(exp.train.seed, exp.train.deterministic)
        self.device = choose_device(exp.train.device)
        self.amp_dtype = choose_precision(self.device, exp.train.precision)
        self.method_spec = self.host.method(exp.method)
        self.backbone_spec = self.host.backbone(exp.model.backbone)
        self.dist = Distributed.from_env()
        if self.dist.enabled:
            self._join_processes()
        data_path = exp.resolve(exp.data.path) if exp.data.path else None
        if data_path is None:
            raise DataError("data.path is empty: choose an image folder or CSV file")
        roles = self.method_spec.data_roles or (ROLE_LABELED,)
        self.primary_role = roles[0]
        for role in roles[1:]:
            key = ROLE_KEYS[role]
            require_path(getattr(exp.data, key.split(".")[1]), key, role, exp.method)
        self.tasks: dict[str, list[str]] = {}
        self.multilabels: dict[str, tuple[str, ...]] = {}
        if self.primary_role == ROLE_UNLABELED:
            self.scan = scan_unlabeled(data_path, exp.data)
        elif self.primary_role == ROLE_MULTILABEL:
            self.scan, self.tasks, self.multilabels = scan_multilabel(data_path, exp.data)
        else:
            source = D.choose_source(self.host.datasets, exp.data, data_path)
            if self.primary_role == ROLE_EPISODES:
                self.scan = split_classes(source, data_path, exp.data)
            else:
                self.scan = D.scan(source, exp.data, data_path)
        self.role_samples: dict[str, list[Sample]] = {}
        if ROLE_UNLABELED_TARGET in roles or (
            ROLE_UNLABELED_TARGET in self.method_spec.optional_roles and exp.data.target_path
        ):
            paths, _ = list_images(exp.resolve(exp.data.target_path))
            if not paths:
                raise DataError(f"data.target_path: no usable images in {exp.data.target_path}")
            self.role_samples[ROLE_UNLABELED_TARGET] = [Sample(p, "") for p in paths]
        if exp.data.target_eval_path and ROLE_LABELED_TARGET in (
            *roles,
            *self.method_spec.optional_roles,
        ):
            target_path = exp.resolve(exp.data.target_eval_path)
            source = D.choose_source(self.host.datasets, exp.data, target_path)
            self.role_samples[ROLE_LABELED_TARGET] = scan_labeled_target(
                source, target_path, self.scan.classes
            )
        self.weights_file = resolve_weights(self.backbone_spec, exp.model.weights, exp.base_dir)
        self.weights_digest = file_digest(self.weights_file) if self.weights_file else None
        pre = self.backbone_spec.preprocessing
        self.preprocessing = pre.resized_for(exp.data.image_size) if exp.data.image_size else pre
        self.workers = D.default_workers(exp.data.num_workers)
        train_tf = D.build_transform(self.preprocessing, exp.augment)
        eval_tf = D.build_transform(self.preprocessing, None)
        self.train_transform, self.eval_transform = train_tf, eval_tf

        def dataset(samples, transform):
            if self.primary_role == ROLE_MULTILABEL:
                return MultiLabelDataset(samples, self.multilabels, self.tasks, transform)
            if self.primary_role == ROLE_UNLABELED:
                return UnlabeledDataset([s.path for s in samples], transform)
            return D.ImageDataset(samples, self.scan.classes, transform)

        self.datasets = {
            s: dataset(samples, train_tf if s == "train" else eval_tf)
            for s, samples in self.scan.splits.items()
        }
        self.eval_datasets = {
            s: dataset(samples, eval_tf) for s, samples in self.scan.splits.items()
        }
        self.feature_cache = FeatureCache(
            self.workspace / "cache" / "features" if self.writer else None
        )
        self.epoch = 0
        self._setup_method()

    def _join_processes(self) -> None:
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
            self.method: TransferMethod = self.method_spec.factory(self.exp.method_params)
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
        about to train with ``bn_mode = "train"``, which wrecks them (core/models/bn_check.py). Read
        from the modules the method built, before any checkpoint is restored: no second read
        of the weights file."""
        from transferstudio.core.models.bn_check import folded_batchnorm_reason

        if self.weights_file is None or getattr(self.exp.method_params, "bn_mode", None) != "train":
            return ""
        state = {
            f"{name}.{key}": value
            for name, module in self.modules.items()
            for key, value in module.state_dict().items()
        }
        reason = folded_batchnorm_reason(state, self.weights_file.name)
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

    def open_run(self) -> None:
        """Find (resume) or register (new) the run and open its folder, holding the run's lock.

        A new run's experiment and split files are written before its row exists, so every
        run in the index can be resumed; a killed start leaves at most an unlisted folder.
        """
        exp = self.exp
        if self.resume_id:
            record = self.store.get(self.resume_id) if self.store else None
            self.run_id = record.id if record else self.resume_id
            self.folder = (
                Path(record.folder) if record else self.workspace / "runs" / self.resume_id
            )
            self.elapsed_before = record.duration_s if record else 0.0
            if self.store:
                self._hold_run_lock()
                self.store.set_status(self.run_id, "running")
        else:
            self.run_id = self.store.new_run_id(exp.name) if self.store else f"rank{process_rank()}"
            self.folder = self.workspace / "runs" / self.run_id
            if self.store:
                self._hold_run_lock()
                self.folder = self.store.runs_folder / self.run_id
                self.folder.mkdir(parents=True, exist_ok=True)
                write_text_atomic(
                    self.folder / "experiment.toml", exp.with_absolute_paths().to_toml()
                )
                # The exact split, so later checks (the export's validation-set comparison)
                # need not scan and split the data again.
                write_text_atomic(self.folder / D.SPLITS_FILE, json.dumps(self.scan.to_dict()))
                self.store.create(
                    self.run_id,
                    exp.name,
                    exp.model.backbone,
                    exp.method,
                    exp.train.early_stopping_metric,
                    tags=self.tags,
                )
        if self.dist.enabled:  # every rank follows rank 0's run (it alone writes)
            run_id, folder, elapsed = self.dist.broadcast(
                (self.run_id, str(self.folder), self.elapsed_before)
            )
            self.run_id, self.folder, self.elapsed_before = run_id, Path(folder), elapsed
        self.checkpoints = CheckpointStore(self.folder / "checkpoints")
        if self.writer:
            self.folder.mkdir(parents=True, exist_ok=True)
            for folder in (self.folder, self.checkpoints.folder):  # this process holds the lock
                for leftover in remove_leftovers(folder):
                    self.log(f"removed {leftover.name}, left by a killed write", quiet=True)
            self.log_file = open(self.folder / "log.txt", "a", encoding="utf-8")  # noqa: SIM115
            self.log_file.writelines(line + "\n" for line in self.log_lines)
            self.log_file.flush()
        self.log_lines.clear()

    def _hold_run_lock(self) -> None:
        assert self.store is not None
        self.exits.enter_context(self.store.working_on(self.run_id))

    # ----------------------------------------------------------- loop

    def execute(self) -> RunResult:
        exp = self.exp
        self.log(
            ("resuming" if self.resume_id else "starting") + f" run {self.run_id}: "
            f"{exp.method} on {exp.model.backbone}, {len(self.scan.classes)} classes"
        )
        self.log("data:\n" + self.scan.report())
        if self.batchnorm_warning and not self.resume_id:
            self.log(self.batchnorm_warning)

        self.optimizer: torch.optim.Optimizer | None = None
        # Layer statistics cost a pass over every weight, so only a state that can show them
        # (the window) keeps the reference weights, and it is asked before each emission
        # (``wants_layer_stats`` may change during the run, e.g. while the tree is hidden).
        self.stats_reference: _StatsReference | None = (
            _StatsReference(self.modules) if hasattr(self.state, "wants_layer_stats") else None
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.step = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.best_val_report: dict[str, Any] | None = None
        start_epoch = 0
        if self.resume_id and self.checkpoints.exists("last"):
            start_epoch = self._restore()
        elif self.resume_id:
            self.log("no checkpoint yet: the run starts from the beginning")
        if self.store and self.resume_id:
            # The index follows the checkpoint: a kill between writing the checkpoint and the
            # index row must not lose an epoch, and epochs after it are redone.
            self.store.truncate_epochs(self.run_id, start_epoch)
            for row in self.history:
                self.store.record_epoch(
                    self.run_id,
                    row["epoch"],
                    {"train": row["train"], "val": row["val"]},
                    self.best,
                    self.best_epoch,
                    self.elapsed_before,
                )

        self.epoch = start_epoch
        # Per process: DistributedSampler gives each ceil(n / world) images, in batches of
        # batch_size / world (the global batch is the experiment's).
        per_process = -(-len(self.datasets["train"]) // self.dist.world)
        train_batches = -(-per_process // (exp.data.batch_size // self.dist.world))
        self.steps_per_epoch = max(1, self.method.steps_per_epoch(self.ctx) or train_batches)
        self.state.emit(
            E.RunStarted(
                self.run_id,
                str(self.folder),
                str(self.device),
                describe(self.device),
                str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32",
                exp.train.epochs,
                start_epoch,
                self.steps_per_epoch,
                self.scan.classes,
                self.scan.counts(),
                len(self.scan.skipped),
            )
        )

        metric = self.metric_used  # the configured one, or what a resumed run had switched to
        if start_epoch and self._patience_spent():
            # Killed after the epoch that stopped the run early: only the end is left to do.
            start_epoch = exp.train.epochs
        for epoch in range(start_epoch, exp.train.epochs):
            self.epoch = epoch
            self._seed_epoch(epoch)
            trainable_changed = self.method.on_epoch_start(epoch, self.ctx)
            if self.dist.enabled:
                self._replicate_once(trainable_changed)
            if trainable_changed or self.optimizer is None:
                self._rebuild_optimizer()
            t0 = time.monotonic()
            train_metrics = self._train_epoch(epoch)
            val_report = self._evaluate("val")
            diagnostics = self.method.epoch_diagnostics(self.ctx)
            if self.dist.enabled:
                # Every process takes rank 0's figures, so all make the same early-stopping
                # decision: one that stopped alone would leave the others waiting in a
                # collective. (A method's own evaluation, or its diagnostics, may differ
                # slightly between processes.)
                val_report, diagnostics = self.dist.broadcast((val_report, diagnostics))
            val_metrics = val_report.metrics
            val_metrics.update({f"diag_{k}": float(v) for k, v in diagnostics.items()})
            if metric not in val_metrics and "loss" in val_metrics:
                self.log(f"val {metric} is not measured by {exp.method}; using val loss")
                metric = self.metric_used = "loss"
            value = val_metrics.get(metric)
            improved = value is not None and (
                self.best is None
                or (value < self.best if lower_is_better(metric) else value > self.best)
            )
            if improved:
                self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
                self.best_val_report = val_report.to_dict()
            else:
                self.bad_epochs += 1
            lr = self.optimizer.param_groups[0]["lr"]
            self.history.append(
                {"epoch": epoch, "train": train_metrics, "val": val_metrics, "lr": lr}
            )
            seconds = time.monotonic() - t0
            self._save_epoch(epoch, improved, val_report.to_dict())
            self.state.emit(
                E.EpochEnded(
                    epoch,
                    exp.train.epochs,
                    train_metrics,
                    val_metrics,
                    lr,
                    seconds,
                    improved,
                    self.best,
                    self.best_epoch,
                )
            )
            self.log(
                f"epoch {epoch + 1}/{exp.train.epochs}: train loss "
                f"{train_metrics['loss']:.4f} acc {train_metrics.get('accuracy', 0):.4f}; val "
                + " ".join(
                    f"{k} {v:.4f}"
                    for k, v in val_metrics.items()
                    if k in ("loss", "accuracy", "f1_macro")
                )
                + (" (best)" if improved else ""),
                quiet=True,
            )
            if self._patience_spent():
                self.log(
                    f"early stopping: no improvement of val {metric} for "
                    f"{exp.train.patience} epoch(s); best {self.best:.4f} at epoch "
                    f"{(self.best_epoch or 0) + 1}"
                )
                break
        return self._finish()

    def _patience_spent(self) -> bool:
        return bool(self.exp.train.patience) and self.bad_epochs >= self.exp.train.patience

    def _seed_epoch(self, epoch: int) -> None:
        # Each epoch starts from RNG states derived from (seed, epoch): a run resumed at an epoch
        # boundary draws exactly the same augmentations, shuffles and dropout masks.
        s = _epoch_seed(self.exp.train.seed, epoch)
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2**32)

    def _rebuild_optimizer(self) -> None:
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

    def _replicate_once(self, trainable_changed: bool) -> None:
        """DistributedDataParallel on the trainable modules, once their trainable parameters
        are set (DDP fixes the set it synchronises when it is built)."""
        if self.replicated is None:
            self.replicated = replicate_trainable(self.modules)
            shared = self._shares_evaluation()
            self.log(
                f"{self.dist.world} processes ({self.device.type}): DistributedDataParallel on "
                f"{', '.join(self.replicated)}; {self.exp.data.batch_size // self.dist.world} "
                "images per process and step; validation "
                + ("shared out" if shared else "whole in every process (the method's batches)")
            )
        elif trainable_changed:
            raise TransferStudioError(
                "gradual unfreezing (method.params.unfreeze) is not supported with several "
                "processes: DistributedDataParallel synchronises the parameters that train when "
                "it starts. Remove the schedule, or train with one process"
            )

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        exp = self.exp
        self.method.train()
        correct, counted = 0, 0
        total_steps = exp.train.epochs * self.steps_per_epoch
        loss_sum, n_seen = 0.0, 0
        batches = self.method.train_batches(self.ctx, epoch)
        n_batches = len(batches) if hasattr(batches, "__len__") else self.steps_per_epoch
        lr = self.optimizer.param_groups[0]["lr"]
        for i, batch in enumerate(batches):
            self._check_stop()
            factor = lr_factor(self.step, total_steps, self.steps_per_epoch, exp.train)
            out, loss_value, lr = self.optimizer_step(batch, factor)
            if out is None:
                raise NonFiniteLoss(
                    f"the loss became {loss_value} at epoch {epoch + 1}, batch {i + 1}; the run "
                    "stopped and the last good checkpoint is kept. Try a lower learning rate "
                    "(train.lr), gradient clipping (train.grad_clip) or fp32 precision"
                )
            n = out.targets.numel() if out.targets is not None else 1
            loss_sum += loss_value * n
            n_seen += n
            if out.logits is not None and out.targets is not None and out.logits.dim() == 2:
                correct += int((out.logits.detach().argmax(1) == out.targets).sum())
                counted += out.targets.numel()
            self.state.emit(E.BatchEnded(epoch, i, n_batches, loss_value, lr, n, dict(out.logs)))
            if (
                self.stats_reference is not None
                and ((i + 1) % max(1, n_batches // STATS_PER_EPOCH) == 0 or i + 1 == n_batches)
                and self.state.wants_layer_stats
            ):
                self.state.emit(E.LayerStats(epoch, i, self.stats_reference.measure()))
        if self.dist.enabled:  # every process saw its share of the epoch
            loss_sum, n_seen, correct, counted = self.dist.all_reduce_sum(
                [loss_sum, n_seen, correct, counted]
            )
        metrics = {"loss": loss_sum / max(n_seen, 1), "lr": lr}
        if counted:
            metrics["accuracy"] = correct / counted
        return metrics

    def optimizer_step(self, batch: Any, factor: float) -> tuple[StepOutput | None, float, float]:
        """One training step of the method on ``batch`` with every group's learning rate at
        ``factor`` times its base: ``(output, loss, lr of the first group)``. A non-finite loss
        is not stepped on: the output is then ``None`` (the caller says what that means)."""
        batch = self._to_device(batch)
        lr = set_lr(self.optimizer, factor)
        with self._autocast():
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

    def _evaluate(self, split: str):
        """The report of ``split``. Under torchrun, unless rank 0 evaluates alone (the test
        split), every process evaluates rank 0's model, and they share the split out when the
        method keeps the default evaluation batches."""
        self.method.eval()
        shared = self.dist.enabled and not self.evaluating_alone
        if shared:
            self.dist.sync_buffers(self.modules)
        with torch.no_grad():
            custom = self.method.evaluate(self.ctx, split)
        if custom is not None:
            return ClassificationReport({k: float(v) for k, v in custom.items()}, [], [])
        if shared and self._shares_evaluation():
            return self._evaluate_shared(split)
        acc = MetricAccumulator(len(self.scan.classes), self.scan.classes)
        predictions: list[torch.Tensor] = []
        with torch.no_grad():
            for batch in self.method.eval_batches(self.ctx, split):
                self._check_stop()
                predictions.append(self._score(*self._validation_outputs(batch), acc))
        return self._report(split, acc, predictions)

    def _shares_evaluation(self) -> bool:
        """Whether processes share an evaluation split out: only for a method that keeps the
        default batches (``ctx.loader``) and has no evaluation of its own."""
        kind = type(self.method)
        return (
            kind.eval_batches is TransferMethod.eval_batches
            and kind.evaluate is TransferMethod.evaluate
        )

    def _validation_outputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._to_device(batch)
        with self._autocast():
            return self.method.validation_step(batch, self.ctx)

    @staticmethod
    def _score(logits: torch.Tensor, targets: torch.Tensor, acc: MetricAccumulator):
        """Add a batch to ``acc``; returns its class probabilities (for the mistakes)."""
        loss = F.cross_entropy(logits.float(), targets)
        acc.update(logits, targets, float(loss))
        return logits.float().softmax(dim=1).cpu()

    def _evaluate_shared(self, split: str):
        """Each process scores its share of ``split`` (:meth:`Distributed.shard`); the shares,
        put back in order, give the report one process gives, in about 1/world of the time."""
        dataset = self._role_dataset(split, ROLE_LABELED, 1)
        n = len(dataset)
        share = torch.utils.data.Subset(dataset, self.dist.shard(n))
        loader = D.make_loader(
            share,
            max(1, self.exp.data.batch_size // self.dist.world),
            shuffle=False,
            workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )
        logits_parts = [torch.zeros(0, len(self.scan.classes))]
        target_parts = [torch.zeros(0, dtype=torch.long)]
        with torch.no_grad():
            for batch in loader:
                self._check_stop()
                logits, targets = self._validation_outputs(batch)
                logits_parts.append(logits.float().cpu())
                target_parts.append(targets.cpu())
        logits = self.dist.gather_shards(torch.cat(logits_parts), n)
        targets = self.dist.gather_shards(torch.cat(target_parts), n)
        acc = MetricAccumulator(len(self.scan.classes), self.scan.classes)
        return self._report(split, acc, [self._score(logits, targets, acc)] if n else [])

    def _report(self, split: str, acc: MetricAccumulator, predictions: list[torch.Tensor]):
        report = acc.report()
        report.misclassified = self._mistakes(split, predictions)
        return report

    def _mistakes(self, split: str, predictions: list[torch.Tensor], limit: int = 60) -> list:
        """The most confident wrong predictions, for the window's gallery. Evaluation batches
        come in dataset order (see ``TransferMethod.eval_batches``), so row i is sample i."""
        samples = self.scan.splits[split]
        if not predictions:
            return []
        probs = torch.cat(predictions)
        if len(probs) != len(samples):
            return []
        confidence, predicted = probs.max(dim=1)
        index = {c: i for i, c in enumerate(self.scan.classes)}
        wrong = [i for i, s in enumerate(samples) if int(predicted[i]) != index[s.label]]
        wrong.sort(key=lambda i: -float(confidence[i]))
        return [
            {
                "path": samples[i].path,
                "true": samples[i].label,
                "predicted": self.scan.classes[int(predicted[i])],
                "confidence": round(float(confidence[i]), 4),
            }
            for i in wrong[:limit]
        ]

    # ----------------------------------------------------------- checkpoints and files

    def _meta(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "epoch": epoch,
            "experiment": self.exp.to_dict(),
            "class_names": self.scan.classes,
            "metrics": metrics,
            "plugin_versions": self.host.plugin_versions(),
            # What a machine without the backbone's plugin is told to install (predict).
            "backbone_plugin": backbone_plugin(self.host, self.exp.model.backbone),
            "backbone": self.exp.model.backbone,
            "method": self.exp.method,
            "preprocessing": self.preprocessing.to_dict(),
            "weights_source": self.exp.model.weights,
            "weights_digest": self.weights_digest,
            "dataset_fingerprint": self.scan.fingerprint(),
            "seed": self.exp.train.seed,
            "method_state": self.method.state_summary(),
            "support_set": self.method_spec.support_set,
            **self._predictor_recipe(),
        }

    def _predictor_recipe(self) -> dict[str, Any]:
        """Which module is the predictor and, when it is a ``backbone`` + ``head`` module of its
        own, how its head is built: what lets a finished run serve as a teacher or a weights
        source without its method (``core.run_models``), and an export name its classes."""
        predictor = self.method.predictor()
        name = next((n for n, m in self.modules.items() if m is predictor), None)
        if name is None:
            return {}
        head = getattr(predictor, "head", None)
        recipe = describe_head(head) if head is not None else None
        if recipe is None or not hasattr(predictor, "backbone"):
            return {"predictor_module": name}
        return {"predictor_module": name, "head_recipe": recipe}

    def _save_epoch(self, epoch: int, improved: bool, val_report: dict[str, Any]) -> None:
        if not self.writer:
            return
        if not (self.folder / "experiment.toml").is_file():
            # Writing on would recreate a folder holding only the newest files, under a run
            # the user removed or moved: stop and say so instead.
            raise TransferStudioError(
                f"the run folder {self.folder} was deleted or moved during the run, so "
                f"epoch {epoch + 1} cannot be saved; the run stops. Start it again, or move "
                "the folder back and resume it"
            )
        weights = module_weights(self.modules)
        meta = self._meta(epoch, val_report["metrics"])
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "rng": rng_state(),
            "elapsed": self.elapsed_before + time.monotonic() - self.started,
            "metric_used": self.metric_used,
        }
        path = self.checkpoints.save(
            "last",
            weights,
            dict(meta, history=self.history, best_val_report=self.best_val_report),
            state,
        )
        self.state.emit(E.CheckpointSaved("last", str(path), epoch))
        if improved:
            path = self.checkpoints.save("best", weights, meta, {}, same_weights_as="last")
            self.state.emit(E.CheckpointSaved("best", str(path), epoch))
        self._write_metrics_csv()
        assert self.store is not None
        self.store.record_epoch(
            self.run_id,
            epoch,
            {"train": self.history[-1]["train"], "val": self.history[-1]["val"]},
            self.best,
            self.best_epoch,
            self.elapsed_before + time.monotonic() - self.started,
        )

    def _restore(self) -> int:
        ck = self.checkpoints.load("last")
        epoch = int(ck.meta["epoch"])
        load_module_weights(self.modules, ck.weights)
        self.method.on_epoch_start(
            epoch, self.ctx
        )  # the freeze state the checkpoint was trained in
        self._rebuild_optimizer()
        self.optimizer.load_state_dict(ck.state["optimizer"])
        self.scaler.load_state_dict(ck.state["scaler"])
        self.step = int(ck.state["step"])
        self.best, self.best_epoch = ck.state["best"], ck.state["best_epoch"]
        self.metric_used = ck.state.get("metric_used", self.metric_used)
        self.bad_epochs = int(ck.state["bad_epochs"])
        self.history = list(ck.meta.get("history", []))
        self.best_val_report = ck.meta.get("best_val_report")
        self.elapsed_before = float(ck.state.get("elapsed", self.elapsed_before))
        restore_rng(ck.state["rng"])
        self._complete_epoch_files(epoch, ck.meta)
        self.log(f"resumed after epoch {epoch + 1} from {self.checkpoints.folder}")
        return epoch + 1

    def _complete_epoch_files(self, epoch: int, last_meta: dict[str, Any]) -> None:
        """Redo what an epoch writes after its ``last`` checkpoint, from that checkpoint.

        ``last.json`` is the commit point of an epoch: the ``best`` checkpoint and
        ``metrics.csv`` are written after it, so a kill in between leaves them one epoch
        behind. Both are derived from ``last`` alone, so rewriting them here makes a resumed
        run's files exactly those of an uninterrupted one. (The run index is redone from the
        history by the caller.)
        """
        if not self.writer:
            return
        if self.best_epoch == epoch and not (
            self.checkpoints.exists("best") and self.checkpoints.meta("best")["epoch"] == epoch
        ):
            derived = ("history", "best_val_report", "generation", "weights_file", "state_file")
            best_meta = {k: v for k, v in last_meta.items() if k not in derived}
            self.checkpoints.save("best", {}, best_meta, {}, same_weights_as="last")
            self.log(f"the best checkpoint of epoch {epoch + 1} was not saved; written now")
        self._write_metrics_csv()

    def _write_metrics_csv(self) -> None:
        keys: list[str] = []
        for row in self.history:
            for split in ("train", "val"):
                keys += [f"{split}_{k}" for k in row[split] if f"{split}_{k}" not in keys]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(csv_row(["epoch", *keys]))  # column names come from plugins' logs
        for row in self.history:
            flat = {f"{s}_{k}": v for s in ("train", "val") for k, v in row[s].items()}
            writer.writerow(
                [row["epoch"] + 1, *[f"{flat[k]:.6g}" if k in flat else "" for k in keys]]
            )
        write_text_atomic(self.folder / "metrics.csv", out.getvalue())

    def _finish(self) -> RunResult:
        report: dict[str, Any] = {
            "run_id": self.run_id,
            "experiment": self.exp.name,
            "method": self.exp.method,
            "backbone": self.exp.model.backbone,
            "device": str(self.device),
            "metric": self.metric_used,
            "best_metric": self.best,
            "best_epoch": self.best_epoch,
            "epochs_done": len(self.history),
            "classes": self.scan.classes,
            "val": self.best_val_report,
            "skipped_files": [{"path": p, "reason": r} for p, r in self.scan.skipped],
        }
        if "test" in self.datasets and self.writer and self.checkpoints.exists("best"):
            # Test once, with the best checkpoint, as the held-out estimate.
            load_module_weights(
                self.modules, self.checkpoints.load("best", with_state=False).weights
            )
            # Rank 0 alone: no collectives (not even the stop check), or it would wait for
            # the others, which are already leaving the process group.
            self.evaluating_alone = True
            try:
                test_report = self._evaluate("test")
            finally:
                self.evaluating_alone = False
            report["test"] = test_report.to_dict()
            self.log(format_report(test_report, "test (best checkpoint)"), quiet=True)
        duration = self.elapsed_before + time.monotonic() - self.started
        report["duration_s"] = duration
        if self.writer:
            write_text_atomic(self.folder / "report.json", json.dumps(report, indent=2))
            self.store.set_status(self.run_id, "completed", None, duration)
        self.log(
            f"finished in {duration:.1f} s; best val {report['metric']} "
            f"{self.best:.4f} at epoch {(self.best_epoch or 0) + 1}"
            if self.best is not None
            else f"finished in {duration:.1f} s"
        )
        self.state.emit(E.RunFinished(self.run_id, "completed", report))
        return RunResult(
            self.run_id,
            self.folder,
            "completed",
            "",
            self.best,
            self.best_epoch,
            len(self.history),
            report,
        )

    def close(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        self.dist.stop(together=not self.failed)
        self.exits.close()  # the run's lock: released only once nothing more is written


def _failure_message(exc: Exception, run: _Run) -> str:
    """What the user reads when a run fails: our own errors as they are; running out of memory
    with what to change; anything else with the plugin whose code raised it named. Never
    raises: it runs inside the failure handler, often on a disk that just failed."""
    try:
        return _describe_failure(exc, run)
    except Exception:  # noqa: BLE001 - the plain error is still worth recording
        return f"{type(exc).__name__}: {exc}"


def _out_of_memory(exc: Exception) -> bool:
    # CUDA raises OutOfMemoryError; MPS, cuDNN and cuBLAS allocation failures a RuntimeError.
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _peer_lost(exc: Exception) -> bool:
    """A collective failed because another process is gone (Gloo reports a closed connection
    as a plain RuntimeError; NCCL and the store as DistError)."""
    text = str(exc).lower()
    lost = ("connection closed by peer", "connection reset by peer", "remote worker crash")
    return isinstance(exc, torch.distributed.DistNetworkError) or (
        isinstance(exc, RuntimeError) and any(s in text for s in lost)
    )


def _describe_failure(exc: Exception, run: _Run) -> str:
    if isinstance(exc, TransferStudioError):
        return str(exc)
    steps = getattr(run, "step", 0)
    where = f"epoch {run.epoch + 1}" + (f" (after {steps} training steps)" if steps else "")
    last = run.checkpoints.meta("last")["epoch"] + 1 if run.checkpoints.exists("last") else None
    kept = (
        f"; the checkpoint of epoch {last} is kept: resume with the changed settings "
        f"('transferstudio run --resume {run.run_id} --set ...')"
        if last
        else ""
    )
    if is_disk_full(exc, run.folder if hasattr(run, "folder") else run.workspace):
        target = getattr(exc, "filename", None)
        return (
            f"no space left on the disk of {run.workspace}"
            + (f" writing {target}" if target else "")
            + f" at {where} ({type(exc).__name__}: {exc}). Free some space, or choose another "
            f"workspace (--workspace){kept}" + (" once there is space" if kept else "")
        )
    if isinstance(exc, OSError):
        target = f" {exc.filename}" if exc.filename else ""
        return (
            f"file error{target} at {where}: {exc.strerror or exc}. Check the disk (free space, "
            f"permissions, a removed drive) or choose another workspace (--workspace){kept}"
        )
    if _out_of_memory(exc):
        exp = run.exp
        advice = [
            f"lower data.batch_size (now {exp.data.batch_size}; try {max(1, exp.data.batch_size // 2)})"
        ]
        if run.amp_dtype is None:
            advice.append('turn on mixed precision (train.precision = "auto")')
        advice.append("use a smaller data.image_size or backbone, or freeze more layers")
        return f"out of memory on {describe(run.device)} at {where}: " + "; ".join(advice) + kept
    if run.dist.enabled and _peer_lost(exc):
        first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return (
            f"another training process stopped at {where}, and this one could not go on "
            f"({type(exc).__name__}: {first_line}); torchrun ends the others. Its own error is "
            f"in the processes' output{kept}"
        )
    missing = _unimplemented_hook(exc, run)
    if missing:
        return missing + kept
    plugin = run.host.plugin_in_traceback(exc.__traceback__)
    source = f"plugin {plugin}" if plugin else "TransferStudio itself (please report it)"
    return (
        f"{type(exc).__name__} raised by {source} at {where}: {exc}{kept}. The traceback is in "
        "the run's log.txt"
    )


def _unimplemented_hook(exc: Exception, run: _Run) -> str | None:
    """A method that leaves out a :class:`TransferMethod` function the engine needs raises
    the base class's ``NotImplementedError`` inside ``api.py``: the method is at fault, not
    TransferStudio."""
    import transferstudio.api as api

    frames = traceback.extract_tb(exc.__traceback__)
    if not isinstance(exc, NotImplementedError) or not frames:
        return None
    if Path(frames[-1].filename) != Path(api.__file__):
        return None
    cls = type(getattr(run, "method", None))
    return (
        f"method {run.exp.method!r} ({cls.__module__}.{cls.__qualname__}) does not implement "
        f"{frames[-1].name}(), which the engine calls: its plugin must define it (see "
        "docs/method-api.md)"
    )


def run_experiment(
    exp: Experiment,
    host: PluginHost,
    state: RunState | None = None,
    workspace: str | Path | None = None,
    resume: str | None = None,
    writer: bool | None = None,
    tags: dict[str, str] | None = None,
) -> RunResult:
    """Run (or, with ``resume=RUN_ID``, continue) an experiment to the end.

    Problems found before training starts (bad settings, unusable data, missing weights) raise
    :class:`TransferStudioError`. Once the run exists, a cancel returns status ``cancelled``
    (checkpoints kept, resumable) and an error returns status ``failed`` after a
    :class:`~transferstudio.core.progress.events.RunFailed` event; the last good checkpoint stays.
    ``tags`` label a new run in the run store (its sweep and trial, the run a baseline is for)
    as it is created.
    """
    from transferstudio.core.runs.workspace import default_workspace

    state = state or PlainState()
    workspace = Path(workspace) if workspace else default_workspace()
    run = _Run(
        exp, host, state, workspace, resume, is_writer_process() if writer is None else writer
    )
    run.tags = {k: str(v) for k, v in (tags or {}).items()}
    run.prepare()
    try:
        run.open_run()
    except BaseException:
        run.exits.close()
        raise
    try:
        return run.execute()
    except RunCancelled:
        run.log(
            f"stopped by the user after {run.epoch} complete epoch(s); resume with "
            f"'transferstudio run --resume {run.run_id}'"
        )
        if run.store:
            run.store.set_status(
                run.run_id,
                "cancelled",
                "stopped by the user",
                run.elapsed_before + time.monotonic() - run.started,
            )
        state.emit(E.RunFinished(run.run_id, "cancelled", {}))
        return RunResult(
            run.run_id,
            run.folder,
            "cancelled",
            "stopped by the user",
            getattr(run, "best", None),
            getattr(run, "best_epoch", None),
            len(getattr(run, "history", [])),
        )
    except Exception as exc:  # noqa: BLE001 - reported as a failed run, never a crash
        run.failed = True
        message = _failure_message(exc, run)
        tb = traceback.format_exc()
        run.log(f"run failed: {message}", quiet=True)  # clients show the RunFailed event
        if not isinstance(exc, TransferStudioError):
            run.log(tb, quiet=True)  # for log.txt: the message says it is there
        if run.store:
            try:
                run.store.set_status(
                    run.run_id,
                    "failed",
                    message,
                    run.elapsed_before + time.monotonic() - run.started,
                )
            except TransferStudioError as store_error:  # a full disk takes the index too
                # The run then reads "interrupted" (no process holds it): resumable, as it is.
                run.log(f"the failure could not be recorded in the run index: {store_error}")
        state.emit(E.RunFailed(run.run_id, message, tb))
        return RunResult(
            run.run_id,
            run.folder,
            "failed",
            message,
            getattr(run, "best", None),
            getattr(run, "best_epoch", None),
            len(getattr(run, "history", [])),
        )
    finally:
        run.close()
        if run.device.type == "cuda":
            # The run's modules and activations are gone once it returns; hand the cached
            # blocks back so the rest of the session (the next run) can use them.
            torch.cuda.empty_cache()
