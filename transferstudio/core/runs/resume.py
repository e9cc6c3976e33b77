"""Which runs can be resumed, and the experiment a resume continues (CLI and window alike).

A run is resumed from its own folder: its ``experiment.toml`` is the experiment exactly as it
ran, and its ``last`` checkpoint is where training continues. The CLI (``run --resume``) and the
window's Resume action both go through :func:`experiment_to_resume`, so they refuse the same
runs with the same message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from transferstudio.api import TransferStudioError
from transferstudio.core.runs.workspace import INTERRUPTED, RunRecord, RunStore
from transferstudio.core.settings import experiment as X

# A completed run has nothing left to train; a running one belongs to its process.
RESUMABLE_STATUSES = frozenset({"cancelled", "failed", INTERRUPTED})


def is_resumable(record: RunRecord) -> bool:
    """Whether ``record`` (as :meth:`RunStore.list` derives it) can be continued."""
    return record.status in RESUMABLE_STATUSES


def experiment_to_resume(
    store: RunStore,
    run_id: str,
    method_params_for: Callable[[str], type],
    overrides: Sequence[str] = (),
) -> tuple[RunRecord, X.Experiment]:
    """The run ``run_id`` (or a unique id prefix) and the experiment to continue it with.

    Raises :class:`TransferStudioError` naming the run and what to do when its experiment
    file is missing (a run stopped while it started). A run another process is training is
    refused later, by the engine, when it cannot take the run's lock."""
    record = store.get(run_id)
    exp_file = Path(record.folder) / "experiment.toml"
    if not exp_file.is_file():
        raise TransferStudioError(
            f"run {record.id} cannot be resumed: its experiment file {exp_file} was never "
            "written (the run was stopped while it started) or was removed. Delete the run "
            f"with 'transferstudio runs delete {record.id}' and start the experiment again"
        )
    return record, X.load(exp_file, method_params_for, overrides)
