"""Models in the plugin API: backbones (:class:`BackboneSpec`) with their image
preprocessing, and model file formats (:class:`ExporterSpec`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

__all__ = [
    "BUNDLE_MANIFEST_ENTRY",
    "BUNDLE_WEIGHTS_ENTRY",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneSpec",
    "ExporterSpec",
    "Preprocessing",
]

if TYPE_CHECKING:  # pragma: no cover - typing only
    from torch import nn

BUNDLE_WEIGHTS_ENTRY = "weights.safetensors"
BUNDLE_MANIFEST_ENTRY = "manifest.json"
"""(API 1.2) The two entries of a model bundle (``.tsmodel``, a zip): the module's weights as
safetensors and the JSON manifest (architecture recipe, class names, preprocessing, provenance).
See docs/exporting.md."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a backbone: resize the short side, centre-crop, normalise."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls(
            resize=int(data["resize"]),
            crop=int(data["crop"]),
            mean=tuple(float(x) for x in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in data["std"]),  # type: ignore[arg-type]
            interpolation=str(data.get("interpolation", "bilinear")),
        )

    def resized_for(self, crop: int) -> Preprocessing:
        """The same preprocessing at another crop size, keeping the resize/crop ratio."""
        return dataclasses.replace(self, crop=crop, resize=round(crop * self.resize / self.crop))


@dataclass(frozen=True)
class BackboneSpec:
    """A network that turns an image batch into a feature vector per image.

    ``build()`` returns the architecture with its original classifier, uninitialised or
    randomly initialised, and must not download anything. ``classifier`` is the dotted path of
    the layer the host replaces by its own head (e.g. ``"fc"``); ``feature_dim`` is that layer's
    input width. ``cache_files`` name pretrained weights files as they sit in the local torch
    cache (``$TORCH_HOME/hub/checkpoints``), preferred first, for the ``weights = "cache"`` source.
    ``packaged_weights`` (API 1.2) returns the path of a pretrained weights file the plugin ships
    itself (inside its wheel, say); ``weights = "cache"`` prefers it to the torch cache.
    ``stages`` (API 1.6) names, shallow to deep, the modules of ``build()``'s network whose
    outputs are its feature maps (``"layer1"`` ... ``"layer4"`` for a ResNet), each coarser than
    the one before: a detector takes its feature pyramid from them. Empty: the backbone cannot
    be used for detection.
    """

    name: str
    family: str
    feature_dim: int
    build: Callable[[], nn.Module]
    classifier: str
    preprocessing: Preprocessing = Preprocessing()
    cache_files: tuple[str, ...] = ()
    description: str = ""
    approx_params: int | None = None
    convert_state_dict: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Optional: rename keys of a stored state dict (legacy checkpoints) before loading."""
    packaged_weights: Callable[[], str] | None = None
    stages: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExporterSpec:
    """A model file format. ``export(module, example_input, path, metadata)`` writes the file.
    ``load(module, path)`` (API 1.1) returns the written file reloaded as a callable
    ``images -> outputs``: the host compares it with the module on the example and on
    validation images (max abs difference, top-1 agreement). Exporters without ``load`` may give
    ``verify(module, example_input, path)``, returning the max abs difference on the example."""

    format: str
    suffix: str
    export: Callable[..., None]
    description: str = ""
    verify: Callable[..., float] | None = None
    load: Callable[..., Callable[[Any], Any]] | None = None
