"""``python3 tasks.py demo`` picks the window or the headless demo: with a display where Qt
cannot start (``libxcb-cursor0`` missing, the usual case on a fresh Debian/Ubuntu desktop), it
says what to install and runs the demo headless instead of dying with Qt's own abort."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What Qt 6.5+ writes before aborting (SIGABRT) when libxcb-cursor0 is missing.
QT_XCB_CURSOR_ABORT = """\
qt.qpa.plugin: From 6.5.0, xcb-cursor0 or libxcb-cursor0 is needed to load the Qt xcb platform plugin.
qt.qpa.plugin: Could not load the Qt platform plugin "xcb" in "" even though it was found.
This application failed to start because no Qt platform plugin could be initialized. \
Reinstalling the application may fix this problem.

Available platform plugins are: eglfs, minimal, minimalegl, offscreen, vnc, wayland, xcb.
"""


@pytest.fixture
def tasks():
    spec = importlib.util.spec_from_file_location("tasks_under_test", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def x11(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", ":0")
    for name in ("WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)


def test_a_missing_libxcb_cursor_says_what_to_install_and_runs_headless(tasks, x11, capsys):
    # The one stand-in of these tests: a missing system library cannot be caused here.
    command = tasks.demo_command(["--epochs", "2"], probe=lambda: (-6, QT_XCB_CURSOR_ABORT))
    assert command == [str(tasks.BIN / "transferstudio"), "demo", "--epochs", "2"]
    out = capsys.readouterr().out
    assert "sudo apt-get install libxcb-cursor0" in out
    assert "running the demo headless instead" in out


def test_another_xcb_failure_is_named_with_the_libraries_to_install(tasks):
    stderr = 'qt.qpa.plugin: Could not load the Qt platform plugin "xcb" in "" even though it was found.\n'
    problem = tasks.window_problem(-6, stderr)
    assert 'Could not load the Qt platform plugin "xcb"' in problem
    assert "sudo apt-get install libxcb-cursor0 libxkbcommon-x11-0" in problem
    assert "QT_DEBUG_PLUGINS=1" in problem


def test_a_hung_display_and_other_failures_fall_back_too(tasks):
    assert "did not start within" in tasks.window_problem(None, "")
    assert "exit status 1: boom" in tasks.window_problem(1, "Traceback\nboom\n")
    assert tasks.window_problem(0, "some warning\n") == ""


def test_a_working_display_opens_the_window_that_runs_the_demo(tasks, x11, capsys):
    command = tasks.demo_command([], probe=lambda: (0, ""))
    assert command == [str(tasks.BIN / "transferstudio"), "gui", "--demo"]
    assert capsys.readouterr().out == ""


def test_no_display_runs_headless_without_probing(tasks, monkeypatch, capsys):
    monkeypatch.setattr(sys, "platform", "linux")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)

    def probe():
        raise AssertionError("no display: nothing to probe")

    assert tasks.demo_command([], probe=probe)[1:] == ["demo"]
    assert "no display found" in capsys.readouterr().out


def test_the_probe_starts_qt_as_the_window_would(tasks, monkeypatch):
    if not tasks.PYTHON.exists():
        pytest.skip(f"no virtual environment at {tasks.VENV} (python3 tasks.py test makes it)")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert tasks.window_problem(*tasks.probe_window()) == ""
    monkeypatch.setenv("QT_QPA_PLATFORM", "no-such-platform")
    returncode, stderr = tasks.probe_window()
    assert returncode != 0
    problem = tasks.window_problem(returncode, stderr)
    assert 'Could not find the Qt platform plugin "no-such-platform"' in problem
    assert "xcb" not in problem  # the list of available plugins names xcb: not the cause
