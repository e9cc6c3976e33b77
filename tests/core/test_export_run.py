"""Exporting a finished run: the bundle round trip (predict, fine-tune further), provenance in
the file's metadata, no silent overwrite, and the CLI command."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_experiment
from transferstudio.api import TransferStudioError, WeightsError
from transferstudio.core.inference.export import export_run
from transferstudio.core.models.bundle import load_bundle
from transferstudio.core.runs.finished import load_run_predictor
from transferstudio.core.training.engine import PlainState, run_experiment


@pytest.fixture
def finished_run(make_images, tmp_path, host):
    exp = tiny_experiment(make_images({"red": 8, "green": 8, "blue": 8}), train__epochs=1)
    result = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert result.status == "completed", result.message
    return result


def test_a_bundle_reopens_to_predict_exactly_as_the_run(finished_run, host, tmp_path):
    target = tmp_path / "model.tsmodel"
    result = export_run(finished_run.run_id, "bundle", target, host, tmp_path / "ws")
    assert result.max_abs_diff <= 1e-4
    bundle = load_bundle(target, host)
    assert bundle.class_names == ["blue", "green", "red"]
    assert bundle.preprocessing.crop == 32
    images = torch.randn(4, 3, 32, 32)
    run_model = load_run_predictor(finished_run.folder, host, tmp_path / "ws")
    torch.testing.assert_close(bundle.model(images), run_model(images))
    provenance = bundle.manifest["provenance"]
    assert provenance["run_id"] == finished_run.run_id
    assert provenance["backbone"] == "resnet18" and provenance["method"] == "fine-tune"
    assert provenance["dataset_fingerprint"] and provenance["seed"] == 1
    assert "freeze" in provenance["method_params"]
    assert bundle.manifest["output_shape"] == [3]


def test_a_bundle_is_a_weights_source_for_further_fine_tuning(
    finished_run, host, tmp_path, make_images
):
    target = tmp_path / "model.tsmodel"
    export_run(finished_run.run_id, "bundle", target, host, tmp_path / "ws")
    again = tiny_experiment(make_images({"a": 6, "b": 6}, name="next"), train__epochs=1)
    again.model.weights = str(target)
    second = run_experiment(again, host, PlainState(), tmp_path / "ws")
    assert second.status == "completed", second.message


def test_the_backbone_alone_exports_with_its_output_shape(finished_run, host, tmp_path):
    target = tmp_path / "backbone.tsmodel"
    export_run(finished_run.run_id, "bundle", target, host, tmp_path / "ws", "backbone")
    bundle = load_bundle(target, host)
    assert bundle.manifest["output_shape"] == [512] and bundle.class_names == []
    assert bundle.model(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_safetensors_metadata_carries_the_provenance(finished_run, host, tmp_path):
    from safetensors import safe_open

    target = tmp_path / "model.safetensors"
    export_run(finished_run.run_id, "safetensors", target, host, tmp_path / "ws")
    with safe_open(str(target), "pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["provenance"])["run_id"] == finished_run.run_id
    assert json.loads(metadata["class_names"]) == ["blue", "green", "red"]


def test_an_existing_file_is_only_replaced_with_force(finished_run, host, tmp_path):
    target = tmp_path / "model.pth"
    target.write_text("keep me")
    with pytest.raises(TransferStudioError, match="already exists; pass --force"):
        export_run(finished_run.run_id, "state_dict", target, host, tmp_path / "ws")
    assert target.read_text() == "keep me"
    export_run(finished_run.run_id, "state_dict", target, host, tmp_path / "ws", force=True)
    assert torch.load(target, weights_only=True)["head.0.weight"].shape == (3, 512)


def test_a_tampered_or_foreign_bundle_is_refused_with_the_file_named(finished_run, host, tmp_path):
    target = tmp_path / "model.tsmodel"
    export_run(finished_run.run_id, "bundle", target, host, tmp_path / "ws")
    with zipfile.ZipFile(target) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        weights = archive.read("weights.safetensors")
    manifest["head_recipe"]["layers"][-1]["out"] = 7  # claims 7 classes; the weights have 3
    bad = tmp_path / "bad.tsmodel"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        archive.writestr("weights.safetensors", weights)
    with pytest.raises(WeightsError, match="bad.tsmodel: its weights do not fit"):
        load_bundle(bad, host)
    junk = tmp_path / "junk.tsmodel"
    junk.write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="junk.tsmodel is not a readable"):
        load_bundle(junk, host)


def test_export_command_writes_a_verified_file(finished_run, tmp_path, capsys):
    from transferstudio.cli import main

    target = tmp_path / "out.tsmodel"
    argv = ["--workspace", str(tmp_path / "ws"), "export", finished_run.run_id]
    assert main([*argv, "--format", "bundle", "-o", str(target)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    assert main([*argv, "--format", "bundle", "-o", str(target)]) == 2
    assert "--force" in capsys.readouterr().err


def test_predict_on_a_folder_skips_a_corrupt_image_and_matches_the_model(
    finished_run, host, tmp_path, make_images
):
    from transferstudio.core.inference.predict import gather_images, open_predictor, predict

    folder = make_images({"red": 3, "blue": 2}, name="new")
    (folder / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image")
    bundle = tmp_path / "model.tsmodel"
    export_run(finished_run.run_id, "bundle", bundle, host, tmp_path / "ws")
    paths, skipped = gather_images([str(folder)])
    assert [Path(p).name for p, _ in skipped] == ["notes.txt"]
    progress: list[tuple[int, int]] = []
    report = predict(
        open_predictor(str(bundle), host, tmp_path / "ws"),
        paths,
        2,
        4,
        lambda *a: progress.append(a),
    )
    assert [Path(p).name for p, _ in report.skipped] == ["broken.png"]
    assert len(report.predictions) == 5 and progress[-1] == (6, 6)
    from_run = predict(open_predictor(finished_run.run_id, host, tmp_path / "ws"), paths, 2)
    for a, b in zip(report.predictions, from_run.predictions, strict=True):
        assert [label for label, _ in a.top] == [label for label, _ in b.top]
        assert a.top[0][1] == pytest.approx(b.top[0][1], abs=1e-5)
        assert len(a.top) == 2 and a.top[0][1] >= a.top[1][1]


def test_predict_command_prints_labels_writes_csv_and_reports_skips(
    finished_run, tmp_path, make_images, capsys
):
    import csv

    from transferstudio.cli import main

    folder = make_images({"red": 2}, name="new")
    (folder / "red" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "predictions.csv"
    argv = ["--workspace", str(tmp_path / "ws"), "predict", finished_run.run_id, str(folder)]
    assert main([*argv, "--top-k", "1", "--csv", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\t") == 2 and "skipped" in captured.err
    assert "empty.jpg" in captured.err
    with out.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "label1", "p1"] and len(rows) == 3


def test_an_export_interrupted_mid_write_leaves_no_file_and_keeps_the_old_one(
    finished_run, host, tmp_path
):
    import dataclasses

    from transferstudio.core.inference import export as X

    def half_then_fail(module, example, path, metadata):
        path.write_bytes(b"half a model")
        raise KeyboardInterrupt  # the user, or the machine, stops the write

    broken = dataclasses.replace(host.exporters["safetensors"], export=half_then_fail)
    host.exporters["broken"] = broken
    target = tmp_path / "model.safetensors"
    with pytest.raises(KeyboardInterrupt):
        X.export_run(finished_run.run_id, "broken", target, host, tmp_path / "ws")
    assert not target.exists()
    target.write_text("the previous export")
    with pytest.raises(KeyboardInterrupt):
        X.export_run(finished_run.run_id, "broken", target, host, tmp_path / "ws", force=True)
    assert target.read_text() == "the previous export"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_onnx_metadata_props_carry_the_provenance(finished_run, host, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    target = tmp_path / "model.onnx"
    export_run(finished_run.run_id, "onnx", target, host, tmp_path / "ws")
    props = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    assert json.loads(props["provenance"])["run_id"] == finished_run.run_id
    assert json.loads(props["class_names"]) == ["blue", "green", "red"]


@pytest.mark.parametrize("fmt", ["safetensors", "state_dict", "bundle", "torchscript", "onnx"])
def test_every_format_is_checked_on_the_validation_images(finished_run, host, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    target = tmp_path / f"model{host.exporters[fmt].suffix}"
    result = export_run(finished_run.run_id, fmt, target, host, tmp_path / "ws")
    assert result.val_images == 6  # the run's whole val split (stratified, 2 per class)
    assert result.val_top1_agreement == 1.0 and result.max_abs_diff <= 1e-3


def test_the_validation_check_uses_the_runs_own_split_after_the_data_changed(
    finished_run, host, tmp_path, make_images
):
    import json

    from transferstudio.core.data.loaders import SPLITS_FILE

    kept = json.loads((Path(finished_run.folder) / SPLITS_FILE).read_text())
    assert kept["classes"] == ["blue", "green", "red"]
    assert {k: len(v) for k, v in kept["splits"].items()} == {"train": 18, "val": 6}
    # New images in the data folder would change a fresh split (8 more per class: 3 more val
    # images each); the check must still use the 6 the run validated on.
    make_images({"red": 16, "green": 16, "blue": 16}, seed=1)
    result = export_run(finished_run.run_id, "safetensors", tmp_path / "m.safetensors", host,
                        tmp_path / "ws")  # fmt: skip
    assert result.val_images == 6 and result.val_top1_agreement == 1.0


def test_a_tampered_artifact_fails_the_check_with_its_figures(finished_run, host, tmp_path):
    import dataclasses

    from safetensors.torch import save_file

    def tampered(module, example, path, metadata):
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        state["head.0.bias"] += torch.tensor([5.0, -5.0, 0.0])  # what a corrupted file might hold
        save_file(state, str(path))

    host.exporters["tampered"] = dataclasses.replace(host.exporters["safetensors"], export=tampered)
    target = tmp_path / "model.safetensors"
    with pytest.raises(
        TransferStudioError, match=r"max abs difference 5 > tolerance .*top-1 agreement"
    ):
        export_run(finished_run.run_id, "tampered", target, host, tmp_path / "ws")
    assert not target.exists()


def test_torchscript_carries_the_provenance_as_an_extra_file(finished_run, host, tmp_path):
    import warnings

    target = tmp_path / "model.pt"
    export_run(finished_run.run_id, "torchscript", target, host, tmp_path / "ws")
    extra = {"transferstudio.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript
        torch.jit.load(str(target), _extra_files=extra)
    manifest = json.loads(extra["transferstudio.json"])
    assert manifest["provenance"]["run_id"] == finished_run.run_id
    assert manifest["class_names"] == ["blue", "green", "red"]
