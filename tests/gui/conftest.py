"""Fixtures for driving the real window offscreen."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")


@pytest.fixture
def window(qtbot, tmp_path, make_images, host):
    """The main window on a tiny experiment; fails the test if a thread is left running."""
    from PySide6.QtCore import QSettings, QThreadPool

    from tests.helpers import tiny_experiment
    from transferstudio.gui.main_window import MainWindow

    data = make_images({"red": 8, "green": 8, "blue": 8})
    exp = tiny_experiment(data, train__epochs=2)
    exp.base_dir = str(tmp_path)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    win = MainWindow(host, tmp_path / "ws", exp, None, settings)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(
        lambda: win.tree_model is not None and win.scan_result is not None, timeout=30_000
    )
    yield win
    win.controller.stop_and_wait()
    assert not win.controller.running
    QThreadPool.globalInstance().waitForDone(30_000)
