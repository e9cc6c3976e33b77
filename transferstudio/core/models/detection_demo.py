"""The detection demo: generated shapes with boxes (``core.data.detection_demo``) and a
detection experiment on them, with a pretrained backbone when one is installed."""

from __future__ import annotations

from pathlib import Path

from transferstudio.api import TASK_DETECTION
from transferstudio.core.data.demo import TRANSFER_BACKBONE, transfer_demo_unavailable
from transferstudio.core.data.detection_demo import generate_detection_data
from transferstudio.core.models.detector import freeze_up_to_for
from transferstudio.core.settings.experiment import new_experiment

DEMO_IMAGES = 160
DEMO_FALLBACK_BACKBONE = "mobilenet_v3_small"
"""The detection demo's backbone, from random initialisation, when EfficientNet-Lite0's
plugin (with its ImageNet weights) is not installed."""


def prepare_detection_demo(workspace: str | Path, host) -> Path:
    """Generate the detection demo's data and experiment in ``workspace/demo``; returns the
    experiment file (kept when it exists: the user may have edited it). A Faster R-CNN on
    EfficientNet-Lite0's ImageNet weights when its plugin is installed (as the classification
    demo), else on MobileNetV3-Small from random initialisation."""
    folder = Path(workspace) / "demo"
    data = generate_detection_data(folder / "detection-data", images=DEMO_IMAGES)
    exp_path = folder / "detection.toml"
    if exp_path.exists():
        return exp_path
    transfer = not transfer_demo_unavailable(host)
    backbone = TRANSFER_BACKBONE if transfer else DEMO_FALLBACK_BACKBONE
    exp = new_experiment(
        "detect",
        host.method_params("detect"),
        str(data),
        backbone,
        "detection-demo",
        "cache" if transfer else "none",
        TASK_DETECTION,
    )
    exp.method_params.freeze_up_to = freeze_up_to_for(host.backbone(backbone)) if transfer else ""
    # The shapes are 20-50 px in 128x96 images: upscaled, they meet the pyramid's anchors.
    exp.method_params.min_size, exp.method_params.max_size = 192, 256
    exp.data.test_split = 0.15
    exp.train.epochs = 8
    folder.mkdir(parents=True, exist_ok=True)
    exp_path.write_text(exp.to_toml(comments=True), encoding="utf-8")
    return exp_path
