"""The Plugins and About boxes."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QMessageBox, QWidget


def show_plugins(parent: QWidget, host) -> None:
    """What each plugin provides, its status and API version; load errors as details."""
    lines = []
    for r in host.records:
        lines.append(f"{r.name} {r.version} [{r.status}], API {r.api_version or '?'}")
        lines += [f"    {k}: {', '.join(v)}" for k, v in r.provides.items()]
    details = "\n\n".join(e for r in host.records for e in r.errors)
    box = QMessageBox(QMessageBox.Icon.Information, "Plugins", "\n".join(lines), parent=parent)
    box.setObjectName("dialog.plugins")
    if details:
        box.setDetailedText(details)
    box.open()


def show_about(parent: QWidget, workspace: Path) -> None:
    """Versions (TransferStudio, plugin API, Python, torch), the device and the workspace."""
    import platform

    import torch

    from transferstudio import __version__
    from transferstudio.api import API_VERSION
    from transferstudio.core.training.device import choose_device, describe

    text = (
        f"TransferStudio {__version__} (plugin API {API_VERSION})\n"
        f"Python {platform.python_version()}, torch {torch.__version__}\n"
        f"device: {describe(choose_device('auto'))}\nworkspace: {workspace}"
    )
    box = QMessageBox(QMessageBox.Icon.Information, "About TransferStudio", text, parent=parent)
    box.setObjectName("dialog.about")
    box.open()
