"""The files of a run's folder while it trains: the folder itself (found or created, held by
the run's lock), its checkpoints, ``metrics.csv`` and ``report.json``.

Only the writer process (rank 0 of a torchrun launch) writes; the others follow its run id and
folder. ``last.json`` is the commit point of an epoch: ``best`` and ``metrics.csv`` are written
after it and can always be derived from it again (:meth:`RunFiles.complete_epoch`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

from transferstudio.api import TransferStudioError
from transferstudio.core.data import loaders as D
from transferstudio.core.files.atomic import remove_leftovers, write_text_atomic
from transferstudio.core.files.safe_text import csv_row
from transferstudio.core.runs.checkpoint import Checkpoint, CheckpointRecord, CheckpointStore
from transferstudio.core.runs.run_log import RunLog
from transferstudio.core.runs.workspace import RunStore
from transferstudio.core.settings.experiment import Experiment


class RunFiles:
    """The folder of one run, for the process training it."""

    def __init__(self, workspace: Path, writer: bool, log: RunLog) -> None:
        self.workspace = Path(workspace)
        self.writer = writer
        self.store = RunStore(workspace) if writer else None
        self.log = log
        self.run_id = ""
        self.folder = self.workspace / "runs"
        self.elapsed_before = 0.0  # training time of the run before this process resumed it
        self.checkpoints = CheckpointStore(self.folder / "checkpoints")
        self.exits = contextlib.ExitStack()  # what close() releases (the run's lock)

    def reopen(self, resume_id: str) -> None:
        """Find the run ``resume_id`` to resume, holding its lock, and mark it running."""
        record = self.store.get(resume_id) if self.store else None
        self.run_id = record.id if record else resume_id
        self.folder = Path(record.folder) if record else self.workspace / "runs" / resume_id
        self.elapsed_before = record.duration_s if record else 0.0
        if self.store:
            self.exits.enter_context(self.store.working_on(self.run_id))
            self.store.set_status(self.run_id, "running")

    def create(self, exp: Experiment, scan: D.ScanResult, tags: dict[str, str], rank: int) -> None:
        """Register a new run. Its experiment and split files are written before its row
        exists, so every run in the index can be resumed; a killed start leaves at most an
        unlisted folder."""
        self.run_id = self.store.new_run_id(exp.name) if self.store else f"rank{rank}"
        self.folder = self.workspace / "runs" / self.run_id
        if not self.store:
            return
        self.exits.enter_context(self.store.working_on(self.run_id))
        self.folder = self.store.runs_folder / self.run_id
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.folder / "experiment.toml", exp.with_absolute_paths().to_toml())
        # The exact split, so later checks (the export's validation-set comparison) need not
        # scan and split the data again.
        write_text_atomic(self.folder / D.SPLITS_FILE, json.dumps(scan.to_dict()))
        self.store.create(
            self.run_id,
            exp.name,
            exp.model.backbone,
            exp.method,
            exp.train.early_stopping_metric,
            tags=tags,
        )

    def follow(self, run_id: str, folder: str | Path, elapsed_before: float) -> None:
        """Take the writer process's run (every torchrun process follows rank 0's)."""
        self.run_id, self.folder, self.elapsed_before = run_id, Path(folder), elapsed_before

    def open_folder(self) -> None:
        """Open the folder for writing: clear killed writes' leftovers, start ``log.txt``."""
        self.checkpoints = CheckpointStore(self.folder / "checkpoints")
        if self.writer:
            self.folder.mkdir(parents=True, exist_ok=True)
            for folder in (self.folder, self.checkpoints.folder):  # this process holds the lock
                for leftover in remove_leftovers(folder):
                    self.log.write(f"removed {leftover.name}, left by a killed write", quiet=True)
            self.log.open(self.folder / "log.txt")
        self.log.forget_pending()

    def check_still_there(self, epoch: int) -> None:
        """Refuse to write on when the run folder was deleted or moved during the run."""
        if not (self.folder / "experiment.toml").is_file():
            # Writing on would recreate a folder holding only the newest files, under a run
            # the user removed or moved: stop and say so instead.
            raise TransferStudioError(
                f"the run folder {self.folder} was deleted or moved during the run, so "
                f"epoch {epoch + 1} cannot be saved; the run stops. Start it again, or move "
                "the folder back and resume it"
            )

    def save_epoch(
        self,
        record: CheckpointRecord,
        weights: dict[str, Any],
        loop_state: dict[str, Any],
        improved: bool,
        history: list[dict[str, Any]],
    ) -> list[tuple[str, Path]]:
        """Write the epoch's ``last`` checkpoint (with ``loop_state``), its ``best`` when it
        ``improved``, and ``metrics.csv``; returns the checkpoints written as (kind, path)."""
        self.check_still_there(record.epoch)
        saved = [("last", self.checkpoints.save("last", weights, record, loop_state))]
        if improved:
            best = record.without_history()
            path = self.checkpoints.save("best", weights, best, {}, same_weights_as="last")
            saved.append(("best", path))
        self.write_metrics_csv(history)
        return saved

    def last_checkpoint(self) -> Checkpoint:
        """The ``last`` checkpoint, to resume from."""
        return self.checkpoints.load("last")

    def complete_epoch(self, last: CheckpointRecord, best_epoch: int | None) -> None:
        """Redo what an epoch writes after its ``last`` checkpoint, from that checkpoint.

        ``last.json`` is the commit point of an epoch: the ``best`` checkpoint and
        ``metrics.csv`` are written after it, so a kill in between leaves them one epoch
        behind. Both are derived from ``last`` alone, so rewriting them here makes a resumed
        run's files exactly those of an uninterrupted one. (The run index is redone from the
        history by the caller.)
        """
        if not self.writer:
            return
        epoch = last.epoch
        if best_epoch == epoch and not (
            self.checkpoints.exists("best") and self.checkpoints.record("best").epoch == epoch
        ):
            self.checkpoints.save("best", {}, last.without_history(), {}, same_weights_as="last")
            self.log.write(f"the best checkpoint of epoch {epoch + 1} was not saved; written now")
        self.write_metrics_csv(last.history)

    def write_metrics_csv(self, history: list[dict[str, Any]]) -> None:
        """``metrics.csv``: one row per epoch, a column per train and val figure."""
        keys: list[str] = []
        for row in history:
            for split in ("train", "val"):
                keys += [f"{split}_{k}" for k in row[split] if f"{split}_{k}" not in keys]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(csv_row(["epoch", *keys]))  # column names come from plugins' logs
        for row in history:
            flat = {f"{s}_{k}": v for s in ("train", "val") for k, v in row[s].items()}
            writer.writerow(
                [row["epoch"] + 1, *[f"{flat[k]:.6g}" if k in flat else "" for k in keys]]
            )
        write_text_atomic(self.folder / "metrics.csv", out.getvalue())

    def write_report(self, report: dict[str, Any]) -> None:
        """``report.json``: the run's final figures."""
        write_text_atomic(self.folder / "report.json", json.dumps(report, indent=2))

    def close(self) -> None:
        """Release the run's lock: only once nothing more is written."""
        self.exits.close()
