"""The Predict panel: new images (dropped, or chosen as files or a folder) classified by the
window's last finished run or by a model bundle, shown as thumbnails with their top-k labels.
Few-shot models (protonet, maml) classify the classes of a support folder chosen here.

Reading the model, decoding and predicting run on the thread pool; the panel only shows results.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PySide6.QtCore import QSize, Signal
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListView,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from transferstudio.api import TASK_DETECTION
from transferstudio.gui.widgets import fill_thumbnails, load_thumbnails, named, thumbnail_list
from transferstudio.gui.worker import run_in_background

RESULT_ICON_PX = 64
SCORE_FLOOR = 0.05
"""Detections kept from a prediction: the threshold control chooses among them."""


def box_thumbnails(report, class_names: list[str], threshold: float) -> list:
    """Thumbnails of a detector's images with their boxes at ``threshold`` drawn, captioned
    with the boxes found (off the GUI thread)."""
    from transferstudio.core.data.box_drawing import labelled_boxes

    captions, boxes = [], {}
    for image in report.images:
        found = image.above(threshold)
        lines = [f"{d.label} {d.score:.2f}" for d in found[:4]]
        if len(found) > 4:
            lines.append(f"... {len(found) - 4} more")
        captions.append(("\n".join(lines) or "no boxes", image.path))
        # No captions on the box: at thumbnail size they hide the object; the text beside
        # the thumbnail lists them.
        boxes[image.path] = [
            dataclasses.replace(box, caption="")
            for box in labelled_boxes(
                [(d.label, d.xmin, d.ymin, d.xmax, d.ymax) for d in found], class_names
            )
        ]
    return load_thumbnails(captions, boxes)


class PredictPanel(QWidget):
    """Top-k predictions with thumbnails. ``set_run`` / ``set_bundle`` choose the model,
    ``set_support`` the support folder of a few-shot model; ``predict_paths`` (also reached by
    dropping files or folders) classifies images.
    ``finished`` carries the :class:`~transferstudio.core.inference.predict.PredictionReport`,
    ``errored(message, details)`` why a prediction failed (the signals of every worker)."""

    finished = Signal(object)
    errored = Signal(str, str)

    def __init__(self, host, workspace: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.host, self.workspace = host, Path(workspace)
        self.model_ref: str | None = None
        self.support: str | None = None
        self.last_report = None
        self.class_names: list[str] | None = None  # the last model's, when it was a detector
        self._redraw_generation = 0
        self.setAcceptDrops(True)
        layout = QVBoxLayout(self)
        self.model_label = named(
            QLabel("no model yet: finish a run, or open a bundle (.tsmodel)"), "predict.model"
        )
        layout.addWidget(self.model_label)
        row = QHBoxLayout()
        self.bundle_button = named(QPushButton("Bundle..."), "predict.open_bundle")
        self.bundle_button.clicked.connect(self._choose_bundle)
        self.images_button = named(QPushButton("Images..."), "predict.add_images")
        self.images_button.clicked.connect(self._choose_images)
        self.folder_button = named(QPushButton("Folder..."), "predict.add_folder")
        self.folder_button.clicked.connect(self._choose_folder)
        self.top_k = named(QSpinBox(), "predict.top_k", "labels per image")
        self.top_k.setRange(1, 10)
        self.top_k.setValue(3)
        self.top_k.setPrefix("top ")
        self.score = named(QDoubleSpinBox(), "predict.score_threshold", "score threshold")
        self.score.setRange(0.05, 0.95)
        self.score.setSingleStep(0.05)
        self.score.setValue(0.5)
        self.score.setPrefix("score >= ")
        self.score.setToolTip("detectors: the boxes scoring at least this are drawn and listed")
        self.score.valueChanged.connect(self._redraw_boxes)
        widgets = (self.bundle_button, self.images_button, self.folder_button, self.top_k)
        for widget in (*widgets, self.score):
            row.addWidget(widget)
        layout.addLayout(row)
        support_row = QHBoxLayout()
        self.support_button = named(QPushButton("Support..."), "predict.choose_support")
        self.support_button.setToolTip(
            "few-shot models (protonet, maml): a folder with one subfolder of example images "
            "per class; those classes are predicted"
        )
        self.support_button.clicked.connect(self._choose_support)
        self.support_label = named(
            QLabel("no support folder (few-shot models need one)"), "predict.support"
        )
        self.clear_support_button = named(QPushButton("Clear"), "predict.clear_support")
        self.clear_support_button.clicked.connect(lambda: self.set_support(None))
        support_row.addWidget(self.support_button)
        support_row.addWidget(self.support_label, 1)
        support_row.addWidget(self.clear_support_button)
        layout.addLayout(support_row)
        self.status = named(
            QLabel("drop images or folders here, or choose them above"), "predict.status"
        )
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.results = thumbnail_list("predict.results", "predictions", max_rows=None)
        # Thumbnail left, its top-k lines beside it, in columns that fill the height: in the
        # short bottom dock, top-k captions under the thumbnails were cut off.
        self.results.setViewMode(QListView.ViewMode.ListMode)
        self.results.setFlow(QListView.Flow.TopToBottom)
        self.results.setWrapping(True)
        self.results.setIconSize(QSize(RESULT_ICON_PX, RESULT_ICON_PX))
        self.results.setSpacing(4)
        layout.addWidget(self.results, 1)
        self._update_buttons()

    # ------------------------------------------------------------------ the model

    def set_run(self, folder: str | Path) -> None:
        """Predict with this finished run's best checkpoint."""
        self.model_ref = str(folder)
        self.model_label.setText(f"model: run {Path(folder).name}")
        self._update_buttons()

    def set_bundle(self, path: str | Path) -> None:
        """Predict with a model bundle file."""
        self.model_ref = str(path)
        self.model_label.setText(f"model: bundle {Path(path).name}")
        self._update_buttons()

    def set_support(self, folder: str | Path | None) -> None:
        """The support folder few-shot models predict the classes of (``None``: none)."""
        self.support = str(folder) if folder else None
        self.support_label.setText(
            f"support: {Path(folder).name}/"
            if folder
            else "no support folder (few-shot models need one)"
        )
        self._update_buttons()

    def _update_buttons(self) -> None:
        ready = self.model_ref is not None
        self.images_button.setEnabled(ready)
        self.folder_button.setEnabled(ready)
        self.clear_support_button.setEnabled(self.support is not None)

    def _choose_bundle(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a model bundle", "", "TransferStudio bundle (*.tsmodel)"
        )
        if path:
            self.set_bundle(path)

    def _choose_support(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Support folder: one subfolder of example images per class"
        )
        if folder:
            self.set_support(folder)

    def _choose_images(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Images to classify")
        if paths:
            self.predict_paths(paths)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images to classify")
        if folder:
            self.predict_paths([folder])

    # ------------------------------------------------------------------ predicting

    def predict_paths(self, inputs: list[str]) -> None:
        """Classify the images named or found under the folders, off the GUI thread."""
        if self.model_ref is None:
            self.status.setText("choose a model first: finish a run, or open a bundle")
            return
        ref, top_k, support = self.model_ref, self.top_k.value(), self.support
        host, workspace = self.host, self.workspace
        self.status.setText(f"predicting {len(inputs)} item(s) ...")

        threshold = self.score.value()

        def work():
            from transferstudio.core.inference.predict import gather_images, open_predictor, predict

            predictor = open_predictor(ref, host, workspace, support=support)
            paths, skipped = gather_images(inputs)
            if predictor.task == TASK_DETECTION:
                from transferstudio.core.inference.detection_predict import detect

                # Every box from the floor up: the threshold then redraws without the model.
                found = detect(predictor.model, predictor.class_names, paths, SCORE_FLOOR)
                found.skipped[:0] = skipped
                names = predictor.class_names
                return found, box_thumbnails(found, names, threshold), names
            report = predict(predictor, paths, top_k)
            report.skipped[:0] = skipped + [
                (path, f"support file: {why}") for path, why in predictor.support_skipped
            ]
            captions = [
                (
                    "\n".join(f"{label} {p:.2f}" for label, p in item.top),
                    item.path,
                )
                for item in report.predictions
            ]
            return report, load_thumbnails(captions), None

        run_in_background(work, self._show, self._errored, self)

    def _redraw_boxes(self) -> None:
        """The last detector's boxes again, at the score threshold now chosen."""
        report, names = self.last_report, self.class_names
        if names is None or report is None:
            return
        threshold = self.score.value()
        self._redraw_generation += 1
        generation = self._redraw_generation

        def show(thumbnails) -> None:
            if generation == self._redraw_generation:
                fill_thumbnails(self.results, thumbnails)

        run_in_background(
            lambda: box_thumbnails(report, names, threshold), show, self._errored, self
        )

    def _show(self, outcome) -> None:
        report, thumbnails, self.class_names = outcome
        self.last_report = report
        fill_thumbnails(self.results, thumbnails)
        if self.class_names is not None:  # a detector
            text = f"{len(report.images)} image(s) searched for {', '.join(self.class_names)}"
            if report.skipped:
                text += f", {len(report.skipped)} skipped"
            self.status.setText(text)
            self.finished.emit(report)
            return
        text = f"{len(report.predictions)} image(s) classified"
        if report.skipped:
            reasons = "; ".join(f"{Path(p).name}: {why}" for p, why in report.skipped[:5])
            more = f" (+{len(report.skipped) - 5} more)" if len(report.skipped) > 5 else ""
            text += f", {len(report.skipped)} skipped: {reasons}{more}"
        self.status.setText(text)
        self.finished.emit(report)

    def _errored(self, message: str, details: str) -> None:
        self.status.setText(f"prediction failed: {message}")
        self.errored.emit(message, details)

    # ------------------------------------------------------------------ drag and drop

    def dragEnterEvent(self, event) -> None:  # noqa: N802 - Qt's name
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802 - Qt's name
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.predict_paths(paths)
