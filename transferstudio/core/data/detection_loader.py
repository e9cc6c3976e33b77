"""Detection images and boxes for training: the dataset, its augmentation and batching.

Augmentation uses torchvision's transforms v2 with bounding-box tensors, so every geometric
change moves the boxes with the pixels: horizontal flip, a random crop that keeps boxes valid
(SSD's IoU crop), photometric distortion; boxes left too small by a crop are dropped
(``SanitizeBoundingBoxes``). Images stay at their own size, as float RGB in [0, 1]: the detector
resizes (with scale jitter in training) and normalises them itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from transferstudio.api import DetectionSample
from transferstudio.core.data.images import load_rgb


class DetectionDataset:
    """Samples as ``(image float[3, H, W], {"boxes": float[N, 4] xyxy, "labels": int64[N]})``;
    label ``k`` is ``classes[k - 1]`` (0 is torchvision's background)."""

    def __init__(self, samples: Sequence[DetectionSample], classes: Sequence[str], transform):
        self.samples = list(samples)
        self.index = {c: i + 1 for i, c in enumerate(classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        sample = self.samples[i]
        image = tv_tensors.Image(F.pil_to_tensor(load_rgb(sample.path)))
        height, width = image.shape[-2:]
        coords = [[b.xmin, b.ymin, b.xmax, b.ymax] for b in sample.boxes]
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(coords, dtype=torch.float32).reshape(-1, 4),
                format="XYXY",
                canvas_size=(height, width),
            ),
            "labels": torch.tensor([self.index[b.label] for b in sample.boxes], dtype=torch.int64),
        }
        image, target = self.transform(image, target)
        # Plain tensors from here: the detector and the collate do not need the tv_tensor types.
        return image.as_subclass(torch.Tensor), {
            "boxes": target["boxes"].as_subclass(torch.Tensor),
            "labels": target["labels"],
        }


class CropKeepingBoxes(torch.nn.Module):
    """SSD's random IoU crop for images with boxes; negatives pass unchanged (the crop picks
    its window by overlap with the boxes, and an image without boxes has none)."""

    def __init__(self) -> None:
        from torchvision.transforms import v2

        super().__init__()
        self.crop = v2.RandomIoUCrop()

    def forward(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if target["boxes"].shape[0] == 0:
            return image, target
        return self.crop(image, target)


def detection_transform(augment: Any | None) -> Any:
    """The v2 pipeline of ``(image, target)``: the augmentation ``augment`` asks for (its
    ``hflip``, ``random_resized_crop`` and ``color_jitter`` settings), then float in [0, 1].
    ``None``: no augmentation (evaluation)."""
    from torchvision.transforms import v2

    steps: list[Any] = []
    if augment is not None:
        if augment.color_jitter > 0:
            steps.append(v2.RandomPhotometricDistort(p=0.5))
        if augment.random_resized_crop:
            steps.append(v2.RandomApply([CropKeepingBoxes()], p=0.5))
        if augment.hflip:
            steps.append(v2.RandomHorizontalFlip(0.5))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if augment is not None:
        # A crop can leave slivers of boxes: drop those under 2 px (and their labels).
        steps.append(v2.SanitizeBoundingBoxes(min_size=2))
    return v2.Compose(steps)


def collate_detection(batch: Sequence[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """Images of different sizes stay a list: ``(images, targets)``."""
    images, targets = zip(*batch, strict=True) if batch else ((), ())
    return list(images), list(targets)
