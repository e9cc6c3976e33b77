"""Exporting a module (the whole model or any sub-module) through an exporter plugin, atomically,
then verifying the written file against the module on a sample batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferstudio.api import ExporterSpec, TransferStudioError
from transferstudio.core.files.atomic import atomic_path
from transferstudio.core.inference.export_result import ExportResult, check_export_target

DEFAULT_TOLERANCE = 1e-4


def sample_input(model: nn.Module, module_path: str, batch: torch.Tensor) -> torch.Tensor:
    """The tensor ``module_path`` receives when ``model`` runs on ``batch`` (the example input of
    a sub-module, whose shape depends on where it sits)."""
    if not module_path:
        return batch
    target = model.get_submodule(module_path)
    captured: list[torch.Tensor] = []

    def grab(module, inputs):
        captured.append(inputs[0].detach())

    handle = target.register_forward_pre_hook(grab)
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(batch)
        model.train(was_training)
    finally:
        handle.remove()
    if not captured:
        raise TransferStudioError(
            f"module {module_path!r} is not used in the forward pass, so it "
            "has no example input to export with"
        )
    return captured[0]


def export_module(
    spec: ExporterSpec,
    module: nn.Module,
    example: torch.Tensor,
    target: Path,
    metadata: dict[str, Any] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    val_images: torch.Tensor | None = None,
) -> ExportResult:
    """Write ``module`` with exporter ``spec`` to ``target`` (atomically), then reload it
    (``spec.load``) and compare outputs on ``example`` and, when given, ``val_images`` (max abs
    difference and top-1 agreement); an exporter without ``load`` is checked by its ``verify``
    on ``example``. A difference above ``tolerance`` removes nothing already there and raises
    with the figures."""
    module = module.eval()
    target = Path(target)
    result = ExportResult(target, spec.format, None)
    scale = 0.0
    with atomic_path(target) as tmp:
        spec.export(module, example, tmp, dict(metadata or {}))
        if spec.load is not None:
            reloaded = spec.load(module, tmp)
            result.max_abs_diff, _, scale = _compare_on(module, reloaded, example)
            if val_images is not None and len(val_images):
                val_diff, result.val_top1_agreement, val_scale = _compare_on(
                    module, reloaded, val_images
                )
                result.val_images = len(val_images)
                result.max_abs_diff = max(result.max_abs_diff, val_diff)
                scale = max(scale, val_scale)
        elif spec.verify is not None:
            result.max_abs_diff = spec.verify(module, example, tmp)
            with torch.no_grad():
                scale = float(module(example).float().abs().max())
        diff = result.max_abs_diff
        # The tolerance is absolute for outputs within +-1 and relative to the largest output
        # beyond: float32 kernels of other runtimes (ONNX Runtime) differ by ~1e-7 relative per
        # operation, which grows with the size of the logits, not with any defect.
        limit = tolerance * max(1.0, scale)
        if diff is not None and not diff <= limit:
            agreement = (
                f", top-1 agreement {result.val_top1_agreement:.4f} on {result.val_images} "
                "validation images"
                if result.val_top1_agreement is not None
                else ""
            )
            raise TransferStudioError(
                f"the {spec.format} export does not reproduce the module: max abs difference "
                f"{diff:.3g} > tolerance {limit:.3g} ({tolerance:g} x output scale "
                f"{max(1.0, scale):.3g}){agreement}; {target} was not written"
            )
    return result


def _compare_on(module: nn.Module, reloaded, images: torch.Tensor, batch: int = 32):
    """Max abs difference, top-1 agreement (meaningful for classifier outputs) and the largest
    output (the scale of the outputs) between the module and the reloaded file."""
    worst, same, scale = 0.0, 0, 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = images[start : start + batch]
            a, b = module(x).float(), reloaded(x).float()
            worst = max(worst, float((a - b).abs().max()))
            scale = max(scale, float(a.abs().max()))
            same += int((a.argmax(1) == b.argmax(1)).sum())
    return worst, same / len(images), scale


def validation_images(folder: Path, host, preprocessing: dict, limit: int = 256):
    """Up to ``limit`` images of a run's validation split, prepared as the run prepared them;
    ``(None, reason)`` when the data is gone or is not a labeled image set. The split is the
    run's own (``splits.json``); runs from before that file existed scan their data again."""
    import json

    from transferstudio.api import Preprocessing
    from transferstudio.core.data import loaders as D
    from transferstudio.core.data.images import ImageProblem, load_rgb
    from transferstudio.core.settings.experiment import load

    try:
        if (folder / D.SPLITS_FILE).is_file():
            scan = D.ScanResult.from_dict(json.loads((folder / D.SPLITS_FILE).read_text("utf-8")))
        else:
            exp = load(folder / "experiment.toml", host.method_params)
            path = exp.resolve(exp.data.path)
            scan = D.scan(D.choose_source(host.datasets, exp.data, path), exp.data, path)
    except (TransferStudioError, OSError, ValueError, KeyError) as exc:
        return None, f"validation images not checked: {exc}"
    samples = scan.splits.get("val", [])[:limit]
    transform = D.build_transform(Preprocessing.from_dict(preprocessing), None)
    images = []
    for sample in samples:
        try:
            images.append(transform(load_rgb(sample.path)))
        except ImageProblem:
            continue
    if not images:
        return None, "validation images not checked: the run's data has no readable val images"
    return torch.stack(images), ""


def export_run(
    ref: str | Path,
    fmt: str,
    target: Path,
    host,
    workspace: Path,
    module_path: str = "",
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Export a finished run's classifier (its best checkpoint; a few-shot run's encoder or
    meta-initialisation), or one of its sub-modules, with exporter ``fmt``; provenance (see
    :func:`transferstudio.core.models.bundle.provenance`) goes into the file's metadata. An existing
    ``target`` is only replaced with ``force``."""
    from transferstudio.core.models.bundle import backbone_plugin, bundle_manifest
    from transferstudio.core.models.support_set import predicts_from_support, rebuild_method
    from transferstudio.core.runs.finished import (
        classifier_from_checkpoint,
        load_best_checkpoint,
        run_folder,
    )

    target = Path(target)
    check_export_target(target, force, fmt, host)
    folder = run_folder(ref, workspace)
    ck = load_best_checkpoint(folder)
    record = ck.record
    if record.detector_recipe:  # a detection run: its detector is checked box by box
        from transferstudio.core.inference.detection_export import export_detection_run

        return export_detection_run(ref, fmt, target, host, workspace, module_path, force)
    few_shot = predicts_from_support(ck.meta, host)
    if few_shot:  # its predictor (encoder, meta-initialisation) as the method builds it
        method = rebuild_method(ck.meta, host, ck.weights, f"run {folder}")
        model = method.predictor()
        if record.predictor_module is None:  # not recorded (v1): only the method can tell
            names = [n for n, m in method.modules().items() if m is model]
            record.predictor_module = names[0] if names else None
    else:
        model = classifier_from_checkpoint(ck, host, f"run {folder}")
    try:
        module = model.get_submodule(module_path) if module_path else model
    except AttributeError:
        raise TransferStudioError(
            f"the model has no module {module_path!r}; see the Model tree for the paths"
        ) from None
    crop = int((record.preprocessing or {}).get("crop", 224))
    batch = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    example = sample_input(model, module_path, batch)
    with torch.no_grad():
        output_shape = list(module.eval()(example).shape[1:])
    record.backbone_plugin = backbone_plugin(host, record.backbone)
    metadata = bundle_manifest(record.to_dict(), module_path, output_shape, support_set=few_shot)
    val, note = (None, "sub-module: checked on a sample batch only")
    if few_shot:
        note = "few-shot model without fixed classes: checked on a sample batch only"
    elif not module_path:
        val, note = validation_images(folder, host, record.preprocessing)
    result = export_module(
        host.exporters[fmt], module, example, target, metadata, tolerance, val_images=val
    )
    result.note = note
    return result


def export_submodule(
    spec: ExporterSpec,
    model: nn.Module,
    module_path: str,
    crop: int,
    target: Path,
    metadata: dict[str, Any],
    run_meta: dict | None = None,
) -> ExportResult:
    """Export ``module_path`` of ``model`` (``""``: the whole model), as the window's layer tree
    does: its example input is what it receives when the model runs on a fixed random batch of
    two ``crop`` x ``crop`` images. With ``run_meta`` (the checkpoint metadata of the run whose
    weights ``model`` holds) the file carries that run's provenance (a bundle manifest) in
    place of ``metadata``."""
    batch = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    module = model.get_submodule(module_path) if module_path else model
    example = sample_input(model, module_path, batch)
    info = dict(metadata)
    if run_meta is not None:
        from transferstudio.core.models.bundle import bundle_manifest

        with torch.no_grad():
            shape = list(module.eval()(example).shape[1:])
        info = bundle_manifest(run_meta, module_path, shape)
    return export_module(spec, module, example, target, info)
