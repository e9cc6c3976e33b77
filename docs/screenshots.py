#!/usr/bin/env python3
"""Take the screenshots of docs/gui.md from the real window, at the sizes people use.

    xvfb-run -s "-screen 0 1920x1080x24" .venv/bin/python docs/screenshots.py \\
        --experiment EXP.toml --workspace WS --size 1366x768 --size 1920x1080

For each size it opens the window on the experiment, runs it to the end (unless ``--no-run``),
saves the whole window as ``gui-window-<size>.png``, then brings each panel to the front in turn
and saves its dock as ``gui-<panel>-<size>.png``, in ``docs/images`` (``--out`` chooses the
folder). The images in docs/ were then reduced to 256 colours (``mogrify -colors 256``). Run it under a real X server (Xvfb) rather than the offscreen
platform, so fonts and styles are those a user sees. The window's saved layout is not used
(a temporary settings file), so the screenshots show the default layout.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PANELS = ("data", "model", "method", "runs", "evaluation", "predict", "sweeps")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, type=Path)
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--size", action="append", default=[], help="WIDTHxHEIGHT (repeatable)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images")
    parser.add_argument("--no-run", action="store_true", help="do not train before the shots")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="after the run, measure its transfer gain (Runs > Transfer gain) before the shots",
    )
    parser.add_argument(
        "--predict", type=Path, help="a folder of new images for the Predict panel to classify"
    )
    args = parser.parse_args(argv)

    from PySide6.QtCore import QEventLoop, QSettings, QTimer
    from PySide6.QtWidgets import QApplication, QDockWidget

    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.settings import experiment as X
    from transferstudio.gui.main_window import MainWindow

    # Keep a reference: the application must outlive every window made below.
    app = QApplication.instance() or QApplication(sys.argv)  # noqa: F841
    host = load_plugins()
    args.out.mkdir(parents=True, exist_ok=True)

    def settle(ms: int = 800) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    for size in args.size or ["1366x768", "1920x1080"]:
        width, height = (int(v) for v in size.split("x"))
        exp = X.load(args.experiment, host.method_params)
        with tempfile.TemporaryDirectory() as tmp:
            settings = QSettings(str(Path(tmp) / "settings.ini"), QSettings.Format.IniFormat)
            window = MainWindow(host, args.workspace, exp, args.experiment, settings)
            window.resize(width, height)
            window.show()
            while window.tree_model is None or window.scan_result is None:
                settle(200)
            if not args.no_run:
                window.start_run()
                while window.controller.running:
                    settle(500)
                run_id = window.run_records[0].id
                if args.baseline:
                    window.runs_table.selectRow(0)
                    window.run_selected_baseline()
                    while window.controller.running:
                        settle(500)
                # the run shown in Runs and in Evaluation; with its baseline also selected, the
                # overlay compares the two curves
                window.refresh_runs()
                ids = [r.id for r in window.run_records]
                window.runs_table.selectRow(ids.index(run_id))
                if args.baseline:
                    from PySide6.QtCore import QItemSelectionModel

                    flags = (
                        QItemSelectionModel.SelectionFlag.Select
                        | QItemSelectionModel.SelectionFlag.Rows
                    )
                    model = window.runs_table.model()
                    window.runs_table.selectionModel().select(
                        model.index(ids.index(run_id) - 1, 0), flags
                    )
            if args.predict is not None:
                window.predict_panel.predict_paths([str(args.predict)])
                settle(4000)
            settle()
            docks = {d.objectName()[5:]: d for d in window.findChildren(QDockWidget)}
            window.grab().save(str(args.out / f"gui-window-{size}.png"))
            for panel in PANELS:
                docks[panel].raise_()
                settle(400)
                # the panel as it sits in the window at this size (its dock, title bar included)
                docks[panel].grab().save(str(args.out / f"gui-{panel}-{size}.png"))
            window.close()
            settle(200)
    print(f"screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
