"""Getting started: ``demo`` (a run and its transfer gain on generated data), ``gui`` (the
window) and ``init`` (a complete, commented experiment file)."""

from __future__ import annotations

import sys
from pathlib import Path

from transferstudio.api import TASK_CLASSIFICATION, TASK_DETECTION
from transferstudio.cli.common import INTERRUPTED, UsageError, load_host, workspace_of
from transferstudio.cli.run import finish_run, print_gain, run_in_console, run_with_console

DEFAULT_METHODS = {TASK_CLASSIFICATION: "fine-tune", TASK_DETECTION: "detect"}
"""The method ``init`` writes for a task when no ``--method`` is given."""


def demo_overrides(args) -> list[str]:
    """The demo's ``--set`` overrides, with ``--epochs`` as ``train.epochs``."""
    overrides = list(getattr(args, "set", []))
    if getattr(args, "epochs", None):
        overrides.append(f"train.epochs={args.epochs}")
    return overrides


def cmd_demo(args) -> int:
    from transferstudio.core.data.demo import prepare_demo, transfer_demo_unavailable
    from transferstudio.core.settings import experiment as X

    host = load_host()
    workspace = workspace_of(args)
    if getattr(args, "task", TASK_CLASSIFICATION) == TASK_DETECTION:
        return _detection_demo(args, host, workspace)
    why_not = transfer_demo_unavailable(host)
    if why_not:
        print(
            f"no transfer demo: {why_not}. Running the from-scratch demo instead (ResNet-18 "
            "from random initialisation: it trains, but shows no transfer)",
            file=sys.stderr,
        )
    exp_file = prepare_demo(workspace, host)
    exp = X.load(exp_file, host.method_params, demo_overrides(args))
    print(f"demo experiment: {exp_file} (data generated in {exp.resolve(exp.data.path)})")
    if why_not or exp.model.weights == "none":
        return run_with_console(exp, host, workspace)
    return _demo_with_baseline(exp, host, workspace)


def _detection_demo(args, host, workspace: Path) -> int:
    from transferstudio.core.data.demo import transfer_demo_unavailable
    from transferstudio.core.models.detection_demo import prepare_detection_demo
    from transferstudio.core.settings import experiment as X

    exp_file = prepare_detection_demo(workspace, host)
    exp = X.load(exp_file, host.method_params, demo_overrides(args))
    print(f"detection demo: {exp_file} (data generated in {exp.resolve(exp.data.path)})")
    why_not = transfer_demo_unavailable(host)
    if why_not:
        print(f"no pretrained backbone for the detection demo: {why_not}", file=sys.stderr)
    if exp.model.weights == "none":
        return run_with_console(exp, host, workspace)
    return _demo_with_baseline(exp, host, workspace)


def _demo_with_baseline(exp, host, workspace: Path) -> int:
    """The transfer demo: the pretrained run, then its baseline from random initialisation
    (the ``baseline`` command's machinery), then both figures and the gain."""
    from transferstudio.core.studies.baseline import run_baseline
    from transferstudio.core.training.engine import run_experiment

    print(f"1/2 {exp.model.backbone} from its pretrained weights ({exp.model.weights})")
    result = run_in_console(lambda state: run_experiment(exp, host, state, workspace))
    if result.status != "completed":
        return finish_run(result, workspace)
    print(f"run folder: {result.folder}")
    print("2/2 its baseline: the same experiment from random initialisation, same budget")
    base, gain = run_in_console(lambda state: run_baseline(result.run_id, host, workspace, state))
    print(f"baseline run folder: {base.folder}")
    if gain is None:
        print(
            f"no transfer gain: the baseline run is {base.status}; measure it later with: "
            f"transferstudio --workspace {workspace} baseline {result.run_id}"
        )
        return INTERRUPTED if base.status == "cancelled" else 1
    print_gain(gain)
    print(f"transfer gain of run {result.run_id}: {gain.describe()}")
    return 0


def cmd_gui(args) -> int:
    from transferstudio.gui.app import run_gui

    if (args.epochs or args.set) and not args.demo:
        raise UsageError("--epochs and --set go with --demo (they change the demo's settings)")
    if args.demo and args.experiment:
        raise UsageError("--demo opens the demo: give no experiment file with it")
    return run_gui(
        args.experiment,
        workspace_of(args),
        self_test=args.self_test,
        run_demo=args.demo,
        demo_overrides=demo_overrides(args),
    )


def cmd_init(args) -> int:
    from transferstudio.core.models.bn_check import folded_batchnorm_reason
    from transferstudio.core.models.detector import freeze_up_to_for
    from transferstudio.core.models.weights import default_weights, read_state_dict
    from transferstudio.core.runs.weight_sources import resolve_weights
    from transferstudio.core.settings import experiment as X

    host = load_host()
    if args.method:
        spec = host.method(args.method)
        task = args.task or spec.task
    else:
        task = args.task or TASK_CLASSIFICATION
        spec = host.method(DEFAULT_METHODS[task])
    if spec.task != task:
        raise UsageError(
            f"method {spec.name!r} is for {spec.task}, not {task}; list methods with "
            "'transferstudio plugins', or leave --method out"
        )
    backbone = host.backbone(args.backbone or X.ModelSettings().backbone)
    data = str(X.expand_user(args.data, "--data").resolve()) if args.data else ""
    if args.weights is None:  # the backbone's pretrained weights when they are on this machine
        weights = default_weights(backbone)
    elif args.weights in ("none", "cache"):
        weights = args.weights
    else:
        weights = str(X.expand_user(args.weights, "--weights").resolve())
    path = resolve_weights(backbone, weights, ".")  # refuses a missing or unusable file
    exp = X.new_experiment(spec.name, spec.params, data, args.backbone, args.name, weights, task)
    if task == TASK_DETECTION and hasattr(exp.method_params, "freeze_up_to"):
        # torchvision's default for pretrained backbones: the last 3 stages train.
        exp.method_params.freeze_up_to = freeze_up_to_for(backbone)
    if path is not None and getattr(exp.method_params, "bn_mode", "") == "train":
        reason = folded_batchnorm_reason(read_state_dict(path), path.name)
        if reason:
            exp.method_params.bn_mode = "frozen-stats"
            print(f"init: method.params.bn_mode = frozen-stats: {reason}", file=sys.stderr)
    sys.stdout.write(exp.to_toml(comments=True))
    return 0
