"""Small CNN backbones for small images: ``lenet`` (digits) and ``conv4`` (few-shot learning).

Both are built from ``nn.Sequential`` with named children, so the classifier path is a plain
child name the host can replace, and torch is imported only when one is built.
"""

from __future__ import annotations

from transferstudio.api import BackboneSpec, Preprocessing

LENET_FEATURE_DIM = 100
CONV4_FEATURE_DIM = 64
_HALF = (0.5, 0.5, 0.5)


def build_lenet(num_classes: int = 10):
    """LeNet-5-size digit network (as in the DANN/ADDA digit experiments), RGB input.

    ``features`` (two 5x5 conv-ReLU-maxpool blocks) -> ``pool`` (adaptive average to 4x4, so any
    input of at least 28 px gives the same width; at 28 px it changes nothing) -> ``flatten`` ->
    ``bottleneck`` (768 -> 100, ReLU) -> ``fc`` (100 -> ``num_classes``, the classifier).
    """
    from collections import OrderedDict

    from torch import nn

    features = nn.Sequential(
        nn.Conv2d(3, 32, kernel_size=5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 48, kernel_size=5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )
    bottleneck = nn.Sequential(nn.Linear(48 * 4 * 4, LENET_FEATURE_DIM), nn.ReLU(inplace=True))
    return nn.Sequential(
        OrderedDict(
            features=features,
            pool=nn.AdaptiveAvgPool2d(4),
            flatten=nn.Flatten(),
            bottleneck=bottleneck,
            fc=nn.Linear(LENET_FEATURE_DIM, num_classes),
        )
    )


def build_conv4(num_classes: int = 64):
    """The 4-block few-shot ConvNet (Vinyals et al. 2016, Snell et al. 2017), RGB input.

    ``encoder``: 4 x [conv 3x3 (64 channels, padding 1), BatchNorm, ReLU, maxpool 2] ->
    ``pool`` (adaptive average to 1x1) -> ``flatten`` -> ``fc`` (a placeholder classifier the
    host replaces). At 28 px (Omniglot) the encoder already ends at 1x1, so the 64-d features
    are exactly the standard ones; larger inputs (e.g. 84 px miniImageNet, 5x5 maps) are
    averaged globally instead of flattened to 1600, keeping ``feature_dim`` at 64.
    """
    from collections import OrderedDict

    from torch import nn

    def block(in_channels: int):
        return nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )

    return nn.Sequential(
        OrderedDict(
            encoder=nn.Sequential(block(3), block(64), block(64), block(64)),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(CONV4_FEATURE_DIM, num_classes),
        )
    )


def small_backbones() -> list[BackboneSpec]:
    """``lenet`` and ``conv4``: randomly initialised small CNNs (no pretrained weights)."""
    return [
        BackboneSpec(
            name="lenet",
            family="small CNN",
            feature_dim=LENET_FEATURE_DIM,
            build=build_lenet,
            classifier="fc",
            preprocessing=Preprocessing(resize=32, crop=28, mean=_HALF, std=_HALF),
            description="LeNet-5-size CNN for 28-32 px digits (MNIST, USPS, SVHN); "
            "100-d features; train from scratch",
            approx_params=118_790,
        ),
        BackboneSpec(
            name="conv4",
            family="small CNN",
            feature_dim=CONV4_FEATURE_DIM,
            build=build_conv4,
            classifier="fc",
            preprocessing=Preprocessing(resize=28, crop=28, mean=_HALF, std=_HALF),
            description="4-block few-shot ConvNet (64 channels, BatchNorm); 64-d globally "
            "pooled features; Omniglot-size input",
            approx_params=117_248,
        ),
    ]
