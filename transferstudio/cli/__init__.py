"""Headless entry points over the same core the window uses.

One module per concern: :mod:`.parser` (every command and option), :mod:`.run` (run, resume,
baseline), :mod:`.demo` (demo, gui, init), :mod:`.lr_find`, :mod:`.sweep`, :mod:`.runs` (list,
show, delete), :mod:`.export` (export, predict), :mod:`.plugins` (plugins, new-plugin), and
:mod:`.common` (the plugin host, the workspace, the one Ctrl+C handler). Progress is drawn by
:class:`transferstudio.console.ProgressLine`.

Answering ``--help`` imports neither torch nor Qt: every command imports what it needs when run.
"""

from __future__ import annotations

import sys

from transferstudio.cli.common import UsageError
from transferstudio.cli.parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        from transferstudio.cli.demo import cmd_gui

        args.func, args.experiment, args.self_test = cmd_gui, None, False
        args.demo, args.epochs, args.set = False, None, []
    from transferstudio.api import TransferStudioError

    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        parser.error(str(exc))
    except TransferStudioError as exc:
        from transferstudio.core.files.safe_text import printable

        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0
