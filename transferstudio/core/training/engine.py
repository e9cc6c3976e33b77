"""The training engine: a plain function of ``(experiment, state)``.

The engine owns what every method shares (device, mixed precision, optimizer and parameter groups,
learning-rate schedule, epochs, validation, early stopping, checkpoints, cancellation, events); the
method plugin owns its modules and its step. ``state`` answers "was I asked to stop or pause?" and
receives events, so tests call the engine with a plain object, the GUI worker from a QThread, the
CLI with a console progress bar. Only the writer process (rank 0 of a distributed launch) writes
files; the others compute.

This module is the entry point, :func:`run_experiment`; the parts live beside it:

- :mod:`.session`: the training session (device, precision, torchrun join, method, optimizer,
  one step, seeding, the stop check), shared with the learning-rate finder;
- :mod:`.run_data`: the data of the six roles; :mod:`.context`: the methods' context;
- :mod:`.loop`: the epoch loop; :mod:`.evaluation`: validation, tests, the mistakes gallery;
- :mod:`.layer_stats`: the layer tree's statistics; :mod:`.failures`: failure messages;
- :mod:`transferstudio.core.runs.run_files` and :mod:`~transferstudio.core.runs.run_log`: the
  run's folder (checkpoints, ``metrics.csv``, ``report.json``, ``log.txt``).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from transferstudio.api import TransferStudioError
from transferstudio.core.plugins.host import PluginHost
from transferstudio.core.progress import events as E
from transferstudio.core.runs.run_log import RunLog
from transferstudio.core.settings.experiment import Experiment
from transferstudio.core.training.context import EngineContext, read_only
from transferstudio.core.training.distributed import process_rank
from transferstudio.core.training.failures import failure_message
from transferstudio.core.training.loop import NonFiniteLoss, RunResult, TrainingRun
from transferstudio.core.training.seeding import seed_everything
from transferstudio.core.training.session import RunCancelled, RunState, TrainingSession

__all__ = [
    "EngineContext",
    "NonFiniteLoss",
    "PlainState",
    "RunCancelled",
    "RunResult",
    "RunState",
    "TrainingRun",
    "TrainingSession",
    "is_writer_process",
    "read_only",
    "run_experiment",
    "seed_everything",
]


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


def is_writer_process() -> bool:
    """True unless this is a non-zero rank of a distributed launch (``RANK`` set by torchrun)."""
    return process_rank() == 0


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
    as it is created. Warnings and ``transferstudio`` log records raised meanwhile go to the
    run's ``log.txt`` and log events (see :mod:`transferstudio.core.runs.run_log`).
    """
    from transferstudio.core.runs.workspace import default_workspace

    state = state or PlainState()
    workspace = Path(workspace) if workspace else default_workspace()
    writer = is_writer_process() if writer is None else writer
    tags = {k: str(v) for k, v in (tags or {}).items()}
    session = TrainingSession(exp, host, state, workspace, writer, RunLog(state.emit))
    run = TrainingRun(session, resume, tags)
    run.log.attach()  # from the method's setup() on: its warnings belong to this run
    try:
        run.session.prepare()
        run.open()
    except BaseException:
        run.log.close()
        run.files.close()
        raise
    try:
        return run.execute()
    except RunCancelled:
        run.log.write(
            f"stopped by the user after {run.session.epoch} complete epoch(s); resume with "
            f"'transferstudio run --resume {run.files.run_id}'"
        )
        if run.files.store:
            run.files.store.set_status(
                run.files.run_id, "cancelled", "stopped by the user", run.elapsed()
            )
        state.emit(E.RunFinished(run.files.run_id, "cancelled", {}))
        return run.result("cancelled", "stopped by the user")
    except Exception as exc:  # noqa: BLE001 - reported as a failed run, never a crash
        run.failed = True
        message = failure_message(exc, run)
        tb = traceback.format_exc()
        run.log.write(f"run failed: {message}", quiet=True)  # clients show the RunFailed event
        if not isinstance(exc, TransferStudioError):
            run.log.write(tb, quiet=True)  # for log.txt: the message says it is there
        if run.files.store:
            try:
                run.files.store.set_status(run.files.run_id, "failed", message, run.elapsed())
            except TransferStudioError as store_error:  # a full disk takes the index too
                # The run then reads "interrupted" (no process holds it): resumable, as it is.
                run.log.write(f"the failure could not be recorded in the run index: {store_error}")
        state.emit(E.RunFailed(run.files.run_id, message, tb))
        return run.result("failed", message)
    finally:
        run.close()
        if run.session.device.type == "cuda":
            # The run's modules and activations are gone once it returns; hand the cached
            # blocks back so the rest of the session (the next run) can use them.
            torch.cuda.empty_cache()
