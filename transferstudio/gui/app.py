"""Starting the window: ``transferstudio`` or ``transferstudio gui [exp.toml]``."""

from __future__ import annotations

import sys
from pathlib import Path


def run_gui(experiment_path: str | None = None, workspace: Path | None = None) -> int:
    """Open the main window on an experiment file, or on the demo experiment (generated on
    first use), and run the event loop."""
    from PySide6.QtWidgets import QApplication

    from transferstudio.core import experiment as X
    from transferstudio.core.plugins import load_plugins
    from transferstudio.core.runs import default_workspace
    from transferstudio.gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("TransferStudio")
    app.setOrganizationName("TransferStudio")
    workspace = workspace or default_workspace()
    host = load_plugins()
    if experiment_path is None:
        from transferstudio.core.demo import prepare_demo

        path = prepare_demo(workspace)
    else:
        path = Path(experiment_path)
    exp = X.load(path, host.method_params)
    window = MainWindow(host, workspace, exp, path)
    window.resize(1400, 900)
    window.show()
    return app.exec()
