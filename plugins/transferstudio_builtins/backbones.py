"""torchvision classification backbones. torchvision is imported only when one is built."""

from __future__ import annotations

import re
from functools import partial

from transferstudio.api import BackboneSpec, Preprocessing

# name: (family, classifier path, feature dim, resize, interpolation, approx params, cache files)
_TABLE = {
    "resnet18": ("ResNet", "fc", 512, 256, "bilinear", 11_689_512, ("resnet18-f37072fd.pth",)),
    "resnet34": ("ResNet", "fc", 512, 256, "bilinear", 21_797_672, ("resnet34-b627a593.pth",)),
    "resnet50": (
        "ResNet",
        "fc",
        2048,
        232,
        "bilinear",
        25_557_032,
        ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth"),
    ),
    "mobilenet_v2": (
        "MobileNet",
        "classifier",
        1280,
        232,
        "bilinear",
        3_504_872,
        ("mobilenet_v2-7ebf99e0.pth", "mobilenet_v2-b0353104.pth"),
    ),
    "mobilenet_v3_small": (
        "MobileNet",
        "classifier.3",
        1024,
        256,
        "bilinear",
        2_542_856,
        ("mobilenet_v3_small-047dcff4.pth",),
    ),
    "mobilenet_v3_large": (
        "MobileNet",
        "classifier.3",
        1280,
        232,
        "bilinear",
        5_483_032,
        ("mobilenet_v3_large-5c1a4163.pth", "mobilenet_v3_large-8738ca79.pth"),
    ),
    "efficientnet_b0": (
        "EfficientNet",
        "classifier",
        1280,
        256,
        "bicubic",
        5_288_548,
        ("efficientnet_b0_rwightman-7f5810bc.pth",),
    ),
    "convnext_tiny": (
        "ConvNeXt",
        "classifier.2",
        768,
        236,
        "bilinear",
        28_589_128,
        ("convnext_tiny-983f1562.pth",),
    ),
    "vit_b_16": (
        "Vision Transformer",
        "heads",
        768,
        256,
        "bilinear",
        86_567_656,
        ("vit_b_16-c867db91.pth",),
    ),
    "densenet121": (
        "DenseNet",
        "classifier",
        1024,
        256,
        "bilinear",
        7_978_856,
        ("densenet121-a639ec97.pth",),
    ),
    "regnet_y_400mf": (
        "RegNet",
        "fc",
        440,
        232,
        "bilinear",
        4_344_144,
        ("regnet_y_400mf-e6988f5f.pth", "regnet_y_400mf-c65dace8.pth"),
    ),
}

# torchvision's published DenseNet checkpoints use the legacy key style "norm.1"; torchvision
# renames them on load with this same pattern.
_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
_STAGES = {
    # The last module at each resolution (strides 4, 8, 16, 32): a detector's feature pyramid.
    # ViT-B/16 has one resolution only, so it offers no stages and serves classification alone.
    "resnet18": _RESNET_STAGES,
    "resnet34": _RESNET_STAGES,
    "resnet50": _RESNET_STAGES,
    "mobilenet_v2": ("features.3", "features.6", "features.13", "features.18"),
    "mobilenet_v3_small": ("features.1", "features.3", "features.8", "features.12"),
    "mobilenet_v3_large": ("features.3", "features.6", "features.12", "features.16"),
    "efficientnet_b0": ("features.2", "features.3", "features.5", "features.8"),
    "convnext_tiny": ("features.1", "features.3", "features.5", "features.7"),
    "densenet121": (
        "features.denseblock1",
        "features.denseblock2",
        "features.denseblock3",
        "features.norm5",
    ),
    "regnet_y_400mf": tuple(f"trunk_output.block{i}" for i in range(1, 5)),
}

_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _densenet_keys(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        match = _DENSENET_LEGACY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def _build(name: str):
    import torchvision.models

    # weights=None: the architecture only. Weights come from a local file, never a download.
    return torchvision.models.get_model(name, weights=None)


def torchvision_backbones() -> list[BackboneSpec]:
    """The torchvision classification families TransferStudio ships with."""
    specs = []
    for name, (family, classifier, dim, resize, interp, n_params, files) in _TABLE.items():
        specs.append(
            BackboneSpec(
                name=name,
                family=family,
                feature_dim=dim,
                build=partial(_build, name),
                classifier=classifier,
                preprocessing=Preprocessing(resize=resize, crop=224, interpolation=interp),
                cache_files=files,
                description=f"torchvision {name} (ImageNet-1k architecture)",
                approx_params=n_params,
                convert_state_dict=_densenet_keys if family == "DenseNet" else None,
                stages=_STAGES.get(name, ()),
            )
        )
    return specs
