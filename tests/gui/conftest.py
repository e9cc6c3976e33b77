"""Fixtures for driving the real window offscreen."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")


@pytest.fixture
def open_window(qtbot, tmp_path, host):
    """Factory: ``open_window(experiment)`` -> the main window on it, shown, its tree built.
    Fails the test if a run is left running."""
    from PySide6.QtCore import QSettings, QThreadPool

    from transferstudio.gui.main_window import MainWindow

    windows = []

    def open_(exp):
        exp.base_dir = str(tmp_path)
        settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
        win = MainWindow(host, tmp_path / "ws", exp, None, settings)
        qtbot.addWidget(win)
        win.show()
        qtbot.waitUntil(
            lambda: win.tree_model is not None and win.scan_result is not None, timeout=30_000
        )
        qtbot.waitUntil(win.model_ready, timeout=30_000)  # no model build in flight
        windows.append(win)
        return win

    yield open_
    for win in windows:
        win.controller.stop_and_wait()
        assert not win.controller.running
    QThreadPool.globalInstance().waitForDone(30_000)


@pytest.fixture
def window(open_window, make_images):
    """The main window on a tiny experiment."""
    from tests.helpers import tiny_experiment

    data = make_images({"red": 8, "green": 8, "blue": 8})
    return open_window(tiny_experiment(data, train__epochs=2))
