"""Entry point of the installed (frozen) application: the ``transferstudio`` command.

It is the CLI, with two additions a frozen program needs:

- ``multiprocessing.freeze_support()``: DataLoader workers on Windows and macOS start a new
  copy of this program, which must run the worker, not the app;
- ``transferstudio torchrun ARGS``: the window's several-process runs (gui/process_run.py) have
  no ``python -m torch.distributed.run`` in a frozen app, so this program is torchrun too, and
  runs itself as each worker (``--no-python``).
"""

from __future__ import annotations

import multiprocessing
import sys


def main() -> int:
    multiprocessing.freeze_support()
    args = sys.argv[1:]
    if args[:1] == ["torchrun"]:
        from torch.distributed.run import main as torchrun

        torchrun(args[1:])
        return 0
    from transferstudio.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    from transferstudio.cli.common import exit_process

    exit_process(main())  # a torchrun worker skips the teardown that may abort (see there)
