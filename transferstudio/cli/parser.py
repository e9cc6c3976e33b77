"""The command line's parser: every command, its options and its help text.

Building it imports no command's machinery (each command module imports what it needs when it
runs), so ``--help`` stays fast and imports neither torch nor Qt.
"""

from __future__ import annotations

import argparse

from transferstudio import __version__
from transferstudio.cli import demo, export, lr_find, plugins, run, runs, sweep


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
    """The ``transferstudio`` parser; each command sets ``func``, the function that runs it."""
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
    p.add_argument(
        "--task",
        choices=["classification", "detection"],
        default="classification",
        help="detection: a Faster R-CNN on generated shapes with boxes, and its baseline",
    )
    p.add_argument("--epochs", type=_positive_int, help="override the demo's number of epochs")
    _add_set_option(p, "override an experiment setting, e.g. train.lr=0.01")
    p.set_defaults(func=demo.cmd_demo)

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
    p.set_defaults(func=run.cmd_run)

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
    p.set_defaults(func=lr_find.cmd_lr_find)

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
    p.set_defaults(func=sweep.cmd_sweep)

    p = sub.add_parser(
        "baseline",
        help="transfer gain: re-run a run's experiment without the transfer (random init; "
        "source-only for domain adaptation; the student alone for distillation) and compare",
    )
    p.add_argument("run", help="run id (or unique prefix) of a completed run")
    p.set_defaults(func=run.cmd_baseline)

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
    p.set_defaults(func=demo.cmd_gui)

    p = sub.add_parser("init", help="print a complete, commented experiment file")
    p.add_argument(
        "--task",
        choices=["classification", "detection"],
        help="what the experiment learns; by default the method's task (classification)",
    )
    p.add_argument(
        "--method",
        help="method id, e.g. fine-tune; by default fine-tune (classification) or detect "
        "(detection)",
    )
    p.add_argument(
        "--data",
        default="",
        help="image folder or CSV file; for detection a Pascal VOC folder, a COCO .json or a "
        "YOLO folder or data.yaml",
    )
    p.add_argument("--backbone", help="backbone id, e.g. resnet18")
    p.add_argument("--name", help="experiment name")
    p.add_argument(
        "--weights",
        help="'none', 'cache' (the backbone's pretrained weights from local files) or a "
        ".pth/.safetensors/.tsmodel path; by default 'cache' when those weights are on this "
        "machine, else 'none'. Weights with folded BatchNorm set bn_mode = frozen-stats",
    )
    p.set_defaults(func=demo.cmd_init)

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
    p.set_defaults(func=plugins.cmd_plugins)

    p = sub.add_parser(
        "new-plugin",
        help="write a new plugin package (pyproject, working example, tests) that passes its "
        "own tests right away",
    )
    p.add_argument("name", help="distribution name, e.g. my-backbone (module: my_backbone)")
    p.add_argument(
        "--kind",
        required=True,
        choices=[
            "backbone",
            "method",
            "exporter",
            "dataset",
            "detection-method",
            "detection-dataset",
        ],
    )
    p.add_argument("--directory", default=".", help="where to create the NAME folder")
    p.set_defaults(func=plugins.cmd_new_plugin)

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
    p.set_defaults(func=export.cmd_export)

    p = sub.add_parser(
        "predict",
        help="top-k labels (or boxes, for a detector) of new images with a bundle or a run",
    )
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
    p.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="detectors: report boxes scoring at least this (default 0.5)",
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        help="detectors: also write the boxes as COCO results JSON to this file",
    )
    p.add_argument(
        "--draw",
        metavar="FOLDER",
        help="detectors: also write each image with its boxes drawn into this folder",
    )
    p.set_defaults(func=export.cmd_predict)

    p = sub.add_parser(
        "runs", help="list the workspace's runs, show one, or delete runs (and their folders)"
    )
    p.add_argument("action", nargs="?", choices=["list", "show", "delete"], default="list")
    p.add_argument(
        "run_ids",
        nargs="*",
        metavar="RUN_ID",
        help="run id (or a unique prefix): one for 'show', one or more for 'delete'",
    )
    p.add_argument("--json", action="store_true", help="machine-readable list")
    p.add_argument(
        "-y", "--yes", action="store_true", help="for 'delete': delete without asking first"
    )
    p.set_defaults(func=runs.cmd_runs)
    return parser
