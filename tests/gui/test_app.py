"""``transferstudio gui --self-test``: the check an installation runs (the installer's slow test
runs it on the built application)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_self_test_opens_the_window_on_the_demo_and_closes_it(tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    done = subprocess.run(
        [sys.executable, "-m", "transferstudio", "--workspace", str(tmp_path / "ws"), "gui"]
        + ["--self-test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "window ready in" in done.stdout and "4 classes in the data" in done.stdout
    # closed through closeEvent, which saves the window layout
    assert (tmp_path / "cfg" / "TransferStudio" / "TransferStudio.conf").is_file()


def test_resources_are_found_in_a_source_checkout():
    from transferstudio.gui.app import resource_file

    icon = resource_file("transferstudio.svg")
    assert icon is not None and icon.read_text("utf-8").startswith("<svg")
    assert resource_file("no-such-file") is None
