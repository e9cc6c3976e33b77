"""Metrics against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from transferstudio.core.training.metrics import MetricAccumulator


def _logits_for(preds, n):
    return torch.nn.functional.one_hot(torch.tensor(preds), n).float()


def test_confusion_precision_recall_f1_by_hand():
    targets = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    acc = MetricAccumulator(3, ["a", "b", "c"])
    acc.update(_logits_for(preds[:4], 3), torch.tensor(targets[:4]), loss=1.0)
    acc.update(_logits_for(preds[4:], 3), torch.tensor(targets[4:]), loss=2.0)
    report = acc.report()
    assert report.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    m = report.metrics
    assert m["accuracy"] == pytest.approx(4 / 6)
    # precision a=2/2, b=1/2, c=1/2; recall a=2/3, b=1/2, c=1/1
    assert m["precision_macro"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["recall_macro"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1 / 1.5]
    assert m["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert m["f1_weighted"] == pytest.approx((3 * f1[0] + 2 * f1[1] + 1 * f1[2]) / 6)
    assert m["loss"] == pytest.approx((1.0 * 4 + 2.0 * 2) / 6)
    assert report.per_class[2] == {
        "class": "c",
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "support": 1,
    }


def test_topk_only_for_k_below_the_class_count():
    acc = MetricAccumulator(4)
    logits = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    acc.update(logits, torch.tensor([1, 3]))
    m = acc.report().metrics
    assert m["top3_accuracy"] == pytest.approx(0.5)  # class 1 is in the top 3 of row 0 only
    assert "top5_accuracy" not in m


def test_absent_class_does_not_drag_macro_recall_down():
    acc = MetricAccumulator(3)
    acc.update(_logits_for([0, 1], 3), torch.tensor([0, 1]))
    assert acc.report().metrics["recall_macro"] == 1.0


def test_a_loss_of_exactly_zero_is_reported():
    # A perfect model's cross-entropy underflows to 0.0; it was once dropped from the report
    # (the metrics CSV then showed NaN for the validation loss).
    acc = MetricAccumulator(2, ["a", "b"])
    acc.update(torch.tensor([[100.0, -100.0], [-100.0, 100.0]]), torch.tensor([0, 1]), 0.0)
    assert acc.report().metrics["loss"] == 0.0
    without = MetricAccumulator(2, ["a", "b"])
    without.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert "loss" not in without.report().metrics
