"""A screenshot of the real window during training, on the X11 (xcb) platform.

What it does
    Generates the demo experiment in a temporary workspace
    (``transferstudio.core.demo.prepare_demo``), loads it with
    ``transferstudio.core.experiment.load(path, host.method_params)`` (host from
    ``load_plugins()``), opens ``MainWindow`` at 1600x1000 (settings in a temporary ini file, so
    the user's own settings are never read or written), waits for the data scan and the layer
    tree, starts a run through ``MainWindow.start_run()``, waits until ``--epochs`` epochs have
    ended (so the epoch curves have points) and a few more batch updates have been drawn, and
    saves ``window.grab()`` to ``--out``. Then it stops the run (``controller.stop_and_wait()``),
    drains the thread pool and exits. The demo's two epochs take about 20 s on 2 CPU cores.

    It refuses to run on any Qt platform but ``xcb``: the point is the real X11 platform plugin
    (fonts, styles, dock layout as a user sees them), not the offscreen one the tests use. The
    picture itself comes from ``QWidget.grab()``, so no X screen capture tool is needed.

How to run (needs an X server; on a headless machine ``apt-get install xvfb``)
    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python benchmarks/screenshot.py
    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python benchmarks/screenshot.py \\
        --out docs/images/window-training.png --epochs 2
"""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "xcb"  # before any Qt import: the real X11 platform

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT

WIDTH, HEIGHT = 1600, 1000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "window-training.png")
    ap.add_argument("--epochs", type=int, default=2, help="grab after this many epochs ended")
    ap.add_argument("--timeout-s", type=float, default=300.0)
    args = ap.parse_args(argv)
    if not os.environ.get("DISPLAY"):
        print("no DISPLAY: run this under an X server, e.g. xvfb-run -a ...", file=sys.stderr)
        return 2

    from PySide6.QtCore import QSettings, QThreadPool
    from PySide6.QtWidgets import QApplication

    from transferstudio.core import experiment as X
    from transferstudio.core.demo import prepare_demo
    from transferstudio.core.plugins import load_plugins
    from transferstudio.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("TransferStudio")
    app.setOrganizationName("TransferStudio")
    print(f"Qt platform: {app.platformName()}, DISPLAY={os.environ['DISPLAY']}", flush=True)
    if app.platformName() != "xcb":
        print(f"refusing to run on platform {app.platformName()!r}", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="ts-screenshot-"))
    window = None
    try:
        workspace = tmp / "workspace"
        path = prepare_demo(workspace)
        host = load_plugins()
        exp = X.load(path, host.method_params)
        settings = QSettings(str(tmp / "settings.ini"), QSettings.Format.IniFormat)
        window = MainWindow(host, workspace, exp, path, settings)
        window.resize(WIDTH, HEIGHT)
        window.show()
        app.processEvents()
        hint = window.minimumSizeHint()
        print(
            f"asked for {WIDTH}x{HEIGHT}; the window is {window.width()}x{window.height()} "
            f"(its minimumSizeHint is {hint.width()}x{hint.height()})",
            flush=True,
        )

        def pump_until(predicate, what: str) -> None:
            deadline = time.monotonic() + args.timeout_s
            while not predicate():
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out waiting for {what}")
                app.processEvents()
                time.sleep(0.01)

        pump_until(
            lambda: window.tree_model is not None and window.scan_result is not None,
            "the data scan and the layer tree",
        )
        epochs: list = []
        batches: list = []
        window.start_run()
        worker = window.controller.worker
        if worker is None:
            raise SystemExit(f"the run did not start: {window.last_error}")
        worker.epoch_ended.connect(epochs.append)
        worker.batches_ended.connect(batches.append)
        t0 = time.monotonic()
        pump_until(lambda: len(epochs) >= args.epochs or window.last_error, "the epochs")
        if window.last_error:
            raise SystemExit(f"the run failed: {window.last_error}")
        seen = len(batches)
        pump_until(lambda: len(batches) >= seen + 3, "batch updates after the last epoch")
        for _ in range(20):  # let the last updates paint
            app.processEvents()
            time.sleep(0.01)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image = window.grab()
        if not image.save(str(args.out)):
            raise SystemExit(f"could not save {args.out}")
        print(
            f"saved {args.out} ({image.width()}x{image.height()}, device pixel ratio "
            f"{image.devicePixelRatio()}) after {len(epochs)} epochs, "
            f"{time.monotonic() - t0:.1f} s of training; epoch curves "
            f"{window.curves.points('val_acc')} points, batch curve "
            f"{window.curves.points('batch_loss')} points",
            flush=True,
        )
    finally:
        if window is not None:
            window.controller.stop_and_wait()
            QThreadPool.globalInstance().waitForDone(60_000)
            window.close()
            app.processEvents()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
