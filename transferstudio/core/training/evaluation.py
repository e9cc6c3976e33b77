"""Evaluating a split: the method's own evaluation, the default one over its validation steps,
the same shared out between torchrun processes, and the gallery of its most confident mistakes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from transferstudio.api import ROLE_LABELED, TASK_DETECTION, TransferMethod
from transferstudio.core.data import loaders as D
from transferstudio.core.training.metrics import ClassificationReport, MetricAccumulator
from transferstudio.core.training.session import TrainingSession

MISTAKES_SHOWN = 60
"""How many of the most confident wrong predictions a report keeps for the window's gallery."""


def shares_evaluation(method: TransferMethod, task: str) -> bool:
    """Whether processes share an evaluation split out: only for a classification method that
    keeps the default batches (``ctx.loader``) and has no evaluation of its own (detection
    batches are lists of images, evaluated whole in every process)."""
    kind = type(method)
    return (
        task != TASK_DETECTION
        and kind.eval_batches is TransferMethod.eval_batches
        and kind.evaluate is TransferMethod.evaluate
    )


class Evaluator:
    """Evaluates the splits of a :class:`TrainingSession`."""

    def __init__(self, session: TrainingSession) -> None:
        self.session = session

    def evaluate(self, split: str) -> ClassificationReport:
        """The report of ``split``. Under torchrun, unless rank 0 evaluates alone (the test
        split), every process evaluates rank 0's model, and they share the split out when the
        method keeps the default evaluation batches."""
        s = self.session
        s.method.eval()
        shared = s.dist.enabled and not s.evaluating_alone
        if shared:
            s.dist.sync_buffers(s.modules)
        with torch.no_grad():
            custom = s.method.evaluate(s.ctx, split)
        if custom is not None:
            return ClassificationReport({k: float(v) for k, v in custom.items()}, [], [])
        if s.exp.task == TASK_DETECTION:
            return self._evaluate_detection(split)
        if shared and shares_evaluation(s.method, s.exp.task):
            return self._evaluate_shared(split)
        acc = MetricAccumulator(len(s.scan.classes), s.scan.classes)
        predictions: list[torch.Tensor] = []
        with torch.no_grad():
            for batch in s.method.eval_batches(s.ctx, split):
                s.check_stop()
                predictions.append(_score(*self._validation_outputs(batch), acc))
        return self._report(split, acc, predictions)

    def _evaluate_detection(self, split: str) -> Any:
        """mAP and the rest of the COCO evaluation of ``split``: the method's validation step
        returns ``(detections, targets)`` per batch, in dataset order. Every process evaluates
        the whole split (detection batches are lists, not shared out)."""
        from transferstudio.core.training.detection_metrics import DetectionMetrics

        s = self.session
        metrics = DetectionMetrics(s.scan.classes)
        with torch.no_grad():
            for batch in s.method.eval_batches(s.ctx, split):
                s.check_stop()
                detections, targets = self._validation_outputs(batch)
                metrics.update(detections, targets)
        report = metrics.report()
        samples = s.scan.splits[split]
        for image in report.worst_images:
            # Row i is sample i (evaluation batches come in dataset order).
            if 0 <= image["index"] < len(samples):
                image["path"] = samples[image["index"]].path
        return report

    def _validation_outputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.session
        batch = s.to_device(batch)
        with s.autocast():
            return s.method.validation_step(batch, s.ctx)

    def _evaluate_shared(self, split: str) -> ClassificationReport:
        """Each process scores its share of ``split`` (:meth:`Distributed.shard`); the shares,
        put back in order, give the report one process gives, in about 1/world of the time."""
        s = self.session
        dataset = s.data.role_dataset(split, ROLE_LABELED, 1)
        n = len(dataset)
        share = torch.utils.data.Subset(dataset, s.dist.shard(n))
        loader = D.make_loader(
            share,
            max(1, s.exp.data.batch_size // s.dist.world),
            shuffle=False,
            workers=s.data.workers,
            pin_memory=s.device.type == "cuda",
        )
        logits_parts = [torch.zeros(0, len(s.scan.classes))]
        target_parts = [torch.zeros(0, dtype=torch.long)]
        with torch.no_grad():
            for batch in loader:
                s.check_stop()
                logits, targets = self._validation_outputs(batch)
                logits_parts.append(logits.float().cpu())
                target_parts.append(targets.cpu())
        logits = s.dist.gather_shards(torch.cat(logits_parts), n)
        targets = s.dist.gather_shards(torch.cat(target_parts), n)
        acc = MetricAccumulator(len(s.scan.classes), s.scan.classes)
        return self._report(split, acc, [_score(logits, targets, acc)] if n else [])

    def _report(
        self, split: str, acc: MetricAccumulator, predictions: list[torch.Tensor]
    ) -> ClassificationReport:
        report = acc.report()
        report.misclassified = self.mistakes(split, predictions)
        return report

    def mistakes(
        self, split: str, predictions: list[torch.Tensor], limit: int = MISTAKES_SHOWN
    ) -> list[dict[str, Any]]:
        """The most confident wrong predictions, for the window's gallery. Evaluation batches
        come in dataset order (see ``TransferMethod.eval_batches``), so row i is sample i."""
        scan = self.session.scan
        samples = scan.splits[split]
        if not predictions:
            return []
        probs = torch.cat(predictions)
        if len(probs) != len(samples):
            return []
        confidence, predicted = probs.max(dim=1)
        index = {c: i for i, c in enumerate(scan.classes)}
        wrong = [i for i, s in enumerate(samples) if int(predicted[i]) != index[s.label]]
        wrong.sort(key=lambda i: -float(confidence[i]))
        return [
            {
                "path": samples[i].path,
                "true": samples[i].label,
                "predicted": scan.classes[int(predicted[i])],
                "confidence": round(float(confidence[i]), 4),
            }
            for i in wrong[:limit]
        ]


def _score(logits: torch.Tensor, targets: torch.Tensor, acc: MetricAccumulator) -> torch.Tensor:
    """Add a batch to ``acc``; returns its class probabilities (for the mistakes)."""
    loss = F.cross_entropy(logits.float(), targets)
    acc.update(logits, targets, float(loss))
    return logits.float().softmax(dim=1).cpu()
