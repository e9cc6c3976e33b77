"""Guarded plugin loading: failures are recorded with name, version and traceback; the rest works."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import ISSUE_BACKBONES
from transferstudio.api import API_VERSION, BackboneSpec, hookimpl
from transferstudio.core.plugins.host import PluginHost, load_plugins, plugin_from_namespace


def _install_fake_distribution(
    site: Path, dist: str, version: str, module: str, source: str
) -> None:
    """A real installed distribution (dist-info + entry point) on a path entry, as pip would."""
    info = site / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[transferstudio]\n{dist} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path, monkeypatch):
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    yield path
    for name in [m for m in sys.modules if m.startswith("ts_test_")]:
        del sys.modules[name]


def test_builtins_provide_the_promised_backbones_methods_and_sources(host):
    expected = set(ISSUE_BACKBONES)
    assert expected <= set(host.backbones)
    assert {"fine-tune", "feature-extract"} <= set(host.methods)
    assert {"image-folder", "csv"} <= set(host.datasets)
    assert host.failures() == []
    host.pm.check_pending()  # no misspelled hook names in the built-ins


def test_plugin_that_fails_to_import_is_recorded_and_others_work(site):
    _install_fake_distribution(
        site, "ts-broken", "0.3", "ts_test_broken", "raise ImportError('needs libfoo')\n"
    )
    host = load_plugins(autoload=True)
    record = next(r for r in host.records if r.name.startswith("ts-broken"))
    assert record.status == "failed"
    assert record.version == "0.3"
    assert "needs libfoo" in record.errors[0] and "Traceback" in record.errors[0]
    assert "resnet18" in host.backbones


def test_plugins_check_reports_a_plugin_that_failed_to_load_without_importing_it_again(
    site, capsys
):
    from transferstudio.cli import main

    _install_fake_distribution(
        site, "ts-broken", "0.3", "ts_test_broken", "raise ImportError('needs libfoo')\n"
    )
    assert main(["plugins", "check", "ts-broken"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("ts-broken:ts-broken 0.3: failed") and "needs libfoo" in out


def test_plugin_raising_in_a_hook_keeps_its_other_hooks_and_other_plugins(site):
    _install_fake_distribution(
        site,
        "ts-half",
        "1.2",
        "ts_test_half",
        f"""
        from transferstudio.api import hookimpl, DatasetSpec, SourceListing
        TRANSFERSTUDIO_API_VERSION = "{API_VERSION}"

        @hookimpl
        def transferstudio_backbones():
            raise RuntimeError("backbone registry exploded")

        @hookimpl
        def transferstudio_datasets():
            return [DatasetSpec("half-source", "d", lambda p: False,
                                lambda p: SourceListing({{}}))]
    """,
    )
    host = load_plugins(autoload=True)
    record = next(r for r in host.records if r.name.startswith("ts-half"))
    assert record.status == "partial"
    assert any(
        "backbone registry exploded" in e and "transferstudio_backbones" in e for e in record.errors
    )
    assert "half-source" in host.datasets
    assert "resnet18" in host.backbones


def test_incompatible_api_version_is_refused_with_both_versions_named(site):
    _install_fake_distribution(
        site,
        "ts-old",
        "0.1",
        "ts_test_old",
        """
        from transferstudio.api import hookimpl
        TRANSFERSTUDIO_API_VERSION = "0.4"

        @hookimpl
        def transferstudio_backbones():
            raise AssertionError("must never be called")
    """,
    )
    host = load_plugins(autoload=True)
    record = next(r for r in host.records if r.name.startswith("ts-old"))
    assert record.status == "refused"
    assert "0.4" in record.errors[0] and API_VERSION in record.errors[0]
    assert not record.provides


def test_newer_minor_api_version_is_refused_with_both_versions_and_the_remedy():
    plugin = plugin_from_namespace("future", api_version="1.99", transferstudio_methods=lambda: [])
    record = PluginHost().register(plugin)
    assert record.status == "refused"
    assert "1.99" in record.errors[0] and API_VERSION in record.errors[0]
    assert "upgrade TransferStudio" in record.errors[0]


def test_a_plugin_written_for_api_1_0_keeps_working(tmp_path):
    """Only 1.0 fields and hooks: it loads on this host and every spec passes the test kit."""
    from dataclasses import dataclass

    from transferstudio.api import (
        BackboneSpec,
        MethodSpec,
        Preprocessing,
        StepOutput,
        TransferMethod,
    )
    from transferstudio.testing import assert_conforms

    @dataclass
    class Params:
        """No parameters."""

    class Plain(TransferMethod):
        def __init__(self, params):
            pass

        def setup(self, ctx):
            self.model = ctx.build_classifier()

        def modules(self):
            return {"model": self.model}

        def training_step(self, batch, ctx):
            logits = self.model(batch[0])
            return StepOutput(ctx.loss(logits, batch[1]), logits, batch[1])

        def validation_step(self, batch, ctx):
            return self.model(batch[0]), batch[1]

        def predictor(self):
            return self.model

    def build():
        from torch import nn

        return nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
        )

    backbone = BackboneSpec("old-cnn", "old", 4, build, "3", Preprocessing(32, 32))
    method = MethodSpec("old-method", "1.0 style", Params, Plain)
    plugin = plugin_from_namespace(
        "old-but-fine",
        api_version="1.0",
        transferstudio_backbones=lambda: [backbone],
        transferstudio_methods=lambda: [method],
    )
    report = assert_conforms(plugin, workdir=tmp_path)
    assert [r.status for r in report.results] == ["ok", "ok"]


def test_malformed_specs_are_reported_not_registered():
    plugin = plugin_from_namespace("sloppy", transferstudio_backbones=lambda: ["resnet18", 42])
    host = PluginHost()
    record = host.register(plugin)
    assert record.status == "failed"  # nothing it offered can be used
    assert host.backbones == {}
    assert "expected BackboneSpec" in record.errors[0]


def test_duplicate_names_keep_the_first_provider(host):
    duplicate = BackboneSpec("resnet18", "fake", 1, build=lambda: None, classifier="fc")
    record = host.register(
        plugin_from_namespace("dupe", transferstudio_backbones=lambda: [duplicate])
    )
    assert host.backbones["resnet18"].family == "ResNet"
    assert "also provided by transferstudio" in record.errors[0]
    assert record.conflicts == record.errors


def test_disable_autoload_loads_builtins_only(site, monkeypatch):
    _install_fake_distribution(
        site,
        "ts-extra",
        "1.0",
        "ts_test_extra",
        f"""
        TRANSFERSTUDIO_API_VERSION = "{API_VERSION}"
    """,
    )
    monkeypatch.setenv("TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD", "1")
    host = load_plugins()
    assert [r.module for r in host.records] == ["transferstudio_builtins"]
    monkeypatch.delenv("TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD")
    assert any(r.name.startswith("ts-extra") for r in load_plugins().records)


def test_plugins_command_prints_versions_provides_and_errors(site):
    _install_fake_distribution(
        site,
        "ts-cli-broken",
        "2.0",
        "ts_test_cli_broken",
        "raise ImportError('missing dependency bar')\n",
    )
    env_path = f"{site}"
    out = subprocess.run(
        [sys.executable, "-m", "transferstudio", "plugins"],
        capture_output=True,
        text=True,
        env={**_env(), "PYTHONPATH": env_path},
        check=True,
    ).stdout
    assert "transferstudio" in out and "[ok]" in out
    assert "backbones: resnet18" in out
    assert "ts-cli-broken" in out and "2.0" in out and "[failed]" in out
    assert "missing dependency bar" in out


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD"}


def test_hookimpl_marker_is_the_projects():
    @hookimpl
    def transferstudio_methods():
        return []

    assert hasattr(transferstudio_methods, "transferstudio_impl")
