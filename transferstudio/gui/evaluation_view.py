"""The Evaluation panel: a labelled confusion matrix, the per-class table and the mistakes
gallery of one run's report, for the run just finished or any run chosen in Runs.

The confusion matrix is painted by hand rather than with a plot widget: a plot scales its cells
to whatever height the dock leaves (a 12 px strip at the default layout) and labels its axes
with numbers, while a person needs square cells, the class names on both axes and counts that
stay readable. Cells shrink to fit the panel down to :data:`MIN_CELL_PX`; past that (about 50
classes at the default size) the matrix scrolls, and Ctrl+wheel zooms.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListView,
    QScrollArea,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from transferstudio.core.safe_text import printable
from transferstudio.gui.widgets import THUMBNAIL_PX, named, thumbnail_list

MIN_CELL_PX = 24
"""Smallest cell: a three-digit count in a 7-pt font still fits (about 50 classes at the default
window size before the matrix scrolls)."""
MAX_CELL_PX = 72
LABEL_MAX_PX = 140
"""Class names longer than this are elided on the axes (the tooltip shows the whole name)."""
LOW = QColor(255, 255, 255)
HIGH = QColor(8, 69, 148)  # a dark blue: the darkest cell of a row is its most common prediction
EMPTY_TEXT = "No evaluation yet: finish a run, or select a completed run in Runs."
GALLERY_SIZE = 24


class ConfusionMatrixView(QWidget):
    """Square cells with counts, shaded by the fraction of their row (the true class), the
    class names on both axes. ``fit(size)`` chooses the cell size for the space available."""

    zoomed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.names: list[str] = []
        self.matrix: list[list[int]] = []
        self.cell = MIN_CELL_PX
        self.zoom = 1.0
        self._available = QSize(400, 400)
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

    def _label_px(self) -> int:
        metrics = QFontMetrics(self.font())
        widest = max((metrics.horizontalAdvance(n) for n in self.names), default=0)
        return min(widest, LABEL_MAX_PX) + 8

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
        """(true, predicted) class indices of the cell under ``pos``, or None."""
        left, top = self._margins()
        col, row = (pos.x() - left) // self.cell, (pos.y() - top) // self.cell
        n = len(self.names)
        if pos.x() < left or pos.y() < top or not (0 <= row < n and 0 <= col < n):
            return None
        return row, col

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
        text = self.palette().color(QPalette.ColorRole.Text)
        painter.setPen(text)
        # axis titles
        bold = QFont(self.font())
        bold.setBold(True)
        painter.setFont(bold)
        painter.drawText(
            QRect(left, 0, n * cell, title_h), Qt.AlignmentFlag.AlignCenter, "predicted"
        )
        painter.save()
        painter.translate(0, top + n * cell)
        painter.rotate(-90)
        painter.drawText(QRect(0, 0, n * cell, title_h), Qt.AlignmentFlag.AlignCenter, "true")
        painter.restore()
        painter.setFont(self.font())
        # class names: rows on the left, columns rotated on top
        for i, name in enumerate(self.names):
            shown = metrics.elidedText(name, Qt.TextElideMode.ElideRight, label_px)
            painter.drawText(
                QRect(title_h, top + i * cell, label_px + 4, cell),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                shown,
            )
            painter.save()
            painter.translate(left + i * cell, top - 4)
            painter.rotate(-90)
            painter.drawText(
                QRect(0, 0, label_px + 4, cell),
                Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                shown,
            )
            painter.restore()
        # cells
        count_font = QFont(self.font())
        count_font.setPointSizeF(max(6.5, min(self.font().pointSizeF(), cell / 3.2)))
        painter.setFont(count_font)
        grid = QColor(210, 210, 210)
        for i in range(n):
            for j in range(n):
                rect = QRect(left + j * cell, top + i * cell, cell, cell)
                f = self.fraction(i, j)
                painter.fillRect(rect, _shade(f))
                painter.setPen(grid)
                painter.drawRect(rect)
                painter.setPen(QColor("white") if f > 0.5 else QColor(20, 20, 20))
                painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, str(self.matrix[i][j]))
        # the diagonal (correct predictions) framed, so it reads at a glance
        painter.setPen(QColor(30, 30, 30))
        for i in range(n):
            painter.drawRect(QRect(left + i * cell, top + i * cell, cell, cell))
        painter.end()

    # ------------------------------------------------------------------ interaction

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 - Qt API
        hit = self.cell_at(event.position().toPoint())
        if hit is None:
            QToolTip.hideText()
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


class _FittingScroll(QScrollArea):
    """A scroll area that asks its matrix to fit the viewport whenever it is resized."""

    def __init__(self, view: ConfusionMatrixView) -> None:
        super().__init__()
        self.view = view
        self.setWidget(view)
        self.setWidgetResizable(False)
        self.setAlignment(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self.view.fit(self.viewport().size())


class _TwoLineLabel(QLabel):
    """A wrapping label two lines high that does not ask for height-for-width: a wrapping
    label makes the dock's scroll area size the whole panel by its preferred heights, taller
    than the short bottom dock, so the matrix was cut off below the fold."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.setWordWrap(True)
        self.setFixedHeight(2 * self.fontMetrics().lineSpacing() + 4)
        self.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt API
        return False

    def setText(self, text: str) -> None:  # noqa: N802 - Qt API
        super().setText(text)
        self.setToolTip(text)  # the whole message, should two lines not hold it


def read_report_file(folder: str | Path) -> dict[str, Any]:
    """A run's ``report.json``; raises ValueError with a message naming the file and saying
    what to do when it is missing or unreadable."""
    path = Path(folder) / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"{path} does not exist: the run ended before its final evaluation; resume it "
            "(Runs > Resume) to finish it"
        ) from None
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}); the run's checkpoints are "
            "intact: 'transferstudio run --resume' or a new run writes a new report"
        ) from None
    if not isinstance(report, dict):
        raise ValueError(f"{path} is not a report (a JSON object was expected)")
    return report


class EvaluationPanel(QWidget):
    """What a report says about a run: the split picker, the confusion matrix, per-class
    precision / recall / F1 / support and the most confident mistakes."""

    gallery_requested = Signal(list)
    """``[(caption, path), ...]`` to load off the GUI thread and hand to :meth:`show_gallery`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.run_label = ""
        self.report: dict[str, Any] | None = None
        layout = QVBoxLayout(self)
        top = QHBoxLayout()
        self.title = named(_TwoLineLabel(EMPTY_TEXT), "evaluation.title")
        top.addWidget(self.title, 1)
        self.split_box = named(QComboBox(), "evaluation.split", "split shown")
        self.split_box.currentIndexChanged.connect(self._show_split)
        top.addWidget(self.split_box)
        layout.addLayout(top)

        self.matrix = named(ConfusionMatrixView(), "evaluation.confusion", "confusion matrix")
        self.matrix_scroll = named(_FittingScroll(self.matrix), "evaluation.confusion_scroll")
        self.matrix_scroll.setMinimumSize(260, 120)
        self.class_table = named(QTableWidget(0, 5), "evaluation.per_class", "per-class metrics")
        self.class_table.setHorizontalHeaderLabels(
            ["class", "precision", "recall", "F1", "support"]
        )
        self.class_table.verticalHeader().setVisible(False)
        self.class_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.class_table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in range(1, 5):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        self.class_table.setMinimumWidth(240)
        self.class_table.setMaximumWidth(460)  # five short columns: more width is only blank

        gallery_box = QWidget()
        gallery_layout = QVBoxLayout(gallery_box)
        gallery_layout.setContentsMargins(0, 0, 0, 0)
        self.gallery_label = named(QLabel("misclassified images"), "evaluation.gallery_title")
        gallery_layout.addWidget(self.gallery_label)
        self.gallery = thumbnail_list(
            "evaluation.gallery", "misclassified validation images", max_rows=None
        )
        # Captions "true -> predicted (93%)" wrap on two lines under a fixed grid instead of
        # being cut to "ants -> b..."; the tooltip holds the caption and the path.
        self.gallery.setWordWrap(True)
        self.gallery.setGridSize(QSize(THUMBNAIL_PX + 44, THUMBNAIL_PX + 44))
        self.gallery.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.gallery.setMovement(QListView.Movement.Static)
        gallery_layout.addWidget(self.gallery)

        # Side by side: the panel shares the short, wide bottom of the window with Runs, so
        # stacking the three parts left each a strip.
        self.split = named(QSplitter(Qt.Orientation.Horizontal), "evaluation.split_view")
        self.split.addWidget(self.matrix_scroll)
        self.split.addWidget(self.class_table)
        self.split.addWidget(gallery_box)
        for index, stretch in enumerate((4, 2, 4)):
            self.split.setStretchFactor(index, stretch)
        layout.addWidget(self.split, 1)
        self.clear()

    # ------------------------------------------------------------------ public

    def clear(self, message: str = EMPTY_TEXT) -> None:
        """Show ``message`` and nothing of an earlier run."""
        self.report = None
        self.title.setText(message)
        self.split_box.blockSignals(True)
        self.split_box.clear()
        self.split_box.blockSignals(False)
        self.split_box.setVisible(False)
        self.matrix.set_matrix([], [])
        self.class_table.setRowCount(0)
        self.gallery.clear()
        self.gallery_label.setText("misclassified images")

    def show_message(self, message: str) -> None:
        """A problem with the report (missing, corrupt), in place of the evaluation."""
        self.clear(message)
        self.title.setStyleSheet("color: #b00000;")

    def show_report(self, report: dict[str, Any], run_label: str) -> bool:
        """Show ``report`` (a run's report.json) under ``run_label``. Opens on the test split
        when there is one (the figure to cite), else validation. False when the report has no
        classification section to show (the panel then says so)."""
        splits = [
            s
            for s in ("test", "val")
            if isinstance(report.get(s), dict) and report[s].get("per_class")
        ]
        if not splits:
            self.show_message(f"{run_label}: its report has no per-class evaluation to show")
            return False
        self.clear()
        self.title.setStyleSheet("")
        self.report = report
        self.run_label = run_label
        self.split_box.blockSignals(True)
        for split in splits:
            self.split_box.addItem(_SPLIT_NAMES[split], split)
        self.split_box.blockSignals(False)
        self.split_box.setVisible(len(splits) > 1)
        self._show_split()
        return True

    def class_names(self) -> list[str]:
        """The class names on the matrix's axes (what a reader sees, for tests and tools)."""
        return list(self.matrix.names)

    def gallery_items(self) -> list[tuple[str, str]]:
        """``(caption, path)`` of the mistakes the gallery shows, most confident first."""
        report = self.report or {}
        mistakes = (report.get(self.current_split()) or {}).get("misclassified") or []
        if not mistakes and self.current_split() == "test":
            mistakes = (report.get("val") or {}).get("misclassified") or []
        return [
            (
                f"{printable(str(m['true']))} → {printable(str(m['predicted']))} "
                f"({float(m['confidence']):.0%})",
                str(m["path"]),
            )
            for m in mistakes[:GALLERY_SIZE]
            if isinstance(m, dict) and {"true", "predicted", "confidence", "path"} <= m.keys()
        ]

    def current_split(self) -> str:
        return self.split_box.currentData() or "val"

    # ------------------------------------------------------------------ internals

    def _show_split(self) -> None:
        if self.report is None:
            return
        split = self.current_split()
        section = self.report[split]
        rows = section["per_class"]
        names = [str(row.get("class", i)) for i, row in enumerate(rows)]
        confusion = section.get("confusion") or []
        if len(confusion) == len(names) and all(len(r) == len(names) for r in confusion):
            self.matrix.set_matrix(names, confusion)
        else:
            self.matrix.set_matrix([], [])
        self.matrix.fit(self.matrix_scroll.viewport().size())
        metrics = section.get("metrics") or {}
        figure = (
            f", accuracy {metrics['accuracy']:.4f}"
            if isinstance(metrics.get("accuracy"), int | float)
            else ""
        )
        total = sum(int(row.get("support", 0)) for row in rows)
        self.title.setText(
            f"{self.run_label}: {_SPLIT_NAMES[split].lower()}, {total} images{figure}"
        )
        self.class_table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            values = [
                printable(str(row.get("class", r))),
                _number(row.get("precision")),
                _number(row.get("recall")),
                _number(row.get("f1")),
                str(row.get("support", "")),
            ]
            for c, value in enumerate(values):
                item = QTableWidgetItem(value)
                if c:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                else:
                    item.setToolTip(value)
                self.class_table.setItem(r, c, item)
        self.class_table.resizeRowsToContents()
        items = self.gallery_items()
        source = "test" if (section.get("misclassified") and split == "test") else "validation"
        self.gallery_label.setText(
            f"misclassified {source} images, most confident first ({len(items)} shown)"
            if items
            else "no misclassified images to show"
        )
        self.gallery.clear()
        self.gallery_requested.emit(items)

    def show_gallery(self, images) -> None:
        """Thumbnails loaded off the GUI thread: ``[(caption, path, QImage), ...]``."""
        from transferstudio.gui.widgets import fill_thumbnails

        fill_thumbnails(self.gallery, images)
        for i in range(self.gallery.count()):
            item = self.gallery.item(i)
            item.setToolTip(f"{item.text()}\n{item.toolTip()}")


_SPLIT_NAMES = {"test": "Test split", "val": "Validation split"}


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else ""
