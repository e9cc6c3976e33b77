"""Exporting a detection run's detector, verified box by box on the run's validation images.

Formats. The detector (torchvision's Faster R-CNN, see :mod:`transferstudio.core.models.detector`)
is written by this module for the built-in formats only:

- ``torchscript``: :func:`torch.jit.script` of :class:`ScriptedDetector`, never a trace. A trace
  would freeze the resize of the image, the number of proposals kept and every loop over
  detections at the example's values; scripting keeps that control flow, so the file works on
  images of any size. Called as ``model(images: List[Tensor[3, H, W]]) -> List[Dict[str,
  Tensor]]`` (``boxes``, ``labels``, ``scores``), like the detector.
- ``onnx``: ``torch.onnx.export(dynamo=False)`` (the TorchScript-based exporter torchvision tests
  its detectors with), opset 17, of :class:`SingleImageDetector`: input ``image`` ``[3, H, W]``
  float RGB in [0, 1], outputs ``boxes`` ``[N, 4]`` (x1, y1, x2, y2 in the input's pixels),
  ``labels`` ``[N]`` int64 (``class_names[label - 1]``) and ``scores`` ``[N]``. H and W are
  dynamic axes: torchvision computes the resize scale and the anchors from the image's shape in
  ONNX-traceable operations, and on torch 2.14 / onnxruntime 1.32 the file reproduces the
  detector on images of other sizes than the example's (the check below includes one such
  image), so no fixed input size needs recording. The detector's resizing (``min_size``,
  ``max_size``) and normalisation are inside the graph.
- ``safetensors``, ``state_dict``, ``bundle``: the detector's weights through the built-in
  exporters; the metadata (the bundle's manifest) carries ``detector_recipe`` (which rebuilds the
  architecture, see :func:`transferstudio.core.models.bundle.bundle_from`), the class names and
  the score threshold.

Another exporter (a plugin's) is refused for a detector: the exporter API describes a module that
maps a tensor batch to a tensor, which a detector is not, and a plugin has no way yet to declare
that it handles detectors, so writing its file unchecked would be silent.

Verification. The file is written to a temporary name, reloaded (``torch.jit.load``, an
onnxruntime CPU session, the weights into a copy of the detector) and run next to the detector on
the run's validation images (up to :data:`MAX_VAL_IMAGES`) plus one of them cropped to another
size. Per image, reference detections are taken in descending score and each is matched with the
unmatched exported detection of the same label that overlaps it most; it must overlap with IoU
>= :data:`MIN_IOU` and score within :data:`SCORE_TOLERANCE`. Every reference detection scoring at
least the threshold (the recipe's ``score_threshold``, at least :data:`MIN_SCORE`) must be
matched, and no exported detection above threshold + :data:`EXTRA_MARGIN` may be left over.

Rounding flips decisions between near-equal scores, and those flips are excused (and counted in
the note): a detection within the score tolerance of the threshold, or of the last place of a
full list (``detections_per_image``), may fall on the other side of that cut; and non-maximum
suppression may keep, of two overlapping boxes of near-equal score, the other one. Such a swap is
excused when the box the export kept is one of the detector's own candidates (the detector run
again with suppression and the cut turned off, :func:`_all_candidates`), so a box an export
defect moved is never taken for one. An undertrained detector's scores can tie to 1e-7 among its
proposals too (a step the candidates do not show); a swap for a box the detector did not propose
passes for at most :data:`UNVERIFIED_SHARE` of the matched detections. Only then is the file
moved onto the target name; otherwise a :class:`TransferStudioError` names the image, the
detection and the figures, and nothing is written.

Sub-modules of a detector are refused: its parts take and return feature dictionaries, image
lists and proposals, which neither this check nor the classification check (a tensor batch in,
a tensor out) can compare, and a bundle of one could not be reopened; the whole detector's
bundle or safetensors file holds every weight under the detector's module paths.
"""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transferstudio.api import ExporterSpec, TransferStudioError
from transferstudio.core.files.atomic import atomic_path
from transferstudio.core.inference.detection_check import (
    MIN_IOU,
    MIN_SCORE,
    SCORE_TOLERANCE,
    BoxCheck,
    Detections,
    check_detections,
)
from transferstudio.core.inference.export_result import ExportResult, check_export_target

DETECTOR_FORMATS = ("torchscript", "onnx", "safetensors", "state_dict", "bundle")
GRAPH_FORMATS = ("torchscript", "onnx")
"""Formats whose file re-implements the detector's computation (checked on its detections)."""
"""The built-in formats a detector can be exported to."""
MAX_VAL_IMAGES = 32
ONNX_OPSET = 17
METADATA_ENTRY = "transferstudio.json"
"""The TorchScript extra file holding the manifest (as the built-in exporter names it)."""


class ScriptableBackbone(nn.Module):
    """The detector's pyramid backbone (same ``fpn`` module and weights) with a forward
    TorchScript can compile. ``PyramidBackbone`` annotates its output as an ``OrderedDict``, a
    type TorchScript does not know, and its body stops the network with a forward hook's
    exception, which TorchScript cannot compile: the body is traced (``torch.jit.trace``, which
    records the operations the network runs and keeps the input size free for convolutional
    networks; the export check then runs it on images of other sizes)."""

    def __init__(self, pyramid: nn.Module, example_size: int) -> None:
        super().__init__()
        example = torch.rand(1, 3, example_size, example_size)
        self.body = torch.jit.trace(pyramid.body.eval(), example, strict=False)
        self.fpn = pyramid.fpn
        self.out_channels = pyramid.out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn(self.body(x))


class ScriptedDetector(nn.Module):
    """What the TorchScript file holds: ``forward(images)`` returns the detections alone (a
    scripted torchvision detector returns ``(losses, detections)``)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.detector(images)[1]


class SingleImageDetector(nn.Module):
    """What the ONNX file holds: one image ``[3, H, W]`` in, ``(boxes, labels, scores)`` out
    (ONNX has no lists of dictionaries)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        found = self.detector([image])[0]
        return found["boxes"], found["labels"], found["scores"]


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    # TorchScript and the TorchScript-based ONNX exporter are deprecated in favour of
    # torch.export, and tracing torchvision's detectors warns about every shape it reads: the
    # files are still what the runtimes load, and each is verified, so these are noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch(vision)?\.")
        yield


def scriptable_copy(detector: nn.Module) -> nn.Module:
    """A copy of ``detector`` that :func:`torch.jit.script` compiles, in eval mode."""
    clone = copy.deepcopy(detector).eval()
    clone.backbone = ScriptableBackbone(clone.backbone, int(clone.transform.min_size[-1]))
    # The scripted forward warns on every call that it returns (losses, detections) unless told
    # it already has; ScriptedDetector returns the detections alone.
    clone._has_warned = True
    # The new wrapper starts in training mode: eval() again, for every module.
    return clone.eval()


def write_torchscript(detector: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """Script ``detector`` (see :class:`ScriptedDetector`) into ``path`` with the manifest as the
    extra file ``transferstudio.json``."""
    with _quiet_exporters(), torch.no_grad():
        scripted = torch.jit.script(ScriptedDetector(scriptable_copy(detector)).eval())
        torch.jit.save(scripted, str(path), _extra_files={METADATA_ENTRY: _json(metadata)})


def write_onnx(
    detector: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any]
) -> None:
    """Export ``detector`` as :class:`SingleImageDetector` to ``path`` (dynamic height and width,
    ``example`` an image ``[3, H, W]``) with the manifest in ``metadata_props``."""
    try:
        import onnx
    except ImportError:
        raise TransferStudioError(
            "ONNX export needs the onnx packages: pip install 'transferstudio[onnx]'"
        ) from None
    detections = {0: "detections"}
    with _quiet_exporters(), torch.no_grad():
        torch.onnx.export(
            SingleImageDetector(detector).eval(),
            (example,),
            str(path),
            input_names=["image"],
            output_names=["boxes", "labels", "scores"],
            opset_version=ONNX_OPSET,
            dynamo=False,
            dynamic_axes={
                "image": {1: "height", 2: "width"},
                "boxes": detections,
                "labels": detections,
                "scores": detections,
            },
        )
    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else _json(value)
    onnx.save(model, str(path))


def load_torchscript(path: Path) -> Callable[[list[torch.Tensor]], Detections]:
    """The TorchScript file as ``images -> detections``."""
    with _quiet_exporters():
        return torch.jit.load(str(path), map_location="cpu")


def load_onnx(path: Path) -> Callable[[list[torch.Tensor]], Detections]:
    """The ONNX file in an onnxruntime CPU session, as ``images -> detections``."""
    try:
        import onnxruntime
    except ImportError:
        raise TransferStudioError(
            "ONNX verification needs onnxruntime: pip install 'transferstudio[onnx]'"
        ) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(images: list[torch.Tensor]) -> Detections:
        out = []
        for image in images:
            boxes, labels, scores = session.run(None, {"image": image.detach().cpu().numpy()})
            out.append(
                {
                    "boxes": torch.from_numpy(boxes),
                    "labels": torch.from_numpy(labels),
                    "scores": torch.from_numpy(scores),
                }
            )
        return out

    return run


def write_detector(
    spec: ExporterSpec,
    detector: nn.Module,
    example: torch.Tensor,
    path: Path,
    metadata: dict[str, Any],
) -> None:
    """Write ``detector`` in format ``spec.format`` (one of :data:`DETECTOR_FORMATS`)."""
    if spec.format == "torchscript":
        write_torchscript(detector, path, metadata)
    elif spec.format == "onnx":
        write_onnx(detector, example, path, metadata)
    else:  # weights: the built-in exporter writes the detector's state dict
        spec.export(detector, example, path, metadata)


def reload_export(
    spec: ExporterSpec, detector: nn.Module, path: Path
) -> Callable[[list[torch.Tensor]], Detections]:
    """The written file reloaded as ``images -> detections`` (weights go into a copy of
    ``detector``)."""
    if spec.format == "torchscript":
        return load_torchscript(path)
    if spec.format == "onnx":
        return load_onnx(path)
    if spec.load is None:
        raise TransferStudioError(f"exporter {spec.format!r} cannot reload its file to check it")
    return spec.load(detector, path)


def export_detector(
    spec: ExporterSpec,
    detector: nn.Module,
    target: Path,
    metadata: dict[str, Any],
    images: list[tuple[str, torch.Tensor]],
    threshold: float,
    full: int,
) -> tuple[ExportResult, BoxCheck]:
    """Write ``detector`` with ``spec`` to ``target`` atomically, after checking the written file
    box by box on ``images`` (named ``(name, [3, H, W] image)``, the first is the example the
    ONNX export runs); a difference raises, leaving ``target`` as it was."""
    detector = detector.eval()
    target = Path(target)
    with atomic_path(target) as tmp:
        write_detector(spec, detector, images[0][1], tmp, metadata)
        check = check_detections(
            detector, reload_export(spec, detector, tmp), images, threshold, full
        )
        if check.problem:
            raise TransferStudioError(
                f"the {spec.format} export does not reproduce the detector {check.problem} "
                f"({check.figures()}; IoU >= {MIN_IOU:g} and score difference <= "
                f"{SCORE_TOLERANCE:g} required); {target} was not written"
            )
        if not check.boxes_compared and spec.format in GRAPH_FORMATS:
            # A file that re-implements the detector's graph, verified on nothing.
            raise TransferStudioError(
                f"the {spec.format} export cannot be verified: the detector finds nothing "
                f"scoring {threshold:g} or more on the {check.images} check images, so there "
                f"is no box to compare; {target} was not written. Train the detector longer, "
                "or export its weights (bundle, safetensors), which are checked exactly"
            )
    result = ExportResult(target, spec.format, check.max_box_diff)
    result.boxes_compared = check.boxes_compared
    result.min_iou = check.min_iou
    result.max_score_diff = check.max_score_diff
    return result, check


def check_images(
    folder: Path, limit: int = MAX_VAL_IMAGES
) -> tuple[list[tuple[str, torch.Tensor]], int, str]:
    """The run's validation images (up to ``limit``, from its ``splits.json``) as ``[3, H, W]``
    floats in [0, 1], plus the first one cropped to another size (to check that the file is not
    tied to one input size); also how many are validation images, and a note when there are
    none (then a fixed generated image stands in)."""
    from torchvision.transforms.v2 import functional as F

    from transferstudio.core.data.detection_scan import scan_from_dict
    from transferstudio.core.data.images import ImageProblem, load_rgb
    from transferstudio.core.data.loaders import SPLITS_FILE

    images: list[tuple[str, torch.Tensor]] = []
    note = ""
    try:
        scan = scan_from_dict(json.loads((folder / SPLITS_FILE).read_text("utf-8")))
        samples = scan.splits.get("val", [])[:limit]
    except (TransferStudioError, OSError, ValueError, KeyError) as exc:
        samples, note = [], f"validation images not available ({exc})"
    for sample in samples:
        try:
            pixels = F.pil_to_tensor(load_rgb(sample.path))
        except ImageProblem:
            continue
        images.append((str(sample.path), F.to_dtype(pixels, torch.float32, scale=True)))
    val = len(images)
    if not images:
        note = note or "the run's data has no readable validation images"
        note += ": checked on a generated image only"
        generator = torch.Generator().manual_seed(0)
        images.append(("a generated image", torch.rand(3, 240, 320, generator=generator)))
    name, first = images[0]
    height, width = first.shape[1:]
    cropped = first[:, : max(32, height * 3 // 4), : max(32, width * 5 // 8)].contiguous()
    images.append((f"{name} cropped to {cropped.shape[2]}x{cropped.shape[1]}", cropped))
    return images, val, note


def is_builtin_exporter(host, fmt: str) -> bool:
    """Whether format ``fmt`` comes from TransferStudio's built-in plugin."""
    from transferstudio.core.plugins.host import BUILTIN_MODULE

    return fmt in DETECTOR_FORMATS and any(
        record.module == BUILTIN_MODULE and fmt in record.provides.get("exporters", [])
        for record in host.records
    )


def export_detection_run(
    ref: str | Path,
    fmt: str,
    target: Path,
    host,
    workspace: Path,
    module_path: str = "",
    force: bool = False,
    tolerance: float | None = None,
) -> ExportResult:
    """Export a detection run's detector (its best checkpoint) with exporter ``fmt``, verified box
    by box on the run's validation images (see the module docstring); the arguments are those
    of :func:`transferstudio.core.inference.export.export_run` (``tolerance``, for tensor
    outputs, does not apply: the box criteria are fixed). An existing ``target`` is only replaced
    with ``force``."""
    from transferstudio.core.models.bundle import backbone_plugin, bundle_manifest
    from transferstudio.core.models.detector import DetectorRecipe
    from transferstudio.core.runs.finished import (
        detector_from_checkpoint,
        load_best_checkpoint,
        run_folder,
    )

    target = Path(target)
    check_export_target(target, force, fmt, host)
    if module_path:
        raise TransferStudioError(
            f"a detector's sub-modules cannot be exported ({module_path!r}): they take and return "
            "feature maps, image lists and proposals that no export check can compare; export "
            "the whole detector (its bundle or safetensors file holds every weight)"
        )
    if not is_builtin_exporter(host, fmt):
        raise TransferStudioError(
            f"exporter {fmt!r} does not declare detector support; a detector can be exported as "
            f"{', '.join(DETECTOR_FORMATS)}. Nothing was written"
        )
    folder = run_folder(ref, workspace)
    ck = load_best_checkpoint(folder)
    record = ck.record
    recipe = DetectorRecipe.from_dict(record.detector_recipe or {})
    detector = detector_from_checkpoint(ck, host, f"run {folder}")
    record.backbone_plugin = backbone_plugin(host, record.backbone)
    threshold = max(MIN_SCORE, recipe.score_threshold)
    metadata = bundle_manifest(record.to_dict(), "", [])
    metadata["score_threshold"] = recipe.score_threshold
    metadata["detector_io"] = DETECTOR_IO.get(fmt, DETECTOR_IO["weights"])
    images, val, note = check_images(folder)
    result, check = export_detector(
        host.exporters[fmt],
        detector,
        target,
        metadata,
        images,
        threshold,
        recipe.detections_per_image,
    )
    result.val_images = val
    crop = images[-1][1]
    result.note = (
        f"{note + '; ' if note else ''}detections scoring >= {threshold:g} compared, also on a "
        f"{crop.shape[2]}x{crop.shape[1]} crop of the first image (another input size)"
    )
    if check.excused:
        unverified = len(check.unverified)
        result.note += (
            f"; {check.excused} without a counterpart, explained by rounding (a score at the "
            "threshold, or a swap with a near-equal overlapping box"
            + (
                f"; {unverified} of those boxes not among the detector's own)"
                if unverified
                else ")"
            )
        )
    return result


DETECTOR_IO = {
    "torchscript": "model(images: List[Tensor[3, H, W]], RGB floats in [0, 1]) -> List[Dict] with "
    "boxes [N, 4] (x1, y1, x2, y2 pixels), labels [N] (class_names[label - 1]), scores [N]",
    "onnx": "input image [3, H, W] float32 RGB in [0, 1] (any H, W); outputs boxes [N, 4] "
    "(x1, y1, x2, y2 pixels), labels [N] int64 (class_names[label - 1]), scores [N] float32",
    "weights": "state dict of the torchvision detector rebuilt from detector_recipe",
}
"""How the exported file is called, recorded in its metadata."""


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
