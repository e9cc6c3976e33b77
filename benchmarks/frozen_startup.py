"""Start-up of the installed (frozen) application against the source install, same commands.

Three commands, each run alternately by the built application (installer/build.sh) and by
``python -m transferstudio`` from this environment, ``--rounds`` times:

- ``--version`` (the launcher alone: no torch, no Qt);
- ``plugins`` (plugin discovery through entry points);
- ``gui --self-test`` on the demo (torch, Qt, the window, its model tree and data scan; the
  window reports "window ready in S s", measured from the start of ``run_gui``).

Wall seconds from process start to exit; warm file cache (the first round of each is dropped
as warm-up). The ratio is frozen / source. Needs a build at build/installer/dist (or
``--app PATH``).

    python benchmarks/frozen_startup.py [--rounds 5] [--app PATH]

Writes ``benchmarks/results/<date>-frozen_startup.{txt,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, OtherLoad, describe_machine, fmt_cores, machine

READY = re.compile(r"window ready in ([\d.]+) s")
COMMANDS = {"--version": ["--version"], "plugins": ["plugins"], "gui --self-test": None}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--app", default=str(ROOT / "build/installer/dist/transferstudio/transferstudio")
    )
    args = parser.parse_args()
    app = Path(args.app)
    if not app.is_file():
        print(f"SKIPPED: no built application at {app}; run installer/build.sh first")
        return 0
    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="frozen-startup-"))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp / "home"),
           "XDG_CONFIG_HOME": str(tmp / "config")}  # fmt: skip
    programs = {"frozen": [str(app)], "source": [sys.executable, "-m", "transferstudio"]}
    results: dict = {name: {kind: [] for kind in programs} for name in COMMANDS}
    print(describe_machine(info))
    for round_no in range(args.rounds + 1):  # round 0 is warm-up
        for name, cli in COMMANDS.items():
            for kind, program in programs.items():
                if cli is None:
                    cli_args = ["--workspace", str(tmp / f"ws-{kind}"), "gui", "--self-test"]
                else:
                    cli_args = cli
                with OtherLoad() as load:
                    t0 = time.perf_counter()
                    done = subprocess.run(
                        [*program, *cli_args], env=env, capture_output=True, text=True
                    )
                    wall = time.perf_counter() - t0
                if done.returncode != 0:
                    raise SystemExit(f"{kind} {name} failed:\n{done.stdout}\n{done.stderr}")
                ready = READY.search(done.stdout)
                row = {"wall_s": wall, "ready_s": float(ready.group(1)) if ready else None,
                       "other_load_cores": load.cores}  # fmt: skip
                print(f"round {round_no} {kind:6} {name:16} {wall:6.2f} s"
                      + (f" (window ready {row['ready_s']:.2f} s)" if ready else "")
                      + f", other load {fmt_cores(load.cores)} cores")  # fmt: skip
                if round_no > 0:
                    results[name][kind].append(row)
    lines = [f"rounds: {args.rounds} (after one warm-up round); median wall seconds"]
    lines.append(f"{'command':18} {'frozen':>8} {'source':>8} {'frozen/source':>14}")
    for name in COMMANDS:
        frozen = statistics.median(r["wall_s"] for r in results[name]["frozen"])
        source = statistics.median(r["wall_s"] for r in results[name]["source"])
        lines.append(f"{name:18} {frozen:8.2f} {source:8.2f} {frozen / source:14.2f}")
    gui = results["gui --self-test"]
    lines.append(
        "window ready (median s): frozen "
        f"{statistics.median(r['ready_s'] for r in gui['frozen']):.2f}, source "
        f"{statistics.median(r['ready_s'] for r in gui['source']):.2f}"
    )
    print("\n".join(lines))
    out = ROOT / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}-frozen_startup"
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "results": results}, indent=2))
    out.with_suffix(".txt").write_text("\n".join([describe_machine(info), *lines]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
