"""Hyperparameter search over an experiment, on Optuna.

A sweep is an Optuna study kept in the workspace (``sweeps.sqlite``, Optuna's own SQLite
storage); every trial is an ordinary run in the run store, tagged with its sweep and trial
number. The search space comes from the settings dataclasses (``sweep_space``); the study,
its storage, lock and summary are ``sweep_study``; this module runs the trials. Samplers: TPE
or random; bad trials are pruned on their validation metric after each epoch (median rule). The budget is a number of finished trials,
a time, or both. Running the same sweep again continues it: a trial that was interrupted (the
process killed, or Stop) is tried again with the same parameters. One process runs a sweep at
a time: it holds the sweep's lock file, which the OS frees when the process ends, killed or not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transferstudio.api import ExperimentError, TransferStudioError
from transferstudio.core.plugins.host import PluginHost
from transferstudio.core.progress import events as E
from transferstudio.core.runs.workspace import INTERRUPTED, RunStore
from transferstudio.core.settings.experiment import Experiment
from transferstudio.core.studies.sweep_space import (
    DEFAULT_KEYS,
    DEFAULT_RANGES,
    Dimension,
    default_space,
    dimension,
    parse_space,
    with_params,
)
from transferstudio.core.studies.sweep_study import (
    STORAGE_FILE,
    SweepSummary,
    TrialSummary,
    load_sweep,
    study_storage,
    summarize,
    sweep_lock,
    sweep_lock_path,
    sweep_names,
)
from transferstudio.core.training.metrics import lower_is_better

# The sweep's parts, importable from here as they always were: its search space and its study.
__all__ = [
    "DEFAULT_KEYS",
    "DEFAULT_RANGES",
    "MAX_FAILURES_IN_A_ROW",
    "STORAGE_FILE",
    "Dimension",
    "SweepSummary",
    "TrialSummary",
    "default_space",
    "dimension",
    "load_sweep",
    "parse_space",
    "run_sweep",
    "summarize",
    "sweep_lock_path",
    "sweep_names",
    "with_params",
]

MAX_FAILURES_IN_A_ROW = 3  # then the sweep stops: a broken setting would fail every trial


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
    with sweep_lock(workspace, name):
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
                storage=study_storage(workspace),
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
                storage=study_storage(workspace),
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
