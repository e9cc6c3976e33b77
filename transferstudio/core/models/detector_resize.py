"""The detector's image resize, computed in whole numbers so that the detector, its TorchScript
file and its ONNX file resize every image to the same size.

torchvision's ``GeneralizedRCNNTransform`` scales an image by ``min(min_size / short side,
max_size / long side)`` and lets ``interpolate`` floor ``side * scale``. It computes that scale
in float64 when run as Python, in float32 when scripted, and as a float32 tensor that ONNX
Runtime multiplies in its own precision when exported: a 417 x 650 photo becomes 320 x 498 in
Python, 319 x 498 in TorchScript, and 533 x 400 becomes 426 x 320 in Python but 426 x 319 in
ONNX (85 of the 200 Raccoon images differ somewhere). A pixel moves every box a little, which the
export check rightly refused. :class:`ExactResizeTransform` computes the new size with integer
arithmetic, the same in all three, and gives it to ``interpolate`` as a size: the short side
becomes ``min_size`` exactly (or the long side ``max_size``), the other side is floored as
torchvision floors it.
"""

# No "from __future__ import annotations": TorchScript reads these annotations as objects.

# TorchScript compiles ``resize``: its annotations use typing's names, which it reads.
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes


def fitted_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """The size torchvision aims at, in exact arithmetic: scaled so the short side is
    ``min_size`` unless the long side would then exceed ``max_size``, in which case the long
    side is ``max_size``; the other side is floored."""
    short, long = min(height, width), max(height, width)
    if min_size * long <= max_size * short:  # min_size / short <= max_size / long
        num, den = min_size, short
    else:
        num, den = max_size, long
    return (height * num) // den, (width * num) // den


def _resized(image: Tensor, size: list[int]) -> Tensor:
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


@torch.jit.unused
def _resized_traced(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """``image`` resized to :func:`fitted_size` of its shape read as tensors, so that an ONNX
    export keeps the height and width dynamic (read as Python ints, they would be fixed in the
    graph)."""
    from torch.onnx import operators

    shape = operators.shape_as_tensor(image)[-2:]
    short, long = shape.min(), shape.max()
    use_min = min_size * long <= max_size * short
    num = torch.where(use_min, torch.full_like(short, min_size), torch.full_like(long, max_size))
    den = torch.where(use_min, short, long)
    size = torch.div(shape * num, den, rounding_mode="floor")
    return F.interpolate(
        image[None], size=[size[0], size[1]], mode="bilinear", align_corners=False
    )[0]


class ExactResizeTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` whose resize gives the same size in Python, TorchScript and
    ONNX (see the module docstring); normalisation, batching and the scale choice in training
    are torchvision's."""

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        height, width = image.shape[-2:]
        if self.training:
            if self._skip_resize:
                return image, target
            size = self.torch_choice(self.min_size)
        else:
            size = self.min_size[-1]
        if self.fixed_size is not None:
            image = _resized(image, [self.fixed_size[1], self.fixed_size[0]])
        elif torch.jit.is_tracing():
            image = _resized_traced(image, size, self.max_size)
        else:
            new_height, new_width = fitted_size(height, width, size, self.max_size)
            image = _resized(image, [new_height, new_width])
        if target is None:
            return image, target
        target["boxes"] = resize_boxes(target["boxes"], [height, width], image.shape[-2:])
        return image, target


def exact_resize(detector: torch.nn.Module) -> torch.nn.Module:
    """``detector`` (a torchvision detector) with its transform replaced by an
    :class:`ExactResizeTransform` of the same settings; it holds no weights, so checkpoints
    are unchanged."""
    old = detector.transform
    detector.transform = ExactResizeTransform(
        old.min_size,
        old.max_size,
        old.image_mean,
        old.image_std,
        size_divisible=old.size_divisible,
        fixed_size=old.fixed_size,
        _skip_resize=old._skip_resize,
    )
    return detector
