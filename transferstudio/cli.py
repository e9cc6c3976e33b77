"""Headless entry points over the same core the window uses.

Answering ``--help`` imports neither torch nor Qt: every command imports what it needs when run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from pathlib import Path

from transferstudio import __version__


def _host():
    from transferstudio.core.plugins.host import load_plugins

    return load_plugins()


def _workspace(args) -> Path:
    """The workspace folder, absolute: the run index stores run folders under it, and a
    relative one ("../ws") would point elsewhere from another working folder."""
    from transferstudio.core.runs.workspace import default_workspace
    from transferstudio.core.settings.experiment import expand_user

    if args.workspace:
        return expand_user(args.workspace, "--workspace").resolve()
    return default_workspace().expanduser().resolve()


def _silent_state():  # the engine (and torch) is imported only when a run starts
    """The run state of torchrun's other ranks: Ctrl+C still stops them; nothing is shown."""
    from transferstudio.core.training.engine import PlainState

    class Silent(PlainState):
        def emit(self, event) -> None:
            pass

    return Silent()


@contextlib.contextmanager
def _stop_on_signals(ask_stop, message: str | None = None, second_aborts: bool = True):
    """While the block runs, Ctrl+C (SIGINT) and SIGTERM (``kill``, ``timeout``, a logout) ask
    for a clean stop through ``ask_stop()``: the run saves its state and is marked stopped,
    resumable, instead of dying "running". A second Ctrl+C aborts at once, if
    ``second_aborts`` (a person at a terminal; not the window driving a child process)."""
    asked = {"before": False}

    def handle(signum, frame):
        if second_aborts and asked["before"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        asked["before"] = True
        ask_stop()
        if message:
            print(f"\n{message}", file=sys.stderr)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_with_console(
    exp, host, workspace: Path, resume: str | None = None, event_stream: str | None = None
) -> int:
    from transferstudio.console import ConsoleProgress
    from transferstudio.core.training.distributed import process_rank
    from transferstudio.core.training.engine import run_experiment

    rank0 = process_rank() == 0  # torchrun: rank 0 alone reports
    if event_stream is not None:
        return _run_streaming(exp, host, workspace, resume, Path(event_stream), rank0)
    progress = ConsoleProgress() if rank0 else _silent_state()
    with _stop_on_signals(
        lambda: setattr(progress, "stop", True),
        "stopping after this batch (Ctrl+C again to abort)...",
    ):
        result = run_experiment(exp, host, progress, workspace, resume=resume)
    if rank0:
        print(f"run folder: {result.folder}")
    if result.status == "cancelled":
        if rank0:
            print(
                f"resume with: transferstudio --workspace {workspace} run --resume {result.run_id}"
            )
        return 130
    return 0 if result.status == "completed" else 1


def _run_streaming(exp, host, workspace: Path, resume, control_dir: Path, rank0: bool) -> int:
    """``run --event-stream``: events as lines for the window (core/progress/event_stream.py), the
    outcome as a last line, and every error as that line too, so the window can show it."""
    import dataclasses

    from transferstudio.api import TransferStudioError
    from transferstudio.core.progress.event_stream import StreamResult, StreamState
    from transferstudio.core.training.engine import run_experiment

    state = StreamState(control_dir, writes=rank0)
    try:
        with _stop_on_signals(lambda: setattr(state, "stop", True), second_aborts=False):
            result = run_experiment(exp, host, state, workspace, resume=resume)
    except TransferStudioError as exc:
        if rank0:
            state.write(StreamResult(run_id="", folder="", status="error", message=str(exc)))
        return 2
    if rank0:
        fields = dataclasses.asdict(result)
        state.write(StreamResult(**{**fields, "folder": str(result.folder)}))
    return {"completed": 0, "cancelled": 130}.get(result.status, 1)


def cmd_run(args) -> int:
    from transferstudio.core.settings import experiment as X

    host = _host()
    workspace = _workspace(args)
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
        return _run_with_console(
            exp, host, workspace, resume=record.id, event_stream=args.event_stream
        )
    if not args.experiment:
        raise _usage("run needs an experiment file (or --resume RUN_ID)")
    exp = X.load(args.experiment, host.method_params, args.set)
    return _run_with_console(exp, host, workspace, event_stream=args.event_stream)


def cmd_lr_find(args) -> int:
    from transferstudio.core.files.atomic import write_text_atomic
    from transferstudio.core.settings import experiment as X
    from transferstudio.core.settings import params as P
    from transferstudio.core.training.lr_finder import find_lr

    host = _host()
    exp = X.load(args.experiment, host.method_params, args.set)
    print(
        f"learning-rate range test: {args.steps} steps from {args.start:g} to {args.end:g} "
        f"({exp.method} on {exp.model.backbone}); nothing is saved"
    )

    def progress(step: int, lr: float, loss: float, smoothed: float) -> None:
        if sys.stdout.isatty():
            print(f"\r\033[Kstep {step + 1}/{args.steps} lr {lr:.2e} loss {loss:.4f}", end="")

    result = find_lr(
        exp, host, _workspace(args), args.start, args.end, args.steps, on_point=progress
    )
    if sys.stdout.isatty():
        print()
    shown = set(range(0, len(result.lrs), max(1, len(result.lrs) // 12)))
    if result.suggestion is not None:
        shown.add(result.lrs.index(result.suggestion))
    print(f"{'lr':>10}  {'loss':>8}  {'smoothed':>8}")
    for i in sorted(shown):
        marker = "  <- suggested" if result.lrs[i] == result.suggestion else ""
        print(f"{result.lrs[i]:10.2e}  {result.losses[i]:8.4f}  {result.smoothed[i]:8.4f}{marker}")
    print(f"sweep ended: {result.stopped_because}")
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(result.to_dict(), indent=2))
        print(f"curve written to {args.json}")
    if result.suggestion is None:
        print(
            "no suggestion: the loss did not fall over the sweep; widen it (--start, --end) or "
            "take more steps"
        )
        return 1
    print(
        f"suggested learning rate: {result.suggestion:.2e} (steepest descent; the minimum was "
        f"at {result.min_loss_lr:.2e})"
    )
    if args.apply:
        # The file as it is (without --set overrides), with only train.lr changed, kept within
        # the setting's limits.
        saved = X.load(args.experiment, host.method_params)
        limits = next(f for f in P.fields_of(type(saved.train)) if f.name == "lr")
        saved.train.lr = min(max(float(f"{result.suggestion:.3g}"), limits.min), limits.max)
        write_text_atomic(Path(args.experiment), saved.to_toml())
        print(f"train.lr = {saved.train.lr:g} written to {args.experiment}")
    else:
        print(f"use it: --set train.lr={result.suggestion:.3g}, or run again with --apply")
    return 0


def _print_sweep(summary) -> None:
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

    host = _host()
    workspace = _workspace(args)
    if args.show:
        study, _ = load_sweep(workspace, args.show, host)
        _print_sweep(summarize(study))
        return 0
    exp = X.load(args.experiment, host.method_params, args.set) if args.experiment else None
    name = args.name or (exp.name if exp is not None else None)
    if name is None:
        raise _usage("sweep needs an experiment file, or --name of a sweep to continue")
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

    with _stop_on_signals(
        lambda: stop.update(asked=True),
        "stopping the sweep after this batch (Ctrl+C again to abort)...",
    ):
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
    _print_sweep(summary)
    print(f"sweep ended: {summary.stopped_because}")
    if summary.best is not None and summary.best.run_id:
        from transferstudio.core.runs.workspace import RunStore

        folder = Path(RunStore(workspace).get(summary.best.run_id).folder)
        print(f"open the best trial: transferstudio gui {folder / 'experiment.toml'}")
    return 130 if summary.stopped_because == "stopped by the user" else 0


def cmd_demo(args) -> int:
    from transferstudio.core.data.demo import prepare_demo, transfer_demo_unavailable
    from transferstudio.core.settings import experiment as X

    host = _host()
    workspace = _workspace(args)
    why_not = transfer_demo_unavailable(host)
    if why_not:
        print(
            f"no transfer demo: {why_not}. Running the from-scratch demo instead (ResNet-18 "
            "from random initialisation: it trains, but shows no transfer)",
            file=sys.stderr,
        )
    exp_file = prepare_demo(workspace, host)
    exp = X.load(exp_file, host.method_params, _demo_overrides(args))
    print(f"demo experiment: {exp_file} (data generated in {exp.resolve(exp.data.path)})")
    if why_not or exp.model.weights == "none":
        return _run_with_console(exp, host, workspace)
    return _demo_with_baseline(exp, host, workspace)


def _demo_overrides(args) -> list[str]:
    overrides = list(getattr(args, "set", []))
    if getattr(args, "epochs", None):
        overrides.append(f"train.epochs={args.epochs}")
    return overrides


def _demo_with_baseline(exp, host, workspace: Path) -> int:
    """The transfer demo: the pretrained run, then its baseline from random initialisation
    (the ``baseline`` command's machinery), then both figures and the gain."""
    from transferstudio.console import ConsoleProgress
    from transferstudio.core.studies.baseline import run_baseline
    from transferstudio.core.training.engine import run_experiment

    print(f"1/2 {exp.model.backbone} from its pretrained weights ({exp.model.weights})")
    progress = ConsoleProgress()
    stop_message = "stopping after this batch (Ctrl+C again to abort)..."
    with _stop_on_signals(lambda: setattr(progress, "stop", True), stop_message):
        result = run_experiment(exp, host, progress, workspace)
    print(f"run folder: {result.folder}")
    if result.status != "completed":
        if result.status == "cancelled":
            print(
                f"resume with: transferstudio --workspace {workspace} run --resume {result.run_id}"
            )
        return 130 if result.status == "cancelled" else 1
    print("2/2 its baseline: the same experiment from random initialisation, same budget")
    progress = ConsoleProgress()
    with _stop_on_signals(lambda: setattr(progress, "stop", True), stop_message):
        base, gain = run_baseline(result.run_id, host, workspace, progress)
    print(f"baseline run folder: {base.folder}")
    if gain is None:
        print(
            f"no transfer gain: the baseline run is {base.status}; measure it later with: "
            f"transferstudio --workspace {workspace} baseline {result.run_id}"
        )
        return 130 if base.status == "cancelled" else 1
    _print_gain(gain)
    print(f"transfer gain of run {result.run_id}: {gain.describe()}")
    return 0


def _print_gain(gain) -> None:
    print(f"{'':24} {'transfer':>10} {'baseline':>10} {'gain':>8}")
    print(
        f"{gain.split + ' ' + gain.metric:24} {gain.transfer_value:10.4f} "
        f"{gain.baseline_value:10.4f} {gain.gain:+8.4f}"
    )


def cmd_gui(args) -> int:
    from transferstudio.gui.app import run_gui

    if (args.epochs or args.set) and not args.demo:
        raise _UsageError("--epochs and --set go with --demo (they change the demo's settings)")
    if args.demo and args.experiment:
        raise _UsageError("--demo opens the demo: give no experiment file with it")
    return run_gui(
        args.experiment,
        _workspace(args),
        self_test=args.self_test,
        run_demo=args.demo,
        demo_overrides=_demo_overrides(args),
    )


def cmd_init(args) -> int:
    from transferstudio.core.models.bn_check import folded_batchnorm_reason
    from transferstudio.core.models.weights import default_weights, read_state_dict, resolve_weights
    from transferstudio.core.settings import experiment as X

    host = _host()
    spec = host.method(args.method)
    backbone = host.backbone(args.backbone or X.ModelSettings().backbone)
    data = str(X.expand_user(args.data, "--data").resolve()) if args.data else ""
    if args.weights is None:  # the backbone's pretrained weights when they are on this machine
        weights = default_weights(backbone)
    elif args.weights in ("none", "cache"):
        weights = args.weights
    else:
        weights = str(X.expand_user(args.weights, "--weights").resolve())
    path = resolve_weights(backbone, weights, ".")  # refuses a missing or unusable file
    exp = X.new_experiment(spec.name, spec.params, data, args.backbone, args.name, weights)
    if path is not None and getattr(exp.method_params, "bn_mode", "") == "train":
        reason = folded_batchnorm_reason(read_state_dict(path), path.name)
        if reason:
            exp.method_params.bn_mode = "frozen-stats"
            print(f"init: method.params.bn_mode = frozen-stats: {reason}", file=sys.stderr)
    sys.stdout.write(exp.to_toml(comments=True))
    return 0


def cmd_plugins(args) -> int:
    if args.action == "check":
        return _check_plugin(args)
    if args.action == "path":
        return _plugin_path()
    host = _host()
    for record in host.records:
        print(
            f"{record.name} {record.version}  [{record.status}]  module {record.module}, "
            f"API {record.api_version or '?'}"
        )
        for kind, names in record.provides.items():
            print(f"  {kind}: {', '.join(names)}")
        for error in record.errors:
            text = error if args.verbose else error.split("\n")[0]
            print("  error: " + text.replace("\n", "\n    "))
    failed = host.failures()
    if failed and not args.verbose:
        print(
            f"\n{len(failed)} plugin(s) with problems; 'transferstudio plugins -v' shows tracebacks"
        )
    return 0


def _plugin_path() -> int:
    from transferstudio.core.plugins.host import PLUGIN_PATH_ENV, plugin_folders

    folders = plugin_folders()
    for folder in folders:
        print(folder)
    if not folders:
        print(
            f"(none: plugins are found in this Python environment; {PLUGIN_PATH_ENV} adds folders)",
            file=sys.stderr,
        )
    else:
        print(
            f"install a plugin into a folder with: python{sys.version_info[0]}."
            f"{sys.version_info[1]} -m pip install --target {folders[-1]} PLUGIN "
            "(see docs/installing.md)",
            file=sys.stderr,
        )
    return 0


def _check_plugin(args) -> int:
    import tomllib

    from transferstudio.testing import check_plugin
    from transferstudio.testing.conformance import param_problems

    if not args.name:
        raise _UsageError(
            "plugins check needs the plugin's name, as 'transferstudio plugins' lists it"
        )
    host = _host()
    record = next(
        (r for r in host.records if args.name in (r.name, r.name.split(":")[0], r.module)), None
    )
    if record is None:
        names = ", ".join(r.name for r in host.records)
        raise _UsageError(f"no installed plugin named {args.name!r}; installed: {names}")
    params: dict[str, dict] = {}
    for item in args.param:
        key, sep, text = item.partition("=")
        method, dot, field = key.partition(".")
        if not (sep and dot and field):
            raise _UsageError(f"--param {item!r}: write METHOD.KEY=VALUE, e.g. distill.alpha=0.5")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word: a string
        params.setdefault(method, {})[field] = value
    if record.status in ("failed", "refused"):
        print(f"{record.name} {record.version}: {record.status}")
        for error in record.errors:
            print("  " + error.replace("\n", "\n  "))
        return 1
    # A --param the user got wrong is their error, not a check to skip: name it and its range.
    methods = {name: host.methods[name] for name in record.provides.get("methods", [])}
    problems = [problem for _method, problem in param_problems(methods, params)]
    if problems:
        raise _UsageError("--param " + "; --param ".join(problems))
    plugin = host.pm.get_plugin(record.name)  # the object the host loaded: no second import
    print(f"checking {record.name} {record.version} ({record.module}) ...", flush=True)
    # conflicts (a name another installed plugin provides first) fail the check too
    report = check_plugin(plugin, params, conflicts=record.conflicts)
    print(report.text())
    return 0 if report.ok else 1


def cmd_new_plugin(args) -> int:
    from transferstudio.scaffold import new_plugin

    folder = new_plugin(args.name, args.kind, args.directory)
    print(f"wrote {folder}")
    print(f"next: cd {folder} && pip install -e . && pytest")
    return 0


def cmd_runs(args) -> int:
    from transferstudio.core.runs.workspace import RunStore, read_report

    store = RunStore(_workspace(args))
    if args.action == "delete":
        if not args.run_id:
            raise _usage("runs delete needs a RUN_ID")
        record = store.get(args.run_id)
        store.delete(record.id)
        print(f"deleted run {record.id} and its folder {record.folder}")
        return 0
    if args.action == "show":
        if not args.run_id:
            raise _usage("runs show needs a RUN_ID")
        record = store.get(args.run_id)
        for key, value in vars(record).items():
            print(f"{key:12} {value}")
        report = read_report(record.folder)
        if report:
            from transferstudio.console import final_table

            print(final_table(report))
        from transferstudio.core.studies.baseline import gains

        gain = gains(store).get(record.id)
        if gain is not None:
            print(f"transfer gain: {gain.describe()} (baseline run {gain.baseline_id})")
        metrics = store.epoch_metrics(record.id)
        if metrics.get("val"):
            print(
                "\nepoch  " + "  ".join(f"{k:>10}" for k in ("train_loss", "val_loss", "val_acc"))
            )
            train = dict(metrics.get("train", {}).get("loss", []))
            val_loss = dict(metrics["val"].get("loss", []))
            for epoch, acc in metrics["val"].get("accuracy", []):
                print(
                    f"{epoch + 1:5d}  {train.get(epoch, float('nan')):10.4f}  "
                    f"{val_loss.get(epoch, float('nan')):10.4f}  {acc:10.4f}"
                )
        return 0
    runs = store.list()
    if args.json:
        print(json.dumps([vars(r) for r in runs], indent=2))
        return 0
    if not runs:
        print(f"no runs in {store.workspace} yet; try 'transferstudio demo'")
        return 0
    from transferstudio.core.studies.baseline import gains

    found = gains(store)
    print(
        f"{'id':40} {'status':11} {'backbone':16} {'method':16} {'best':>8} {'epochs':>6} "
        f"{'time':>8}  transfer gain"
    )
    for r in runs:
        best = f"{r.best_metric:.4f}" if r.best_metric is not None else "-"
        gain = found[r.id].describe() if r.id in found else ""
        print(
            f"{r.id:40} {r.status:11} {r.backbone:16} {r.method:16} {best:>8} "
            f"{r.epochs_done:>6} {r.duration_s:>7.1f}s  {gain}".rstrip()
        )
    return 0


def cmd_baseline(args) -> int:
    from transferstudio.console import ConsoleProgress
    from transferstudio.core.runs.workspace import RunStore
    from transferstudio.core.settings import experiment as X
    from transferstudio.core.studies.baseline import baseline_experiment, differences, run_baseline

    host = _host()
    workspace = _workspace(args)
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
    result, gain = run_baseline(record.id, host, workspace, ConsoleProgress())
    print(f"baseline run: {result.run_id} ({result.status})")
    if gain is None:
        print(f"no transfer gain: the baseline run is {result.status}")
        return 1
    _print_gain(gain)
    return 0


def cmd_export(args) -> int:
    from transferstudio.core.inference.export import export_run

    host = _host()
    fmt = args.format
    target = Path(
        args.output or f"model{host.exporters[fmt].suffix if fmt in host.exporters else ''}"
    )
    result = export_run(
        args.run, fmt, target, host, _workspace(args), args.module or "", force=args.force
    )
    diff = f"{result.max_abs_diff:.3g}" if result.max_abs_diff is not None else "not checked"
    print(f"wrote {result.path} ({result.format}); verified: max abs difference {diff}")
    if result.val_top1_agreement is not None:
        print(
            f"top-1 agreement with the run's model on {result.val_images} validation images: "
            f"{result.val_top1_agreement:.4f}"
        )
    if result.note:
        print(result.note)
    return 0


def cmd_predict(args) -> int:
    import csv

    from transferstudio.core.files.safe_text import csv_row, display_path, printable
    from transferstudio.core.inference.predict import gather_images, open_predictor, predict

    predictor = open_predictor(args.model, _host(), _workspace(args), support=args.support)
    for path, reason in predictor.support_skipped:
        print(f"support: skipped {path}: {reason}", file=sys.stderr)
    paths, skipped = gather_images(args.inputs)
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if tty:
            width = 30
            bar = "#" * (width * done // max(total, 1))
            print(f"\r[{bar:<{width}}] {done}/{total} images", end="", file=sys.stderr)

    report = predict(predictor, paths, args.top_k, args.batch_size, progress)
    if tty:
        print(file=sys.stderr)
    # Paths and class names come from files: shown with their control characters escaped,
    # and written to the CSV so that a spreadsheet never runs one as a formula.
    for item in report.predictions:
        labels = ", ".join(f"{label} {p:.3f}" for label, p in item.top)
        print(printable(f"{display_path(item.path)}\t{labels}"))
    for path, reason in skipped + report.skipped:
        print(printable(f"skipped {display_path(path)}: {reason}"), file=sys.stderr)
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            k = max((len(p.top) for p in report.predictions), default=0)
            header = ["path"] + [f"{kind}{i + 1}" for i in range(k) for kind in ("label", "p")]
            writer.writerow(header)
            for item in report.predictions:
                writer.writerow(
                    csv_row(
                        [display_path(item.path)]
                        + [x for label, p in item.top for x in (label, f"{p:.6f}")]
                    )
                )
        print(f"wrote {args.csv}", file=sys.stderr)
    print(
        f"{len(report.predictions)} predicted, {len(skipped) + len(report.skipped)} skipped "
        f"({predictor.source})",
        file=sys.stderr,
    )
    return 0 if report.predictions or not (skipped or report.skipped) else 1


class _UsageError(Exception):
    pass


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


def _positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1 (a batch size of 0 or -1 means nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_set_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferstudio",
        description="Transfer-learning experiments between deep networks, with plugins.",
    )
    parser.add_argument("--version", action="version", version=f"transferstudio {__version__}")
    parser.add_argument(
        "--workspace",
        help="workspace folder (default: $TRANSFERSTUDIO_WORKSPACE or the user data folder)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="generate a small synthetic dataset, fine-tune a pretrained EfficientNet-Lite0 on "
        "it and measure the transfer gain over random initialisation (offline)",
    )
    p.add_argument("--epochs", type=_positive_int, help="override the demo's number of epochs")
    _add_set_option(p, "override an experiment setting, e.g. train.lr=0.01")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run an experiment file headless")
    p.add_argument("experiment", nargs="?", help="experiment .toml file")
    _add_set_option(p, "override a setting, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--resume", metavar="RUN_ID", help="continue a stopped or killed run")
    p.add_argument(
        "--event-stream",
        metavar="CONTROL_DIR",
        help="for programs driving the run (the window): events as JSON lines on stdout; "
        "files 'stop' and 'pause' in CONTROL_DIR stop or pause it",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "lr-find",
        help="learning-rate range test: loss against exponentially rising learning rates, "
        "and a suggested train.lr",
    )
    p.add_argument("experiment", help="experiment .toml file")
    p.add_argument("--steps", type=_positive_int, default=100, help="training steps (default 100)")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate (1e-7)")
    p.add_argument("--end", type=float, default=10.0, help="last learning rate (10)")
    p.add_argument("--apply", action="store_true", help="write the suggestion into the file")
    p.add_argument("--json", metavar="FILE", help="also write the curve as JSON")
    _add_set_option(p, "override a setting, e.g. --set data.batch_size=16 (repeatable)")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser(
        "sweep",
        help="hyperparameter search (Optuna): every trial is a run; the same command again "
        "continues the sweep",
    )
    p.add_argument("experiment", nargs="?", help="experiment .toml file (to start a sweep)")
    p.add_argument(
        "--trials", type=_positive_int, help="finish this many trials (complete or pruned)"
    )
    p.add_argument("--timeout-min", type=float, help="stop starting trials after this time")
    p.add_argument("--name", help="sweep name (default: the experiment's name)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY[=SPEC]",
        help="a searched setting, e.g. train.lr, train.lr=1e-5:1e-1:log, "
        "method.params.freeze_up_to=layer3,layer4 (repeatable; default: lr, weight decay and "
        "the method's bounded parameters)",
    )
    p.add_argument("--sampler", choices=["tpe", "random"], help="tpe (default) or random")
    p.add_argument("--pruner", choices=["median", "none"], help="median (default) or none")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    p.add_argument("--show", metavar="NAME", help="print a sweep's trials and best trial")
    _add_set_option(p, "override a setting of the experiment (repeatable)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "baseline",
        help="transfer gain: re-run a run's experiment without the transfer (random init; "
        "source-only for domain adaptation; the student alone for distillation) and compare",
    )
    p.add_argument("run", help="run id (or unique prefix) of a completed run")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("gui", help="open the window (the default without a command)")
    p.add_argument("experiment", nargs="?", help="experiment .toml file (default: the demo)")
    p.add_argument(
        "--self-test",
        action="store_true",
        help="check an installation: open the window, wait until it is ready, close it",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="open on the demo and run it, then its transfer-gain baseline (shown in Runs)",
    )
    p.add_argument("--epochs", type=_positive_int, help="with --demo: the demo's epochs")
    _add_set_option(p, "with --demo: override a setting of the demo, e.g. train.lr=0.01")
    p.set_defaults(func=cmd_gui)

    p = sub.add_parser("init", help="print a complete, commented experiment file")
    p.add_argument("--method", required=True, help="method id, e.g. fine-tune")
    p.add_argument("--data", default="", help="image folder or CSV file")
    p.add_argument("--backbone", help="backbone id, e.g. resnet18")
    p.add_argument("--name", help="experiment name")
    p.add_argument(
        "--weights",
        help="'none', 'cache' (the backbone's pretrained weights from local files) or a "
        ".pth/.safetensors/.tsmodel path; by default 'cache' when those weights are on this "
        "machine, else 'none'. Weights with folded BatchNorm set bn_mode = frozen-stats",
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "plugins",
        help="list plugins, what they provide, and their errors; 'plugins check NAME' runs the "
        "test kit's conformance checks on one; 'plugins path' prints the plugin folders",
    )
    p.add_argument("action", nargs="?", choices=["list", "check", "path"], default="list")
    p.add_argument("name", nargs="?", help="for 'check': the plugin's name as listed")
    p.add_argument("-v", "--verbose", action="store_true", help="show full tracebacks")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="for 'check': a method parameter the check cannot guess (repeatable)",
    )
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser(
        "new-plugin",
        help="write a new plugin package (pyproject, working example, tests) that passes its "
        "own tests right away",
    )
    p.add_argument("name", help="distribution name, e.g. my-backbone (module: my_backbone)")
    p.add_argument("--kind", required=True, choices=["backbone", "method", "exporter", "dataset"])
    p.add_argument("--directory", default=".", help="where to create the NAME folder")
    p.set_defaults(func=cmd_new_plugin)

    p = sub.add_parser(
        "export", help="export a run's model (or a sub-module), verified against the original"
    )
    p.add_argument("run", help="run id (or unique prefix) or run folder")
    p.add_argument(
        "--format",
        default="safetensors",
        help="exporter: safetensors (default), bundle, state_dict, torchscript, onnx, or a "
        "plugin's ('transferstudio plugins' lists them)",
    )
    p.add_argument("-o", "--output", help="file to write (default: model.<suffix> here)")
    p.add_argument("--module", help="dotted path of a sub-module, e.g. backbone (default: all)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="top-k labels of new images with a bundle or a run")
    p.add_argument("model", help="a .tsmodel bundle, or a run id (unique prefix) or run folder")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="images or folders")
    p.add_argument("--top-k", type=_positive_int, default=3, help="labels per image (default 3)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch (32)")
    p.add_argument("--csv", help="also write path,label1,p1,... rows to this CSV file")
    p.add_argument(
        "--support",
        metavar="FOLDER",
        help="few-shot models (protonet, maml): a folder with one subfolder of example images "
        "per class; those are the classes predicted",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("runs", help="list the workspace's runs, or show one")
    p.add_argument("action", nargs="?", choices=["list", "show", "delete"], default="list")
    p.add_argument("run_id", nargs="?", help="run id (or a unique prefix) for 'show' or 'delete'")
    p.add_argument("--json", action="store_true", help="machine-readable list")
    p.set_defaults(func=cmd_runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        args.func, args.experiment, args.self_test = cmd_gui, None, False
        args.demo, args.epochs, args.set = False, None, []
    from transferstudio.api import TransferStudioError

    try:
        return int(args.func(args) or 0)
    except _UsageError as exc:
        parser.error(str(exc))
    except TransferStudioError as exc:
        from transferstudio.core.files.safe_text import printable

        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
