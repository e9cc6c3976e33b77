"""The epoch loop of a run: train, validate, keep the best, stop early, checkpoint every epoch,
and at the end test the best checkpoint and write the report.

:class:`TrainingRun` ties the parts together: the :class:`~.session.TrainingSession` (the
method, its optimizer and steps), the :class:`~.evaluation.Evaluator`, and the run's folder
(:class:`~transferstudio.core.runs.run_files.RunFiles`). :meth:`TrainingRun.train_epoch` is the
seam tests replace to make an epoch fail.

At about 460 lines it is over the house's 400: the loop, its checkpoint record and resume, and
the end of a run share the same loop state (best, history, patience), and splitting them would
pass that state around instead. The record and resume are the next candidates to move out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferstudio.api import TASK_DETECTION, StepOutput, TransferStudioError
from transferstudio.core.models.build import describe_head
from transferstudio.core.models.bundle import backbone_plugin
from transferstudio.core.progress import events as E
from transferstudio.core.runs.checkpoint import (
    CheckpointRecord,
    load_module_weights,
    module_weights,
    restore_rng,
    rng_state,
)
from transferstudio.core.runs.run_files import RunFiles
from transferstudio.core.training.device import describe
from transferstudio.core.training.distributed import process_rank
from transferstudio.core.training.evaluation import Evaluator, shares_evaluation
from transferstudio.core.training.layer_stats import StatsReference, is_due
from transferstudio.core.training.metrics import format_report, lower_is_better
from transferstudio.core.training.optim import lr_factor
from transferstudio.core.training.session import TrainingSession


class NonFiniteLoss(TransferStudioError):
    """The loss became NaN or infinite."""


@dataclass
class RunResult:
    """The outcome of :func:`~transferstudio.core.training.engine.run_experiment`."""

    run_id: str
    folder: Path
    status: str  # completed | cancelled | failed
    message: str = ""
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_done: int = 0
    report: dict[str, Any] = field(default_factory=dict)


class TrainingRun:
    """One run of an experiment in this process, from its folder to its report."""

    def __init__(
        self,
        session: TrainingSession,
        resume_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.session = session
        self.exp = session.exp
        self.state = session.state
        self.writer = session.writer
        self.resume_id = resume_id
        self.tags = dict(tags or {})  # labels for the run store, set when the run is created
        self.log = session.run_log
        self.evaluator = Evaluator(session)
        self.files = RunFiles(session.workspace, session.writer, self.log)
        self.started = time.monotonic()
        self.failed = False  # this process's run failed (other ranks may still be training)
        # The metric the best epoch is chosen by: val loss when the method does not measure
        # the configured one (found in the first epoch).
        self.metric_used = self.exp.train.early_stopping_metric
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.best_val_report: dict[str, Any] | None = None
        self.steps_per_epoch = 1
        self.stats_reference: StatsReference | None = None

    def elapsed(self) -> float:
        """Training time of the run so far, earlier processes' included."""
        return self.files.elapsed_before + time.monotonic() - self.started

    # ----------------------------------------------------------- opening

    def open(self) -> None:
        """Find (resume) or register (new) the run and open its folder, holding its lock."""
        s, files = self.session, self.files
        if self.resume_id:
            files.reopen(self.resume_id)
        else:
            files.create(self.exp, s.scan, self.tags, process_rank())
        if s.dist.enabled:  # every rank follows rank 0's run (it alone writes)
            files.follow(*s.dist.broadcast((files.run_id, str(files.folder), files.elapsed_before)))
        files.open_folder()

    # ----------------------------------------------------------- loop

    def execute(self) -> RunResult:
        """Train the remaining epochs and finish; raises ``RunCancelled`` when stopped."""
        exp, s, files = self.exp, self.session, self.files
        self.log.write(
            ("resuming" if self.resume_id else "starting") + f" run {files.run_id}: "
            f"{exp.method} on {exp.model.backbone}, {len(s.scan.classes)} classes"
        )
        self.log.write("data:\n" + s.scan.report())
        if s.batchnorm_warning and not self.resume_id:
            self.log.write(s.batchnorm_warning)
        # Layer statistics cost a pass over every weight, so only a state that can show them
        # (the window) keeps the reference weights, and it is asked before each emission
        # (``wants_layer_stats`` may change during the run, e.g. while the tree is hidden).
        if hasattr(self.state, "wants_layer_stats"):
            self.stats_reference = StatsReference(s.modules)
        s.start_training()
        start_epoch = 0
        if self.resume_id and files.checkpoints.exists("last"):
            start_epoch = self._restore()
        elif self.resume_id:
            self.log.write("no checkpoint yet: the run starts from the beginning")
        if files.store and self.resume_id:
            # The index follows the checkpoint: a kill between writing the checkpoint and the
            # index row must not lose an epoch, and epochs after it are redone.
            files.store.truncate_epochs(files.run_id, start_epoch)
            for row in self.history:
                files.store.record_epoch(
                    files.run_id,
                    row["epoch"],
                    {"train": row["train"], "val": row["val"]},
                    self.best,
                    self.best_epoch,
                    files.elapsed_before,
                )

        s.epoch = start_epoch
        # Per process: DistributedSampler gives each ceil(n / world) images, in batches of
        # batch_size / world (the global batch is the experiment's).
        per_process = -(-len(s.data.datasets["train"]) // s.dist.world)
        train_batches = -(-per_process // (exp.data.batch_size // s.dist.world))
        self.steps_per_epoch = max(1, s.method.steps_per_epoch(s.ctx) or train_batches)
        self.state.emit(
            E.RunStarted(
                files.run_id,
                str(files.folder),
                str(s.device),
                describe(s.device),
                str(s.amp_dtype).replace("torch.", "") if s.amp_dtype else "fp32",
                exp.train.epochs,
                start_epoch,
                self.steps_per_epoch,
                s.scan.classes,
                s.scan.counts(),
                len(s.scan.skipped),
                "boxes" if exp.task == TASK_DETECTION else "images",
            )
        )

        if start_epoch and self._patience_spent():
            # Killed after the epoch that stopped the run early: only the end is left to do.
            start_epoch = exp.train.epochs
        for epoch in range(start_epoch, exp.train.epochs):
            if self._run_epoch(epoch):
                break
        return self._finish()

    def _run_epoch(self, epoch: int) -> bool:
        """Train and validate ``epoch`` and save it; True when early stopping ends the run."""
        exp, s = self.exp, self.session
        s.seed_epoch(epoch)
        trainable_changed = s.method.on_epoch_start(epoch, s.ctx)
        if s.dist.enabled:
            s.replicate_once(trainable_changed, shares_evaluation(s.method, exp.task))
        if trainable_changed or s.optimizer is None:
            s.rebuild_optimizer()
        t0 = time.monotonic()
        train_metrics = self.train_epoch(epoch)
        val_report = self.evaluator.evaluate("val")
        diagnostics = s.method.epoch_diagnostics(s.ctx)
        if s.dist.enabled:
            # Every process takes rank 0's figures, so all make the same early-stopping
            # decision: one that stopped alone would leave the others waiting in a collective.
            # (A method's own evaluation, or its diagnostics, may differ slightly between
            # processes.)
            val_report, diagnostics = s.dist.broadcast((val_report, diagnostics))
        val_metrics = val_report.metrics
        val_metrics.update({f"diag_{k}": float(v) for k, v in diagnostics.items()})
        metric = self.metric_used  # the configured one, or what a resumed run had switched to
        fallback = next((m for m in ("loss", "map50") if m in val_metrics), None)
        if metric not in val_metrics and fallback:
            self.log.write(f"val {metric} is not measured by {exp.method}; using val {fallback}")
            metric = self.metric_used = fallback
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
        lr = s.optimizer.param_groups[0]["lr"]
        self.history.append({"epoch": epoch, "train": train_metrics, "val": val_metrics, "lr": lr})
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
        self.log.write(
            f"epoch {epoch + 1}/{exp.train.epochs}: train loss "
            f"{train_metrics['loss']:.4f}"
            # Accuracy only where the method reports classes (not a detector's boxes).
            + (f" acc {train_metrics['accuracy']:.4f}" if "accuracy" in train_metrics else "")
            + "; val "
            + " ".join(
                f"{k} {v:.4f}"
                for k, v in val_metrics.items()
                if k in ("loss", "accuracy", "f1_macro", "map50", "map")
            )
            + (" (best)" if improved else ""),
            quiet=True,
        )
        if not self._patience_spent():
            return False
        self.log.write(
            f"early stopping: no improvement of val {metric} for "
            f"{exp.train.patience} epoch(s); best {self.best:.4f} at epoch "
            f"{(self.best_epoch or 0) + 1}"
        )
        return True

    def _patience_spent(self) -> bool:
        return bool(self.exp.train.patience) and self.bad_epochs >= self.exp.train.patience

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch of the method's batches; returns its mean loss, accuracy (when the
        method reports class logits) and last learning rate. Tests replace this method to make
        an epoch fail."""
        exp, s = self.exp, self.session
        s.method.train()
        correct, counted = 0, 0
        total_steps = exp.train.epochs * self.steps_per_epoch
        loss_sum, n_seen = 0.0, 0
        log_sums: dict[str, float] = {}  # the method's logged terms, weighted like the loss
        batches = s.method.train_batches(s.ctx, epoch)
        n_batches = len(batches) if hasattr(batches, "__len__") else self.steps_per_epoch
        lr = s.optimizer.param_groups[0]["lr"]
        for i, batch in enumerate(batches):
            s.check_stop()
            factor = lr_factor(s.step, total_steps, self.steps_per_epoch, exp.train)
            out, loss_value, lr = s.train_step(batch, factor)
            if out is None:
                raise NonFiniteLoss(
                    f"the loss became {loss_value} at epoch {epoch + 1}, batch {i + 1}; the run "
                    "stopped and the last good checkpoint is kept. Try a lower learning rate "
                    "(train.lr), gradient clipping (train.grad_clip) or fp32 precision"
                )
            n = out.targets.numel() if out.targets is not None else _images_in(batch)
            loss_sum += loss_value * n
            n_seen += n
            for key, value in out.logs.items():
                log_sums[key] = log_sums.get(key, 0.0) + float(value) * n
            correct, counted = _count_correct(out, correct, counted)
            self.state.emit(E.BatchEnded(epoch, i, n_batches, loss_value, lr, n, dict(out.logs)))
            if (
                self.stats_reference is not None
                and is_due(i, n_batches)
                and self.state.wants_layer_stats
            ):
                self.state.emit(E.LayerStats(epoch, i, self.stats_reference.measure()))
        keys = sorted(log_sums)
        if s.dist.enabled:  # every process saw its share of the epoch
            loss_sum, n_seen, correct, counted, *logged = s.dist.all_reduce_sum(
                [loss_sum, n_seen, correct, counted, *(log_sums[k] for k in keys)]
            )
            log_sums = dict(zip(keys, logged, strict=True))
        metrics = {"loss": loss_sum / max(n_seen, 1), "lr": lr}
        # Epoch means of the terms a method logs (loss components of a detector, say): the
        # curves and metrics.csv show them beside the loss.
        metrics.update({k: log_sums[k] / max(n_seen, 1) for k in keys if k not in metrics})
        if counted:
            metrics["accuracy"] = correct / counted
        return metrics

    # ----------------------------------------------------------- checkpoints

    def checkpoint_record(self, epoch: int, metrics: dict[str, Any]) -> CheckpointRecord:
        """The record of the checkpoint of ``epoch`` (without history: see ``_save_epoch``)."""
        s, exp = self.session, self.exp
        predictor_module, head_recipe = self._predictor_recipe()
        detector = s.ctx.detector_recipes.get(id(s.method.predictor()))
        return CheckpointRecord(
            run_id=self.files.run_id,
            epoch=epoch,
            experiment=exp.to_dict(),
            class_names=s.scan.classes,
            metrics=metrics,
            plugin_versions=s.host.plugin_versions(),
            # What a machine without the backbone's plugin is told to install (predict).
            backbone_plugin=backbone_plugin(s.host, exp.model.backbone),
            backbone=exp.model.backbone,
            method=exp.method,
            preprocessing=s.data.preprocessing.to_dict(),
            weights_source=exp.model.weights,
            weights_digest=s.data.weights_digest,
            dataset_fingerprint=s.scan.fingerprint(),
            seed=exp.train.seed,
            method_state=s.method.state_summary(),
            support_set=s.method_spec.support_set,
            predictor_module=predictor_module,
            head_recipe=head_recipe,
            detector_recipe=detector.to_dict() if detector else None,
        )

    def _predictor_recipe(self) -> tuple[str | None, dict[str, Any] | None]:
        """Which module is the predictor and, when it is a ``backbone`` + ``head`` module of its
        own, how its head is built: what lets a finished run serve as a teacher or a weights
        source without its method (``core.runs.finished``), and an export name its classes."""
        s = self.session
        predictor = s.method.predictor()
        name = next((n for n, m in s.modules.items() if m is predictor), None)
        if name is None:
            return None, None
        head = getattr(predictor, "head", None)
        recipe = describe_head(head) if head is not None else None
        if recipe is None or not hasattr(predictor, "backbone"):
            return name, None
        return name, recipe

    def _save_epoch(self, epoch: int, improved: bool, val_report: dict[str, Any]) -> None:
        if not self.writer:
            return
        s, files = self.session, self.files
        files.check_still_there(epoch)
        record = self.checkpoint_record(epoch, val_report["metrics"])
        record.history, record.best_val_report = self.history, self.best_val_report
        loop_state = {
            "optimizer": s.optimizer.state_dict(),
            "scaler": s.scaler.state_dict(),
            "step": s.step,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "rng": rng_state(),
            "elapsed": self.elapsed(),
            "metric_used": self.metric_used,
        }
        saved = files.save_epoch(
            record, module_weights(s.modules), loop_state, improved, self.history
        )
        for kind, path in saved:
            self.state.emit(E.CheckpointSaved(kind, str(path), epoch))
        assert files.store is not None
        files.store.record_epoch(
            files.run_id,
            epoch,
            {"train": self.history[-1]["train"], "val": self.history[-1]["val"]},
            self.best,
            self.best_epoch,
            self.elapsed(),
        )

    def _restore(self) -> int:
        s, files = self.session, self.files
        ck = files.last_checkpoint()
        record = ck.record
        epoch = record.epoch
        load_module_weights(s.modules, ck.weights)
        s.method.on_epoch_start(epoch, s.ctx)  # the freeze state the checkpoint was trained in
        s.rebuild_optimizer()
        s.optimizer.load_state_dict(ck.state["optimizer"])
        s.scaler.load_state_dict(ck.state["scaler"])
        s.step = int(ck.state["step"])
        self.best, self.best_epoch = ck.state["best"], ck.state["best_epoch"]
        self.metric_used = ck.state.get("metric_used", self.metric_used)
        self.bad_epochs = int(ck.state["bad_epochs"])
        self.history = list(record.history or [])
        self.best_val_report = record.best_val_report
        files.elapsed_before = float(ck.state.get("elapsed", files.elapsed_before))
        restore_rng(ck.state["rng"])
        files.complete_epoch(record, self.best_epoch)
        self.log.write(f"resumed after epoch {epoch + 1} from {files.checkpoints.folder}")
        return epoch + 1

    # ----------------------------------------------------------- the end

    def _finish(self) -> RunResult:
        s, files = self.session, self.files
        report: dict[str, Any] = {
            "run_id": files.run_id,
            "experiment": self.exp.name,
            "method": self.exp.method,
            "backbone": self.exp.model.backbone,
            "device": str(s.device),
            "metric": self.metric_used,
            "best_metric": self.best,
            "best_epoch": self.best_epoch,
            "epochs_done": len(self.history),
            "classes": s.scan.classes,
            "val": self.best_val_report,
            "skipped_files": [{"path": p, "reason": r} for p, r in s.scan.skipped],
        }
        if "test" in s.data.datasets and self.writer and files.checkpoints.exists("best"):
            # Test once, with the best checkpoint, as the held-out estimate.
            load_module_weights(s.modules, files.checkpoints.load("best", with_state=False).weights)
            # Rank 0 alone: no collectives (not even the stop check), or it would wait for
            # the others, which are already leaving the process group.
            s.evaluating_alone = True
            try:
                test_report = self.evaluator.evaluate("test")
            finally:
                s.evaluating_alone = False
            report["test"] = test_report.to_dict()
            self.log.write(format_report(test_report, "test (best checkpoint)"), quiet=True)
        duration = self.elapsed()
        report["duration_s"] = duration
        if self.writer:
            files.write_report(report)
            files.store.set_status(files.run_id, "completed", None, duration)
        self.log.write(
            f"finished in {duration:.1f} s; best val {report['metric']} "
            f"{self.best:.4f} at epoch {(self.best_epoch or 0) + 1}"
            if self.best is not None
            else f"finished in {duration:.1f} s"
        )
        self.state.emit(E.RunFinished(files.run_id, "completed", report))
        return self.result("completed", "", report)

    def result(self, status: str, message: str, report: dict[str, Any] | None = None) -> RunResult:
        """The :class:`RunResult` of the run as it stands."""
        return RunResult(
            self.files.run_id,
            self.files.folder,
            status,
            message,
            self.best,
            self.best_epoch,
            len(self.history),
            report or {},
        )

    def close(self) -> None:
        """Close the log, leave the process group and release the run's lock."""
        self.log.close()
        self.session.close(together=not self.failed)
        self.files.close()  # the run's lock: released only once nothing more is written


def _images_in(batch: Any) -> int:
    """The images of a batch whose step reports no targets: a detection batch is a list of
    images and a list of targets (1 when the batch has another shape)."""
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], list | tuple):
        return max(len(batch[0]), 1)
    return 1


def _count_correct(out: StepOutput, correct: int, counted: int) -> tuple[int, int]:
    if out.logits is not None and out.targets is not None and out.logits.dim() == 2:
        correct += int((out.logits.detach().argmax(1) == out.targets).sum())
        counted += out.targets.numel()
    return correct, counted
