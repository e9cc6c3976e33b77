"""Object-detection metrics accumulated batch by batch: COCO's mean average precision and recall
(torchmetrics on the pycocotools backend, so the numbers are pycocotools' own), a per-class
table, precision-recall curves at IoU 0.5 and a gallery of the validation images with the most
errors.

Labels follow torchvision's detectors: 1-based, 0 being the background, so label ``k`` is
``class_names[k - 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

WORST_IMAGES_SHOWN = 24
"""How many of the images with the most errors a report keeps for the window's gallery."""

# pycocotools' own thresholds, in float64. torchmetrics' defaults come from a float32
# torch.linspace (0.55 -> 0.550000011...), which moves an IoU or a recall lying exactly on a
# threshold to the other side of it; passing COCO's values keeps the numbers COCO-exact.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10).tolist()
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101).tolist()
MATCH_IOU = 0.5
"""The IoU a detection needs to find a ground-truth box in the gallery and the PR curves."""

# The mAP keys torchmetrics returns, under the names a report gives them.
_SUMMARY_KEYS = {
    "map": "map",
    "map50": "map_50",
    "map75": "map_75",
    "map_small": "map_small",
    "map_medium": "map_medium",
    "map_large": "map_large",
    "mar1": "mar_1",
    "mar10": "mar_10",
    "mar100": "mar_100",
    "mar_small": "mar_small",
    "mar_medium": "mar_medium",
    "mar_large": "mar_large",
}
# Always reported, so model selection and sweeps can read them on any split.
_HEADLINE = ("map", "map50", "map75", "mar100")


@dataclass
class DetectionReport:
    """Final detection metrics of one split.

    ``metrics``: ``map`` (AP at IoU .50:.95), ``map50``, ``map75``, ``mar1``/``mar10``/``mar100``
    (recall with at most 1/10/100 detections per image), ``map_small``/``_medium``/``_large``
    and ``mar_small``/... where the split has boxes of that size, and the ``images`` and
    ``boxes`` (ground truth) counts. A split without any ground-truth box scores 0.0 on the
    headline metrics, where COCO says -1 (undefined).

    ``per_class``: one row per class name, ``{"class", "ap", "ap50", "recall", "boxes"}``; ``ap``,
    ``ap50`` and ``recall`` (at 100 detections, IoU .50:.95) are ``None`` for a class with no
    ground-truth box in the split, whose AP is undefined (COCO's -1).

    ``pr_curves``: for each class with ground truth, COCO's interpolated precision at IoU 0.5
    over the 101 recall points 0, 0.01, ..., 1: ``{"recall": [...], "precision": [...]}``.

    ``worst_images``: see :meth:`DetectionMetrics.worst_images`.
    """

    metrics: dict[str, float]
    per_class: list[dict[str, Any]]
    pr_curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    worst_images: list[dict[str, Any]] = field(default_factory=list)

    @property
    def misclassified(self) -> list[dict[str, Any]]:
        """Always empty: detection has no single wrong class per image. Here so code reading
        classification and detection reports alike finds the attribute."""
        return []

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-serialisable lists and dicts."""
        return {
            "metrics": self.metrics,
            "per_class": self.per_class,
            "pr_curves": self.pr_curves,
            "worst_images": self.worst_images,
        }


class DetectionMetrics:
    """Collects the predictions and targets of a split and reports COCO metrics at the end.

    ``score_threshold`` is the confidence from which a detection counts as shown in the gallery
    of worst images; the mAP figures use every detection, as COCO does. ``limit`` caps that
    gallery.

    COCO counts at most 100 detections per image and class (the highest-scored ones), and
    torchvision's detectors give at most 100 per image by default. torchmetrics' warning about
    more than 100 per image is switched off: it counts across classes, and COCO drops nothing
    until one class has more than 100 in one image.

    The report covers the images given to :meth:`update` in this process: under torchrun the
    engine gathers the split first, so torchmetrics' own sync is off (it would count each image
    once per process).
    """

    def __init__(
        self,
        class_names: list[str],
        score_threshold: float = 0.5,
        limit: int = WORST_IMAGES_SHOWN,
    ) -> None:
        self.class_names = list(class_names)
        self.score_threshold = score_threshold
        self.limit = limit
        self.predictions: list[dict[str, torch.Tensor]] = []
        self.targets: list[dict[str, torch.Tensor]] = []
        self._map = MeanAveragePrecision(
            box_format="xyxy",
            iou_type="bbox",
            iou_thresholds=COCO_IOU_THRESHOLDS,
            rec_thresholds=COCO_RECALL_THRESHOLDS,
            class_metrics=True,
            extended_summary=True,
            backend="pycocotools",
            sync_on_compute=False,
        )
        self._map.warn_on_many_detections = False

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        """Add a batch: per image, a detector's output ``{"boxes" [N, 4] xyxy pixels, "scores"
        [N], "labels" [N]}`` and its target ``{"boxes" [M, 4], "labels" [M]}`` (any device)."""
        if len(predictions) != len(targets):
            raise ValueError(
                f"{len(predictions)} predictions for {len(targets)} targets: one of each per image"
            )
        preds = [
            {
                "boxes": _boxes(p["boxes"]),
                "scores": p["scores"].detach().float().cpu().reshape(-1),
                "labels": p["labels"].detach().long().cpu().reshape(-1),
            }
            for p in predictions
        ]
        targs = [
            {
                "boxes": _boxes(t["boxes"]),
                "labels": t["labels"].detach().long().cpu().reshape(-1),
            }
            for t in targets
        ]
        self._map.update(preds, targs)
        self.predictions.extend(preds)
        self.targets.extend(targs)

    def class_name(self, label: int) -> str:
        """The name of a 1-based label (a label outside the class list keeps its number)."""
        if 1 <= label <= len(self.class_names):
            return self.class_names[label - 1]
        return f"label {label}"

    def report(self) -> DetectionReport:
        """The metrics of everything added so far."""
        gt_boxes = [0] * len(self.class_names)
        for t in self.targets:
            for label in t["labels"].tolist():
                if 1 <= label <= len(self.class_names):
                    gt_boxes[label - 1] += 1
        counts = {"images": float(len(self.targets)), "boxes": float(sum(gt_boxes))}
        empty_rows = [
            {"class": name, "ap": None, "ap50": None, "recall": None, "boxes": n}
            for name, n in zip(self.class_names, gt_boxes, strict=True)
        ]
        if not self.targets:
            # torchmetrics warns when computing without an update; there is nothing to score.
            return DetectionReport({**dict.fromkeys(_HEADLINE, 0.0), **counts}, empty_rows)
        result = self._map.compute()

        metrics: dict[str, float] = {}
        for name, key in _SUMMARY_KEYS.items():
            value = float(result[key])
            if value >= 0:  # COCO's -1: no ground truth of that size (or none at all)
                metrics[name] = value
            elif name in _HEADLINE:
                metrics[name] = 0.0
        metrics.update(counts)

        # Index of each 1-based label in torchmetrics' per-class results: it evaluates only the
        # labels seen in predictions or targets, in ascending order.
        classes = result["classes"].reshape(-1).tolist()
        ap = result["map_per_class"].reshape(-1).tolist()
        recall = result["mar_100_per_class"].reshape(-1).tolist()
        # precision: [IoU thresholds, recall points, classes, areas (all first), max detections]
        precision = result.get("precision")
        t50 = COCO_IOU_THRESHOLDS.index(MATCH_IOU)
        per_class = []
        pr_curves: dict[str, dict[str, list[float]]] = {}
        for label, row in enumerate(empty_rows, start=1):
            if row["boxes"] and label in classes and precision is not None:
                k = classes.index(label)
                curve = precision[t50, :, k, 0, -1]
                # -1 marks an undefined point (no ground truth); a class with ground truth has
                # none, but clamp so a curve only ever holds precisions.
                curve = curve.clamp(min=0.0)
                row = {
                    **row,
                    "ap": float(ap[k]),
                    "ap50": float(curve.mean()),
                    "recall": float(recall[k]),
                }
                pr_curves[row["class"]] = {
                    "recall": [round(r, 6) for r in COCO_RECALL_THRESHOLDS],
                    "precision": curve.tolist(),
                }
            per_class.append(row)
        return DetectionReport(metrics, per_class, pr_curves, self.worst_images())

    def worst_images(self) -> list[dict[str, Any]]:
        """Up to ``limit`` images with the most errors, most first (then by index), as
        ``{"index", "missed", "false_positives", "true", "errors"}``.

        Only detections scoring at least ``score_threshold`` take part. In descending score
        order each takes the unmatched ground-truth box of its class it overlaps most, if the
        IoU is at least 0.5. ``missed``: ground truth left unmatched, ``[x1, y1, x2, y2, class]``;
        ``false_positives``: detections left unmatched, ``[x1, y1, x2, y2, class, score]``;
        ``true``: the ground truth that was found, ``[x1, y1, x2, y2, class]`` (so ``true`` and
        ``missed`` together are all of the image's ground truth). ``errors`` counts missed and
        false positives; images without errors are left out.
        """
        rows = []
        for index, (pred, target) in enumerate(zip(self.predictions, self.targets, strict=True)):
            row = self._image_errors(index, pred, target)
            if row["errors"]:
                rows.append(row)
        rows.sort(key=lambda r: (-r["errors"], r["index"]))
        return rows[: self.limit]

    def _image_errors(
        self, index: int, pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
    ) -> dict[str, Any]:
        keep = pred["scores"] >= self.score_threshold
        boxes, scores, labels = pred["boxes"][keep], pred["scores"][keep], pred["labels"][keep]
        # A stable sort: equal scores keep the detector's order, so the gallery is reproducible.
        order = torch.sort(scores, descending=True, stable=True).indices
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        gt_boxes, gt_labels = target["boxes"], target["labels"]
        iou = None
        if len(boxes) and len(gt_boxes):
            # Two empty boxes have no union: 0/0, which would win argmax below as NaN.
            iou = box_iou(boxes, gt_boxes).nan_to_num(nan=0.0)
        found = torch.zeros(len(gt_boxes), dtype=torch.bool)
        false_positives = []
        for i in range(len(boxes)):
            match = -1
            if iou is not None:
                # Candidates: ground truth of the same class not taken by a higher score.
                overlap = iou[i].masked_fill(found | (gt_labels != labels[i]), -1.0)
                best = int(overlap.argmax())
                # ">=": an IoU of exactly 0.5 matches, as COCO's threshold does.
                if overlap[best] >= MATCH_IOU:
                    match = best
            if match >= 0:
                found[match] = True
            else:
                false_positives.append(
                    [
                        *_coords(boxes[i]),
                        self.class_name(int(labels[i])),
                        round(float(scores[i]), 4),
                    ]
                )
        true, missed = [], []
        for j in range(len(gt_boxes)):
            entry = [*_coords(gt_boxes[j]), self.class_name(int(gt_labels[j]))]
            (true if bool(found[j]) else missed).append(entry)
        # Every detection above the evaluation's floor, so that a viewer can match again at
        # another score threshold (:func:`errors_at`) without the model.
        floor = pred["scores"] >= GALLERY_SCORE_FLOOR
        ranked = torch.sort(pred["scores"][floor], descending=True, stable=True).indices
        detections = [
            [
                *_coords(pred["boxes"][floor][i]),
                self.class_name(int(pred["labels"][floor][i])),
                round(float(pred["scores"][floor][i]), 4),
            ]
            for i in ranked[:GALLERY_DETECTIONS].tolist()
        ]
        return {
            "index": index,
            "missed": missed,
            "false_positives": false_positives,
            "true": true,
            "errors": len(missed) + len(false_positives),
            "detections": detections,
        }


GALLERY_SCORE_FLOOR = 0.05
GALLERY_DETECTIONS = 50
"""A worst image keeps its best ``GALLERY_DETECTIONS`` detections scoring at least
``GALLERY_SCORE_FLOOR``: what :func:`errors_at` matches again at another threshold."""


def errors_at(image: dict[str, Any], threshold: float) -> dict[str, Any]:
    """A worst-image entry of a report matched again at score ``threshold``: the same keys
    (``missed``, ``false_positives``, ``true``, ``errors``) from its ``detections`` and its
    ground truth (``true`` + ``missed``), by the same greedy matching as the report."""
    ground = [*image.get("true", []), *image.get("missed", [])]
    detections = image.get("detections", [])
    names = sorted({str(b[4]) for b in ground} | {str(d[4]) for d in detections})
    metrics = DetectionMetrics(names, score_threshold=threshold)
    label = {n: i + 1 for i, n in enumerate(names)}
    pred = {
        "boxes": torch.tensor([d[:4] for d in detections], dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor([float(d[5]) for d in detections], dtype=torch.float32),
        "labels": torch.tensor([label[str(d[4])] for d in detections], dtype=torch.int64),
    }
    target = {
        "boxes": torch.tensor([b[:4] for b in ground], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([label[str(b[4])] for b in ground], dtype=torch.int64),
    }
    row = metrics._image_errors(int(image.get("index", 0)), pred, target)
    row["detections"] = detections
    return row


def _boxes(boxes: torch.Tensor) -> torch.Tensor:
    # reshape: an image without boxes may come as a [0] tensor; torchmetrics wants [0, 4].
    return boxes.detach().float().cpu().reshape(-1, 4)


def _coords(box: torch.Tensor) -> list[float]:
    return [round(float(v), 2) for v in box]
