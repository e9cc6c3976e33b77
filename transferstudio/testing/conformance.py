"""Conformance checks: every spec a plugin provides, exercised with the real host, engine and
exporters on generated data. See :mod:`transferstudio.testing`.

At about 470 lines this module is over the house's 400 on purpose: it is the one page a plugin
author reads to learn what "conforms" means, a check per spec kind beside the isolated hosts
they run in; split, the four checks would each import the same host and report helpers.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferstudio.api import (
    ROLE_EPISODES,
    ROLE_MULTILABEL,
    ROLE_UNLABELED_TARGET,
    TASK_DETECTION,
    BackboneSpec,
    DatasetSpec,
    DetectionListing,
    ExperimentError,
    ExporterSpec,
    MethodSpec,
    Preprocessing,
    SourceListing,
)
from transferstudio.core.data.detection_demo import generate_detection_data
from transferstudio.core.plugins.host import BUILTIN_MODULE, PluginHost, PluginRecord
from transferstudio.core.plugins.spec_checks import check_spec
from transferstudio.testing.synthetic import write_class_folders, write_multilabel_csv

KIT_BACKBONE = "testkit-cnn"
"""The tiny backbone the kit trains methods with (16 features at 32 px)."""
KIT_PLUGIN = "transferstudio-testing"

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass
class CheckResult:
    """One spec's outcome: ``status`` is ``ok``, ``failed`` or ``skipped``, ``detail`` says what
    was measured or what went wrong."""

    kind: str
    name: str
    status: str
    detail: str
    seconds: float = 0.0

    def line(self) -> str:
        return f"[{self.status}] {self.kind} {self.name}: {self.detail} ({self.seconds:.1f} s)"


@dataclass
class ConformanceReport:
    """Every check run on one plugin."""

    plugin: str
    version: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No check failed (skipped checks are listed but do not fail)."""
        return bool(self.results) and all(r.status != FAILED for r in self.results)

    def text(self) -> str:
        lines = [f"{self.plugin} {self.version}"] + ["  " + r.line() for r in self.results]
        failed = sum(r.status == FAILED for r in self.results)
        skipped = sum(r.status == SKIPPED for r in self.results)
        lines.append(
            f"{len(self.results)} check(s): {failed} failed, {skipped} skipped"
            + ("" if failed else " - conforms")
        )
        return "\n".join(lines)


# --------------------------------------------------------------------------- hosts


def _build_kit_cnn(num_classes: int = 10):
    from collections import OrderedDict

    from torch import nn

    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1),
                nn.BatchNorm2d(8),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1),
                nn.BatchNorm2d(16),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 16, 3, padding=1),
                nn.BatchNorm2d(16),
                nn.ReLU(),
            ),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(16, num_classes),
        )
    )


KIT_DATA_SOURCES = ("image-folder", "csv", "voc")
"""The standard data sources the kit's plugin offers (methods read their generated data with
them; detection methods read Pascal VOC)."""


def kit_plugin(taken: PluginHost | None = None):
    """The kit's own plugin: the backbone :data:`KIT_BACKBONE` methods are checked with, and
    the standard data sources (image folder, CSV) they read their generated data with; specs
    whose names ``taken`` already holds are left out."""
    from transferstudio.core.plugins.host import plugin_from_namespace

    backbone = BackboneSpec(
        name=KIT_BACKBONE,
        family="test kit",
        feature_dim=16,
        build=_build_kit_cnn,
        classifier="fc",
        preprocessing=Preprocessing(resize=32, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3),
        description="a tiny CNN the test kit trains methods with",
        # Three resolutions (strides 2, 4, 4): enough for a detection method's pyramid.
        stages=("features.3", "features.7", "features.10"),
    )

    def datasets():
        # Loaded by name through the host, as the application loads them: the kit reads its
        # generated data with TransferStudio's own data sources, without importing their code.
        standard = PluginHost()
        standard.load_module(BUILTIN_MODULE, name="transferstudio")
        return [
            spec
            for name, spec in standard.datasets.items()
            if name in KIT_DATA_SOURCES and (taken is None or name not in taken.datasets)
        ]

    return plugin_from_namespace(
        KIT_PLUGIN, transferstudio_backbones=lambda: [backbone], transferstudio_datasets=datasets
    )


def isolated_host(*plugins: Any, builtins: bool = False, kit: bool = True) -> PluginHost:
    """A plugin host holding only ``plugins`` (plugin modules or objects, or importable module
    names); TransferStudio's built-ins with ``builtins=True``; and, unless ``kit=False``, the
    kit's tiny backbone and the standard data sources (image folder, CSV) that methods need to
    read data. Nothing installed is discovered. A plugin that is refused or fails to load is
    recorded in ``host.records`` as usual."""
    host, _ = _host_with(plugins, builtins, kit)
    return host


def _host_with(plugins, builtins: bool, kit: bool) -> tuple[PluginHost, list[PluginRecord]]:
    from transferstudio import __version__

    host = PluginHost()
    if builtins:
        host.load_module(BUILTIN_MODULE, name="transferstudio")
    records = []
    for plugin in plugins:
        if isinstance(plugin, str):
            host.load_module(plugin)
            records.append(host.records[-1])
        else:
            records.append(host.register(plugin))
    if kit:
        host.register(kit_plugin(host), PluginRecord(KIT_PLUGIN, __version__, __name__))
    return host, records


# --------------------------------------------------------------------------- the checks


def check_plugin(
    plugin: Any,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    workdir: str | Path | None = None,
    conflicts: Sequence[str] = (),
) -> ConformanceReport:
    """Exercise every spec ``plugin`` provides (see the module docstring); ``params`` gives
    method parameters by method name, for methods that need settings no check can guess (a
    teacher run, say). ``workdir`` keeps the generated data and files (default: a temporary
    folder, removed afterwards). ``conflicts`` are problems the plugin had when loaded with the
    other installed plugins (a name another plugin provides first,
    :attr:`~transferstudio.core.plugins.host.PluginRecord.conflicts`): the plugin is checked on its
    own here, so they are passed in and fail the report.

    A spec whose declaration is unsound (:func:`transferstudio.core.plugins.spec_checks.check_spec`: a
    setting's default outside its own range, preprocessing the pipeline cannot apply, ...) is
    not registered by the host, exactly as at a normal start, and fails the report by name."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="transferstudio-check-") as tmp:
            return check_plugin(plugin, params, tmp, conflicts)
    workdir = Path(workdir)
    host, (record,) = _host_with([plugin], builtins=False, kit=True)
    report = ConformanceReport(record.name, record.version)
    for error in [*record.errors, *conflicts]:
        report.results.append(CheckResult("plugin", record.name, FAILED, error.splitlines()[0]))
    methods = {name: host.methods[name] for name in record.provides.get("methods", [])}
    bad_params = param_problems(methods, params or {})
    for method, problem in bad_params:
        report.results.append(CheckResult("method", method, FAILED, f"params: {problem}"))
    checks: dict[str, Callable[..., CheckResult]] = {
        "backbones": lambda name: _timed("backbone", name, check_backbone, host.backbones[name]),
        "methods": lambda name: _timed(
            "method",
            name,
            check_method,
            host,
            host.methods[name],
            workdir / f"method-{name}",
            dict((params or {}).get(name, {})),
        ),  # fmt: skip
        "exporters": lambda name: _timed(
            "exporter", name, check_exporter, host.exporters[name], workdir / f"exporter-{name}"
        ),
        "datasets": lambda name: _timed(
            "dataset", name, check_dataset, host.datasets[name], workdir / f"dataset-{name}"
        ),
    }
    refused = {method for method, _ in bad_params}
    for kind, names in record.provides.items():
        for name in names:
            if not (kind == "methods" and name in refused):  # failed above, nothing to train
                report.results.append(checks[kind](name))
    if record.status in ("ok", "partial") and not record.provides:
        report.results.append(
            CheckResult("plugin", record.name, FAILED, "provides nothing: no hook returned a spec")
        )
    return report


def param_problems(
    methods: Mapping[str, MethodSpec], params: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, str]]:
    """``(method, problem)`` for each given method parameter that cannot be used: a method the
    plugin does not provide, a key its settings lack, a value outside the setting's type, range
    or choices. Given values are the caller's, so a bad one is an error, never a skipped
    check (``transferstudio plugins check --param`` exits non-zero on it)."""
    from transferstudio.core.settings import params as P

    problems = []
    for method, values in params.items():
        if method not in methods:
            provided = ", ".join(sorted(methods)) or "none"
            problems.append(
                (method, f"{method}: this plugin has no method {method!r}; it provides: {provided}")
            )
            continue
        for key, value in values.items():
            try:
                P.build(methods[method].params, {key: value}, f"{method}.")
            except ExperimentError as exc:
                problems.append((method, str(exc)))
    return problems


def assert_conforms(plugin: Any, **kwargs: Any) -> ConformanceReport:
    """:func:`check_plugin`, failing with the whole report when a check failed."""
    report = check_plugin(plugin, **kwargs)
    assert report.ok, "plugin does not conform:\n" + report.text()
    return report


def _timed(kind: str, name: str, check: Callable[..., str], *args: Any) -> CheckResult:
    start = time.perf_counter()
    try:
        status, detail = check(*args)
    except Exception as exc:  # noqa: BLE001 - any failure of the plugin is the check's result
        message = str(exc).splitlines()[0] if str(exc) else ""
        status, detail = FAILED, f"{type(exc).__name__}: {message}"
    return CheckResult(kind, name, status, detail, time.perf_counter() - start)


def check_backbone(spec: BackboneSpec) -> tuple[str, str]:
    """Builds without downloading, its classifier path exists, features have ``feature_dim``
    columns at its crop size, and weights it ships (``packaged_weights``) load."""
    import torch

    from transferstudio.core.models.build import build_backbone
    from transferstudio.core.models.weights import find_cached

    if problems := check_spec(spec):  # the loader's checks, for callers passing any spec
        return FAILED, "; ".join(problems)
    pre = spec.preprocessing
    weights = find_cached(spec) if spec.packaged_weights is not None else None
    model = build_backbone(spec, weights).eval()
    batch = torch.rand(2, 3, pre.crop, pre.crop)
    with torch.no_grad():
        features = model(batch)
    if tuple(features.shape) != (2, spec.feature_dim):
        return FAILED, (
            f"features have shape {tuple(features.shape)} for 2 images at {pre.crop} px; "
            f"feature_dim says {spec.feature_dim}"
        )
    if not torch.isfinite(features).all():
        return FAILED, "features are not finite"
    source = f"packaged weights {Path(weights).name} loaded" if weights else "no packaged weights"
    detector = _check_stages(spec, weights) if spec.stages else "no stages: classification only"
    if detector.startswith(FAILED):
        return FAILED, detector.removeprefix(FAILED + ": ")
    return OK, f"{spec.feature_dim} features at {pre.crop} px; {source}; {detector}"


def _check_stages(spec: BackboneSpec, weights) -> str:
    """A detector on the declared stages (API 1.6) builds and trains a step on two images."""
    import torch

    from transferstudio.core.models.detector import DetectorRecipe, build_detector

    recipe = DetectorRecipe(
        spec.name, 2, pyramid_levels=min(3, len(spec.stages)), min_size=(64,), max_size=96
    )
    try:
        detector = build_detector(spec, weights, recipe).train()
    except ExperimentError as exc:
        return f"{FAILED}: {exc}"
    images = [torch.rand(3, 64, 80), torch.rand(3, 80, 64)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 10.0, 30.0, 60.0]]), "labels": torch.tensor([2])},
    ]
    loss = sum(detector(images, targets).values())
    if not torch.isfinite(loss):
        return f"{FAILED}: a detector on its stages gives a non-finite loss"
    return f"a detector trains on its {len(spec.stages)} stages"


def check_method(
    host: PluginHost, spec: MethodSpec, folder: Path, params: dict[str, Any]
) -> tuple[str, str]:
    """Two training steps through the engine on generated data for the method's roles, with the
    kit's backbone on CPU; every loss finite."""
    if problems := check_spec(spec):  # the loader's checks, for callers passing any spec
        return FAILED, "; ".join(problems)
    from transferstudio.core.progress import events as E
    from transferstudio.core.settings.experiment import from_mapping
    from transferstudio.core.training.engine import PlainState, run_experiment

    data: dict[str, Any] = {
        "val_split": 0.25,
        "test_split": 0.0,
        "batch_size": 4,
        "image_size": 32,
        "num_workers": 0,
    }
    roles = spec.data_roles
    detection = spec.task == TASK_DETECTION
    if detection:  # shapes with boxes, in a format the kit offers (Pascal VOC)
        data["path"] = str(generate_detection_data(folder / "detection", images=12, seed=0))
        data.pop("image_size")
    elif ROLE_MULTILABEL in roles:
        data["path"] = str(write_multilabel_csv(folder / "multilabel"))
        data["label_columns"] = ["shape", "tone"]
    elif ROLE_EPISODES in roles:  # enough classes for 5-way episodes in every split
        data["path"] = str(write_class_folders(folder / "episodes", classes=30, per_class=20))
    else:
        data["path"] = str(write_class_folders(folder / "labeled"))
    if ROLE_UNLABELED_TARGET in roles:
        data["target_path"] = str(write_class_folders(folder / "target", seed=1, invert=True))
    raw = {
        "schema_version": 1,
        "name": f"check-{spec.name}",
        "data": data,
        "augment": {"random_resized_crop": False, "hflip": False},
        "model": {"backbone": KIT_BACKBONE, "weights": "none"},
        "train": {"epochs": 1, "device": "cpu", "lr": 0.01, "seed": 0},
        "method": {"name": spec.name, "params": params},
    }
    if detection:
        raw["task"] = TASK_DETECTION
        raw["train"]["early_stopping_metric"] = "map50"
    losses: list[float] = []

    def count(event: Any) -> None:
        if isinstance(event, E.BatchEnded):
            losses.append(event.loss)
            if len(losses) >= 2:
                state.stop = True

    state = PlainState(on_event=count)
    try:
        exp = from_mapping(raw, host.method_params)
        result = run_experiment(exp, host, state, folder / "workspace")
    except ExperimentError as exc:
        key = exc.key or ""
        if not key.startswith("method.params.") or key.removeprefix("method.params.") in params:
            raise  # not a setting, or one the caller gave: a failure, not a skip
        return SKIPPED, (
            f"needs settings the check cannot guess: {exc}. Give them as params= (test kit) or "
            f"--param {spec.name}.KEY=VALUE (transferstudio plugins check)"
        )
    if result.status == "failed":
        return FAILED, f"the run failed: {result.message}"
    if len(losses) < 2:
        return FAILED, f"trained {len(losses)} step(s) in an epoch of generated data; expected 2"
    if not all(math.isfinite(x) for x in losses):
        return FAILED, f"non-finite loss: {losses}"
    trained = "2 steps on generated data, losses " + ", ".join(f"{x:.3g}" for x in losses)
    if spec.support_set:
        return OK, trained + "; " + _check_support_classifier(host, spec, folder, params)
    return OK, trained


SUPPORT_CLASSES = 5
"""Classes of the kit's support folder (5-way, as few-shot methods are commonly set up)."""


def _check_support_classifier(host, spec: MethodSpec, folder: Path, params: dict) -> str:
    """A ``support_set`` method turns a generated support folder into a classifier of its
    classes (images -> finite logits, one column per class), as ``predict --support`` does."""
    import torch

    from transferstudio.core.models.support_set import (
        read_support_folder,
        setup_without_data,
        support_classifier,
    )

    pre = host.backbone(KIT_BACKBONE).preprocessing
    meta = {
        "method": spec.name,
        "backbone": KIT_BACKBONE,
        "preprocessing": pre.to_dict(),
        "experiment": {"method": {"params": params}},
        "class_names": [f"class_{k:02d}" for k in range(SUPPORT_CLASSES)],
        "seed": 0,
    }
    method = setup_without_data(meta, host)
    root = write_class_folders(folder / "support", classes=SUPPORT_CLASSES, per_class=2, seed=3)
    support = read_support_folder(root, pre)
    classifier = support_classifier(method, support, spec.name, host)
    with torch.no_grad():
        logits = classifier(support.images)
    if tuple(logits.shape) != (len(support.targets), SUPPORT_CLASSES):
        raise AssertionError(
            f"classifier_from_support gave logits of shape {tuple(logits.shape)} for "
            f"{len(support.targets)} images of {SUPPORT_CLASSES} classes"
        )
    if not torch.isfinite(logits).all():
        raise AssertionError("classifier_from_support gave non-finite logits")
    return f"a {SUPPORT_CLASSES}-class support folder gives a classifier ({tuple(logits.shape)})"


def check_exporter(spec: ExporterSpec, folder: Path) -> tuple[str, str]:
    """Writes a small classifier (atomically) and reads it back with the same outputs, through
    the host's own verified export."""
    if problems := check_spec(spec):  # the loader's checks, for callers passing any spec
        return FAILED, "; ".join(problems)
    import torch
    from torch import nn

    from transferstudio.core.inference.export import export_module
    from transferstudio.core.models.build import ClassifierModel

    if spec.load is None and spec.verify is None:
        return FAILED, "the file is never read back: give ExporterSpec.load (API 1.1)"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    body = _build_kit_cnn()
    body.fc = nn.Identity()
    model = ClassifierModel(body, nn.Linear(16, 3)).eval()
    example = torch.rand(2, 3, 32, 32)
    target = folder / f"model{spec.suffix}"
    result = export_module(
        spec, model, example, target, {"check": "transferstudio.testing"},
        val_images=torch.rand(8, 3, 32, 32),
    )  # fmt: skip
    if not target.is_file():
        return FAILED, f"nothing was written at {target}"
    agreement = (
        f", top-1 agreement {result.val_top1_agreement:.2f}"
        if result.val_top1_agreement is not None
        else ""
    )
    return OK, (
        f"{target.name} ({target.stat().st_size} bytes) reloads with max abs difference "
        f"{result.max_abs_diff:.2g}{agreement}"
    )


def check_dataset(spec: DatasetSpec, folder: Path) -> tuple[str, str]:
    """Lists the example it writes (``write_example``); every listed image opens, and the host
    can split and train on it."""
    if problems := check_spec(spec):  # the loader's checks, for callers passing any spec
        return FAILED, "; ".join(problems)
    from transferstudio.core.data.loaders import scan
    from transferstudio.core.settings.experiment import DataSettings

    if spec.write_example is None:
        return SKIPPED, "no write_example (API 1.2), so there is no example to list"
    folder.mkdir(parents=True, exist_ok=True)
    path = spec.write_example(str(folder))
    if not spec.detect(path):
        return FAILED, f"detect() does not recognise its own example {path}"
    listing = spec.list_samples(path)
    if spec.task == TASK_DETECTION:
        return _check_detection_listing(spec, listing, path)
    if not isinstance(listing, SourceListing):
        return FAILED, f"list_samples returned {type(listing).__name__}, not SourceListing"
    samples = [s for split in listing.splits.values() for s in split]
    missing = [s.path for s in samples if not Path(s.path).is_file()]
    if missing:
        return FAILED, f"{len(missing)} listed file(s) do not exist, e.g. {missing[0]}"
    result = scan(spec, DataSettings(path=path, source=spec.name), Path(path), workers=1)
    if result.skipped:
        where, why = result.skipped[0]
        return FAILED, f"{len(result.skipped)} file(s) of its own example unusable: {where}: {why}"
    counts = {k: len(v) for k, v in result.splits.items()}
    return OK, f"{len(samples)} images of {len(result.classes)} classes, split {counts}"


def _check_detection_listing(spec: DatasetSpec, listing, path: str) -> tuple[str, str]:
    """A detection format's example: a :class:`DetectionListing` whose every image exists and
    whose boxes all pass the host's checks (none clipped or left out), with boxes to train on."""
    from transferstudio.core.data.detection_scan import scan_detection
    from transferstudio.core.settings.experiment import DataSettings

    if not isinstance(listing, DetectionListing):
        return FAILED, (
            f"list_samples returned {type(listing).__name__}, not DetectionListing (the "
            "format declares task 'detection')"
        )
    samples = [s for split in listing.splits.values() for s in split]
    missing = [s.path for s in samples if not Path(s.path).is_file()]
    if missing:
        return FAILED, f"{len(missing)} listed file(s) do not exist, e.g. {missing[0]}"
    result = scan_detection(spec, DataSettings(path=path, source=spec.name), Path(path), 1)
    for title, entries in (("unusable", result.skipped), ("box problem(s)", result.problems)):
        if entries:
            where, why = entries[0]
            return FAILED, f"{len(entries)} {title} in its own example: {where}: {why}"
    boxes = sum(len(s.boxes) for split in result.splits.values() for s in split)
    counts = {k: len(v) for k, v in result.splits.items()}
    return OK, (
        f"{len(samples)} images, {boxes} boxes of {len(result.classes)} classes, split {counts}"
    )
