"""A sweep's Optuna study in the workspace: its storage, its lock, loading it, its summary.

Every sweep of a workspace lives in one SQLite file (``sweeps.sqlite``, Optuna's own storage).
One process runs a sweep at a time: it holds the sweep's lock file, which the OS frees when the
process ends, killed or not.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferstudio.api import TransferStudioError
from transferstudio.core.files import locks
from transferstudio.core.plugins.host import PluginHost
from transferstudio.core.runs.workspace import safe_name
from transferstudio.core.settings.experiment import Experiment, from_mapping, load_toml_text

STORAGE_FILE = "sweeps.sqlite"


@dataclass
class TrialSummary:
    """One trial as the table shows it."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    value: float | None
    params: dict[str, Any]
    run_id: str | None
    message: str = ""


@dataclass
class SweepSummary:
    """A sweep's trials, its best trial and the parameter importances."""

    name: str
    metric: str
    direction: str  # maximize | minimize
    space: list[str]
    trials: list[TrialSummary] = field(default_factory=list)
    best: TrialSummary | None = None
    importances: dict[str, float] = field(default_factory=dict)
    stopped_because: str = ""

    def best_so_far(self) -> list[tuple[int, float]]:
        """``(trial number, best value up to it)`` over finished trials, for the curve."""
        out, best = [], None
        better = max if self.direction == "maximize" else min
        for t in sorted(self.trials, key=lambda t: t.number):
            if t.state == "COMPLETE" and t.value is not None:
                best = t.value if best is None else better(best, t.value)
                out.append((t.number, best))
        return out


def study_storage(workspace: Path):
    """Optuna's storage of the workspace's sweeps (one per file, shared by every caller)."""
    workspace.mkdir(parents=True, exist_ok=True)
    return _storage_at(str((workspace / STORAGE_FILE).resolve()))


@functools.lru_cache(maxsize=8)
def _storage_at(path: str):
    # One storage (and SQLAlchemy engine) per file: the window asks for the sweep list often,
    # and each new storage would open its own connection pool.
    import optuna
    from sqlalchemy.engine import URL

    return optuna.storages.RDBStorage(URL.create("sqlite", database=path).render_as_string())


def sweep_lock_path(workspace: str | Path, name: str) -> Path:
    """The lock file a process holds while it runs sweep ``name``."""
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]  # names differing in "/" vs "-"
    return Path(workspace) / locks.LOCK_FOLDER / f"sweep-{safe_name(name)}-{digest}.lock"


def sweep_lock(workspace: Path, name: str):
    """Hold sweep ``name``'s lock, or refuse: a second process on the same sweep would take
    the first one's running trial for an interrupted one and run it again beside it."""
    path = sweep_lock_path(workspace, name)
    return locks.held(
        path,
        f"sweep {name!r} is running in another process (it holds {path}): let it finish "
        "or stop it, then run this again to continue the sweep; or give a new search its "
        "own --name. (If no process runs it, the file system keeps no OS locks and the "
        "file was left by a killed sweep: delete it.)",
    )


def sweep_names(workspace: str | Path) -> list[str]:
    """The sweeps of a workspace, oldest first."""
    import optuna

    if not (Path(workspace) / STORAGE_FILE).exists():
        return []
    return [s.study_name for s in optuna.get_all_study_summaries(study_storage(Path(workspace)))]


def load_sweep(workspace: str | Path, name: str, host: PluginHost) -> tuple[Any, Experiment]:
    """The Optuna study of sweep ``name`` and the experiment it searches over."""
    import optuna

    if name not in sweep_names(workspace):
        known = ", ".join(sweep_names(workspace)) or "none yet"
        raise TransferStudioError(f"no sweep named {name!r} in {workspace}; sweeps: {known}")
    study = optuna.load_study(study_name=name, storage=study_storage(Path(workspace)))
    attrs = study.user_attrs
    raw = load_toml_text(attrs["experiment"], f"sweep {name}")
    exp = from_mapping(raw, host.method_params, attrs.get("base_dir", "."), f"sweep {name}")
    return study, exp


def summarize(study, exp: Experiment | None = None) -> SweepSummary:
    """The trials, best trial and importances of a study."""
    import optuna
    from optuna.trial import TrialState

    attrs = study.user_attrs
    summary = SweepSummary(
        study.study_name,
        attrs.get("metric", "accuracy"),
        study.direction.name.lower(),
        list(attrs.get("space", [])),
    )
    for t in study.get_trials(deepcopy=False):
        summary.trials.append(
            TrialSummary(
                t.number,
                t.state.name,
                t.value if t.state == TrialState.COMPLETE else None,
                dict(t.params),
                t.user_attrs.get("run_id") or attrs.get(f"run_id_{t.number}"),
                t.user_attrs.get("message", ""),
            )
        )
    complete = [t for t in summary.trials if t.state == "COMPLETE" and t.value is not None]
    if complete:
        pick = max if summary.direction == "maximize" else min
        summary.best = pick(complete, key=lambda t: t.value)
    if len(complete) >= 2:
        import warnings

        try:
            # Optuna's default (PED-ANOVA) warns that all importances are equal while too few
            # trials separate good from bad; they are shown as they are.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                summary.importances = dict(optuna.importance.get_param_importances(study))
        except (RuntimeError, ValueError):  # parameters without variation yet
            summary.importances = {}
    return summary
