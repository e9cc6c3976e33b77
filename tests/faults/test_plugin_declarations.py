"""Plugin declarations are checked when a plugin is loaded, not trusted (issue 17, point 9).

Each test installs a real plugin module with a dist-info entry point, as pip would, holding one
bad declaration: a setting whose default breaks its own min/max, choices or type, or that has
no default; preprocessing the image pipeline cannot apply; a hook returning a dict; a name
another plugin already provides. The host refuses the spec and lists the plugin as failed with
a reason naming plugin, spec and field; the test kit and ``plugins check`` fail it; nothing
reaches ``init``, ``run`` or the window to be blamed on the user's file.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from transferstudio.cli import main
from transferstudio.core.plugins.host import load_plugins
from transferstudio.testing import check_plugin

DIST = "ts-decl"
MODULE = "ts_test_decl"


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A path entry to install fake distributions into; their modules are forgotten after."""
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    monkeypatch.delenv("TRANSFERSTUDIO_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    yield path
    for name in [m for m in sys.modules if m.startswith("ts_test_")]:
        del sys.modules[name]


def install(site, source: str, dist: str = DIST, module: str = MODULE) -> None:
    """A real installed distribution (module, dist-info, entry point), as pip leaves it."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"  # as pip names it
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[transferstudio]\n{dist} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


def method_plugin(field: str) -> str:
    """A working method plugin whose settings hold one field, ``field`` (a line of Python)."""
    return f"""
        from dataclasses import dataclass

        from transferstudio.api import MethodSpec, StepOutput, TransferMethod, hookimpl, param

        TRANSFERSTUDIO_API_VERSION = "1.3"


        @dataclass
        class Params:
            \"\"\"Settings of a method with one bad declaration.\"\"\"

            {field}


        class Plain(TransferMethod):
            def __init__(self, params):
                self.params = params

            def setup(self, ctx):
                self.model = ctx.build_classifier()

            def modules(self):
                return {{"model": self.model}}

            def training_step(self, batch, ctx):
                logits = self.model(batch[0])
                return StepOutput(ctx.loss(logits, batch[1]), logits, batch[1])

            def validation_step(self, batch, ctx):
                return self.model(batch[0]), batch[1]

            def predictor(self):
                return self.model


        @hookimpl
        def transferstudio_methods():
            return [MethodSpec("decl-method", "a method", Params, Plain)]
    """


BAD_SETTINGS = {
    "default above its max": ("alpha: float = param(5.0, min=0.0, max=1.0)", "alpha", "5.0"),
    "default below its min": ("ways: int = param(1, min=2, max=20)", "ways", "from 2 to 20"),
    "default not a choice": (
        'mode: str = param("fast", choices=["slow", "exact"])',
        "mode",
        "'fast'",
    ),
    "default of the wrong type": ('steps: int = param("10", min=1)', "steps", "an integer"),
    "float for an int": ("steps: int = param(2.5)", "steps", "an integer"),
    "no default": ("beta: float", "beta", "no default"),
    "min above max": ("alpha: float = param(0.5, min=1.0, max=0.0)", "alpha", "above its max"),
    "unsupported type": ("table: dict = param({})", "table", "dict"),
    "choice of the wrong type": ('lr: float = param(0.1, choices=[0.1, "big"])', "lr", "'big'"),
}


@pytest.mark.parametrize("field, name, reason", BAD_SETTINGS.values(), ids=list(BAD_SETTINGS))
def test_a_setting_that_breaks_its_own_declaration_fails_the_plugin_by_name(
    site, field, name, reason
):
    install(site, method_plugin(field))
    host = load_plugins(autoload=True)
    record = next(r for r in host.records if r.name.startswith(DIST))
    assert "decl-method" not in host.methods  # never reaches init, run or the window
    assert record.status == "failed" and not record.provides
    (error,) = record.errors
    assert error.startswith(f"{DIST}:{DIST}: method 'decl-method' is not registered")
    assert f"setting {name!r}" in error and reason in error
    assert "resnet18" in host.backbones  # every other plugin keeps working

    # the test kit fails it with the same reason, rather than training it
    report = check_plugin(sys.modules[MODULE])
    assert not report.ok and f"setting {name!r}" in report.text()
    assert [r.kind for r in report.results] == ["plugin"]


def test_init_with_a_method_whose_default_is_bad_names_the_plugin_not_the_file(site, capsys):
    install(site, method_plugin("alpha: float = param(5.0, min=0.0, max=1.0)"))
    assert main(["init", "--method", "decl-method"]) != 0
    err = capsys.readouterr().err
    assert f"{DIST}:{DIST}: method 'decl-method' is not registered" in err
    assert "setting 'alpha'" in err and "5.0 is out of range" in err


def test_plugins_lists_the_refused_method_with_its_reason(site, capsys):
    install(site, method_plugin("alpha: float = param(5.0, min=0.0, max=1.0)"))
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert f"{DIST}:{DIST} 1.0  [failed]" in out
    assert "method 'decl-method' is not registered: setting 'alpha'" in out


def backbone_plugin(preprocessing: str, names: tuple[str, ...] = ("decl-net",)) -> str:
    """A backbone plugin whose specs (one per name) have the given ``Preprocessing(...)``
    arguments."""
    return f"""
        from transferstudio.api import BackboneSpec, Preprocessing, hookimpl

        TRANSFERSTUDIO_API_VERSION = "1.3"


        def build():
            import torch

            return torch.nn.Sequential(
                torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                torch.nn.Linear(4, 2),
            )


        @hookimpl
        def transferstudio_backbones():
            pre = Preprocessing({preprocessing})
            return [BackboneSpec(name, "test", 4, build, "3", pre) for name in {names!r}]
    """


BAD_PREPROCESSING = {
    "misspelt interpolation": ('32, 32, interpolation="bicubik"', "interpolation 'bicubik'"),
    "two means": ("32, 32, mean=(0.5, 0.5)", "preprocessing.mean"),
    "four stds": ("32, 32, std=(0.5, 0.5, 0.5, 0.5)", "preprocessing.std"),
    "a std of 0": ("32, 32, std=(0.5, 0.0, 0.5)", "must be above 0"),
    "a negative std": ("32, 32, std=(0.5, -0.2, 0.5)", "must be above 0"),
    "a NaN mean": ('32, 32, mean=(0.5, float("nan"), 0.5)', "preprocessing.mean"),
    "a crop of 0": ("32, 0", "preprocessing.crop"),
    "a crop of 60000": ("60000, 60000", "preprocessing.crop must be a whole number from 1 to"),
    "a crop above the resize": ("32, 64", "larger than preprocessing.resize"),
    "a float resize": ("32.5, 32", "preprocessing.resize"),
}


@pytest.mark.parametrize("args, reason", BAD_PREPROCESSING.values(), ids=list(BAD_PREPROCESSING))
def test_preprocessing_the_pipeline_cannot_apply_fails_the_backbone_by_name(site, args, reason):
    install(site, backbone_plugin(args))
    host = load_plugins(autoload=True)
    record = next(r for r in host.records if r.name.startswith(DIST))
    assert "decl-net" not in host.backbones and record.status == "failed"
    assert record.errors[0].startswith(f"{DIST}:{DIST}: backbone 'decl-net' is not registered")
    assert reason in record.errors[0]
    report = check_plugin(sys.modules[MODULE])
    assert not report.ok and reason in report.text()


def test_a_sound_backbone_plugin_of_the_same_shape_loads_and_conforms(site):
    """The control for the two tests above: only the bad declaration makes the difference."""
    install(site, backbone_plugin('32, 32, interpolation="bicubic"'))
    host = load_plugins(autoload=True)
    assert "decl-net" in host.backbones
    assert check_plugin(sys.modules[MODULE]).ok


def test_a_hook_returning_a_dict_is_reported_as_a_dict(site):
    install(
        site,
        """
        from transferstudio.api import hookimpl

        TRANSFERSTUDIO_API_VERSION = "1.3"


        @hookimpl
        def transferstudio_backbones():
            return {"decl-net": "a dict, not a list of specs"}
        """,
    )
    host = load_plugins(autoload=True)
    record = next(r for r in host.records if r.name.startswith(DIST))
    assert record.errors == [
        f"{DIST}:{DIST}: transferstudio_backbones must return a list of BackboneSpec, got dict"
    ]


def test_a_duplicate_backbone_name_names_both_plugins_and_fails_plugins_check(site, capsys):
    install(site, backbone_plugin("32, 32"), dist="ts-decl-a", module="ts_test_decl_a")
    both = ("decl-net", "decl-net-b")  # one taken by ts-decl-a, one its own
    install(site, backbone_plugin("32, 32", both), dist="ts-decl-b", module="ts_test_decl_b")
    host = load_plugins(autoload=True)
    second = next(r for r in host.records if r.name.startswith("ts-decl-b"))
    (error,) = second.errors
    assert "backbone 'decl-net' is also provided by ts-decl-a:ts-decl-a" in error
    assert "ts-decl-b:ts-decl-b's is ignored" in error
    assert second.status == "partial" and second.provides == {"backbones": ["decl-net-b"]}

    # checked on its own the plugin works, but installed it clashes: the check fails
    assert main(["plugins", "check", "ts-decl-b"]) == 1
    out = capsys.readouterr().out
    assert "[failed] plugin ts_test_decl_b: ts-decl-b:ts-decl-b: backbone 'decl-net' is also" in out
    assert "[ok] backbone decl-net-b" in out and "conforms" not in out
    assert main(["plugins", "check", "ts-decl-a"]) == 0  # the one in use is fine


def test_an_out_of_range_param_to_plugins_check_is_an_error_naming_it_and_its_range(site, capsys):
    install(site, method_plugin("alpha: float = param(0.5, min=0.0, max=1.0)"))
    with pytest.raises(SystemExit) as exit_:
        main(["plugins", "check", DIST, "--param", "decl-method.alpha=5"])
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    assert (
        "--param decl-method.alpha: 5.0 is out of range; expected a number from 0.0 to 1.0" in err
    )


def test_the_test_kit_fails_a_given_param_it_cannot_use(site):
    install(site, method_plugin('mode: str = param("slow", choices=["slow", "exact"])'))
    load_plugins(autoload=True)
    report = check_plugin(sys.modules[MODULE], params={"decl-method": {"mode": "fast"}})
    (result,) = report.results
    assert result.status == "failed" and "decl-method.mode: 'fast' is not allowed" in result.detail
    report = check_plugin(sys.modules[MODULE], params={"decl-methd": {"mode": "slow"}})
    assert not report.ok and "has no method 'decl-methd'" in report.text()
