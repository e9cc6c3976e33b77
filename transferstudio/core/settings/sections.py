"""The sections of an experiment file: ``[data]``, ``[augment]``, ``[model]`` and ``[train]``.

Each is a settings dataclass whose fields carry their default, limits and help
(:func:`transferstudio.api.param`); the form in the window, the file's comments and the
validation all come from them.
"""

from __future__ import annotations

import dataclasses

from transferstudio.api import param

MIN_IMAGE_SIZE = 16
"""The smallest ``data.image_size`` (other than 0): below it even the smallest built-in
backbones (lenet, conv4) shrink to nothing inside; most ImageNet ones need 32, vit_b_16 224."""


@dataclasses.dataclass
class AugmentSettings:
    """Random augmentation of training images (validation and test images are never augmented)."""

    random_resized_crop: bool = param(
        True, help="random crop of a random area, resized to the input size"
    )
    crop_scale_min: float = param(
        0.5, min=0.05, max=1.0, help="smallest crop area, as a fraction of the image"
    )
    hflip: bool = param(True, help="random horizontal flip")
    rotation: float = param(0.0, min=0.0, max=180.0, help="random rotation up to this many degrees")
    color_jitter: float = param(
        0.0, min=0.0, max=1.0, help="brightness/contrast/saturation jitter strength"
    )

    @property
    def any_random(self) -> bool:
        return self.random_resized_crop or self.hflip or self.rotation > 0 or self.color_jitter > 0


@dataclasses.dataclass
class DataSettings:
    """Where the images are and how they are split and batched."""

    path: str = param(
        "", help="image folder (class subfolders, or train/val[/test] folders) or CSV file"
    )
    source: str = param(
        "auto", help="data-source plugin; 'auto' picks the one that recognises the path"
    )
    target_path: str = param("", help="domain adaptation: folder of unlabeled target-domain images")
    target_eval_path: str = param(
        "",
        help="optional labeled target folder (class subfolders), used only to evaluate "
        "target accuracy",
    )
    label_columns: list[str] = param([], help="multi-task: the CSV's label columns, one task each")
    val_split: float = param(
        0.2,
        min=0.0,
        max=0.9,
        help="fraction held out for validation when the data has no val folder",
    )
    test_split: float = param(
        0.0, min=0.0, max=0.9, help="fraction held out for testing when the data has no test folder"
    )
    split_seed: int = param(0, min=0, help="seed of the stratified split")
    batch_size: int = param(32, min=1, max=4096, help="images per batch")
    image_size: int = param(
        0, min=0, max=1024, help="input size; 0 uses the backbone's own preprocessing"
    )
    num_workers: int = param(
        -1, min=-1, max=64, help="DataLoader worker processes; -1 chooses for this machine"
    )


@dataclasses.dataclass
class ModelSettings:
    """The backbone, its starting weights and the new head."""

    backbone: str = param("resnet18", help="backbone plugin id (see 'transferstudio plugins')")
    weights: str = param(
        "none",
        help="'none' (random init), 'cache' (the backbone's pretrained weights from local files: "
        "the plugin's own, else the local torch cache), a .pth/.pt/.safetensors/.tsmodel path or "
        "a run folder",
    )
    head_dropout: float = param(
        0.0, min=0.0, max=0.95, help="dropout before the classification head"
    )


@dataclasses.dataclass
class TrainSettings:
    """The optimisation loop the engine runs for every method."""

    epochs: int = param(10, min=1, max=10000, help="number of epochs")
    device: str = param(
        "auto", help="'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'cuda:1', 'mps'"
    )
    precision: str = param(
        "auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="mixed precision on CUDA ('auto': bf16 where supported, else fp16)",
    )
    optimizer: str = param("adamw", choices=["adamw", "sgd"], help="optimizer")
    lr: float = param(
        1e-3,
        min=0.0,
        max=10.0,
        help="learning rate of the head (the backbone's may be scaled by the method)",
    )
    momentum: float = param(0.9, min=0.0, max=1.0, help="SGD momentum")
    nesterov: bool = param(False, help="Nesterov momentum (SGD)")
    weight_decay: float = param(
        1e-4, min=0.0, max=1.0, help="decoupled (AdamW) or L2 (SGD) weight decay"
    )
    schedule: str = param(
        "cosine", choices=["constant", "step", "cosine", "onecycle"], help="learning-rate schedule"
    )
    warmup_epochs: float = param(
        0.0, min=0.0, max=100.0, help="linear warmup length in epochs (fractions allowed)"
    )
    step_epochs: int = param(7, min=1, help="'step' schedule: epochs between decays")
    step_gamma: float = param(0.1, min=0.0, max=1.0, help="'step' schedule: decay factor")
    label_smoothing: float = param(
        0.0, min=0.0, max=0.5, help="label smoothing of the cross-entropy"
    )
    grad_clip: float = param(0.0, min=0.0, help="clip the gradient norm to this value; 0 disables")
    early_stopping_metric: str = param(
        "accuracy",
        choices=[
            "accuracy",
            "loss",
            "f1_macro",
            "f1_weighted",
            "precision_macro",
            "recall_macro",
            "map50",
            "map",
        ],
        help="validation metric that picks the best checkpoint and drives early stopping "
        "(detection: map50 = mAP@0.5, map = mAP@[.5:.95])",
    )
    patience: int = param(
        0, min=0, help="stop after this many epochs without improvement; 0 disables"
    )
    seed: int = param(0, min=0, help="seed of every random number generator")
    deterministic: bool = param(
        False, help="use deterministic algorithms only (slower, bit-for-bit repeatable)"
    )


SECTIONS: dict[str, type] = {
    "data": DataSettings,
    "augment": AugmentSettings,
    "model": ModelSettings,
    "train": TrainSettings,
}
