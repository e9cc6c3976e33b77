"""``transferstudio new-plugin``: one package of each kind is generated, installed as a plugin
author would install it (pip, from its own pyproject), and passes its own tests, which use the
test kit; the installed plugin is then discovered and checked by ``transferstudio plugins``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from transferstudio.api import TransferStudioError
from transferstudio.scaffold import KINDS, new_plugin


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The generated packages (one of each kind), pip-installed (no dependencies: TransferStudio is already
    here) into one folder that the test processes get on their path."""
    root = tmp_path_factory.mktemp("scaffold")
    folders = {kind: new_plugin(f"demo-{kind}", kind, root) for kind in KINDS}
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site)]
        + [str(f) for f in folders.values()],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    return folders, env


def _python(args: list[str], env: dict, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("kind", KINDS)
def test_a_generated_plugin_passes_its_own_tests(installed, kind):
    folders, env = installed
    done = _python(["-m", "pytest", "-q", "-p", "no:cacheprovider"], env, cwd=folders[kind])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_the_installed_plugins_are_discovered_and_pass_the_check_command(installed):
    _, env = installed
    listed = _python(["-m", "transferstudio", "plugins"], env)
    registries = ("backbones", "methods", "exporters", "datasets", "methods", "datasets")
    for kind, registry in zip(KINDS, registries, strict=True):
        assert f"{registry}: demo-{kind}" in listed.stdout, listed.stdout
    checked = _python(["-m", "transferstudio", "plugins", "check", "demo-method"], env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "[ok] method demo-method: 2 steps on generated data" in checked.stdout


def test_bad_names_and_existing_folders_are_refused(tmp_path):
    with pytest.raises(TransferStudioError, match="letters, digits"):
        new_plugin("9lives", "backbone", tmp_path)
    with pytest.raises(TransferStudioError, match="unknown plugin kind 'optimizer'"):
        new_plugin("fine", "optimizer", tmp_path)
    with pytest.raises(TransferStudioError, match="a module named 'json' is already installed"):
        new_plugin("json", "exporter", tmp_path)
    new_plugin("taken", "dataset", tmp_path)
    with pytest.raises(TransferStudioError, match="already exists"):
        new_plugin("taken", "dataset", tmp_path)
