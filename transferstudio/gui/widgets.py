"""Small widget helpers shared by the panels: object and accessible names, and thumbnail lists
(images decoded and shrunk off the GUI thread, shown as icons with captions)."""

from __future__ import annotations

from PySide6.QtCore import QSize
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import QListView, QListWidget, QListWidgetItem

from transferstudio.core.data.images import ImageProblem, load_rgb

THUMBNAIL_PX = 96


def named(widget, name: str, accessible: str | None = None):
    """``widget`` with an object name (for scripted tests, see docs/gui.md) and an accessible
    name (for screen readers; ``name`` when not given)."""
    widget.setObjectName(name)
    widget.setAccessibleName(accessible or name)
    return widget


def thumbnail_list(name: str, accessible: str, max_rows: int | None = 2) -> QListWidget:
    """An icon-mode list for thumbnails, with an object and an accessible name, at most
    ``max_rows`` rows high (``None``: as high as its layout allows)."""
    widget = named(QListWidget(), name, accessible)
    widget.setViewMode(QListView.ViewMode.IconMode)
    widget.setIconSize(QSize(THUMBNAIL_PX, THUMBNAIL_PX))
    widget.setResizeMode(QListView.ResizeMode.Adjust)
    widget.setWrapping(True)
    if max_rows is not None:
        widget.setMaximumHeight(max_rows * THUMBNAIL_PX + 60)
    return widget


def load_thumbnails(items: list[tuple[str, str]], boxes: dict | None = None) -> list:
    """``(caption, path)`` -> ``(caption, path, QImage)``, decoded off the GUI thread (QImage,
    unlike QPixmap, may be built in any thread). Unreadable images are left out. ``boxes``
    maps a path to the boxes (``core.data.box_drawing.DrawnBox``) drawn on its thumbnail."""
    from transferstudio.core.data.box_drawing import draw_boxes

    out = []
    for caption, path in items:
        try:
            image = load_rgb(path)
        except ImageProblem:
            continue
        full_width = image.width
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        if boxes and boxes.get(path):
            image = draw_boxes(image, boxes[path], image.width / full_width)
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
