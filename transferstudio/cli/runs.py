"""``runs``: list the workspace's runs, show one, or delete some."""

from __future__ import annotations

import json
import sys

from transferstudio.cli.common import UsageError, workspace_of


def cmd_runs(args) -> int:
    from transferstudio.core.runs.workspace import RunStore

    store = RunStore(workspace_of(args))
    if args.action == "delete":
        return _delete(store, args.run_ids, args.yes)
    if args.action == "show":
        if len(args.run_ids) != 1:
            raise UsageError("runs show needs one RUN_ID")
        return _show(store, args.run_ids[0])
    return _list(store, args.json)


def _list(store, as_json: bool) -> int:
    runs = store.list()
    if as_json:
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


def _show(store, run_id: str) -> int:
    from transferstudio.core.runs.workspace import read_report

    record = store.get(run_id)
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
        # Detection runs measure mAP, not accuracy, and no validation loss.
        detection = "map50" in metrics["val"]
        columns = (
            ("train_loss", "val_map50", "val_map")
            if detection
            else (
                "train_loss",
                "val_loss",
                "val_acc",
            )
        )
        print("\nepoch  " + "  ".join(f"{k:>10}" for k in columns))
        train = dict(metrics.get("train", {}).get("loss", []))
        second = dict(metrics["val"].get("map50" if detection else "loss", []))
        for epoch, value in metrics["val"].get("map" if detection else "accuracy", []):
            print(
                f"{epoch + 1:5d}  {train.get(epoch, float('nan')):10.4f}  "
                f"{second.get(epoch, float('nan')):10.4f}  {value:10.4f}"
            )
    return 0


def _delete(store, run_ids: list[str], yes: bool) -> int:
    """Delete runs (index rows and folders) after one confirmation. Every id is looked up
    before anything is deleted, so a mistyped one deletes nothing. A run a process is training
    is refused (and named); the others are still deleted. Exit status 2 when any is refused."""
    from transferstudio.api import TransferStudioError
    from transferstudio.core.files.safe_text import printable

    if not run_ids:
        raise UsageError("runs delete needs a RUN_ID (one or more)")
    records = {}
    for run_id in run_ids:
        record = store.get(run_id)  # an unknown or ambiguous id ends the command: nothing deleted
        records.setdefault(record.id, record)
    if not yes and not _confirmed(list(records.values())):
        return 1
    refused = 0
    for record in records.values():
        try:
            store.delete(record.id)
        except TransferStudioError as exc:
            print(f"error: run {record.id} not deleted: {printable(exc)}", file=sys.stderr)
            refused += 1
        else:
            print(f"deleted run {record.id} and its folder {record.folder}")
    return 2 if refused else 0


def _confirmed(records) -> bool:
    """Ask at the terminal whether to delete ``records``; without one, refuse (``--yes``)."""
    from transferstudio.api import TransferStudioError

    names = ", ".join(r.id for r in records)
    if not sys.stdin.isatty():
        # A script (or a pipe) cannot answer; deleting without asking must be asked for.
        raise TransferStudioError(
            f"runs delete asks before deleting ({names}), and there is no terminal to answer: "
            "add --yes to delete without asking"
        )
    for r in records:
        print(f"  {r.id}  {r.status}  {r.folder}")
    what = "this run" if len(records) == 1 else f"these {len(records)} runs"
    try:
        answer = input(f"delete {what} and their files? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("nothing deleted")
    return False
