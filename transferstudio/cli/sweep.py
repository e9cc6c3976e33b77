"""``sweep``: start, continue or show a hyperparameter sweep (Optuna)."""

from __future__ import annotations

from pathlib import Path

from transferstudio.cli.common import (
    INTERRUPTED,
    UsageError,
    interruptible,
    load_host,
    workspace_of,
)

STOP_SWEEP_MESSAGE = "stopping the sweep after this batch (Ctrl+C again to abort)..."


def print_sweep(summary) -> None:
    """A sweep's space, its trials as a table, the importances and the best trial."""
    print(f"sweep {summary.name}: {summary.direction} val {summary.metric}")
    print("  space: " + "; ".join(summary.space))
    for t in summary.trials:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        params = ", ".join(
            f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
            for k, v in t.params.items()
        )
        note = f"  ({t.message})" if t.message else ""
        print(f"  #{t.number:<3} {t.state:<9} {value:>8}  {params}  run {t.run_id or '-'}{note}")
    if summary.importances:
        print(
            "  importance: "
            + ", ".join(
                f"{k} {v:.2f}"
                for k, v in sorted(summary.importances.items(), key=lambda kv: -kv[1])
            )
        )
    if summary.best is not None:
        print(
            f"best: trial #{summary.best.number}, val {summary.metric} {summary.best.value:.4f}, "
            f"run {summary.best.run_id}"
        )


def cmd_sweep(args) -> int:
    from transferstudio.core.settings import experiment as X
    from transferstudio.core.studies.sweep import load_sweep, parse_space, run_sweep, summarize

    host = load_host()
    workspace = workspace_of(args)
    if args.show:
        study, _ = load_sweep(workspace, args.show, host)
        print_sweep(summarize(study))
        return 0
    exp = X.load(args.experiment, host.method_params, args.set) if args.experiment else None
    name = args.name or (exp.name if exp is not None else None)
    if name is None:
        raise UsageError("sweep needs an experiment file, or --name of a sweep to continue")
    space = parse_space(exp, args.param) if exp is not None and args.param else None
    timeout = args.timeout_min * 60 if args.timeout_min else None
    stop = {"asked": False}

    def after_trial(summary) -> None:
        t = summary.trials[-1]
        value = f"{t.value:.4f}" if t.value is not None else "-"
        best = summary.best.value if summary.best is not None else float("nan")
        print(
            f"trial #{t.number} {t.state.lower()}: val {summary.metric} {value} (best {best:.4f})"
        )

    with interruptible(lambda: stop.update(asked=True), STOP_SWEEP_MESSAGE):
        summary = run_sweep(
            exp,
            host,
            workspace,
            name,
            trials=args.trials,
            timeout_s=timeout,
            space=space,
            sampler=args.sampler,
            pruner=args.pruner,
            seed=args.seed,
            on_trial=after_trial,
            should_stop=lambda: stop["asked"],
        )
    print_sweep(summary)
    print(f"sweep ended: {summary.stopped_because}")
    if summary.best is not None and summary.best.run_id:
        from transferstudio.core.runs.workspace import RunStore

        folder = Path(RunStore(workspace).get(summary.best.run_id).folder)
        print(f"open the best trial: transferstudio gui {folder / 'experiment.toml'}")
    return INTERRUPTED if summary.stopped_because == "stopped by the user" else 0
