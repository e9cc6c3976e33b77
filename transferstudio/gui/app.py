"""Starting the window: ``transferstudio`` or ``transferstudio gui [exp.toml]``."""

from __future__ import annotations

import sys
from pathlib import Path


def resource_file(name: str) -> Path | None:
    """A file of ``resources/``: in the installed application (PyInstaller puts it beside the
    program) or in a source checkout; ``None`` when this installation has none (a wheel)."""
    bundle = getattr(sys, "_MEIPASS", None)
    roots = [Path(bundle)] if bundle else []
    roots.append(Path(__file__).resolve().parents[2])
    for root in roots:
        if (root / "resources" / name).is_file():
            return root / "resources" / name
    return None


SELF_TEST_TIMEOUT_S = 120


def run_gui(
    experiment_path: str | None = None,
    workspace: Path | None = None,
    self_test: bool = False,
    run_demo: bool = False,
    demo_overrides: list[str] | None = None,
) -> int:
    """Open the main window on an experiment file, or on the demo experiment (generated on
    first use), and run the event loop. ``self_test`` checks an installation instead: the
    window opens, builds its model tree and scans the data, then closes as if the user had
    closed it; exit status 0 when all of that worked. ``run_demo`` (with no experiment file)
    runs the demo in the window, then its transfer-gain baseline (``gui/demo_run.py``), with
    ``demo_overrides`` (``key=value`` settings) applied to the demo."""
    import time

    from PySide6.QtWidgets import QApplication

    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.runs.workspace import default_workspace
    from transferstudio.core.settings import experiment as X
    from transferstudio.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("TransferStudio")
    app.setOrganizationName("TransferStudio")
    app.setDesktopFileName("transferstudio")  # matches resources/transferstudio.desktop
    icon = resource_file("transferstudio.svg")
    if icon is not None:
        from PySide6.QtGui import QIcon

        app.setWindowIcon(QIcon(str(icon)))
    started = time.monotonic()
    workspace = workspace or default_workspace()
    host = load_plugins()
    why_not = ""
    if experiment_path is None:
        from transferstudio.core.data.demo import prepare_demo, transfer_demo_unavailable

        why_not = transfer_demo_unavailable(host)
        if why_not and run_demo:
            print(
                f"no transfer demo: {why_not}. Running the from-scratch demo instead (ResNet-18 "
                "from random initialisation: it trains, but shows no transfer)",
                file=sys.stderr,
            )
        path = prepare_demo(workspace, host)
    else:
        path = Path(experiment_path)
    exp = X.load(path, host.method_params, (demo_overrides or []) if run_demo else [])
    window = MainWindow(host, workspace, exp, path)  # sized to the screen, or as last closed
    window.show()
    if self_test:
        return _self_test(app, window, started)
    if run_demo:
        from transferstudio.gui.demo_run import QtDemoSequence

        transfer = not why_not and exp.model.weights != "none"
        sequence = QtDemoSequence(window, transfer)
        sequence.ended.connect(lambda message: print(message, flush=True))
        sequence.start()
        if why_not:
            window.statusBar().showMessage(f"no transfer demo: {why_not}")
    return app.exec()


def _self_test(app, window, started: float) -> int:
    import time

    from PySide6.QtCore import QTimer

    outcome: dict[str, int] = {}

    def check() -> None:
        ready = window.tree_model is not None and window.scan_result is not None
        waited = time.monotonic() - started
        if not ready and waited < SELF_TEST_TIMEOUT_S and window.last_error is None:
            return
        timer.stop()
        if ready:
            print(
                f"window ready in {waited:.1f} s: {len(window.host.methods)} methods, "
                f"{len(window.host.backbones)} backbones, model tree of "
                f"{window.tree_model.rowCount()} top-level modules, "
                f"{len(window.scan_result.classes)} classes in the data"
            )
        else:
            print(
                f"window not ready after {waited:.0f} s: "
                + (window.last_error[0] if window.last_error else "timed out"),
                file=sys.stderr,
            )
        outcome["code"] = 0 if ready else 1
        window.close()  # the user's path: closeEvent saves the layout
        app.quit()

    timer = QTimer()
    timer.timeout.connect(check)
    timer.start(100)
    app.exec()
    return outcome.get("code", 1)
