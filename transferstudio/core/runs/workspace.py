"""The workspace: a folder of runs, indexed by an SQLite database for history and comparison.

Layout::

    WORKSPACE/
      runs.sqlite              index of runs and their per-epoch metrics
      runs/<run id>/
        experiment.toml        the experiment exactly as run
        checkpoints/           best and last (see core.checkpoint)
        metrics.csv            one row per epoch
        log.txt                the run log
        report.json            final metrics, per-class table, confusion matrices
      cache/features/          cached backbone features (feature extraction)
      locks/                   lock files held by the process working on a run or sweep

A run's status is what its process last wrote, except that a run marked ``running`` whose
process is gone (nobody holds its lock) reads as ``interrupted``: resumable, never "running"
forever after a kill.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferstudio.api import TransferStudioError
from transferstudio.core.files import locks

WORKSPACE_ENV = "TRANSFERSTUDIO_WORKSPACE"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created TEXT NOT NULL,
    backbone TEXT NOT NULL,
    method TEXT NOT NULL,
    status TEXT NOT NULL,
    metric_name TEXT,
    best_metric REAL,
    best_epoch INTEGER,
    epochs_done INTEGER NOT NULL DEFAULT 0,
    duration_s REAL NOT NULL DEFAULT 0,
    message TEXT,
    folder TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_tags (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS epoch_metrics (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    split TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, epoch, split, name)
);
"""


def default_workspace() -> Path:
    """``$TRANSFERSTUDIO_WORKSPACE``, else the user data folder (platformdirs)."""
    if os.environ.get(WORKSPACE_ENV):
        return Path(os.environ[WORKSPACE_ENV]).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("TransferStudio", appauthor=False)) / "workspace"


@dataclass
class RunRecord:
    """One row of the run index."""

    id: str
    name: str
    created: str
    backbone: str
    method: str
    status: str
    metric_name: str | None
    best_metric: float | None
    best_epoch: int | None
    epochs_done: int
    duration_s: float
    message: str | None
    folder: str


INTERRUPTED = "interrupted"


def run_lock_path(workspace: str | Path, run_id: str) -> Path:
    """The lock file the process training run ``run_id`` holds."""
    return Path(workspace) / locks.LOCK_FOLDER / f"run-{safe_name(run_id, 120)}.lock"


def safe_name(name: str, limit: int = 40) -> str:
    """``name`` cut to ``limit`` characters fit for a file name on every system: letters,
    digits, ``-`` and ``_``; anything else becomes ``-``."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:limit]


class RunStore:
    """The SQLite index of a workspace's runs. Every write is its own short transaction, so a
    killed process leaves the database consistent (WAL journal)."""

    def __init__(self, workspace: str | Path) -> None:
        # Absolute, so the run folders it records stay right from any working folder.
        self.workspace = Path(workspace).expanduser().resolve()
        self.path = self.workspace / "runs.sqlite"
        try:
            self.workspace.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.executescript(_SCHEMA)
        except (OSError, TransferStudioError) as exc:
            if not self.path.is_file():
                raise storage_error(self.workspace, exc) from None
            # An index that exists on a full or read-only disk: it can still be read.

    def _open(self, read_only: bool) -> sqlite3.Connection:
        db = None
        try:
            db = sqlite3.connect(self.path, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            return db
        except sqlite3.OperationalError as exc:
            if db is not None:
                db.close()
            if read_only and self.path.is_file():
                # Reading a WAL database makes an index file (-shm) that a full disk cannot
                # hold; read the file as it stands instead (nothing can write to it now).
                uri = f"{self.path.resolve().as_uri()}?immutable=1"
                return sqlite3.connect(uri, uri=True)
            raise storage_error(self.workspace, exc) from None

    @contextmanager
    def _connect(self, read_only: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection for one transaction; ``read_only`` ones still work on a full disk."""
        db = self._open(read_only)
        try:
            with db:
                yield db
        except sqlite3.OperationalError as exc:
            raise storage_error(self.workspace, exc) from None
        finally:
            db.close()

    @property
    def runs_folder(self) -> Path:
        return self.workspace / "runs"

    def new_run_id(self, name: str) -> str:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return f"{stamp}-{safe_name(name) or 'run'}-{secrets.token_hex(2)}"

    def create(
        self,
        run_id: str,
        name: str,
        backbone: str,
        method: str,
        metric_name: str,
        tags: dict[str, str] | None = None,
    ) -> Path:
        """Register a new run, with its ``tags``, and make its folder.

        The row and its tags are written in one transaction: a process killed at any point
        leaves either no run or a tagged one, so a sweep can always find its killed trial's run.
        """
        folder = self.runs_folder / run_id
        folder.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs (id, name, created, backbone, method, status, metric_name, folder)"
                " VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                (
                    run_id,
                    name,
                    dt.datetime.now().isoformat(timespec="seconds"),
                    backbone,
                    method,
                    metric_name,
                    str(folder),
                ),
            )
            db.executemany(
                "INSERT INTO run_tags (run_id, key, value) VALUES (?, ?, ?)",
                [(run_id, k, str(v)) for k, v in (tags or {}).items()],
            )
        return folder

    def record_epoch(
        self,
        run_id: str,
        epoch: int,
        metrics: dict[str, dict[str, float]],
        best_metric: float | None,
        best_epoch: int | None,
        duration_s: float,
    ) -> None:
        """Store one epoch's metrics (``{split: {name: value}}``) and update the run row."""
        rows = [
            (run_id, epoch, split, name, float(value))
            for split, values in metrics.items()
            for name, value in values.items()
        ]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO epoch_metrics VALUES (?, ?, ?, ?, ?)", rows)
            db.execute(
                "UPDATE runs SET epochs_done=?, best_metric=?, best_epoch=?, duration_s=?,"
                " status='running' WHERE id=?",
                (epoch + 1, best_metric, best_epoch, duration_s, run_id),
            )

    def set_status(
        self, run_id: str, status: str, message: str | None = None, duration_s: float | None = None
    ) -> None:
        with self._connect() as db:
            if duration_s is None:
                db.execute(
                    "UPDATE runs SET status=?, message=? WHERE id=?", (status, message, run_id)
                )
            else:
                db.execute(
                    "UPDATE runs SET status=?, message=?, duration_s=? WHERE id=?",
                    (status, message, duration_s, run_id),
                )

    def tags(self, run_id: str) -> dict[str, str]:
        """The labels of one run."""
        with self._connect(read_only=True) as db:
            rows = db.execute("SELECT key, value FROM run_tags WHERE run_id=?", (run_id,))
            return dict(rows.fetchall())

    def tagged(self, key: str, value: str | None = None) -> dict[str, str]:
        """``{run id: value}`` of the runs carrying label ``key`` (with ``value``, if given)."""
        query, args = "SELECT run_id, value FROM run_tags WHERE key=?", [key]
        if value is not None:
            query, args = query + " AND value=?", [key, value]
        with self._connect(read_only=True) as db:
            return dict(db.execute(query, args).fetchall())

    def get(self, run_id: str) -> RunRecord:
        """A run by id (or unique id prefix)."""
        with self._connect(read_only=True) as db:
            rows = db.execute(
                "SELECT * FROM runs WHERE id = ? OR id LIKE ? ORDER BY id",
                (run_id, run_id.replace("%", "") + "%"),
            ).fetchall()
        exact = [r for r in rows if r[0] == run_id]
        rows = exact or rows
        if not rows:
            raise TransferStudioError(
                f"no run {run_id!r} in workspace {self.workspace}; 'transferstudio runs' lists them"
            )
        if len(rows) > 1:
            raise TransferStudioError(f"{run_id!r} matches {len(rows)} runs; give more of the id")
        return self._as_seen(RunRecord(*rows[0]))

    def list(self) -> list[RunRecord]:
        """Every run, newest first."""
        with self._connect(read_only=True) as db:
            rows = db.execute("SELECT * FROM runs ORDER BY created DESC, id DESC").fetchall()
        return [self._as_seen(RunRecord(*r)) for r in rows]

    def _as_seen(self, record: RunRecord) -> RunRecord:
        if not Path(record.folder).is_absolute():  # indexed by a version that kept it relative
            record.folder = str(self.runs_folder / record.id)
        # Only a live process holds a run's lock, so "running" without one is a run whose
        # process was killed or crashed. Nothing is written here: a full disk still lists.
        if record.status == "running" and not self.is_active(record.id):
            record.status = INTERRUPTED
            record.message = (
                "its process ended without finishing (killed, crashed or the machine stopped); "
                f"resume it with 'transferstudio run --resume {record.id}'"
            )
        return record

    def is_active(self, run_id: str) -> bool:
        """Whether a process is working on run ``run_id`` now (it holds the run's lock)."""
        return locks.is_held(run_lock_path(self.workspace, run_id))

    def working_on(self, run_id: str):
        """Hold run ``run_id``'s lock while a process trains it (a context manager); refuses
        when another process holds it, so two processes never train into one folder."""
        path = run_lock_path(self.workspace, run_id)
        return locks.held(
            path,
            f"run {run_id} is being trained by another process (it holds {path}): let it "
            "finish, or stop it, then resume it. (If no process trains it, this file system "
            "keeps no OS locks: delete the file.)",
        )

    def epoch_metrics(self, run_id: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """``{split: {name: [(epoch, value), ...]}}`` of a run, for curves."""
        out: dict[str, dict[str, list[tuple[int, float]]]] = {}
        with self._connect(read_only=True) as db:
            for epoch, split, name, value in db.execute(
                "SELECT epoch, split, name, value FROM epoch_metrics WHERE run_id=? ORDER BY epoch",
                (run_id,),
            ):
                out.setdefault(split, {}).setdefault(name, []).append((epoch, value))
        return out

    def truncate_epochs(self, run_id: str, from_epoch: int) -> None:
        """Forget metrics of epochs ``>= from_epoch`` (a resumed run redoes them)."""
        with self._connect() as db:
            db.execute(
                "DELETE FROM epoch_metrics WHERE run_id=? AND epoch>=?", (run_id, from_epoch)
            )

    def delete(self, run_id: str) -> None:
        """Remove a run from the index and delete its folder. Refused while a process trains
        the run; works for a run that never got its experiment file or checkpoints."""
        record = self.get(run_id)
        with self.working_on(record.id):  # nobody may start it while it is being removed
            with self._connect() as db:
                db.execute("DELETE FROM runs WHERE id=?", (record.id,))
            # The folder create() made, whatever path the row holds (older versions could
            # store a relative one).
            shutil.rmtree(self.runs_folder / record.id, ignore_errors=True)
        run_lock_path(self.workspace, record.id).unlink(missing_ok=True)

    def integrity_ok(self) -> bool:
        with self._connect(read_only=True) as db:
            return db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def storage_error(workspace: Path, exc: BaseException) -> TransferStudioError:
    """What a failed write to the workspace (the run index, a run's files) tells the user:
    "no space left" when the disk is full, never only SQLite's "disk I/O error"."""
    if is_disk_full(exc, workspace):
        return TransferStudioError(
            f"no space left on the disk of workspace {workspace} ({exc}): free some space, or "
            "choose another workspace (--workspace); runs saved so far are kept and a stopped "
            "run resumes once there is space"
        )
    return TransferStudioError(
        f"the workspace {workspace} cannot be written ({exc}): check the disk and its "
        "permissions, or choose another workspace (--workspace)"
    )


def is_disk_full(exc: BaseException, folder: str | Path) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a full disk, or the disk of
    ``folder`` is full now. Libraries report it in their own words: SQLite's "disk I/O error",
    torch's "unexpected pos", safetensors' "os error 28"."""
    import errno
    import shutil

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen).lower()
        if "no space left" in text or "os error 28" in text or "database or disk is full" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free < 1 << 20  # under 1 MiB: nothing fits
    except OSError:
        return False


def read_report(folder: str | Path) -> dict[str, Any] | None:
    """A run's final report, if it has one."""
    path = Path(folder) / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
