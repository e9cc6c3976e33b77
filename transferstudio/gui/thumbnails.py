"""Thumbnail lists: images decoded and shrunk off the GUI thread, shown as icons with captions."""

from __future__ import annotations

from PySide6.QtCore import QSize
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import QListView, QListWidget, QListWidgetItem

from transferstudio.core.images import ImageProblem, load_rgb

THUMBNAIL_PX = 96


def thumbnail_list(name: str, accessible: str) -> QListWidget:
    """An icon-mode list for thumbnails, with an object and an accessible name."""
    widget = QListWidget()
    widget.setObjectName(name)
    widget.setAccessibleName(accessible)
    widget.setViewMode(QListView.ViewMode.IconMode)
    widget.setIconSize(QSize(THUMBNAIL_PX, THUMBNAIL_PX))
    widget.setResizeMode(QListView.ResizeMode.Adjust)
    widget.setWrapping(True)
    widget.setMaximumHeight(2 * THUMBNAIL_PX + 60)
    return widget


def load_thumbnails(items: list[tuple[str, str]]) -> list:
    """``(caption, path)`` -> ``(caption, path, QImage)``, decoded off the GUI thread (QImage,
    unlike QPixmap, may be built in any thread). Unreadable images are left out."""
    out = []
    for caption, path in items:
        try:
            image = load_rgb(path)
        except ImageProblem:
            continue
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        data = image.tobytes("raw", "RGB")
        qimage = QImage(
            data, image.width, image.height, 3 * image.width, QImage.Format.Format_RGB888
        ).copy()
        out.append((caption, path, qimage))
    return out


def fill_thumbnails(widget: QListWidget, images) -> None:
    """Replace the list's items with the loaded thumbnails (GUI thread)."""
    widget.clear()
    for caption, path, qimage in images:
        item = QListWidgetItem(QIcon(QPixmap.fromImage(qimage)), caption)
        item.setToolTip(path)
        widget.addItem(item)
