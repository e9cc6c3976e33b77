"""Detection metrics against pycocotools itself, on hand-placed boxes."""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from transferstudio.core.training.detection_metrics import DetectionMetrics, errors_at

CLASSES = ["cat", "dog", "bird"]  # labels 1, 2, 3 (0 is torchvision's background)
CAT, DOG, BIRD = 1, 2, 3

# Per image: ground truth [(box, label)] and detections [(box, label, score)], xyxy pixels.
# Every score is distinct within its class, so COCO's sort order has no ties to break.
FIXTURE = [
    # 0: a perfect match.
    ([([10, 10, 60, 60], CAT)], [([10, 10, 60, 60], CAT, 0.95)]),
    # 1: a dog shifted to IoU 0.6 (found at 0.5, not at 0.75) and a cat where there is none.
    (
        [([20, 20, 120, 120], DOG)],
        [([45, 20, 145, 120], DOG, 0.8), ([200, 200, 240, 240], CAT, 0.7)],
    ),
    # 2: a cat shifted to IoU 0.3 (a false positive that leaves the cat missed); the dog missed.
    (
        [([0, 0, 50, 50], CAT), ([100, 100, 150, 150], DOG)],
        [([27, 0, 77, 50], CAT, 0.6)],
    ),
    # 3: no ground truth: a confident false dog and an unconfident false cat.
    ([], [([10, 10, 40, 40], DOG, 0.55), ([50, 50, 70, 70], CAT, 0.2)]),
    # 4: a small bird never predicted (birds have no detections at all); a cat found exactly,
    # below the gallery's score threshold.
    (
        [([5, 5, 25, 25], BIRD), ([30, 30, 90, 90], CAT)],
        [([30, 30, 90, 90], CAT, 0.4)],
    ),
    # 5: two dogs found, plus a lower-scored duplicate of the first one, listed first.
    (
        [([0, 0, 40, 40], DOG), ([50, 50, 90, 90], DOG)],
        [
            ([1, 1, 41, 41], DOG, 0.85),
            ([0, 0, 40, 40], DOG, 0.9),
            ([50, 50, 90, 90], DOG, 0.6),
        ],
    ),
    # 6: a large cat at IoU 0.82 (found up to the 0.8 threshold).
    ([([10, 10, 110, 110], CAT)], [([20, 10, 120, 110], CAT, 0.65)]),
    # 7: a missed bird and a dog found at IoU 0.54 (at 0.5, not at 0.55).
    (
        [([60, 60, 80, 80], BIRD), ([0, 0, 30, 30], DOG)],
        [([9, 0, 39, 30], DOG, 0.75)],
    ),
]


def _tensors(fixture):
    preds, targets = [], []
    for gt, dt in fixture:
        targets.append(
            {
                "boxes": torch.tensor([b for b, _ in gt], dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor([label for _, label in gt], dtype=torch.int64),
            }
        )
        preds.append(
            {
                "boxes": torch.tensor([b for b, _, _ in dt], dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor([s for _, _, s in dt], dtype=torch.float32),
                "labels": torch.tensor([label for _, label, _ in dt], dtype=torch.int64),
            }
        )
    return preds, targets


def _report(fixture, class_names=CLASSES, batch=3, **kwargs):
    preds, targets = _tensors(fixture)
    metrics = DetectionMetrics(class_names, **kwargs)
    for start in range(0, len(preds), batch):  # several batches, as the engine adds them
        metrics.update(preds[start : start + batch], targets[start : start + batch])
    return metrics.report()


def _xywh(box):
    # COCO's convention, and torchmetrics' conversion: w = x2 - x1 (no +1 pixel).
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def _coco_eval(fixture, cat_ids=None):
    """pycocotools run directly on the fixture: the reference."""
    gt = COCO()
    annotations = []
    for image_id, (boxes, _) in enumerate(fixture):
        for box, label in boxes:
            x, y, w, h = _xywh(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCO's ids start at 1
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    gt.dataset = {
        "images": [{"id": i} for i in range(len(fixture))],
        "annotations": annotations,
        "categories": [{"id": k, "name": n} for k, n in enumerate(CLASSES, start=1)],
    }
    detections = [
        {"image_id": image_id, "category_id": label, "bbox": _xywh(box), "score": score}
        for image_id, (_, dets) in enumerate(fixture)
        for box, label, score in dets
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(detections)
        coco_eval = COCOeval(gt, dt, "bbox")
        if cat_ids is not None:
            coco_eval.params.catIds = cat_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def test_overall_metrics_match_pycocotools():
    report = _report(FIXTURE)
    stats = _coco_eval(FIXTURE).stats
    m = report.metrics
    assert m["map"] == pytest.approx(stats[0], abs=1e-6)
    assert m["map50"] == pytest.approx(stats[1], abs=1e-6)
    assert m["map75"] == pytest.approx(stats[2], abs=1e-6)
    assert m["mar100"] == pytest.approx(stats[8], abs=1e-6)
    # Not a degenerate fixture: the four figures differ from each other and from 0 and 1.
    assert len({round(m[k], 4) for k in ("map", "map50", "map75", "mar100")}) == 4
    assert all(0 < m[k] < 1 for k in ("map", "map50", "map75", "mar100"))
    assert m["images"] == 8
    assert m["boxes"] == 11
    for i, key in enumerate(("map_small", "map_medium", "map_large"), start=3):
        assert m[key] == pytest.approx(stats[i], abs=1e-6), key


def test_per_class_metrics_match_pycocotools():
    report = _report(FIXTURE)
    assert [row["class"] for row in report.per_class] == CLASSES
    for label, row in enumerate(report.per_class, start=1):
        stats = _coco_eval(FIXTURE, cat_ids=[label]).stats
        assert row["ap"] == pytest.approx(stats[0], abs=1e-6), row["class"]
        assert row["ap50"] == pytest.approx(stats[1], abs=1e-6), row["class"]
        assert row["recall"] == pytest.approx(stats[8], abs=1e-6), row["class"]
    assert [row["boxes"] for row in report.per_class] == [4, 5, 2]
    bird = report.per_class[BIRD - 1]
    assert bird["ap"] == 0.0 and bird["recall"] == 0.0  # ground truth, never predicted
    assert report.per_class[CAT - 1]["ap"] != report.per_class[DOG - 1]["ap"]


def test_class_without_ground_truth_is_none():
    # "fish" (4) is only predicted; "owl" (5) appears nowhere.
    fixture = [*FIXTURE, ([], [([0, 0, 10, 10], 4, 0.9)])]
    report = _report(fixture, class_names=[*CLASSES, "fish", "owl"])
    for row in report.per_class[3:]:
        assert row == {"class": row["class"], "ap": None, "ap50": None, "recall": None, "boxes": 0}
    assert set(report.pr_curves) == set(CLASSES)
    # A class without ground truth is left out of COCO's means: the headline is unchanged.
    assert report.metrics["map"] == pytest.approx(_report(FIXTURE).metrics["map"], abs=1e-6)


def test_perfect_predictions_score_one():
    fixture = [
        (gt, [(box, label, 0.9 - 0.01 * i) for i, (box, label) in enumerate(gt)])
        for gt, _ in FIXTURE
    ]
    report = _report(fixture)
    for key in ("map", "map50", "map75", "mar10", "mar100"):
        assert report.metrics[key] == pytest.approx(1.0), key
    # Images with two boxes: one detection per image finds only one of them.
    assert report.metrics["mar1"] < 1.0
    for row in report.per_class:
        assert (row["ap"], row["ap50"], row["recall"]) == pytest.approx((1.0, 1.0, 1.0))
    assert all(curve["precision"] == [1.0] * 101 for curve in report.pr_curves.values())
    assert report.worst_images == []


def test_no_predictions_score_zero():
    fixture = [(gt, []) for gt, _ in FIXTURE]
    report = _report(fixture)
    for key in ("map", "map50", "map75", "mar100"):
        assert report.metrics[key] == 0.0, key
    assert [row["ap"] for row in report.per_class] == [0.0, 0.0, 0.0]
    assert [row["recall"] for row in report.per_class] == [0.0, 0.0, 0.0]
    # Every image with ground truth has it all missed; image 3 has none and is left out.
    assert [w["index"] for w in report.worst_images] == [2, 4, 5, 7, 0, 1, 6]
    assert sum(len(w["missed"]) for w in report.worst_images) == 11


def test_split_without_ground_truth_reports_zeros():
    # COCO says -1 (undefined) here; the headline figures stay present for model selection.
    report = _report([([], [([0, 0, 10, 10], CAT, 0.9)]), ([], [])])
    m = report.metrics
    assert {k: m[k] for k in ("map", "map50", "map75", "mar100")} == dict.fromkeys(
        ("map", "map50", "map75", "mar100"), 0.0
    )
    assert m["images"] == 2 and m["boxes"] == 0
    assert [row["ap"] for row in report.per_class] == [None, None, None]
    assert report.worst_images == [
        {
            "index": 0,
            "missed": [],
            "false_positives": [[0, 0, 10, 10, "cat", 0.9]],
            "true": [],
            "errors": 1,
            "detections": [[0, 0, 10, 10, "cat", 0.9]],
        }
    ]


def test_no_images_reports_zeros():
    report = DetectionMetrics(CLASSES).report()
    assert report.metrics == {
        "map": 0.0,
        "map50": 0.0,
        "map75": 0.0,
        "mar100": 0.0,
        "images": 0.0,
        "boxes": 0.0,
    }
    assert [row["ap"] for row in report.per_class] == [None, None, None]
    assert report.pr_curves == {} and report.worst_images == []


def test_worst_images_list_misses_and_false_positives():
    worst = _report(FIXTURE).worst_images
    # Errors: image 2 three, image 4 two (the bird, and the cat found only at score 0.4),
    # images 1, 3, 5 and 7 one each; images 0 and 6 are all correct and left out.
    assert [(w["index"], w["errors"]) for w in worst] == [
        (2, 3),
        (4, 2),
        (1, 1),
        (3, 1),
        (5, 1),
        (7, 1),
    ]
    first = worst[0]
    assert first["missed"] == [[0, 0, 50, 50, "cat"], [100, 100, 150, 150, "dog"]]
    assert first["false_positives"] == [[27, 0, 77, 50, "cat", 0.6]]
    assert first["true"] == []
    by_index = {w["index"]: w for w in worst}
    assert by_index[1]["true"] == [[20, 20, 120, 120, "dog"]]
    assert by_index[1]["false_positives"] == [[200, 200, 240, 240, "cat", 0.7]]
    assert by_index[3]["false_positives"] == [[10, 10, 40, 40, "dog", 0.55]]  # 0.2 not shown
    # The duplicate loses to the higher-scored detection of the same dog, though it comes
    # first and the greedy match goes by score.
    assert by_index[5]["false_positives"] == [[1, 1, 41, 41, "dog", 0.85]]
    assert by_index[5]["missed"] == []
    assert by_index[5]["true"] == [[0, 0, 40, 40, "dog"], [50, 50, 90, 90, "dog"]]
    assert by_index[7]["missed"] == [[60, 60, 80, 80, "bird"]]


def test_worst_images_follow_threshold_and_limit():
    worst = _report(FIXTURE, score_threshold=0.3, limit=2).worst_images
    # At 0.3 image 4's cat is found: image 4 drops to one error, behind image 1.
    assert [(w["index"], w["errors"]) for w in worst] == [(2, 3), (1, 1)]


def test_pr_curves_are_cocos_interpolated_precision_at_iou_half():
    report = _report(FIXTURE)
    reference = _coco_eval(FIXTURE).eval["precision"]  # [T, R, K, A, M]
    assert set(report.pr_curves) == set(CLASSES)
    for k, name in enumerate(CLASSES):
        curve = report.pr_curves[name]
        assert curve["recall"] == pytest.approx(np.linspace(0, 1, 101).tolist())
        precision = curve["precision"]
        assert len(precision) == 101
        assert precision == pytest.approx(reference[0, :, k, 0, -1].tolist(), abs=1e-9)
        assert all(0.0 <= p <= 1.0 for p in precision)
        assert all(a >= b for a, b in zip(precision, precision[1:], strict=False))
    dog = report.pr_curves["dog"]["precision"]
    assert min(dog[:60]) > 0 and max(dog) < 1.0 and dog[-1] == 0.0  # a real curve, not flat


def test_labels_are_one_based():
    preds = [
        {
            "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
            "scores": torch.tensor([0.9]),
            "labels": torch.tensor([1]),
        },
        {
            "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
            "scores": torch.tensor([0.8]),
            "labels": torch.tensor([2]),
        },
    ]
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    metrics = DetectionMetrics(["a", "b"])
    metrics.update(preds, targets)
    report = metrics.report()
    assert report.per_class[0] == {
        "class": "a",
        "ap": pytest.approx(1.0),
        "ap50": pytest.approx(1.0),
        "recall": pytest.approx(1.0),
        "boxes": 1,
    }
    assert report.per_class[1]["ap"] is None and report.per_class[1]["boxes"] == 0
    assert list(report.pr_curves) == ["a"]
    assert report.worst_images[0]["false_positives"] == [[0, 0, 10, 10, "b", 0.8]]
    # Small boxes only: COCO's medium and large figures are undefined (-1) and left out.
    assert "map_small" in report.metrics
    assert "map_medium" not in report.metrics and "map_large" not in report.metrics


def test_update_moves_to_cpu_float_and_keeps_images():
    metrics = DetectionMetrics(CLASSES)
    metrics.update(
        [
            {
                "boxes": torch.tensor([[1, 2, 3, 4]], dtype=torch.float64),
                "scores": torch.tensor([0.5], dtype=torch.float64),
                "labels": torch.tensor([2], dtype=torch.int32),
            }
        ],
        [{"boxes": torch.tensor([], dtype=torch.float16), "labels": torch.tensor([])}],
    )
    pred, target = metrics.predictions[0], metrics.targets[0]
    assert pred["boxes"].dtype == torch.float32 and pred["scores"].dtype == torch.float32
    assert pred["labels"].dtype == torch.int64 and pred["labels"].tolist() == [2]
    assert target["boxes"].shape == (0, 4) and target["labels"].dtype == torch.int64
    assert metrics.report().metrics["images"] == 1
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        metrics.update([metrics.predictions[0]] * 2, [metrics.targets[0]])


def test_many_detections_do_not_warn():
    boxes = torch.tensor([[float(i), 0.0, i + 10.0, 10.0] for i in range(150)])
    preds = [{"boxes": boxes, "scores": torch.linspace(1, 0.01, 150), "labels": torch.ones(150)}]
    targets = [{"boxes": boxes[:1], "labels": torch.ones(1, dtype=torch.int64)}]
    metrics = DetectionMetrics(CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.update(preds, targets)
        report = metrics.report()
    assert report.metrics["map"] == pytest.approx(1.0)


def test_report_is_json_serialisable_and_has_no_misclassified():
    report = _report(FIXTURE)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert set(data) == {"metrics", "per_class", "pr_curves", "worst_images"}
    assert data["worst_images"][0]["index"] == 2
    assert report.misclassified == []


def test_a_worst_image_is_matched_again_at_another_threshold():
    metrics = DetectionMetrics(["cat", "dog"], score_threshold=0.5)
    prediction = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]),
        "scores": torch.tensor([0.9, 0.3]),
        "labels": torch.tensor([1, 2]),
    }
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]),
        "labels": torch.tensor([1, 2]),
    }
    metrics.update([prediction], [target])
    (row,) = metrics.report().worst_images
    assert [b[4] for b in row["missed"]] == ["dog"]  # its detection scores 0.3 < 0.5
    lower = errors_at(row, 0.2)
    assert lower["errors"] == 0 and len(lower["true"]) == 2
    higher = errors_at(row, 0.95)
    assert [b[4] for b in higher["missed"]] == ["cat", "dog"] and higher["errors"] == 2
