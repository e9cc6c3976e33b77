"""The confusion matrix of the Evaluation panel, painted by hand.

A plot widget scales its cells to whatever height the dock leaves (a 12 px strip at the default
layout) and labels its axes with numbers, while a person needs square cells, the class names on
both axes and counts that stay readable. Cells shrink to fit the panel down to
:data:`MIN_CELL_PX`; past that (about 50 classes at the default size) the matrix scrolls, and
Ctrl+wheel zooms.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QFontMetricsF, QPainter, QPalette
from PySide6.QtWidgets import QScrollArea, QToolTip, QWidget

from transferstudio.core.files.safe_text import printable

MIN_CELL_PX = 24
"""Smallest cell: a three-digit count in a 7-pt font still fits (about 50 classes at the default
window size before the matrix scrolls)."""
MAX_CELL_PX = 72
LABEL_MAX_PX = 140
"""Class names longer than this are elided on the axes (the tooltip shows the whole name)."""
LABEL_SHARE = 0.3
"""At most this share of the shorter side of the view goes to the class names: 140 px of long
names on both axes left no room for cells in the short bottom dock."""
LOW = QColor(255, 255, 255)
HIGH = QColor(8, 69, 148)  # a dark blue: the darkest cell of a row is its most common prediction


class ConfusionMatrixView(QWidget):
    """Square cells with counts, shaded by the fraction of their row (the true class), the
    class names on both axes. ``fit(size)`` chooses the cell size for the space available.

    Inside a scroll area the class names stay pinned to the visible edges (``set_origin``):
    a scrolled 50-class matrix without them is a grid of numbers nobody can place."""

    zoomed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.names: list[str] = []
        self.matrix: list[list[int]] = []
        self.cell = MIN_CELL_PX
        self.zoom = 1.0
        self._available = QSize(400, 400)
        self._origin = QPoint(0, 0)  # the scrolled-to corner: where the pinned labels go
        self.setMouseTracking(True)
        self.setBackgroundRole(QPalette.ColorRole.Base)
        self.setAutoFillBackground(True)

    # ------------------------------------------------------------------ data and geometry

    def set_matrix(self, names: list[str], matrix: list[list[int]]) -> None:
        self.names = [printable(str(n)) for n in names]
        self.matrix = [[int(v) for v in row] for row in matrix]
        self.zoom = 1.0
        self.setAccessibleDescription(
            f"confusion matrix of {len(self.names)} classes: {', '.join(self.names)}"
        )
        self._relayout()

    def fit(self, available: QSize) -> None:
        """Choose the cell size so the whole matrix fits ``available`` (the scroll area's
        viewport), within the minimum and maximum cell sizes and the user's zoom."""
        self._available = available
        self._relayout()

    def set_origin(self, origin: QPoint) -> None:
        """The top-left corner the scroll area shows: the axis labels are drawn there."""
        self._origin = QPoint(origin)
        self.update()

    def _label_px(self) -> int:
        # Fractional widths, rounded up: the integer advance is rounded down, and eliding to
        # it turned "class_00" into "class_..." although the space was there.
        metrics = QFontMetricsF(self.font())
        widest = max((math.ceil(metrics.horizontalAdvance(n)) for n in self.names), default=0)
        side = min(self._available.width(), self._available.height())
        cap = max(40, min(LABEL_MAX_PX, int(side * LABEL_SHARE)))
        return min(widest + 2, cap) + 8

    def axis_labels(self) -> list[str]:
        """The class names as drawn on the axes, elided in the middle when too long: names
        often share a prefix ("n01440764_tench"), and their ends tell them apart."""
        metrics = QFontMetrics(self.font())
        width = self._label_px() - 8
        return [metrics.elidedText(n, Qt.TextElideMode.ElideMiddle, width) for n in self.names]

    def _margins(self) -> tuple[int, int]:
        """(left, top): the axis title plus the class names."""
        title = QFontMetrics(self.font()).height() + 6
        return title + self._label_px(), title + self._label_px()

    def _relayout(self) -> None:
        n = max(len(self.names), 1)
        left, top = self._margins()
        fit = min(self._available.width() - left - 4, self._available.height() - top - 4) // n
        self.cell = int(max(MIN_CELL_PX, min(MAX_CELL_PX, fit)) * self.zoom)
        self.cell = max(self.cell, 8)
        self.setFixedSize(left + n * self.cell + 4, top + n * self.cell + 4)
        self.update()

    def cell_at(self, pos: QPoint) -> tuple[int, int] | None:
        """(true, predicted) class indices of the cell under ``pos``, or None (also under
        the pinned labels, which cover the cells scrolled beneath them)."""
        left, top = self._margins()
        col, row = (pos.x() - left) // self.cell, (pos.y() - top) // self.cell
        n = len(self.names)
        if pos.x() < self._origin.x() + left or pos.y() < self._origin.y() + top:
            return None
        if not (0 <= row < n and 0 <= col < n):
            return None
        return row, col

    def label_at(self, pos: QPoint) -> str | None:
        """The whole class name of the axis label under ``pos``, or None."""
        left, top = self._margins()
        x, y = pos.x() - self._origin.x(), pos.y() - self._origin.y()
        n = len(self.names)
        if 0 <= y < top and x >= left:  # column labels
            index = (pos.x() - left) // self.cell
        elif x < left and y >= top:  # row labels
            index = (pos.y() - top) // self.cell
        else:
            return None
        return self.names[index] if 0 <= index < n else None

    def fraction(self, row: int, col: int) -> float:
        total = sum(self.matrix[row])
        return self.matrix[row][col] / total if total else 0.0

    # ------------------------------------------------------------------ painting

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        if not self.names:
            return
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.TextAntialiasing)
        metrics = QFontMetrics(self.font())
        title_h = metrics.height() + 6
        left, top = self._margins()
        n, cell = len(self.names), self.cell
        label_px = self._label_px() - 8
        shown = self.axis_labels()
        ox, oy = self._origin.x(), self._origin.y()
        # The part in view: the scroll area's viewport (our parent) when there is one.
        seen = self.parentWidget().size() if self.parentWidget() else self.size()
        seen_w, seen_h = (
            min(self.width() - ox, seen.width()),
            min(self.height() - oy, seen.height()),
        )
        # Only the cells in view: 200 classes are 40,000 cells.
        area = event.rect()
        rows = range(max(0, (area.top() - top) // cell), min(n, (area.bottom() - top) // cell + 1))
        cols = range(
            max(0, (area.left() - left) // cell), min(n, (area.right() - left) // cell + 1)
        )
        count_font = QFont(self.font())
        count_font.setPointSizeF(max(6.5, min(self.font().pointSizeF(), cell / 3.2)))
        painter.setFont(count_font)
        grid = QColor(210, 210, 210)
        for i in rows:
            for j in cols:
                rect = QRect(left + j * cell, top + i * cell, cell, cell)
                f = self.fraction(i, j)
                painter.fillRect(rect, _shade(f))
                painter.setPen(grid)
                painter.drawRect(rect)
                painter.setPen(QColor("white") if f > 0.5 else QColor(20, 20, 20))
                painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, str(self.matrix[i][j]))
        # the diagonal (correct predictions) framed, so it reads at a glance
        painter.setPen(QColor(30, 30, 30))
        for i in rows:
            if i in cols:
                painter.drawRect(QRect(left + i * cell, top + i * cell, cell, cell))
        # The labels, pinned to the visible top and left edges over the cells scrolled
        # beneath them (at the widget's own edges when nothing is scrolled).
        base = self.palette().color(QPalette.ColorRole.Base)
        painter.fillRect(QRect(ox, oy, seen_w, top), base)
        painter.fillRect(QRect(ox, oy, left, seen_h), base)
        painter.setPen(self.palette().color(QPalette.ColorRole.Text))
        painter.setFont(self.font())
        for i, label in enumerate(shown):
            if i * cell + cell > oy and top + i * cell < oy + seen_h:  # row label
                painter.drawText(
                    QRect(ox + title_h, top + i * cell, label_px + 4, cell),
                    Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                    label,
                )
            if i * cell + cell > ox and left + i * cell < ox + seen_w:  # column label
                painter.save()
                painter.translate(left + i * cell, oy + top - 4)
                painter.rotate(-90)
                painter.drawText(
                    QRect(0, 0, label_px + 4, cell),
                    Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                    label,
                )
                painter.restore()
        painter.fillRect(QRect(ox, oy, left, top), base)  # the corner, under both titles
        # axis titles, centred on the part of the matrix in view
        bold = QFont(self.font())
        bold.setBold(True)
        painter.setFont(bold)
        cells_w = min(left + n * cell, ox + seen_w) - (ox + left)
        cells_h = min(top + n * cell, oy + seen_h) - (oy + top)
        painter.drawText(
            QRect(ox + left, oy, cells_w, title_h), Qt.AlignmentFlag.AlignCenter, "predicted"
        )
        painter.save()
        painter.translate(ox, oy + top + cells_h)
        painter.rotate(-90)
        painter.drawText(QRect(0, 0, cells_h, title_h), Qt.AlignmentFlag.AlignCenter, "true")
        painter.restore()
        painter.end()

    # ------------------------------------------------------------------ interaction

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 - Qt API
        pos = event.position().toPoint()
        hit = self.cell_at(pos)
        if hit is None:
            name = self.label_at(pos)  # an elided label: its whole name
            if name is None:
                QToolTip.hideText()
            else:
                QToolTip.showText(event.globalPosition().toPoint(), name, self)
            return
        i, j = hit
        QToolTip.showText(
            event.globalPosition().toPoint(),
            f"true {self.names[i]}, predicted {self.names[j]}: {self.matrix[i][j]} "
            f"({self.fraction(i, j):.0%} of {self.names[i]})",
            self,
        )

    def wheelEvent(self, event) -> None:  # noqa: N802 - Qt API
        if not event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            event.ignore()  # plain wheel: the scroll area scrolls
            return
        step = 1.15 if event.angleDelta().y() > 0 else 1 / 1.15
        self.zoom = max(0.5, min(4.0, self.zoom * step))
        self._relayout()
        self.zoomed.emit()


def _shade(fraction: float) -> QColor:
    f = max(0.0, min(1.0, fraction))
    return QColor(
        round(LOW.red() + (HIGH.red() - LOW.red()) * f),
        round(LOW.green() + (HIGH.green() - LOW.green()) * f),
        round(LOW.blue() + (HIGH.blue() - LOW.blue()) * f),
    )


class FittingScroll(QScrollArea):
    """A scroll area that asks its matrix to fit the viewport whenever it is resized."""

    def __init__(self, view: ConfusionMatrixView) -> None:
        super().__init__()
        self.view = view
        self.setWidget(view)
        self.setWidgetResizable(False)
        self.setAlignment(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
        self.setBackgroundRole(QPalette.ColorRole.Base)  # no grey bands beside the matrix
        for bar in (self.horizontalScrollBar(), self.verticalScrollBar()):
            bar.valueChanged.connect(self._follow_scroll)

    def _follow_scroll(self) -> None:
        self.view.set_origin(
            QPoint(self.horizontalScrollBar().value(), self.verticalScrollBar().value())
        )

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self.view.fit(self.viewport().size())
