"""Model bundles (``.tsmodel``): one zip file holding a model's safetensors weights and a
``manifest.json`` with everything needed to use it again without the run that made it: the
backbone id and head recipe, the class names, the preprocessing and the run's provenance.

The built-in ``bundle`` exporter writes the file from the manifest :func:`bundle_manifest`
builds; :func:`load_bundle` reopens it to predict, and a bundle is accepted as
``model.weights`` to fine-tune further. Nothing in a bundle is unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferstudio.api import (
    Preprocessing,
    WeightsError,
)
from transferstudio.core.models.build import build_backbone, classifier_from_recipe
from transferstudio.core.models.bundle_file import FORMAT, VERSION, read_bundle

BUNDLE_SUFFIX = ".tsmodel"


def provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """Where a checkpoint's model came from, from its metadata: run, backbone, weights source
    and hash, method and its parameters (the freeze plan among them), plugin versions, seed,
    dataset fingerprint, class map and validation metrics."""
    from transferstudio import __version__

    experiment = meta.get("experiment", {})
    return {
        "transferstudio_version": __version__,
        "run_id": meta.get("run_id"),
        "epoch": meta.get("epoch"),
        "backbone": meta.get("backbone"),
        "weights_source": meta.get("weights_source"),
        "weights_digest": meta.get("weights_digest"),
        "method": meta.get("method"),
        "method_params": experiment.get("method", {}).get("params", {}),
        "method_state": meta.get("method_state", {}),
        "plugin_versions": meta.get("plugin_versions", {}),
        # The plugin that provided the backbone (name, version): what a machine without it
        # must install to predict with the bundle.
        "backbone_plugin": meta.get("backbone_plugin"),
        "seed": meta.get("seed"),
        "dataset_fingerprint": meta.get("dataset_fingerprint"),
        "class_names": meta.get("class_names", []),
        "metrics": meta.get("metrics", {}),
    }


def bundle_manifest(
    meta: dict[str, Any],
    module_path: str,
    output_shape: list[int],
    support_set: bool | None = None,
) -> dict[str, Any]:
    """The manifest of a bundle of ``module_path`` (``""``: the whole predictor) of the run whose
    checkpoint metadata is ``meta``. A whole-classifier bundle carries the head recipe; a
    sub-module bundle (the backbone alone, say) documents its output shape instead. The whole
    predictor of a method that learns no fixed classes (few-shot) is marked ``support_set``: it
    has no class names of its own, and its method rebuilds it to predict from a support set."""
    whole = module_path in ("", meta.get("predictor_module", ""))
    # ``support_set``: the caller's decision (it may know the method of an older checkpoint).
    support_set = whole and bool(meta.get("support_set") if support_set is None else support_set)
    return {
        "format": FORMAT,
        "version": VERSION,
        "module": module_path,
        "backbone": meta.get("backbone"),
        "head_recipe": meta.get("head_recipe") if whole and not support_set else None,
        # A detector's architecture (its score threshold among it): bundle_from rebuilds it.
        "detector_recipe": meta.get("detector_recipe") if whole else None,
        "class_names": meta.get("class_names", []) if whole and not support_set else [],
        "predictor_module": meta.get("predictor_module") if whole else None,
        "support_set": support_set,
        "preprocessing": meta.get("preprocessing"),
        "output_shape": output_shape,
        "provenance": provenance(meta),
    }


@dataclass
class Bundle:
    """A reopened bundle: the model in eval mode, its classes and preprocessing."""

    model: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing
    manifest: dict[str, Any] = field(default_factory=dict)


def load_bundle(path: str | Path, host) -> Bundle:
    """Reopen a bundle as a model (eval mode): the backbone plugin named in the manifest with the
    head its recipe describes, or the exported sub-module for bundles of the backbone alone."""
    return bundle_from(*read_bundle(path), host, Path(path))


def bundle_from(
    manifest: dict[str, Any], weights: dict[str, torch.Tensor], host, path: Path
) -> Bundle:
    """:func:`load_bundle` on contents already read (:func:`read_bundle`)."""
    spec = bundle_backbone(manifest, host, path)
    recipe = manifest.get("head_recipe")
    module = manifest.get("module", "")
    if manifest.get("support_set"):
        raise WeightsError(
            f"{path} holds a {manifest.get('provenance', {}).get('method')} model, which "
            "learns no fixed classes: predict with it from a support folder "
            "(transferstudio predict --support FOLDER)"
        )
    if manifest.get("detector_recipe"):
        model: nn.Module = _detector_from(manifest, spec, weights, path)
    elif recipe:
        model = classifier_from_recipe(spec, recipe, weights, str(path))
        _check_class_count(manifest, recipe, path)  # after the recipe's own checks
    elif module.endswith("backbone"):
        model = build_backbone(spec, None)
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            raise WeightsError(
                f"{path}: its weights do not fit backbone {spec.name!r}: {str(exc).splitlines()[0]}"
            ) from None
    else:
        raise WeightsError(
            f"{path} holds module {module!r}, which TransferStudio cannot rebuild on its own "
            "(only whole classifiers and backbones can be reopened)"
        )
    pre = manifest.get("preprocessing")
    return Bundle(
        model.eval(),
        list(manifest.get("class_names", [])),
        Preprocessing.from_dict(pre) if pre else spec.preprocessing,
        manifest,
    )


def _detector_from(manifest: dict[str, Any], spec, weights, path: Path) -> nn.Module:
    """A detector bundle's detector, rebuilt from its ``detector_recipe``, with its class names
    (one per object class of the recipe)."""
    from transferstudio.core.models.detector import DetectorRecipe, detector_from_recipe

    advice = "export the model again"
    raw = manifest["detector_recipe"]
    try:
        recipe = DetectorRecipe.from_dict(raw if isinstance(raw, dict) else {})
        # Sizes are read before any weight is: a crafted manifest must not make the detector
        # allocate without bound (the ranges are those the detect method accepts).
        fits = (
            1 <= recipe.pyramid_levels <= 5
            and 16 <= recipe.fpn_channels <= 512
            and all(64 <= s <= 2048 for s in recipe.min_size)
            and 64 <= recipe.max_size <= 4096
            and 1 <= recipe.detections_per_image <= 1000
        )
    except (TypeError, ValueError):
        fits = False
    if not isinstance(raw, dict) or not fits:
        raise WeightsError(f"{path}: manifest key 'detector_recipe' is not valid; {advice}")
    names = list(manifest.get("class_names") or [])
    if len(names) != recipe.num_classes:
        raise WeightsError(
            f"{path}: manifest key 'class_names' lists {len(names)} names, but its detector "
            f"recipe has {recipe.num_classes} classes; {advice}"
        )
    model = detector_from_recipe(spec, raw, weights, str(path))
    model.class_names = names
    return model


def bundle_backbone(manifest: dict[str, Any], host, path: Path):
    """The backbone plugin's spec a bundle names; when no installed plugin provides it, a
    :class:`WeightsError` naming the plugin package its provenance records (the one that
    provided the backbone, else the recorded plugins missing here) and what to install."""
    from transferstudio.api import TransferStudioError

    name = manifest.get("backbone")
    if not isinstance(name, str) or not name:
        raise WeightsError(f"{path}: manifest key 'backbone' is missing; export the model again")
    try:
        return host.backbone(name)
    except TransferStudioError:
        pass
    prov = manifest.get("provenance") or {}
    plugin = prov.get("backbone_plugin")
    if isinstance(plugin, dict) and plugin.get("name"):
        wanted = f"{plugin['name']} {plugin.get('version', '')}".strip()
    else:  # bundles from before backbone_plugin was recorded
        recorded = prov.get("plugin_versions")
        recorded = recorded if isinstance(recorded, dict) else {}
        loaded = set(host.plugin_versions())
        missing = [f"{n} {v}" for n, v in sorted(recorded.items()) if n not in loaded]
        wanted = " or ".join(missing) or "the plugin that provides it"
    raise WeightsError(
        f"{path} needs backbone {name!r}, which no installed plugin provides; the bundle was "
        f"made with plugin {wanted}: install it (pip install ...), then check with "
        "'transferstudio plugins'"
    )


def backbone_plugin(host, backbone: str) -> dict[str, str] | None:
    """``{"name", "version"}`` of the loaded plugin that provides ``backbone``, for a bundle's
    provenance (so that a machine without it can be told what to install)."""
    for record in host.records:
        if backbone in record.provides.get("backbones", []):
            return {"name": record.name, "version": record.version}
    return None


def _check_class_count(manifest: dict[str, Any], recipe: dict, path: Path) -> None:
    """A classifier bundle lists exactly one class name per output of its head."""
    layers = recipe.get("layers") if isinstance(recipe.get("layers"), list) else []
    outputs = next(
        (
            d.get("out")
            for d in reversed(layers)
            if isinstance(d, dict) and d.get("type") == "Linear"
        ),
        None,
    )
    names = manifest.get("class_names") or []
    if isinstance(outputs, int) and len(names) != outputs:
        raise WeightsError(
            f"{path}: manifest key 'class_names' lists {len(names)} names, but its head has "
            f"{outputs} outputs; export the model again"
        )


def bundle_meta(manifest: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint-style metadata a bundle's manifest records (backbone, method and its
    parameters, classes, preprocessing, seed): what rebuilds the bundle's method."""
    prov = manifest.get("provenance", {})
    return {
        "backbone": manifest.get("backbone"),
        "method": prov.get("method"),
        "experiment": {"method": {"params": prov.get("method_params", {})}},
        "class_names": prov.get("class_names", []),
        "preprocessing": manifest.get("preprocessing"),
        "seed": prov.get("seed"),
        "support_set": bool(manifest.get("support_set")),
        "predictor_module": manifest.get("predictor_module"),
    }
