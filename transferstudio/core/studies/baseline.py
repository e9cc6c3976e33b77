"""Transfer gain: what the transfer brought, measured by running the same experiment without it.

The baseline of a run is its own experiment with one thing taken away, with the same budget
(epochs, data, splits, seed, augmentation, schedule):

- by default the pretrained weights: ``model.weights = "none"`` (random initialisation); a
  detector is then trained whole with BatchNorm training (torchvision's recipe without
  pretrained weights);
- for a method whose spec names a ``baseline`` method, the method: domain adaptation becomes
  source-only fine-tuning of the same pretrained backbone, distillation the student trained
  alone. Parameters both methods share (freeze plan, learning-rate multiplier, ...) are kept.

The baseline is an ordinary run, tagged ``baseline_of = RUN``. The gain compares the figure a
user would cite: accuracy on the labeled target set for domain adaptation, else the test split's
metric when there is one, else the best validation metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferstudio.api import TASK_DETECTION, TransferStudioError
from transferstudio.core.plugins.host import PluginHost
from transferstudio.core.runs.workspace import RunStore, read_report
from transferstudio.core.settings import params as P
from transferstudio.core.settings.experiment import Experiment, from_mapping, load
from transferstudio.core.training.metrics import lower_is_better

BASELINE_OF = "baseline_of"
BASELINE_KIND = "baseline"


def baseline_experiment(exp: Experiment, host: PluginHost) -> tuple[Experiment, str]:
    """The baseline of ``exp`` and a phrase saying what it takes away."""
    spec = host.method(exp.method)
    raw = exp.to_dict()
    if spec.baseline:
        base = host.method(spec.baseline)
        shared = {f.name for f in P.fields_of(base.params)} & {
            f.name for f in P.fields_of(spec.params)
        }
        params = raw["method"]["params"]
        raw["method"] = {
            "name": base.name,
            "params": {k: v for k, v in params.items() if k in shared},
        }
        what = f"{base.name} without {exp.method}"
    else:
        if exp.model.weights == "none":
            raise TransferStudioError(
                f"experiment {exp.name!r} already starts from random initialisation "
                '(model.weights = "none"): there is no pretrained transfer to measure. Set '
                "model.weights to pretrained weights, or compare two runs yourself"
            )
        raw["model"]["weights"] = "none"
        # A method's own weights settings (fusion's per-backbone ``weights``) go too: every
        # pretrained part starts random. Empty entries already follow model.weights.
        params = raw["method"]["params"]
        for key, value in params.items():
            if key == "weights" or key.endswith("_weights"):
                if isinstance(value, str) and value:
                    params[key] = "none"
                elif isinstance(value, list):
                    params[key] = ["none" if v else v for v in value]
        what = "random initialisation"
        tree = spec.layer_tree
        if exp.task == TASK_DETECTION and tree is not None:
            # A detector from random initialisation trains whole, with BatchNorm learning its
            # statistics, as torchvision trains one without pretrained weights: frozen random
            # stages, or BatchNorm fixed at a folded file's identity statistics, would give a
            # baseline that cannot learn, not the same detector without the transfer.
            for key, cleared in (
                (tree.freeze, []),
                (tree.freeze_up_to, ""),
                (tree.bn_mode, "train"),
            ):
                if key and key in params:
                    params[key] = cleared
            what = "random initialisation (whole detector trained, BatchNorm training)"
    raw["name"] = f"{exp.name}-baseline"
    return from_mapping(raw, host.method_params, exp.base_dir, "baseline"), what


@dataclass
class Gain:
    """A run's headline figure next to its baseline's; ``gain`` is positive when the transfer
    helped (for a loss, when it lowered it)."""

    run_id: str
    baseline_id: str
    baseline: str  # what the baseline takes away
    split: str  # target | test | val
    metric: str
    transfer_value: float
    baseline_value: float

    @property
    def gain(self) -> float:
        difference = self.transfer_value - self.baseline_value
        return -difference if lower_is_better(self.metric) else difference

    def describe(self) -> str:
        """E.g. ``0.9125 vs 0.5500: +0.3625 test accuracy over random initialisation``."""
        return (
            f"{self.transfer_value:.4f} vs {self.baseline_value:.4f}: {self.gain:+.4f} "
            f"{self.split} {self.metric} over {self.baseline}"
        )


def headline(report: dict[str, Any]) -> tuple[str, str, float] | None:
    """``(split, metric, value)``: the figure of a run report that a transfer gain compares."""
    val = (report.get("val") or {}).get("metrics", {})
    if "diag_target_accuracy" in val:
        return "target", "accuracy", float(val["diag_target_accuracy"])
    metric = report.get("metric") or "accuracy"
    test = (report.get("test") or {}).get("metrics", {})
    if metric in test:
        return "test", metric, float(test[metric])
    if report.get("best_metric") is not None:
        return "val", metric, float(report["best_metric"])
    return None


def compare(store: RunStore, run_id: str, baseline_id: str) -> Gain | None:
    """The gain of run ``run_id`` over its baseline run; ``None`` until both have reports."""
    run, base = store.get(run_id), store.get(baseline_id)
    ours, theirs = read_report(run.folder), read_report(base.folder)
    if not ours or not theirs:
        return None
    a, b = headline(ours), headline(theirs)
    if a is None or b is None or a[:2] != b[:2]:
        return None
    what = store.tags(base.id).get(BASELINE_KIND, "baseline")
    return Gain(run.id, base.id, what, a[0], a[1], a[2], b[2])


def gains(store: RunStore) -> dict[str, Gain]:
    """``{run id: gain}`` for every run with a completed baseline (the latest one)."""
    out: dict[str, Gain] = {}
    for baseline_id, run_id in sorted(store.tagged(BASELINE_OF).items()):
        try:
            if store.get(baseline_id).status != "completed":
                continue
            gain = compare(store, run_id, baseline_id)
        except TransferStudioError:  # one of them was deleted
            continue
        if gain is not None:
            out[run_id] = gain
    return out


def run_baseline(run_id: str, host: PluginHost, workspace: str | Path, state=None):
    """Run the baseline of run ``run_id`` (its own ``experiment.toml``); returns the baseline's
    :class:`~transferstudio.core.training.engine.RunResult` and the :class:`Gain` (``None`` when the
    baseline did not complete)."""
    from transferstudio.core.training.engine import PlainState, run_experiment

    store = RunStore(workspace)
    record = store.get(run_id)
    if record.status != "completed":
        raise TransferStudioError(
            f"run {record.id} is {record.status}: a transfer gain compares completed runs; "
            f"finish it first (transferstudio run --resume {record.id})"
        )
    exp = load(Path(record.folder) / "experiment.toml", host.method_params)
    baseline, what = baseline_experiment(exp, host)
    tags = {BASELINE_OF: record.id, BASELINE_KIND: what}
    result = run_experiment(baseline, host, state or PlainState(), workspace, tags=tags)
    gain = compare(store, record.id, result.run_id) if result.status == "completed" else None
    return result, gain


def differences(a: Experiment, b: Experiment) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (a's value, b's value)}`` of the settings that differ (for showing what
    a baseline changed, and for tests)."""
    flat_a, flat_b = _flatten(a.to_dict()), _flatten(b.to_dict())
    return {
        k: (flat_a.get(k), flat_b.get(k))
        for k in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(k) != flat_b.get(k)
    }


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
