"""Shared test configuration: offscreen Qt, an isolated workspace, small generated image sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import write_class_images

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path, monkeypatch):
    """No test writes into the user's real workspace or torch cache."""
    monkeypatch.setenv("TRANSFERSTUDIO_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("RANK", raising=False)


@pytest.fixture(autouse=True)
def _gui_thread_gc(request):
    """Qt tests collect cyclic garbage on the GUI thread, as the window does; automatic
    collection is handed back afterwards, once this test's widgets are closed."""
    if "qtbot" not in request.fixturenames:
        yield
        return
    from transferstudio.gui.gui_thread_gc import (
        collect_garbage_on_gui_thread,
        restore_automatic_collection,
    )

    request.getfixturevalue("qapp")
    collect_garbage_on_gui_thread()
    yield
    restore_automatic_collection()


@pytest.fixture
def host():
    """A plugin host with the built-ins only (installed third-party plugins are not loaded)."""
    from transferstudio.core.plugins.host import load_plugins

    return load_plugins(autoload=False)


@pytest.fixture
def make_images(tmp_path):
    """Factory: ``make_images({"a": 8, "b": 8}, name="data")`` -> folder of class folders."""

    def make(per_class: dict[str, int], name: str = "data", size: int = 24, seed: int = 0) -> Path:
        return write_class_images(tmp_path / name, per_class, size, seed)

    return make
