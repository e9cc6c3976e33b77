"""Shared helpers of the benchmark scripts: the machine description and other processes' load.

Not a benchmark itself; the scripts next to it import it (``python benchmarks/X.py`` puts this
folder first on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "plugins"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


SHARED_DATA = ROOT.parent / "shared" / "data"
"""The reference data beside the project (``../shared/data``), never copied into it."""


def missing_shared_data(*paths: Path) -> bool:
    """True (after printing why) when one of ``paths`` is absent: benchmarks on the shared
    reference data exit 0 with this message instead of failing."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(
            f"SKIPPED: the shared reference data is not available ({missing[0]} is missing; "
            f"expected under {SHARED_DATA}, beside the project). Nothing was measured."
        )
    return bool(missing)


def machine() -> dict:
    """CPU count, torch version and threads, Python, platform, CPU model."""
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
    }


def describe_machine(info: dict) -> str:
    return (
        f"machine: {info['processor']}; os.cpu_count()={info['cpu_count']} "
        f"(affinity {info['affinity']}); torch {info['torch']}, "
        f"torch.get_num_threads()={info['torch_threads']}; python {info['python']}; "
        f"{info['platform']}"
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt_cores(cores: float | None) -> str:
    return "n/a" if cores is None else f"{cores:.2f}"


class OtherLoad:
    """CPU time that other processes used while a block ran, in cores (0 = machine to itself).

    /proc/stat's busy time of the whole machine minus this process's own CPU time (and that of
    its reaped children, e.g. DataLoader workers), divided by the wall time. Linux only;
    ``cores`` is ``None`` elsewhere.
    """

    cores: float | None = None

    def __enter__(self) -> OtherLoad:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_seconds(), own_cpu_seconds()
        return self

    def __exit__(self, *exc) -> bool:
        wall = time.perf_counter() - self.t0
        busy1 = _busy_seconds()
        self.cores = (
            None
            if busy1 is None or self.busy0 is None or wall <= 0
            else max(0.0, (busy1 - self.busy0 - (own_cpu_seconds() - self.own0)) / wall)
        )
        return False


def wait_quiet(threshold: float, max_wait: float) -> tuple[float, float | None]:
    """Wait (up to ``max_wait`` s) until other processes use less than ``threshold`` cores over
    half a second. Returns the seconds waited and the last reading."""
    t0 = time.monotonic()
    while True:
        with OtherLoad() as probe:
            time.sleep(0.5)
        if probe.cores is None or probe.cores < threshold or time.monotonic() - t0 >= max_wait:
            return max(0.0, time.monotonic() - t0 - 0.5), probe.cores


def _busy_seconds() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    busy = sum(values) - values[3] - values[4]
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its reaped children so far."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def alternate_rounds(
    measure, first: str, second: str, rounds: int, max_other: float, budget_s: float, note_discarded
) -> list[dict]:
    """Run ``measure(kind, round)`` for ``first`` then ``second`` until ``rounds`` rounds were
    clean (other processes used at most ``max_other`` cores in both runs), at most ``3 * rounds``
    rounds or ``budget_s`` seconds. Each round is ``{first: ..., second: ..., "ratio":
    second/first images per s, "clean": bool}``; ``note_discarded(n)`` is told of unclean ones."""
    t_start = time.monotonic()
    done: list[dict] = []
    while (
        sum(r["clean"] for r in done) < rounds
        and len(done) < 3 * rounds
        and time.monotonic() - t_start < budget_s
    ):
        pair = {first: measure(first, len(done) + 1), second: measure(second, len(done) + 1)}
        pair["ratio"] = pair[second]["images_per_s"] / pair[first]["images_per_s"]
        pair["clean"] = all(
            pair[k]["other_load_cores"] is None or pair[k]["other_load_cores"] <= max_other
            for k in (first, second)
        )
        if not pair["clean"]:
            note_discarded(len(done) + 1)
        done.append(pair)
    return done
