#!/usr/bin/env python3
"""Set up and run TransferStudio with nothing but Python 3.11+.

    python3 tasks.py demo    # create .venv, install, open the window and run the built-in demo:
                             # a pretrained network fine-tuned, then trained from scratch
    python3 tasks.py test    # create .venv, install with the dev tools, lint, check the import
                             # contracts, run every test

The virtual environment lives in ``.venv`` (``TRANSFERSTUDIO_VENV`` chooses another folder).
Installing is skipped when no ``pyproject.toml`` (TransferStudio's, or those of the plugin
distributions under ``plugins/``) has changed since the last install. Extra
arguments are passed on: ``python3 tasks.py test -k engine``, ``python3 tasks.py demo --epochs 3``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# Third-party plugins kept in this repository as their own distributions; installed beside
# TransferStudio exactly as a user would install a plugin from an index.
PLUGIN_DISTRIBUTIONS = [ROOT / "plugins" / "transferstudio-efficientnet-lite"]
VENV = Path(os.environ.get("TRANSFERSTUDIO_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def _say(message: str) -> None:
    print(f"[tasks] {message}", flush=True)


def ensure_environment() -> None:
    """Create the virtual environment and install the project (with dev tools) into it."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may be started by an old Python
        sys.exit(f"TransferStudio needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        _say(f"creating virtual environment {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / ".transferstudio-installed"
    wanted = hashlib.sha256(
        b"".join((d / "pyproject.toml").read_bytes() for d in [ROOT, *PLUGIN_DISTRIBUTIONS])
    ).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    _say(
        "installing TransferStudio and its dependencies (torch is large; first time takes a few minutes)"
    )
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev]"]
        + [arg for d in PLUGIN_DISTRIBUTIONS for arg in ("-e", str(d))],
        check=True,
        cwd=ROOT,
    )
    stamp.write_text(wanted)


def _has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(
        os.environ.get("DISPLAY")
        or os.environ.get("WAYLAND_DISPLAY")
        or os.environ.get("QT_QPA_PLATFORM")
    )


WINDOW_PROBE = "from PySide6.QtWidgets import QApplication; QApplication([])"
WINDOW_PROBE_TIMEOUT_S = 60


def probe_window() -> tuple[int | None, str]:
    """Start Qt as the window would (same environment) in a throw-away process: its exit status
    (``None`` when it hung) and what it wrote on stderr."""
    try:
        done = subprocess.run(
            [str(PYTHON), "-c", WINDOW_PROBE],
            capture_output=True,
            text=True,
            timeout=WINDOW_PROBE_TIMEOUT_S,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr or b""
        return None, err.decode(errors="replace") if isinstance(err, bytes) else err
    return done.returncode, done.stderr


def window_problem(returncode: int | None, stderr: str) -> str:
    """Why the window cannot open, with what to install, from :func:`probe_window`'s result;
    ``''`` when Qt started. Without ``libxcb-cursor0`` (and a few other X libraries) Qt 6.5+
    aborts with a message about its "xcb" platform plugin."""
    if returncode == 0:
        return ""
    if returncode is None:
        return (
            f"Qt did not start within {WINDOW_PROBE_TIMEOUT_S} s on this display "
            f"(DISPLAY={os.environ.get('DISPLAY', '')!r})"
        )
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = next((line for line in lines if "could not" in line.lower()), lines[-1] if lines else "")
    if "xcb-cursor" in stderr:
        return (
            "Qt cannot open a window: its xcb platform plugin needs the system library "
            "libxcb-cursor0. Install it (Debian/Ubuntu: sudo apt-get install libxcb-cursor0; "
            "Fedora: sudo dnf install xcb-util-cursor) and run this again"
        )
    if 'platform plugin "xcb"' in stderr:
        return (
            f"Qt cannot load its xcb platform plugin ({said}). Install the X libraries it "
            "needs (Debian/Ubuntu: sudo apt-get install libxcb-cursor0 libxkbcommon-x11-0 "
            "libxcb-icccm4 libxcb-keysyms1 libxcb-shape0) and run this again; "
            "QT_DEBUG_PLUGINS=1 names the missing one"
        )
    return f"Qt cannot open a window (exit status {returncode}: {said or 'no message'})"


def demo_command(extra: list[str], probe=probe_window) -> list[str]:
    """The ``transferstudio`` command of ``tasks.py demo``: the window (which runs the demo and
    its baseline) when one can open here, else the headless demo, saying why."""
    program = str(BIN / "transferstudio")
    if not _has_display():
        _say("no display found (DISPLAY/WAYLAND_DISPLAY unset): running the demo headless")
        return [program, "demo", *extra]
    problem = window_problem(*probe()) if sys.platform not in ("win32", "darwin") else ""
    if problem:
        _say(problem)
        _say("running the demo headless instead")
        return [program, "demo", *extra]
    return [program, "gui", "--demo", *extra]


def run(args: list[str]) -> int:
    # Not subprocess.run: on Ctrl+C it kills the child (SIGKILL) a quarter second later,
    # mid-epoch or mid-write. The terminal sends Ctrl+C to the child too, and the child stops
    # cleanly and saves its run; so wait for it, however many times Ctrl+C is pressed.
    child = subprocess.Popen(args, cwd=ROOT)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    task, extra = argv[0], argv[1:]
    ensure_environment()
    if task == "demo":
        return run(demo_command(extra))
    _say("ruff check")
    if (
        run(
            [
                str(PYTHON),
                "-m",
                "ruff",
                "check",
                "transferstudio",
                "plugins",
                "tests",
                "benchmarks",
                "installer",
                "docs/generate.py",
                "tasks.py",
            ]
        )
        != 0
    ):
        return 1
    # The architecture's contracts ([tool.importlinter] in pyproject.toml): layers, no cycles,
    # plugins on the API only. See docs/architecture.md.
    _say("import contracts")
    if run([str(BIN / "lint-imports"), "--no-cache"]) != 0:
        return 1
    _say("pytest")
    return run([str(PYTHON), "-m", "pytest", *extra])


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # while installing: no traceback for a deliberate Ctrl+C
        sys.exit(130)
