"""Time left in a run, validation included, from the events a run emits.

Training batches arrive as progress events; validation does not, so a naive estimate from
training batches alone reads 0:00 for as long as the last validation runs, and is short by the
validation time of every epoch left. Here an epoch's cost is training plus validation: measured
once an epoch has ended, and before that estimated from the training pace and the validation
share of the images (a validation image costs about a third of a training step: forward pass
only, no backward).
"""

from __future__ import annotations

# Forward only, no backward, no optimiser step: roughly a third of a training step's time.
VALIDATION_COST_PER_IMAGE = 1 / 3


class EtaEstimator:
    """Feed it :meth:`started`, :meth:`batch` and :meth:`epoch_ended`; read :meth:`remaining`.

    Times are any monotonic clock in seconds (the caller passes ``time.monotonic()``)."""

    def __init__(self) -> None:
        self.started(0.0, epochs=1, start_epoch=0, train_images=0, val_images=0)

    def started(
        self, now: float, epochs: int, start_epoch: int, train_images: int, val_images: int
    ) -> None:
        """A run (or a resumed run at ``start_epoch``) began at ``now``."""
        self.epochs = epochs
        self.val_share = val_images / train_images if train_images else 0.0
        self._epoch = start_epoch
        self._epoch_started_at = now
        self._fraction = 0.0  # of the current epoch's training batches
        self._train_seconds = 0.0  # the current epoch's training, once its batches are done
        self._epoch_seconds: float | None = None  # the last whole epoch, validation included

    def batch(self, now: float, epoch: int, batch: int, batches: int) -> None:
        """Training batch ``batch`` (0-based) of ``batches`` in ``epoch`` ended at ``now``."""
        if epoch != self._epoch:
            self._epoch, self._epoch_started_at = epoch, now
        self._fraction = (batch + 1) / max(batches, 1)
        if self.validating:
            self._train_seconds = now - self._epoch_started_at

    def epoch_ended(self, now: float, epoch: int) -> None:
        """Epoch ``epoch`` (0-based) ended at ``now``, its validation included."""
        self._epoch_seconds = now - self._epoch_started_at
        self._epoch, self._epoch_started_at, self._fraction = epoch + 1, now, 0.0

    @property
    def validating(self) -> bool:
        """Whether the current epoch's training batches are all done (validation is running)."""
        return self._fraction >= 1.0

    def remaining(self, now: float) -> float | None:
        """Estimated seconds left, or None before there is anything to go on."""
        epochs_left_after_this = max(self.epochs - self._epoch - 1, 0)
        in_epoch = now - self._epoch_started_at
        if self._epoch_seconds is not None:
            epoch_cost = self._epoch_seconds
        elif self._fraction > 0:
            train_cost = self._train_seconds if self.validating else in_epoch / self._fraction
            epoch_cost = train_cost * (1 + self.val_share * VALIDATION_COST_PER_IMAGE)
        else:
            return None
        this_epoch_left = max(epoch_cost - in_epoch, 0.0)
        return this_epoch_left + epochs_left_after_this * epoch_cost


def format_duration(seconds: float) -> str:
    """``75`` -> ``'1:15'``; ``3725`` -> ``'1:02:05'``."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
