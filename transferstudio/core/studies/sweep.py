"""Hyperparameter search over an experiment, on Optuna.

A sweep is an Optuna study kept in the workspace (``sweeps.sqlite``, Optuna's own SQLite
storage); every trial is an ordinary run in the run store, tagged with its sweep and trial
number. The search space comes from the settings dataclasses: a key such as ``train.lr`` or
``method.params.temperature`` takes its range or choices from the field's ``param(min=, max=,
choices=)``, unless the user gives one. Samplers: TPE or random; bad trials are pruned on their
validation metric after each epoch (median rule). The budget is a number of finished trials,
a time, or both. Running the same sweep again continues it: a trial that was interrupted (the
process killed, or Stop) is tried again with the same parameters. One process runs a sweep at
a time: it holds the sweep's lock file, which the OS frees when the process ends, killed or not.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferstudio.api import ExperimentError, TransferStudioError
from transferstudio.core.files import locks
from transferstudio.core.plugins.host import PluginHost
from transferstudio.core.progress import events as E
from transferstudio.core.runs.workspace import INTERRUPTED, RunStore, safe_name
from transferstudio.core.settings import params as P
from transferstudio.core.settings.experiment import (
    SECTIONS,
    Experiment,
    from_mapping,
    load_toml_text,
)
from transferstudio.core.training.metrics import lower_is_better

STORAGE_FILE = "sweeps.sqlite"
MAX_FAILURES_IN_A_ROW = 3  # then the sweep stops: a broken setting would fail every trial
DEFAULT_KEYS = ("train.lr", "train.weight_decay")
# Sensible ranges where the field's own bounds are too wide to search (lr may be 0..10).
DEFAULT_RANGES = {"train.lr": (1e-5, 1e-1), "train.weight_decay": (1e-6, 1e-1)}


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a float or int range (``log`` for a log-uniform one) or choices."""

    key: str
    kind: str  # float | int | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """Draw this setting for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def describe(self) -> str:
        """The dimension as ``--param`` takes it: ``train.lr=1e-05:0.1:log``, ``key=a,b``."""
        if self.kind == "choice":
            return f"{self.key}={','.join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)}"
        return f"{self.key}={self.low:g}:{self.high:g}" + (":log" if self.log else "")


def _field(exp: Experiment, key: str) -> P.FieldInfo:
    parts = key.split(".")
    if len(parts) == 3 and parts[:2] == ["method", "params"]:
        cls = type(exp.method_params)
    elif len(parts) == 2 and parts[0] in SECTIONS:
        cls = SECTIONS[parts[0]]
    else:
        raise ExperimentError(
            "cannot be searched: name a setting as SECTION.KEY (train.lr) or method.params.KEY",
            key,
        )
    for info in P.fields_of(cls):
        if info.name == parts[-1]:
            return info
    names = ", ".join(f.name for f in P.fields_of(cls))
    raise ExperimentError(f"no such setting; {'.'.join(parts[:-1])} has: {names}", key)


def dimension(exp: Experiment, key: str, spec: str = "") -> Dimension:
    """The search dimension of setting ``key``: from ``spec`` ("LOW:HIGH", "LOW:HIGH:log" or
    "a,b,c") when given, else from the field's bounds or choices."""
    info = _field(exp, key)
    if spec and ":" not in spec:
        values = [v.strip() for v in spec.split(",") if v.strip()]
        choices = tuple(_coerce(info, v, key) for v in values)
        for value in choices:  # the setting's own limits and choices, checked now
            P.coerce_value(info, value, key)
        return Dimension(key, "choice", choices=choices)
    if info.kind is bool:
        return Dimension(key, "choice", choices=(False, True))
    if info.choices and not spec:
        return Dimension(key, "choice", choices=tuple(info.choices))
    if info.kind not in (int, float):
        raise ExperimentError(
            f"is a {info.kind.__name__} setting without choices: give them, e.g. {key}=a,b",
            key,
        )
    if spec:
        low_text, _, rest = spec.partition(":")
        high_text, _, scale = rest.partition(":")
        try:
            low, high = float(low_text), float(high_text)
        except ValueError:
            raise ExperimentError(f"range {spec!r}: write LOW:HIGH, e.g. 1e-5:1e-1", key) from None
        log = scale.strip() == "log"
    else:
        low, high = DEFAULT_RANGES.get(key, (info.min, info.max))
        if low is None or high is None:
            raise ExperimentError(f"has no range in its definition: give one, e.g. {key}=0:10", key)
        log = info.kind is float and low > 0 and high / low >= 100
    if info.min is not None and low < info.min or info.max is not None and high > info.max:
        raise ExperimentError(
            f"range {low:g}..{high:g} leaves the setting's limits {info.min}..{info.max}", key
        )
    if not low < high or (log and low <= 0):
        raise ExperimentError(
            f"range {low:g}..{high:g} is empty" + (" or not positive (log)" if log else ""), key
        )
    if info.kind is int:
        if low != int(low) or high != int(high):
            raise ExperimentError(f"range {low:g}..{high:g}: give whole numbers", key)
        return Dimension(key, "int", int(low), int(high), log)
    return Dimension(key, "float", low, high, log)


def _coerce(info: P.FieldInfo, text: str, key: str) -> Any:
    try:
        if info.kind is bool:
            return {"true": True, "false": False}[text.lower()]
        return info.kind(text)
    except (ValueError, KeyError):
        raise ExperimentError(f"{text!r} is not a {info.kind.__name__}", key) from None


def default_space(exp: Experiment) -> list[Dimension]:
    """``train.lr`` and ``train.weight_decay`` (log-uniform), and every method parameter that
    declares choices, is a switch, or has both bounds."""
    space = [dimension(exp, key) for key in DEFAULT_KEYS]
    for info in P.fields_of(type(exp.method_params)):
        key = f"method.params.{info.name}"
        if (
            info.kind is bool
            or info.choices
            or (info.kind in (int, float) and info.min is not None and info.max is not None)
        ):
            space.append(dimension(exp, key))
    return space


def parse_space(exp: Experiment, items: Sequence[str]) -> list[Dimension]:
    """``KEY`` or ``KEY=SPEC`` items (the CLI's ``--param``); empty: :func:`default_space`."""
    if not items:
        return default_space(exp)
    space = []
    for item in items:
        key, _, spec = item.partition("=")
        space.append(dimension(exp, key.strip(), spec.strip()))
    return space


def with_params(exp: Experiment, host: PluginHost, params: dict[str, Any]) -> Experiment:
    """A copy of ``exp`` with ``params`` (dotted keys) set, validated like a file."""
    raw = exp.to_dict()
    for key, value in params.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_mapping(raw, host.method_params, exp.base_dir, "sweep trial")


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


class _TrialState:
    """The engine's RunState for one trial: reports each epoch's validation metric to Optuna
    and stops the run when the pruner says so, or when the sweep is asked to stop."""

    def __init__(
        self, trial, metric: str, forward=None, should_stop: Callable[[], bool] | None = None
    ) -> None:
        self.trial, self.metric = trial, metric
        self.forward = forward
        self.should_stop = should_stop
        self.pruned = False
        self.stop = False
        self.unmeasured = False  # the method does not report the sweep's metric
        self.run_id: str | None = None

    def stop_requested(self) -> bool:
        if self.should_stop is not None and self.should_stop():
            self.stop = True
        return self.stop or self.pruned or self.unmeasured

    def pause_requested(self) -> bool:
        return False

    def emit(self, event: Any) -> None:
        if isinstance(event, E.RunStarted):
            self.run_id = event.run_id
            self.trial.set_user_attr("run_id", event.run_id)
        elif isinstance(event, E.EpochEnded):
            value = event.val.get(self.metric)
            if self.metric not in event.val:
                self.unmeasured, self.stop = True, True
            elif value is not None and math.isfinite(value):
                self.trial.report(value, event.epoch)
                if self.trial.should_prune():
                    self.pruned = True
        if self.forward is not None:
            self.forward(event)


def _storage(workspace: Path):
    workspace.mkdir(parents=True, exist_ok=True)
    return _storage_at(str((workspace / STORAGE_FILE).resolve()))


@functools.lru_cache(maxsize=8)
def _storage_at(path: str):
    # One storage (and SQLAlchemy engine) per file: the window asks for the sweep list often,
    # and each new storage would open its own connection pool.
    import optuna
    from sqlalchemy.engine import URL

    return optuna.storages.RDBStorage(URL.create("sqlite", database=path).render_as_string())


def _sampler(kind: str, seed: int):
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    raise ExperimentError(f"unknown sampler {kind!r}; use tpe or random", "sampler")


def _pruner(kind: str):
    import optuna

    if kind == "median":
        # Two finished trials before anything is pruned, and never on the first epoch.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ExperimentError(f"unknown pruner {kind!r}; use median or none", "pruner")


def sweep_lock_path(workspace: str | Path, name: str) -> Path:
    """The lock file a process holds while it runs sweep ``name``."""
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]  # names differing in "/" vs "-"
    return Path(workspace) / locks.LOCK_FOLDER / f"sweep-{safe_name(name)}-{digest}.lock"


def _sweep_lock(workspace: Path, name: str):
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
    return [s.study_name for s in optuna.get_all_study_summaries(_storage(Path(workspace)))]


def load_sweep(workspace: str | Path, name: str, host: PluginHost) -> tuple[Any, Experiment]:
    """The Optuna study of sweep ``name`` and the experiment it searches over."""
    import optuna

    if name not in sweep_names(workspace):
        known = ", ".join(sweep_names(workspace)) or "none yet"
        raise TransferStudioError(f"no sweep named {name!r} in {workspace}; sweeps: {known}")
    study = optuna.load_study(study_name=name, storage=_storage(Path(workspace)))
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


def run_sweep(
    exp: Experiment | None,
    host: PluginHost,
    workspace: str | Path,
    name: str,
    trials: int | None = None,
    timeout_s: float | None = None,
    space: Sequence[Dimension] | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    seed: int = 0,
    on_event: Callable[[Any], None] | None = None,
    on_trial: Callable[[SweepSummary], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SweepSummary:
    """Run (or continue) sweep ``name`` until ``trials`` trials have finished (complete or
    pruned), ``timeout_s`` has passed, or ``should_stop()``. ``exp`` and ``space`` start a new
    sweep; an existing sweep continues with its own (``exp`` may then be ``None``).
    ``on_event`` receives every run's engine events; ``on_trial`` the summary after each trial.
    """
    import optuna
    from optuna.trial import TrialState

    from transferstudio.core.training.engine import run_experiment

    if trials is None and timeout_s is None:
        raise ExperimentError("give a budget: a number of trials, a time, or both", "trials")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workspace = Path(workspace)
    with _sweep_lock(workspace, name):
        store = RunStore(workspace)
        if name in sweep_names(workspace):
            study, stored = load_sweep(workspace, name, host)
            if exp is not None:
                _refuse_changes(name, exp, stored)
            exp = stored
            attrs = study.user_attrs
            given = {
                "space": [d.describe() for d in space] if space else None,
                "sampler": sampler,
                "pruner": pruner,
            }
            for key, value in given.items():
                if value is not None and value != attrs.get(key):
                    raise ExperimentError(
                        f"sweep {name!r} runs with {key} {attrs.get(key)!r}, not {value!r}: continue "
                        "it as it is, or give the new search its own --name",
                        key,
                    )
            space = [Dimension(**d) for d in attrs["dimensions"]]
            # The sampler and pruner are not stored by Optuna; they are rebuilt with a seed moved
            # on by the trials so far, so a random sampler does not repeat its first draws.
            seed += len(study.trials)
            study = optuna.load_study(
                study_name=name,
                storage=_storage(workspace),
                sampler=_sampler(attrs["sampler"], seed),
                pruner=_pruner(attrs["pruner"]),
            )
            _requeue_interrupted(study, store)
        else:
            if exp is None:
                raise TransferStudioError(
                    f"no sweep named {name!r}: give an experiment to start it"
                )
            space = list(space) if space else default_space(exp)
            sampler, pruner = sampler or "tpe", pruner or "median"
            metric = exp.train.early_stopping_metric
            study = optuna.create_study(
                study_name=name,
                storage=_storage(workspace),
                direction="minimize" if lower_is_better(metric) else "maximize",
                sampler=_sampler(sampler, seed),
                pruner=_pruner(pruner),
            )
            study.set_user_attr("experiment", exp.to_toml(comments=False))
            study.set_user_attr("base_dir", exp.base_dir)
            study.set_user_attr("metric", metric)
            study.set_user_attr("sampler", sampler)
            study.set_user_attr("pruner", pruner)
            study.set_user_attr("space", [d.describe() for d in space])
            study.set_user_attr(
                "dimensions", [d.__dict__ | {"choices": list(d.choices)} for d in space]
            )
        metric = study.user_attrs["metric"]
        deadline = time.monotonic() + timeout_s if timeout_s else None
        finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
        stopped = ""
        failures_in_a_row = 0
        while True:
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                stopped = (
                    f"{failures_in_a_row} trials in a row failed (see their messages); fix the "
                    "cause, then run the sweep again to continue it"
                )
                break
            done = len(study.get_trials(deepcopy=False, states=finished_states))
            if trials is not None and done >= trials:
                stopped = f"{done} trials finished"
                break
            if deadline is not None and time.monotonic() >= deadline:
                stopped = f"the time budget ({timeout_s:g} s) is spent"
                break
            if should_stop is not None and should_stop():
                stopped = "stopped by the user"
                break
            trial = study.ask()
            state = _TrialState(trial, metric, on_event, should_stop)
            try:
                params = {d.key: d.suggest(trial) for d in space}
                trial_exp = with_params(exp, host, params)
                trial_exp.name = f"{exp.name}-{name}-t{trial.number}"
                tags = {"sweep": name, "trial": str(trial.number)}
                result = run_experiment(trial_exp, host, state, workspace, tags=tags)
            except TransferStudioError as exc:  # settings or data refused before the run began
                trial.set_user_attr("message", str(exc))
                study.tell(trial, state=TrialState.FAIL)
                failures_in_a_row += 1
                if on_trial is not None:
                    on_trial(summarize(study))
                continue
            if state.unmeasured:
                message = (
                    f"{exp.method} does not measure val {metric}; set train.early_stopping_metric "
                    "to a metric it reports (loss is always there) and start a new sweep"
                )
                trial.set_user_attr("message", message)
                study.tell(trial, state=TrialState.FAIL)
                store.set_status(result.run_id, "failed", message)
                raise ExperimentError(message, "train.early_stopping_metric")
            if state.pruned and result.status != "completed":
                study.tell(trial, state=TrialState.PRUNED)
                store.set_status(result.run_id, "pruned", "pruned by the sweep (median rule)")
                failures_in_a_row = 0
            elif result.status == "completed" and result.best_metric is not None:
                study.tell(trial, result.best_metric)
                failures_in_a_row = 0
            else:
                trial.set_user_attr("message", result.message or result.status)
                if result.status == "cancelled":
                    trial.set_user_attr("interrupted", True)
                else:
                    failures_in_a_row += 1
                study.tell(trial, state=TrialState.FAIL)
            if on_trial is not None:
                on_trial(summarize(study))
        summary = summarize(study)
        summary.stopped_because = stopped
        return summary


def _refuse_changes(name: str, exp: Experiment, stored: Experiment) -> None:
    """A sweep continues with the experiment it started with; a changed file would mix two
    searches in one study."""
    from transferstudio.core.studies.baseline import differences

    changed = list(differences(stored.with_absolute_paths(), exp.with_absolute_paths()))
    if changed:
        raise ExperimentError(
            f"sweep {name!r} was started with another experiment (it differs in "
            f"{', '.join(changed[:6])}{', ...' if len(changed) > 6 else ''}): run it without "
            "changes to continue it, or give the new search its own --name",
            "name",
        )


def _requeue_interrupted(study, store: RunStore) -> None:
    """Trials a killed process left running, and trials stopped by the user, are tried again
    with the same parameters; runs of killed trials are marked cancelled (resumable)."""
    from optuna.trial import TrialState

    requeued = set(study.user_attrs.get("requeued", []))
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        run_id = t.user_attrs.get("run_id")
        if run_id is None:  # killed before its run reported its id: found by its tags
            of_trial = store.tagged("trial", str(t.number))
            of_sweep = store.tagged("sweep", study.study_name)
            run_id = next((r for r in of_sweep if r in of_trial), None)
            if run_id is not None:
                study.set_user_attr(f"run_id_{t.number}", run_id)
        if run_id is not None and store.get(run_id).status in ("running", INTERRUPTED):
            store.set_status(run_id, "cancelled", "its sweep was interrupted")
    stale_numbers = {t.number for t in stale}
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        interrupted = t.user_attrs.get("interrupted") or t.number in stale_numbers
        if interrupted and t.number not in requeued:
            study.enqueue_trial(dict(t.params), skip_if_exists=False)
            requeued.add(t.number)
    study.set_user_attr("requeued", sorted(requeued))
