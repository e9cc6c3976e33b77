"""The time-left estimate counts validation, before and after it has been measured."""

from __future__ import annotations

import pytest

from transferstudio.core.progress.eta import (
    VALIDATION_COST_PER_IMAGE,
    EtaEstimator,
    format_duration,
)


def _eta(epochs=3, start_epoch=0, train=300, val=150) -> EtaEstimator:
    eta = EtaEstimator()
    eta.started(0.0, epochs, start_epoch, train, val)
    return eta


def test_nothing_to_go_on_before_the_first_batch():
    assert _eta().remaining(5.0) is None


def test_before_the_first_validation_it_is_estimated_from_the_training_pace():
    eta = _eta()
    eta.batch(10.0, epoch=0, batch=4, batches=10)  # half an epoch's training in 10 s
    epoch = 20.0 * (1 + 0.5 * VALIDATION_COST_PER_IMAGE)
    assert eta.remaining(10.0) == pytest.approx(epoch - 10.0 + 2 * epoch)


def test_while_the_last_epoch_validates_the_estimate_is_not_zero():
    eta = _eta(epochs=1)
    eta.batch(20.0, epoch=0, batch=9, batches=10)  # training done: validation runs now
    assert eta.validating
    left = eta.remaining(21.0)
    assert left == pytest.approx(20.0 * (1 + 0.5 * VALIDATION_COST_PER_IMAGE) - 21.0)
    assert left > 0


def test_after_an_epoch_its_measured_time_validation_included_is_used():
    eta = _eta()
    eta.batch(20.0, epoch=0, batch=9, batches=10)
    eta.epoch_ended(30.0, epoch=0)  # 20 s training + 10 s validation
    assert not eta.validating
    assert eta.remaining(30.0) == pytest.approx(2 * 30.0)
    eta.batch(40.0, epoch=1, batch=4, batches=10)
    assert eta.remaining(40.0) == pytest.approx(20.0 + 30.0)


def test_a_resumed_run_counts_only_the_epochs_left():
    eta = _eta(epochs=5, start_epoch=3)
    eta.batch(10.0, epoch=3, batch=9, batches=10)
    eta.epoch_ended(12.0, epoch=3)
    assert eta.remaining(12.0) == pytest.approx(12.0)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (59.6, "1:00"), (75, "1:15"), (3725, "1:02:05")]
)
def test_durations_read_as_clock_times(seconds, text):
    assert format_duration(seconds) == text
