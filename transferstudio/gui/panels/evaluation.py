"""The Evaluation panel: a labelled confusion matrix, the per-class table and the mistakes
gallery of one run's report, for the run just finished or any run chosen in Runs.

The matrix itself is :mod:`transferstudio.gui.panels.confusion_matrix`; the report file is read
by :func:`transferstudio.core.runs.report_file.read_report_file`.
"""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListView,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from transferstudio.core.data.box_drawing import (
    FALSE_POSITIVE,
    MISSED,
    TRUE_BOX,
    DrawnBox,
    class_colour,
)
from transferstudio.core.files.safe_text import printable
from transferstudio.core.runs.report_file import read_report_file
from transferstudio.gui.panels.confusion_matrix import ConfusionMatrixView, FittingScroll
from transferstudio.gui.widgets import THUMBNAIL_PX, load_thumbnails, named, thumbnail_list
from transferstudio.gui.worker import run_in_background

EMPTY_TEXT = "No evaluation yet: finish a run, or select a completed run in Runs."
GALLERY_SIZE = 24


class _TwoLineLabel(QLabel):
    """A wrapping label one line high, or two when the text needs them, that does not ask
    for height-for-width: a wrapping label makes the dock's scroll area size the whole panel
    by its preferred heights, taller than the short bottom dock, so the matrix was cut off
    below the fold. A second line kept for short texts cost the matrix its height."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.setWordWrap(True)
        self.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        self._fit_height()

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt API
        return False

    def setText(self, text: str) -> None:  # noqa: N802 - Qt API
        super().setText(text)
        self.setToolTip(text)  # the whole message, should two lines not hold it
        self._fit_height()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self._fit_height()

    def _fit_height(self) -> None:
        metrics = self.fontMetrics()
        lines = 1 if metrics.horizontalAdvance(self.text()) < self.width() - 4 else 2
        height = lines * metrics.lineSpacing() + 4
        if self.height() != height or self.minimumHeight() != height:
            self.setFixedHeight(height)


class EvaluationPanel(QWidget):
    """What a report says about a run: the split picker, the confusion matrix, per-class
    precision / recall / F1 / support and the most confident mistakes."""

    gallery_requested = Signal(list)
    """``[(caption, path), ...]`` to load off the GUI thread and hand to :meth:`show_gallery`."""

    def __init__(self, parent: QWidget | None = None, load_gallery: bool = False) -> None:
        """``load_gallery``: load the mistakes' thumbnails off the GUI thread itself (the
        window's panel); without it, whoever listens to ``gallery_requested`` does."""
        super().__init__(parent)
        self.run_label = ""
        self.report: dict[str, Any] | None = None
        self.run_id: str | None = None
        """The workspace run on show (None: none yet), and its status when it was read: a
        change (running -> completed elsewhere) is read again (see :meth:`follow_runs`)."""
        self.run_status = ""
        self._gallery_generation = 0
        self._gallery_boxes: dict[str, list] = {}  # detection: boxes drawn on each thumbnail
        if load_gallery:
            self.gallery_requested.connect(self._load_gallery)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)  # the bottom dock is short: every pixel counts
        top = QHBoxLayout()
        self.title = named(_TwoLineLabel(EMPTY_TEXT), "evaluation.title")
        top.addWidget(self.title, 1)
        self.split_box = named(QComboBox(), "evaluation.split", "split shown")
        self.split_box.currentIndexChanged.connect(self._show_split)
        top.addWidget(self.split_box)
        # Detection reports: the score from which a detection counts, for the gallery.
        self.threshold = named(QDoubleSpinBox(), "evaluation.score_threshold", "score threshold")
        self.threshold.setRange(0.05, 0.95)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.threshold.setPrefix("score >= ")
        self.threshold.setToolTip(
            "Detections scoring below this are not counted in the gallery: green boxes were "
            "found, red ones missed, orange detections match no object"
        )
        self.threshold.valueChanged.connect(self._show_split)
        top.addWidget(self.threshold)

        self.matrix = named(ConfusionMatrixView(), "evaluation.confusion", "confusion matrix")
        self.matrix_scroll = named(FittingScroll(self.matrix), "evaluation.confusion_scroll")
        self.matrix_scroll.setMinimumSize(260, 120)
        self.pr_plot = named(_pr_plot(), "evaluation.pr_curves", "precision-recall curves")
        self.pr_plot.setMinimumSize(260, 120)
        self.class_table = named(QTableWidget(0, 5), "evaluation.per_class", "per-class metrics")
        self.class_table.setHorizontalHeaderLabels(
            ["class", "precision", "recall", "F1", "support"]
        )
        self.class_table.verticalHeader().setVisible(False)
        self.class_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.class_table.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # as on the axes
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
        # stacking the three parts left each a strip. The matrix gets the whole height (its
        # cells are square, so height is what limits them); the run's header sits over the
        # table and the gallery.
        details = QSplitter(Qt.Orientation.Horizontal)
        details.addWidget(self.class_table)
        details.addWidget(gallery_box)
        details.setStretchFactor(0, 2)
        details.setStretchFactor(1, 4)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addLayout(top)
        right_layout.addWidget(details, 1)
        self.split = named(QSplitter(Qt.Orientation.Horizontal), "evaluation.split_view")
        self.split.addWidget(self.matrix_scroll)
        self.split.addWidget(self.pr_plot)  # in the matrix's place for detection reports
        self.split.addWidget(right)
        self.split.setStretchFactor(0, 3)
        self.split.setStretchFactor(1, 3)
        self.split.setStretchFactor(2, 7)
        self.split.setSizes([300, 300, 700])  # proportions until the panel has its real width
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
        self.pr_plot.clear()
        self._set_detection(False)

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

    def is_detection(self) -> bool:
        """Whether the report on show is a detection run's (mAP, not a confusion matrix)."""
        section = (self.report or {}).get(self.current_split()) or {}
        return "pr_curves" in section

    def gallery_items(self) -> list[tuple[str, str]]:
        """``(caption, path)`` of the mistakes the gallery shows, most confident first."""
        if self.is_detection():
            return [(caption, path) for caption, path, _ in self._detection_gallery()]
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

    def show_run(self, record) -> None:
        """The evaluation of a run of the workspace (selected in Runs, or the newest completed
        one when the window opens); a missing or damaged report is said here."""
        self.run_id, self.run_status = record.id, record.status
        label = f"run {record.id} ({record.name}, {record.status})"
        if record.status == "running":
            self.show_message(f"{label}: its evaluation appears here when it ends")
            return
        try:
            report = read_report_file(record.folder)
        except ValueError as exc:
            self.show_message(f"{label}: {exc}")
            return
        self.show_report(report, label)

    def show_finished_run(self, result) -> None:
        """The report of a run this window just finished (an engine ``RunResult``)."""
        self.run_id, self.run_status = result.run_id, result.status
        self.show_report(result.report, f"run {result.run_id} (just finished)")

    def follow_runs(self, records: list) -> None:
        """After the runs table was read again (``records``, newest first): with nothing on
        show yet, the newest completed run; the run on show, again if its status changed (it
        ended in another process meanwhile: its report is there now)."""
        if self.run_id is None:
            finished = next((r for r in records if r.status == "completed"), None)
            if finished is not None:
                self.show_run(finished)
            return
        shown = next((r for r in records if r.id == self.run_id), None)
        if shown is not None and shown.status != self.run_status:
            self.show_run(shown)

    # ------------------------------------------------------------------ internals

    def _load_gallery(self, items: list) -> None:
        self._gallery_generation += 1
        generation = self._gallery_generation

        def show(images) -> None:
            if generation == self._gallery_generation:  # not an earlier run's thumbnails
                self.show_gallery(images)

        boxes = dict(self._gallery_boxes)
        run_in_background(lambda: load_thumbnails(items, boxes), show, self._gallery_failed, self)

    def _gallery_failed(self, message: str, details: str) -> None:
        self.gallery_label.setText(f"cannot show the misclassified images: {message}")

    def _set_detection(self, detection: bool) -> None:
        self.matrix_scroll.setVisible(not detection)
        self.pr_plot.setVisible(detection)
        self.threshold.setVisible(detection)

    def _show_split(self) -> None:
        if self.report is None:
            return
        split = self.current_split()
        section = self.report[split]
        self._set_detection("pr_curves" in section)
        if "pr_curves" in section:
            self._show_detection(split, section)
            return
        self._gallery_boxes = {}
        self.class_table.setHorizontalHeaderLabels(
            ["class", "precision", "recall", "F1", "support"]
        )
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
        self._fill_table(rows, ("precision", "recall", "f1"), "support")
        # Wide enough for the names and the figures: the splitter otherwise squeezed the
        # stretching class column down to "..." at 1366 px.
        table = self.class_table
        needed = sum(
            max(table.sizeHintForColumn(c), table.horizontalHeader().sectionSizeHint(c))
            for c in range(table.columnCount())
        )
        needed += 2 * table.frameWidth() + table.verticalScrollBar().sizeHint().width() + 4
        table.setMinimumWidth(max(240, min(needed, table.maximumWidth())))
        items = self.gallery_items()
        source = "test" if (section.get("misclassified") and split == "test") else "validation"
        self.gallery_label.setText(
            f"misclassified {source} images, most confident first ({len(items)} shown)"
            if items
            else "no misclassified images to show"
        )
        self.gallery.clear()
        self.gallery_requested.emit(items)

    def _show_detection(self, split: str, section: dict[str, Any]) -> None:
        """A detection report: PR curve per class, AP / recall per class, the worst images."""
        rows = section.get("per_class") or []
        names = [str(row.get("class", i)) for i, row in enumerate(rows)]
        metrics = section.get("metrics") or {}
        figures = ", ".join(
            f"{label} {metrics[key]:.4f}"
            for key, label in (("map50", "mAP@0.5"), ("map", "mAP@[.5:.95]"))
            if isinstance(metrics.get(key), int | float)
        )
        images = int(metrics.get("images", 0))
        self.title.setText(
            f"{self.run_label}: {_SPLIT_NAMES[split].lower()}, {images} images, {figures}"
        )
        self.pr_plot.clear()
        self.pr_plot.addLegend(offset=(-5, 5))
        for i, name in enumerate(names):
            curve = (section.get("pr_curves") or {}).get(name)
            if curve:
                ap = rows[i].get("ap50")
                label = f"{name} (AP50 {ap:.2f})" if isinstance(ap, int | float) else name
                self.pr_plot.plot(
                    curve["recall"],
                    curve["precision"],
                    pen=pg.mkPen(class_colour(i), width=2),
                    name=printable(label),
                )
        self.class_table.setHorizontalHeaderLabels(["class", "AP50", "AP50:95", "recall", "boxes"])
        self._fill_table(rows, ("ap50", "ap", "recall"), "boxes")
        gallery = self._detection_gallery()
        self._gallery_boxes = {path: boxes for _, path, boxes in gallery}
        self.gallery_label.setText(
            f"worst {split} images at score >= {self.threshold.value():.2f}: green found, red "
            f"missed, orange false positives ({len(gallery)} shown)"
            if gallery
            else "no missed objects or false positives to show"
        )
        self.gallery.clear()
        self.gallery_requested.emit([(caption, path) for caption, path, _ in gallery])

    def _fill_table(self, rows: list[dict], figures: tuple[str, ...], count: str) -> None:
        """One row per class: its name, three ``figures`` and a ``count`` (right-aligned)."""
        self.class_table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            values = [
                printable(str(row.get("class", r))),
                *(_number(row.get(key)) for key in figures),
                str(row.get(count, "")),
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

    def _detection_gallery(self) -> list[tuple[str, str, list]]:
        """``(caption, path, boxes)`` of the worst images, matched at the threshold shown."""
        from transferstudio.core.training.detection_metrics import errors_at

        section = (self.report or {}).get(self.current_split()) or {}
        out = []
        for image in (section.get("worst_images") or [])[:GALLERY_SIZE]:
            if not isinstance(image, dict) or "path" not in image:
                continue
            row = errors_at(image, self.threshold.value()) if "detections" in image else image
            if not row.get("errors"):
                continue
            boxes = [
                DrawnBox(*b[:4], "", colour)
                for key, colour in (
                    ("true", TRUE_BOX),
                    ("missed", MISSED),
                    ("false_positives", FALSE_POSITIVE),
                )
                for b in row.get(key, [])
            ]
            caption = f"{len(row['missed'])} missed, {len(row['false_positives'])} false +"
            out.append((caption, str(image["path"]), boxes))
        return out

    def show_gallery(self, images) -> None:
        """Thumbnails loaded off the GUI thread: ``[(caption, path, QImage), ...]``."""
        from transferstudio.gui.widgets import fill_thumbnails

        fill_thumbnails(self.gallery, images)
        for i in range(self.gallery.count()):
            item = self.gallery.item(i)
            item.setToolTip(f"{item.text()}\n{item.toolTip()}")


_SPLIT_NAMES = {"test": "Test split", "val": "Validation split"}


def _pr_plot():
    """An empty precision-recall plot (recall across, precision up, both 0..1)."""
    plot = pg.PlotWidget(title="precision-recall at IoU 0.5")
    plot.setBackground("w")
    plot.setLabel("bottom", "recall")
    plot.setLabel("left", "precision")
    plot.setXRange(0, 1, padding=0.02)
    plot.setYRange(0, 1.02, padding=0.02)
    plot.setMouseEnabled(x=False, y=False)
    return plot


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else ""
