"""Plugin folders: ``TRANSFERSTUDIO_PLUGIN_PATH`` (and, in the installed app, the user's plugin
folder) hold plugins installed with ``pip install --target``; they are found through their
entry points like plugins of the Python environment."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import install_like_pip_target
from transferstudio.core.plugins.host import PLUGIN_PATH_ENV, load_plugins, plugin_folders


def test_a_plugin_in_a_plugin_folder_is_found(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    install_like_pip_target(folder, "folder_plugin_x")
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored after the test
    monkeypatch.setenv(PLUGIN_PATH_ENV, str(folder))
    assert plugin_folders() == [folder]
    try:
        host = load_plugins(autoload=True)
        assert "folder_plugin_x_net" in host.backbones
        record = next(r for r in host.records if r.module == "folder_plugin_x")
        assert record.status == "ok" and record.version == "1.0", record.errors
        assert sys.path[-1] == str(folder)  # after the environment: it cannot shadow torch
    finally:
        sys.modules.pop("folder_plugin_x", None)


def test_without_the_setting_no_folder_is_searched(monkeypatch):
    monkeypatch.delenv(PLUGIN_PATH_ENV, raising=False)
    assert plugin_folders() == []  # not frozen: plugins come from the environment


def test_plugins_path_prints_the_folders(tmp_path):
    env_folder = tmp_path / "extra"
    done = subprocess.run(
        [sys.executable, "-m", "transferstudio", "plugins", "path"],
        env={**__import__("os").environ, PLUGIN_PATH_ENV: str(env_folder)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(env_folder)
    assert f"pip install --target {env_folder}" in done.stderr
