"""``lr-find``: the learning-rate range test, its curve as a table, and ``--apply``."""

from __future__ import annotations

import json
from pathlib import Path

from transferstudio.cli.common import load_host, workspace_of


def cmd_lr_find(args) -> int:
    from transferstudio.console import ProgressLine
    from transferstudio.core.files.atomic import write_text_atomic
    from transferstudio.core.settings import experiment as X
    from transferstudio.core.settings import params as P
    from transferstudio.core.training.lr_finder import find_lr

    host = load_host()
    exp = X.load(args.experiment, host.method_params, args.set)
    print(
        f"learning-rate range test: {args.steps} steps from {args.start:g} to {args.end:g} "
        f"({exp.method} on {exp.model.backbone}); nothing is saved"
    )
    line = ProgressLine()

    def progress(step: int, lr: float, loss: float, smoothed: float) -> None:
        line.draw(
            f"step {step + 1}/{args.steps} lr {lr:.2e} loss {loss:.4f}", step + 1 == args.steps
        )

    result = find_lr(
        exp, host, workspace_of(args), args.start, args.end, args.steps, on_point=progress
    )
    line.end()
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
        # the setting's limits; X.save changes that one line and keeps the user's comments.
        saved = X.load(args.experiment, host.method_params)
        limits = next(f for f in P.fields_of(type(saved.train)) if f.name == "lr")
        saved.train.lr = min(max(float(f"{result.suggestion:.3g}"), limits.min), limits.max)
        X.save(saved, Path(args.experiment))
        print(f"train.lr = {saved.train.lr:g} written to {args.experiment}")
    else:
        print(f"use it: --set train.lr={result.suggestion:.3g}, or run again with --apply")
    return 0
