"""Classification metrics accumulated batch by batch: accuracy, top-k, precision/recall/F1
(macro and weighted), a per-class table and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ClassificationReport:
    """Final metrics of one split. ``confusion[i][j]`` counts true class i predicted as j."""

    metrics: dict[str, float]
    per_class: list[dict[str, Any]]
    confusion: list[list[int]]
    misclassified: list[dict[str, Any]] = field(default_factory=list)
    """The most confident mistakes: ``{"path", "true", "predicted", "confidence"}``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "per_class": self.per_class,
            "confusion": self.confusion,
            "misclassified": self.misclassified,
        }


# Direction of every metric a run reports: lower is better for these, higher for the rest
# (accuracy, F1, ...). Model selection, sweeps and baselines all read it from here.
LOWER_IS_BETTER = frozenset({"loss"})


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is the better one."""
    return metric in LOWER_IS_BETTER


class MetricAccumulator:
    """Adds up logits/targets of batches (on any device) and reports metrics at the end."""

    def __init__(
        self, num_classes: int, class_names: list[str] | None = None, topk: tuple[int, ...] = (3, 5)
    ) -> None:
        self.num_classes = num_classes
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.topk = tuple(k for k in topk if 1 < k < num_classes)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.topk_correct = dict.fromkeys(self.topk, 0)
        self.loss_sum = 0.0
        self.loss_count = 0  # images whose batch came with a loss (a loss of 0.0 counts)
        self.count = 0

    def update(
        self, logits: torch.Tensor, targets: torch.Tensor, loss: float | None = None
    ) -> None:
        """Add a batch; ``loss`` is the batch's mean loss (weighted by batch size)."""
        logits = logits.detach().float()
        targets = targets.detach()
        n = targets.numel()
        pred = logits.argmax(dim=1)
        index = (targets * self.num_classes + pred).cpu()
        self.confusion += torch.bincount(index, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )
        for k in self.topk:
            top = logits.topk(k, dim=1).indices
            self.topk_correct[k] += int((top == targets.unsqueeze(1)).any(dim=1).sum())
        if loss is not None:
            self.loss_sum += float(loss) * n
            self.loss_count += n
        self.count += n

    def report(self) -> ClassificationReport:
        cm = self.confusion.double()
        tp = cm.diag()
        support = cm.sum(dim=1)
        predicted = cm.sum(dim=0)
        precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
        recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
        denom = precision + recall
        f1 = torch.where(
            denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp)
        )
        total = float(support.sum())
        present = support > 0
        # Macro averages run over classes present in this split: a class absent from the split
        # would otherwise count as recall 0 through no fault of the model.
        n_present = max(int(present.sum()), 1)
        weights = support / max(total, 1.0)
        metrics = {
            "accuracy": float(tp.sum()) / total if total else 0.0,
            "precision_macro": float(precision[present].sum()) / n_present,
            "recall_macro": float(recall[present].sum()) / n_present,
            "f1_macro": float(f1[present].sum()) / n_present,
            "precision_weighted": float((precision * weights).sum()),
            "recall_weighted": float((recall * weights).sum()),
            "f1_weighted": float((f1 * weights).sum()),
        }
        for k in self.topk:
            metrics[f"top{k}_accuracy"] = self.topk_correct[k] / total if total else 0.0
        # Not "if loss_sum": a perfect model's loss can be exactly 0.0 and must still show.
        if self.loss_count:
            metrics["loss"] = self.loss_sum / self.loss_count
        per_class = [
            {
                "class": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(self.class_names)
        ]
        return ClassificationReport(metrics, per_class, self.confusion.tolist())


def format_report(report: ClassificationReport, title: str) -> str:
    """A plain-text table of a report, for the console and the run log."""
    if "map50" in report.metrics:  # a detection report (core.training.detection_metrics)
        return format_detection(report.metrics, report.per_class, title)
    m = report.metrics
    width = max([len(r["class"]) for r in report.per_class] + [12])
    lines = [title]
    keys = (
        ["accuracy"]
        + sorted(k for k in m if k.startswith("top"))
        + ["precision_macro", "recall_macro", "f1_macro", "f1_weighted"]
    )
    lines.append("  " + "  ".join(f"{k}={m[k]:.4f}" for k in keys if k in m))
    lines.append(f"  {'class':<{width}}  precision  recall      f1  support")
    for row in report.per_class:
        lines.append(
            f"  {row['class']:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}"
            f"  {row['f1']:6.4f}  {row['support']:7d}"
        )
    return "\n".join(lines)


def format_detection(metrics: dict[str, float], per_class: list[dict[str, Any]], title: str) -> str:
    """A plain-text table of a detection report: mAP figures, then AP and recall per class."""
    keys = ("map50", "map", "map75", "mar100")
    lines = [title, "  " + "  ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)]
    width = max([len(r["class"]) for r in per_class] + [12])
    lines.append(f"  {'class':<{width}}     AP50  AP50:95   recall  boxes")
    for row in per_class:
        cells = [row.get(k) for k in ("ap50", "ap", "recall")]
        shown = "  ".join(f"{v:7.4f}" if v is not None else "      -" for v in cells)
        lines.append(f"  {row['class']:<{width}}  {shown}  {row.get('boxes', 0):5d}")
    return "\n".join(lines)
