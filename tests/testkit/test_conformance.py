"""The plugin authors' test kit (``transferstudio.testing``): it passes every built-in, and it
fails plugins that break the contract, naming what is wrong."""

from __future__ import annotations

import dataclasses
import importlib.metadata as md

import pytest
import torch
import transferstudio_builtins

from tests.helpers import exploding_loss_plugin
from transferstudio.api import (
    API_VERSION,
    BackboneSpec,
    DatasetSpec,
    ExporterSpec,
    Sample,
    SourceListing,
)
from transferstudio.core.plugins.host import plugin_from_namespace
from transferstudio.testing import (
    KIT_BACKBONE,
    assert_conforms,
    check_plugin,
    isolated_host,
)
from transferstudio.testing.conformance import _build_kit_cnn


def test_every_builtin_spec_conforms(tmp_path):
    # distill needs a teacher: a whole kit network "trained elsewhere" on the 3 generated classes.
    teacher = tmp_path / "teacher.pth"
    torch.save(_build_kit_cnn(3).state_dict(), teacher)
    params = {"distill": {"teacher_backbone": KIT_BACKBONE, "teacher_weights": str(teacher)}}
    report = check_plugin(transferstudio_builtins, params, tmp_path / "work")
    assert report.ok, report.text()
    assert not [r for r in report.results if r.status != "ok"], report.text()
    kinds = {(r.kind, r.name) for r in report.results}
    assert ("method", "distill") in kinds and ("dataset", "csv") in kinds
    assert ("method", "detect") in kinds and ("dataset", "yolo") in kinds
    # 13 backbones, 11 methods, 5 exporters, 5 data sources (2 classification, 3 detection)
    assert len(report.results) == 34
    detectors = [r for r in report.results if "a detector trains" in r.detail]
    assert len(detectors) == 10  # the torchvision CNNs; not ViT-B/16, lenet or conv4


def test_an_isolated_host_holds_only_the_plugins_given():
    host = isolated_host()
    assert set(host.backbones) == {KIT_BACKBONE} and not host.methods
    assert "resnet18" in isolated_host(builtins=True).backbones
    assert not isolated_host(kit=False).backbones


def _plugin(name="bad-plugin", **hooks):
    return plugin_from_namespace(name, **hooks)


def _kit_backbone(**changes) -> BackboneSpec:
    spec = isolated_host().backbone(KIT_BACKBONE)
    return dataclasses.replace(spec, name="my-cnn", **changes)


def test_a_backbone_with_a_wrong_feature_width_fails_with_both_numbers():
    report = check_plugin(_plugin(transferstudio_backbones=lambda: [_kit_backbone(feature_dim=32)]))
    (result,) = report.results
    assert not report.ok and result.status == "failed"
    assert "(2, 16)" in result.detail and "feature_dim says 32" in result.detail


def test_a_backbone_whose_packaged_weights_are_missing_fails(tmp_path):
    spec = _kit_backbone(packaged_weights=lambda: str(tmp_path / "gone.safetensors"))
    (result,) = check_plugin(_plugin(transferstudio_backbones=lambda: [spec])).results
    assert result.status == "failed" and "gone.safetensors" in result.detail


def test_a_method_whose_loss_turns_nan_fails():
    (result,) = check_plugin(exploding_loss_plugin(explode_at_step=2)).results
    assert result.status == "failed"
    assert "nan" in result.detail.lower() or "finite" in result.detail


def test_a_method_that_cannot_guess_its_settings_is_skipped_with_the_key(tmp_path):
    (result,) = [
        r
        for r in check_plugin(transferstudio_builtins, workdir=tmp_path).results
        if r.name == "distill"
    ]
    assert result.status == "skipped" and "teacher_run" in result.detail
    assert "--param distill.KEY=VALUE" in result.detail


def _state_dict_exporter(**changes) -> ExporterSpec:
    spec = next(s for s in transferstudio_builtins.builtin_exporters() if s.format == "state_dict")
    return dataclasses.replace(spec, format="my-format", **changes)


def test_an_exporter_whose_file_does_not_reproduce_the_model_fails_with_the_figure():
    def load_perturbed(module, path):
        reloaded = _state_dict_exporter().load(module, path)
        return lambda images: reloaded(images) + 0.5

    spec = _state_dict_exporter(load=load_perturbed)
    (result,) = check_plugin(_plugin(transferstudio_exporters=lambda: [spec])).results
    assert result.status == "failed" and "max abs difference 0.5" in result.detail


def test_an_exporter_that_never_reads_its_file_back_fails():
    spec = _state_dict_exporter(load=None, verify=None)
    (result,) = check_plugin(_plugin(transferstudio_exporters=lambda: [spec])).results
    assert result.status == "failed" and "ExporterSpec.load" in result.detail


def test_a_data_source_listing_files_that_do_not_exist_fails(tmp_path):
    def write(folder):
        return transferstudio_builtins.datasets.write_image_folder_example(folder)

    def listing(path):
        return SourceListing({"all": [Sample(f"{path}/red/missing.png", "red")]})

    spec = DatasetSpec("broken", "test", lambda p: True, listing, write_example=write)
    (result,) = check_plugin(_plugin(transferstudio_datasets=lambda: [spec])).results
    assert result.status == "failed" and "missing.png" in result.detail


def test_plugins_refused_for_their_api_version_or_broken_hooks_fail_by_name():
    old = plugin_from_namespace("from-the-future", api_version="2.0")
    report = check_plugin(old)
    assert not report.ok and "API 2.0" in report.results[0].detail
    assert API_VERSION in report.results[0].detail

    def boom():
        raise RuntimeError("cannot build the list")

    report = check_plugin(_plugin(transferstudio_backbones=boom))
    assert not report.ok and "cannot build the list" in report.text()
    assert not check_plugin(_plugin()).ok  # a plugin that provides nothing


def test_the_fixtures_are_registered_as_a_pytest_plugin(plugin_host, plugin_conformance):
    (entry,) = [e for e in md.entry_points(group="pytest11") if e.name == "transferstudio"]
    assert entry.value == "transferstudio.testing.fixtures"
    assert plugin_host is isolated_host
    report = plugin_conformance(_plugin(transferstudio_backbones=lambda: [_kit_backbone()]))
    assert report.ok, report.text()


def test_plugins_check_command_reports_and_sets_the_exit_code(capsys, monkeypatch):
    from transferstudio.cli import main

    monkeypatch.setenv("TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert (
        main(["plugins", "check", "transferstudio_builtins", "--param", "distill.alpha=0.5"]) == 0
    )
    out = capsys.readouterr().out
    assert "[ok] exporter onnx" in out and "[skipped] method distill" in out
    assert "0 failed, 1 skipped - conforms" in out
    with pytest.raises(SystemExit):
        main(["plugins", "check", "no-such-plugin"])
    assert "no installed plugin named 'no-such-plugin'" in capsys.readouterr().err
    assert_conforms(
        plugin_from_namespace("fine", transferstudio_backbones=lambda: [_kit_backbone()])
    )


def test_a_support_set_method_without_a_support_classifier_fails():
    from transferstudio_builtins.protonet import PROTONET, ProtoNet

    from transferstudio import api

    class Forgetful(ProtoNet):
        classifier_from_support = api.TransferMethod.classifier_from_support

    spec = dataclasses.replace(PROTONET, name="forgetful", factory=Forgetful)
    (result,) = check_plugin(_plugin(transferstudio_methods=lambda: [spec])).results
    assert result.status == "failed"
    assert "method 'forgetful'" in result.detail and "NotImplementedError" in result.detail


def test_the_kit_and_the_loader_judge_a_declaration_alike():
    """``check_backbone`` given a spec directly (not through a host) applies the loader's checks:
    a misspelt interpolation passed the kit before (issue 17, point 9)."""
    from transferstudio.core.plugins.spec_checks import check_spec
    from transferstudio.testing.conformance import check_backbone

    pre = dataclasses.replace(_kit_backbone().preprocessing, interpolation="bicubik")
    spec = _kit_backbone(preprocessing=pre)
    status, detail = check_backbone(spec)
    assert status == "failed" and detail == "; ".join(check_spec(spec))
    assert "interpolation 'bicubik' is not one of 'bilinear', 'bicubic'" in detail
    report = check_plugin(_plugin(transferstudio_backbones=lambda: [spec]))
    assert not report.ok and "backbone 'my-cnn' is not registered" in report.text()
