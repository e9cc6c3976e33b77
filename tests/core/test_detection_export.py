"""Exporting a detection run: TorchScript and ONNX files checked box by box against the detector
on the run's validation images, a bundle that reopens as the same detector, a plugin's exporter
refused for a detector, and a file that does not reproduce the detector never written."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch

from tests.core.test_detection_engine import detection_experiment
from transferstudio.api import ExporterSpec, TransferStudioError
from transferstudio.core.data.detection_demo import generate_detection_data
from transferstudio.core.inference import detection_check as DC
from transferstudio.core.inference import detection_export as DX
from transferstudio.core.inference.export import export_run
from transferstudio.core.plugins.host import load_plugins, plugin_from_namespace
from transferstudio.core.runs.finished import detector_from_checkpoint, load_best_checkpoint
from transferstudio.core.training.engine import PlainState, run_experiment

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def module_host():
    return load_plugins(autoload=False)


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    return generate_detection_data(tmp_path_factory.mktemp("shapes"), images=16, seed=1)


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory, module_host):
    """A one-epoch detection run on 16 generated images (4 of them validation images)."""
    root = tmp_path_factory.mktemp("detection-export")
    data = generate_detection_data(root / "shapes", images=16, seed=1)
    exp = detection_experiment(data, train__epochs=1)
    result = run_experiment(exp, module_host, PlainState(), root / "ws")
    assert result.status == "completed", result.message
    return result, root / "ws"


@pytest.fixture(scope="module")
def detector(detection_run, module_host):
    run, _ = detection_run
    return detector_from_checkpoint(load_best_checkpoint(Path(run.folder)), module_host, "run")


@pytest.fixture(scope="module")
def written(detection_run, module_host, tmp_path_factory):
    """``fmt -> (ExportResult, path)`` for the TorchScript and ONNX exports (each written once)."""
    pytest.importorskip("onnxruntime")
    run, ws = detection_run
    folder = tmp_path_factory.mktemp("exports")
    out = {}
    for fmt, name in (("torchscript", "detector.pt"), ("onnx", "detector.onnx")):
        out[fmt] = (export_run(run.run_id, fmt, folder / name, module_host, ws), folder / name)
    return out


@pytest.fixture(scope="module")
def new_image(tmp_path_factory):
    """An image of shapes the run never saw, at a size none of its images has (121 x 88): one
    whose resize torchvision computes as 128 x 93 in Python but 127 x 93 when scripted (see
    ``detector_resize``), which moved every box of the TorchScript file."""
    from torchvision.transforms.v2 import functional as F

    from transferstudio.core.data.images import load_rgb

    folder = tmp_path_factory.mktemp("new-image")
    generate_detection_data(folder, images=1, seed=7, width=121, height=88)
    pixels = F.pil_to_tensor(load_rgb(folder / "images" / "0000.png"))
    return F.to_dtype(pixels, torch.float32, scale=True)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_detector_export_is_verified_box_by_box(written, fmt):
    result, path = written[fmt]
    assert path.is_file() and result.path == path and result.format == fmt
    assert result.val_images == 4  # the run's whole validation split
    assert result.boxes_compared > 0
    assert result.min_iou >= DC.MIN_IOU
    assert result.max_score_diff <= DC.SCORE_TOLERANCE
    assert "crop of the first image" in result.note
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_the_files_carry_the_recipe_classes_and_threshold(written):
    onnx = pytest.importorskip("onnx")
    extra = {DX.METADATA_ENTRY: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript
        torch.jit.load(str(written["torchscript"][1]), _extra_files=extra)
    scripted = json.loads(extra[DX.METADATA_ENTRY])
    props = {p.key: p.value for p in onnx.load(str(written["onnx"][1])).metadata_props}
    keys = ("class_names", "detector_recipe", "score_threshold")
    for manifest in (scripted, {k: json.loads(props[k]) for k in keys}):
        assert manifest["class_names"] == CLASSES
        assert manifest["detector_recipe"]["num_classes"] == 3
        assert manifest["score_threshold"] == 0.05
    assert "List[Tensor[3, H, W]]" in scripted["detector_io"]
    assert "input image [3, H, W]" in props["detector_io"]


def test_the_torchscript_file_finds_the_detectors_boxes_on_a_new_image(
    written, detector, new_image
):
    image = new_image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(written["torchscript"][1]))
    with torch.no_grad():
        expected = detector([image])[0]
        found = scripted([image])[0]
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "labels", "scores"):
        torch.testing.assert_close(found[key], expected[key])


def test_the_onnx_file_takes_an_image_of_another_size(written, detector, new_image):
    image = new_image
    found = DX.load_onnx(written["onnx"][1])([image])[0]
    with torch.no_grad():
        expected = detector([image])[0]
        with DC._all_candidates(detector):
            candidates = detector([image])[0]
    check = DC.BoxCheck()
    assert DC.compare_image(expected, found, 0.05, 100, check, candidates) == ""
    assert check.boxes_compared > 0 and check.min_iou >= DC.MIN_IOU


def test_a_bundle_reopens_as_the_same_detector(
    detection_run, module_host, detector, new_image, tmp_path
):
    from transferstudio.core.models.bundle import load_bundle

    run, ws = detection_run
    target = tmp_path / "detector.tsmodel"
    result = export_run(run.run_id, "bundle", target, module_host, ws)
    assert result.boxes_compared > 0 and result.min_iou == 1.0
    bundle = load_bundle(target, module_host)
    assert bundle.class_names == CLASSES == bundle.model.class_names
    assert bundle.manifest["detector_recipe"]["min_size"] == [96]
    assert bundle.manifest["score_threshold"] == 0.05
    with torch.no_grad():
        expected, found = detector([new_image])[0], bundle.model([new_image])[0]
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "labels", "scores"):
        torch.testing.assert_close(found[key], expected[key])


def test_an_exporter_without_detector_support_is_refused(detection_run, tmp_path):
    run, ws = detection_run
    calls = []

    def export_npz(module, example, path, metadata):
        calls.append(path)
        Path(path).write_bytes(b"whatever a plugin writes")

    spec = ExporterSpec("npz", ".npz", export_npz, "a plugin's format")
    plugin = plugin_from_namespace("npz_plugin", transferstudio_exporters=lambda: [spec])
    host = load_plugins(autoload=False, extra=[plugin])
    assert "npz" in host.exporters
    target = tmp_path / "detector.npz"
    with pytest.raises(TransferStudioError, match="exporter 'npz' does not declare detector"):
        export_run(run.run_id, "npz", target, host, ws)
    assert not target.exists() and calls == []


def test_a_sub_module_of_a_detector_is_refused(detection_run, module_host, tmp_path):
    run, ws = detection_run
    target = tmp_path / "body.safetensors"
    with pytest.raises(TransferStudioError, match="sub-modules cannot be exported"):
        export_run(run.run_id, "safetensors", target, module_host, ws, "backbone.body")
    assert not target.exists()


def _tampered(change):
    """``reload_export`` whose reloaded model's detections pass through ``change``."""
    reload = DX.reload_export

    def tampered_reload(spec, detector, path):
        model = reload(spec, detector, path)
        return lambda images: [change(dict(d)) for d in model(images)]

    return tampered_reload


def _shift_boxes(d):
    d["boxes"] = d["boxes"] + 4.0
    return d


def _raise_scores(d):
    d["scores"] = d["scores"] + 0.01
    return d


@pytest.mark.parametrize(
    "change, reason",
    [
        (_shift_boxes, "swapped for boxes the detector did not propose|no counterpart"),
        (_raise_scores, r"difference 0.01 > 0.001"),
    ],
)
def test_an_export_that_moves_boxes_or_scores_is_not_written(
    detection_run, module_host, tmp_path, monkeypatch, change, reason
):
    run, ws = detection_run
    monkeypatch.setattr(DX, "reload_export", _tampered(change))
    target = tmp_path / "detector.safetensors"
    with pytest.raises(TransferStudioError) as caught:
        export_run(run.run_id, "safetensors", target, module_host, ws)
    message = str(caught.value)
    assert "does not reproduce the detector" in message and ".png" in message
    assert f"{target} was not written" in message
    assert re.search(reason, message), message
    assert not target.exists()
    target.write_text("the previous export")
    with pytest.raises(TransferStudioError):
        export_run(run.run_id, "safetensors", target, module_host, ws, force=True)
    assert target.read_text() == "the previous export"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_the_export_command_prints_the_box_figures(detection_run, tmp_path, capsys):
    from transferstudio.cli import main

    pytest.importorskip("onnxruntime")
    run, ws = detection_run
    target = tmp_path / "detector.onnx"
    argv = ["--workspace", str(ws), "export", run.run_id, "--format", "onnx", "-o", str(target)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "verified box by box on 4 validation images" in out
    assert "min IoU" in out and "max score difference" in out
    assert target.is_file()


# The matching rules on hand-made detections: what rounding explains, and what it does not.


def dets(boxes, labels, scores) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


A = [10.0, 10.0, 50.0, 50.0]
B = [14.0, 10.0, 54.0, 50.0]  # IoU with A: 0.82, more than suppression's 0.5
D = [30.0, 10.0, 70.0, 50.0]  # IoU with A: 0.33, less than suppression's 0.5
C = [100.0, 100.0, 140.0, 150.0]


def test_identical_detections_match_with_their_figures():
    check = DC.BoxCheck()
    ref = dets([A, C], [1, 2], [0.9, 0.6])
    out = dets([C, A], [2, 1], [0.6004, 0.9])
    assert DC.compare_image(ref, out, 0.05, 100, check) == ""
    assert check.boxes_compared == 2 and check.min_iou == 1.0
    assert check.max_score_diff == pytest.approx(4e-4, abs=1e-6)


def test_another_label_or_a_moved_box_has_no_counterpart():
    ref = dets([A], [1], [0.9])
    assert "no counterpart" in DC.compare_image(
        ref, dets([A], [2], [0.9]), 0.05, 100, DC.BoxCheck()
    )
    moved = DC.compare_image(ref, dets([D], [1], [0.9]), 0.05, 100, DC.BoxCheck())
    assert "no counterpart in the export (best IoU 0.33" in moved


def test_a_detection_only_the_export_finds_is_refused_above_the_margin():
    ref = dets([A], [1], [0.9])
    assert "finds 1 detection(s)" in DC.compare_image(
        ref, dets([A, C], [1, 2], [0.9, 0.2]), 0.05, 100, DC.BoxCheck()
    )
    # At the threshold, rounding decides whether a detection is kept.
    assert DC.compare_image(ref, dets([A, C], [1, 2], [0.9, 0.055]), 0.05, 100, DC.BoxCheck()) == ""


def test_a_near_equal_swap_is_excused_only_for_a_box_the_detector_proposed():
    ref = dets([A], [1], [0.5])
    out = dets([B], [1], [0.5002])  # suppression kept B over A: the scores differ by rounding
    proposed = dets([A, B], [1, 1], [0.5, 0.5001])
    check = DC.BoxCheck()
    assert DC.compare_image(ref, out, 0.05, 100, check, proposed) == ""
    assert check.excused == 1 and check.unverified == []
    unproposed = DC.BoxCheck()
    assert DC.compare_image(ref, out, 0.05, 100, unproposed, dets([A], [1], [0.5])) == ""
    assert len(unproposed.unverified) == 1  # counted: check_detections allows a few only
    far_apart = dets([B], [1], [0.7])  # not near-equal: not rounding
    assert "no counterpart" in DC.compare_image(ref, far_apart, 0.05, 100, DC.BoxCheck(), proposed)


def test_check_detections_refuses_many_unproposed_swaps():
    ref, out = dets([A], [1], [0.5]), dets([B], [1], [0.5])

    class Stub(torch.nn.Module):
        def forward(self, images):
            return [ref for _ in images]

    images = [(f"image {i}", torch.zeros(3, 8, 8)) for i in range(3)]
    check = DC.check_detections(Stub(), lambda images: [out for _ in images], images, 0.05, 100)
    assert "3 detections are swapped for boxes the detector did not propose" in check.problem
    assert "image 0" in check.problem


def test_empty_boxes_match_only_where_their_corners_agree():
    """An untrained detector's empty boxes have no IoU (0 / 0); a NaN would pass every check."""
    empty, other = [5.0, 5.0, 5.0, 5.0], [9.0, 9.0, 9.0, 9.0]
    check = DC.BoxCheck()
    assert (
        DC.compare_image(dets([empty], [1], [0.5]), dets([empty], [1], [0.5]), 0.05, 100, check)
        == ""
    )
    assert check.min_iou == 1.0
    problem = DC.compare_image(
        dets([empty], [1], [0.5]), dets([other], [1], [0.5]), 0.05, 100, DC.BoxCheck()
    )
    assert "no counterpart" in problem


def test_a_graph_export_with_no_detection_to_compare_is_refused(shapes_data, module_host, tmp_path):
    """A RetinaNet trained for one epoch finds nothing above the threshold yet (its classifier
    starts at a 1 % prior): its TorchScript file would be verified on nothing, so it is not
    written; its weights (checked exactly) still export."""
    exp = detection_experiment(
        shapes_data,
        train__epochs=1,
        method__params={"min_size": 96, "max_size": 128, "architecture": "retinanet"},
    )
    run = run_experiment(exp, module_host, PlainState(), tmp_path / "ws")
    assert run.status == "completed", run.message
    with pytest.raises(TransferStudioError, match="cannot be verified: the detector finds nothing"):
        export_run(run.run_id, "torchscript", tmp_path / "r.pt", module_host, tmp_path / "ws")
    assert not (tmp_path / "r.pt").exists()
    export_run(run.run_id, "bundle", tmp_path / "r.tsmodel", module_host, tmp_path / "ws")
    assert (tmp_path / "r.tsmodel").is_file()
