"""The detector resizes an image to the same size in Python, TorchScript and ONNX: the size is
computed in whole numbers (torchvision's transform computes it in float64, float32 and ONNX
Runtime's precision, and they floor to different sizes for 85 of the 200 Raccoon photos)."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch

from transferstudio.core.models.detector_resize import ExactResizeTransform, fitted_size

# (height, width) of Raccoon photos whose size torchvision floors differently when scripted
# (417 x 650, 194 x 259) or exported to ONNX (533 x 400), at min_size 320, max_size 512.
AWKWARD = [(417, 650), (194, 259), (533, 400), (371, 660), (88, 121)]


def test_the_short_side_becomes_min_size_unless_the_long_side_would_pass_max_size():
    assert fitted_size(417, 650, 320, 512) == (320, 498)  # 650 * 320 / 417 = 498.8
    assert fitted_size(371, 660, 320, 512) == (287, 512)  # long side capped
    assert fitted_size(533, 400, 320, 512) == (426, 320)
    assert fitted_size(64, 64, 320, 512) == (320, 320)
    assert fitted_size(88, 121, 96, 128) == (93, 128)  # float32 gives 127 here


def test_the_size_is_torchvisions_where_its_float64_arithmetic_does_not_lose_a_pixel():
    """Against the exact quotient, torchvision's Python path can only lose a pixel to rounding
    (x.9999...); everywhere else the two agree."""
    for h in range(16, 700, 13):
        for w in range(16, 700, 17):
            scale = min(320 / min(h, w), 512 / max(h, w))
            reference = (math.floor(h * scale), math.floor(w * scale))
            ours = fitted_size(h, w, 320, 512)
            assert all(0 <= o - r <= 1 for o, r in zip(ours, reference, strict=True)), (h, w)
            assert 320 in ours or 512 in ours


class _Resized(torch.nn.Module):
    """The transform's resized (unpadded) image of one input."""

    def __init__(self) -> None:
        super().__init__()
        self.transform = ExactResizeTransform(320, 512, [0.5] * 3, [0.25] * 3).eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batch, _ = self.transform([image])
        height, width = batch.image_sizes[0]
        return batch.tensors[0, :, :height, :width]


@pytest.mark.parametrize("size", AWKWARD, ids=lambda s: f"{s[0]}x{s[1]}")
def test_python_and_torchscript_resize_to_the_same_pixels(size):
    model = _Resized()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript
        scripted = torch.jit.script(model)
    image = torch.rand(3, *size)
    eager = model(image)
    assert tuple(eager.shape[1:]) == fitted_size(*size, 320, 512)
    torch.testing.assert_close(scripted(image), eager, rtol=0, atol=0)


def test_onnx_resizes_every_size_to_the_same_size_as_python():
    ort = pytest.importorskip("onnxruntime")
    model = _Resized()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(3, 200, 300),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            dynamic_axes={"image": {1: "height", 2: "width"}},
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for size in AWKWARD:
        image = torch.rand(3, *size)
        (found,) = session.run(None, {"image": image.numpy()})
        expected = model(image)
        assert found.shape == tuple(expected.shape), size
        # The same size; ONNX Runtime's bilinear weights round in float32.
        torch.testing.assert_close(torch.from_numpy(found), expected, rtol=0, atol=1e-3)
