"""``run`` (and ``run --resume``, ``run --event-stream``) and ``baseline``: training from the
command line, with the console's progress and Ctrl+C asking for a clean stop."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transferstudio.cli.common import (
    INTERRUPTED,
    UsageError,
    interruptible,
    load_host,
    workspace_of,
)


def _silent_state():  # the engine (and torch) is imported only when a run starts
    """The run state of torchrun's other ranks: Ctrl+C still stops them; nothing is shown."""
    from transferstudio.core.training.engine import PlainState

    class Silent(PlainState):
        def emit(self, event) -> None:
            pass

    return Silent()


def run_in_console(start: Callable[[Any], Any], shown: bool = True) -> Any:
    """``start(state)`` with the console's progress as its run state (a silent one unless
    ``shown``), the first Ctrl+C or SIGTERM asking it to stop after the batch; its result."""
    from transferstudio.console import ConsoleProgress

    state = ConsoleProgress() if shown else _silent_state()
    with interruptible(lambda: setattr(state, "stop", True)):
        return start(state)


def finish_run(result, workspace: Path, shown: bool = True) -> int:
    """Print where a run is (and how to resume a stopped one); its exit status."""
    if shown:
        print(f"run folder: {result.folder}")
    if result.status == "cancelled":
        if shown:
            print(
                f"resume with: transferstudio --workspace {workspace} run --resume {result.run_id}"
            )
        return INTERRUPTED
    return 0 if result.status == "completed" else 1


def run_with_console(
    exp, host, workspace: Path, resume: str | None = None, event_stream: str | None = None
) -> int:
    """Run (or resume) ``exp`` headless; its exit status."""
    from transferstudio.core.training.distributed import process_rank
    from transferstudio.core.training.engine import run_experiment

    rank0 = process_rank() == 0  # torchrun: rank 0 alone reports
    if event_stream is not None:
        return _run_streaming(exp, host, workspace, resume, Path(event_stream), rank0)
    result = run_in_console(
        lambda state: run_experiment(exp, host, state, workspace, resume=resume), rank0
    )
    return finish_run(result, workspace, rank0)


def _run_streaming(exp, host, workspace: Path, resume, control_dir: Path, rank0: bool) -> int:
    """``run --event-stream``: events as lines for the window (core/progress/event_stream.py), the
    outcome as a last line, and every error as that line too, so the window can show it."""
    import dataclasses

    from transferstudio.api import TransferStudioError
    from transferstudio.core.progress.event_stream import StreamResult, StreamState
    from transferstudio.core.training.engine import run_experiment

    state = StreamState(control_dir, writes=rank0)
    try:
        # The window stops its child through the control folder or SIGTERM: nothing to print,
        # and no second signal aborts.
        with interruptible(lambda: setattr(state, "stop", True), None, second_aborts=False):
            result = run_experiment(exp, host, state, workspace, resume=resume)
    except TransferStudioError as exc:
        if rank0:
            state.write(StreamResult(run_id="", folder="", status="error", message=str(exc)))
        return 2
    if rank0:
        fields = dataclasses.asdict(result)
        state.write(StreamResult(**{**fields, "folder": str(result.folder)}))
    return {"completed": 0, "cancelled": INTERRUPTED}.get(result.status, 1)


def cmd_run(args) -> int:
    from transferstudio.core.settings import experiment as X

    host = load_host()
    workspace = workspace_of(args)
    if args.resume:
        from transferstudio.core.runs.resume import experiment_to_resume
        from transferstudio.core.runs.workspace import RunStore

        record, exp = experiment_to_resume(
            RunStore(workspace), args.resume, host.method_params, args.set
        )
        exp_file = Path(record.folder) / "experiment.toml"
        if args.experiment:
            print(
                f"note: resuming uses the run's own {exp_file}, not {args.experiment}",
                file=sys.stderr,
            )
        return run_with_console(
            exp, host, workspace, resume=record.id, event_stream=args.event_stream
        )
    if not args.experiment:
        raise UsageError("run needs an experiment file (or --resume RUN_ID)")
    exp = X.load(args.experiment, host.method_params, args.set)
    return run_with_console(exp, host, workspace, event_stream=args.event_stream)


def print_gain(gain) -> None:
    """The transfer gain as a small table: transfer, baseline, gain."""
    print(f"{'':24} {'transfer':>10} {'baseline':>10} {'gain':>8}")
    print(
        f"{gain.split + ' ' + gain.metric:24} {gain.transfer_value:10.4f} "
        f"{gain.baseline_value:10.4f} {gain.gain:+8.4f}"
    )


def cmd_baseline(args) -> int:
    from transferstudio.core.runs.workspace import RunStore
    from transferstudio.core.settings import experiment as X
    from transferstudio.core.studies.baseline import baseline_experiment, differences, run_baseline

    host = load_host()
    workspace = workspace_of(args)
    record = RunStore(workspace).get(args.run)
    if record.status != "completed":
        from transferstudio.api import TransferStudioError

        raise TransferStudioError(
            f"run {record.id} is {record.status}: a transfer gain compares completed runs; "
            f"finish it first (transferstudio run --resume {record.id})"
        )
    exp = X.load(Path(record.folder) / "experiment.toml", host.method_params)
    baseline, what = baseline_experiment(exp, host)
    changed = ", ".join(
        f"{k}: {a!r} -> {b!r}" for k, (a, b) in differences(exp, baseline).items() if k != "name"
    )
    print(f"baseline of run {record.id}: {what} (changed: {changed or 'nothing else'})")
    result, gain = run_in_console(lambda state: run_baseline(record.id, host, workspace, state))
    print(f"baseline run: {result.run_id} ({result.status})")
    if gain is None:
        print(f"no transfer gain: the baseline run is {result.status}")
        return 1
    print_gain(gain)
    return 0
