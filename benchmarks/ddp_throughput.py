"""Training throughput of one process against two torchrun processes (DDP, Gloo) on this CPU.

Same experiment both ways: fine-tune ResNet-18 (random init) at 64 px on the procedural demo
set (480 train + 120 val images), global batch 32, 3 epochs, no augmentation, no DataLoader
workers. One process uses torch's default threads (the machine's cores); each of the two
processes uses 1 thread (``OMP_NUM_THREADS=1``, as torchrun sets by default), so both use the
same cores. The figure is training + validation images per second of epochs 2-3, from the
epoch times rank 0 prints ("epoch 2/3 (S s): ..."; epoch 1 is warm-up).

    python benchmarks/ddp_throughput.py [--rounds 3]

Prints a table and writes ``benchmarks/results/<date>-ddp_throughput.{txt,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, OtherLoad, alternate_rounds, describe_machine, fmt_cores, machine

EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) \(([\d.]+) s\)")


def _experiment(tmp: Path) -> Path:
    from transferstudio.core.data.demo import generate_demo_data
    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.settings.experiment import from_mapping

    data = generate_demo_data(tmp / "data", per_class=150)
    raw = {
        "schema_version": 1,
        "name": "ddp-bench",
        "data": {"path": str(data), "val_split": 0.2, "batch_size": 32, "image_size": 64,
                 "num_workers": 0},
        "augment": {"random_resized_crop": False, "hflip": False},
        "model": {"backbone": "resnet18", "weights": "none"},
        "train": {"epochs": 3, "device": "cpu", "lr": 0.001, "seed": 0},
        "method": {"name": "fine-tune", "params": {}},
    }  # fmt: skip
    path = tmp / "exp.toml"
    path.write_text(from_mapping(raw, load_plugins(autoload=False).method_params).to_toml())
    return path


def _epoch_seconds(console: str) -> list[float]:
    return [float(m.group(3)) for m in EPOCH_LINE.finditer(console)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--label", default="", help="appended to the result files' names (keeps earlier ones)"
    )
    args = parser.parse_args()
    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    exp = _experiment(tmp)
    images = 600  # train + val per epoch

    def measure(kind: str, round_no: int) -> dict:
        workspace = tmp / f"{kind}-{round_no}"
        env = {**os.environ, "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD": "1"}
        cli = ["-m", "transferstudio", "--workspace", str(workspace), "run", str(exp)]
        if kind == "2 processes":
            env["OMP_NUM_THREADS"] = "1"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node=2", *cli]  # fmt: skip
        else:
            cmd = [sys.executable, *cli]
        with OtherLoad() as load:
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{kind} failed:\n{done.stdout}\n{done.stderr}")
        seconds = _epoch_seconds(done.stdout)[1:]
        rate = images * len(seconds) / sum(seconds)
        print(f"round {round_no} {kind:12}: epochs 2-3 {sum(seconds):6.2f} s, {rate:6.1f} "
              f"images/s (wall {wall:.1f} s, other load {fmt_cores(load.cores)} cores)")  # fmt: skip
        return {"images_per_s": rate, "epoch_s": seconds, "wall_s": wall,
                "other_load_cores": load.cores}  # fmt: skip

    print(describe_machine(info))
    rounds = alternate_rounds(
        measure, "1 process", "2 processes", args.rounds, 0.25, 1800,
        lambda n: print(f"round {n} set aside: other processes were busy"),
    )  # fmt: skip
    clean = [r for r in rounds if r["clean"]]
    ratios = sorted(r["ratio"] for r in clean)
    median = ratios[len(ratios) // 2] if ratios else float("nan")
    lines = [
        f"rounds: {len(rounds)} ({len(clean)} clean)",
        f"median ratio, 2 processes / 1 process images/s: {median:.2f} "
        f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})",
    ]
    print("\n".join(lines))
    name = f"{time.strftime('%Y-%m-%d')}-ddp_throughput" + (f"-{args.label}" if args.label else "")
    out = ROOT / "benchmarks" / "results" / name
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "rounds": rounds}, indent=2))
    out.with_suffix(".txt").write_text("\n".join([describe_machine(info), *lines]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
