"""The Data panel: the data path, its scan (class counts per split, sample thumbnails) and the
data and augmentation settings.

Scanning and loading thumbnails run on the thread pool; a scan started for an earlier path is
dropped when it ends after the user chose another (a generation number).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from transferstudio.api import TASK_CLASSIFICATION, TASK_DETECTION
from transferstudio.core.settings import experiment as X
from transferstudio.gui.settings_form import SettingsForm
from transferstudio.gui.widgets import fill_thumbnails, load_thumbnails, named, thumbnail_list
from transferstudio.gui.worker import run_in_background

THUMBNAILS_PER_CLASS = 4


class DataPanel(QWidget):
    """Where the experiment's data comes from and what a scan found there.

    ``changed`` fires when what Start depends on may have changed (a field edited, a scan
    begun or ended); ``path_chosen`` when the user chose another path (typed, browsed or
    dropped); ``scanned(result)`` when a scan found usable data (the tree is then rebuilt for
    its classes); ``scan_failed(message)`` when the data cannot be used."""

    changed = Signal()
    path_chosen = Signal()
    scanned = Signal(object)  # core.data.loaders ScanResult
    scan_failed = Signal(str)

    def __init__(self, host, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.host = host
        self.base_dir = Path.cwd()  # the window sets the experiment's folder
        self.scan_result = None
        self.data_error = ""
        """Why the scanned data cannot be used (one class, unreadable CSV); Start waits."""
        self.scanning = False
        self.task = TASK_CLASSIFICATION
        self._scan_generation = 0
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.path = named(QLineEdit(), "data.path", "data folder or CSV")
        self.path.setPlaceholderText("image folder or CSV file (or drop one here)")
        self.path.editingFinished.connect(self._on_path_edited)
        browse = named(QPushButton("Folder..."), "data.browse_folder")
        browse.clicked.connect(self._browse_folder)
        self.browse_file = browse_csv = named(QPushButton("CSV..."), "data.browse_csv")
        browse_csv.clicked.connect(self._browse_csv)
        row.addWidget(self.path)
        row.addWidget(browse)
        row.addWidget(browse_csv)
        layout.addLayout(row)
        self.scan_label = named(QLabel("no data scanned"), "data.scan_status")
        # a long reason (one class only, an unreadable CSV) wraps instead of widening the panel
        # and pushing Folder... and CSV... out of view
        self.scan_label.setWordWrap(True)
        layout.addWidget(self.scan_label)
        self.counts_tree = named(QTreeWidget(), "data.counts", "class counts per split")
        self.counts_tree.setRootIsDecorated(True)
        layout.addWidget(self.counts_tree)
        self.thumbnails = thumbnail_list("data.thumbnails", "sample images per class")
        layout.addWidget(self.thumbnails)
        self.data_form = SettingsForm(X.DataSettings, "data.")
        self.data_form.widgets["path"].setVisible(False)
        self.data_form.layout().labelForField(self.data_form.widgets["path"]).setVisible(False)
        self.data_form.changed.connect(self.changed)
        layout.addWidget(self.data_form)
        self.augment_form = SettingsForm(X.AugmentSettings, "augment.")
        self.augment_form.changed.connect(self.changed)
        layout.addWidget(self.augment_form)

    # ------------------------------------------------------------------ the experiment

    def set_task(self, task: str) -> None:
        """Read the data as ``task``'s formats do (the caller rescans): for detection a Pascal
        VOC folder, a COCO .json or a YOLO folder or data.yaml."""
        self.task = task
        detection = task == TASK_DETECTION
        self.browse_file.setText("File..." if detection else "CSV...")
        self.browse_file.setToolTip(
            "a COCO instances .json or a YOLO data.yaml" if detection else "a path,label CSV file"
        )
        self.path.setPlaceholderText(
            "Pascal VOC or YOLO folder, COCO .json or YOLO data.yaml (or drop one here)"
            if detection
            else "image folder or CSV file (or drop one here)"
        )

    def show_experiment(self, exp: X.Experiment) -> None:
        """Show ``exp``'s data and augmentation settings (no scan: see :meth:`scan`)."""
        self.path.setText(exp.data.path)
        self.data_form.set_values(dataclasses.asdict(exp.data))
        self.augment_form.set_values(dataclasses.asdict(exp.augment))

    def data_settings(self) -> X.DataSettings:
        data = self.data_form.build()
        data.path = self.path.text().strip()
        return data

    def image_size(self) -> int | None:
        """``data.image_size`` as shown (0 or None: the backbone's own crop)."""
        return self.data_form.values()["image_size"]

    def class_count(self) -> int:
        """The number of classes the last scan found (2 before any scan)."""
        return len(self.scan_result.classes) if self.scan_result else 2

    def show_roles(self, spec) -> None:
        """Show the fields of the data roles the method ``spec`` declares (API 1.1 roles)."""
        from transferstudio.api import ROLE_KEYS

        roles = {*spec.data_roles, *spec.optional_roles}
        wanted = {ROLE_KEYS[r].split(".")[1] for r in roles if r in ROLE_KEYS}
        if "multilabel" in roles:
            wanted.add("label_columns")
        for key in ("target_path", "target_eval_path", "label_columns"):
            widget = self.data_form.widgets[key]
            widget.setVisible(key in wanted)
            self.data_form.layout().labelForField(widget).setVisible(key in wanted)

    # ------------------------------------------------------------------ choosing the path

    def set_path(self, path: str) -> None:
        """Use ``path`` (browsed, dropped) and scan it."""
        self.path.setText(path)
        self._on_path_edited()

    def _on_path_edited(self) -> None:
        self.scan()
        self.path_chosen.emit()

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Image folder", str(self.base_dir))
        if path:
            self.set_path(path)

    def _browse_csv(self) -> None:
        if self.task == TASK_DETECTION:
            path, _ = QFileDialog.getOpenFileName(
                self,
                "Detection data file",
                str(self.base_dir),
                "COCO JSON or YOLO data.yaml (*.json *.yaml *.yml)",
            )
        else:
            path, _ = QFileDialog.getOpenFileName(
                self, "CSV file", str(self.base_dir), "CSV (*.csv)"
            )
        if path:
            self.set_path(path)

    # ------------------------------------------------------------------ scanning

    def scan(self) -> None:
        """Scan the path shown, off the GUI thread; what was shown of another path goes."""
        text = self.path.text().strip()
        self.counts_tree.clear()
        self.thumbnails.clear()  # another folder's images must not stay on show
        self.scan_result = None
        self.data_error = ""
        self._scan_generation += 1
        generation = self._scan_generation
        self.scanning = bool(text)
        if not text:
            self.scan_label.setText("choose an image folder or CSV file")
            return
        from transferstudio.core.data import loaders as D

        path = Path(text) if Path(text).is_absolute() else self.base_dir / text
        settings = self.data_form.build() if self.data_form.validate() else X.DataSettings()
        self.scan_label.setText(f"scanning {path} ...")
        self.changed.emit()
        host = self.host

        task = self.task

        def scan():
            if task == TASK_DETECTION:
                from transferstudio.core.data.detection_scan import (
                    choose_detection_source,
                    scan_detection,
                )

                return scan_detection(
                    choose_detection_source(host.datasets, settings, path), settings, path
                )
            spec = D.choose_source(host.datasets, settings, path)
            return D.scan(spec, settings, path)

        run_in_background(
            scan,
            lambda result: self._show_scan(result, generation),
            lambda message, details: self._scan_errored(message, details, generation),
            self,
        )

    def _show_scan(self, result, generation: int) -> None:
        if generation != self._scan_generation:
            return  # an earlier folder's scan, finished after the user chose another
        self.scanning = False
        self.scan_result = result
        if getattr(result, "task", TASK_CLASSIFICATION) == TASK_DETECTION:
            self._show_detection_scan(result, generation)
            return
        counts = result.counts()
        splits = list(counts)
        self.counts_tree.setColumnCount(1 + len(splits))
        self.counts_tree.setHeaderLabels(["class", *splits])
        for name in result.classes:
            QTreeWidgetItem(self.counts_tree, [name, *[str(counts[s][name]) for s in splits]])
        if result.skipped:
            skipped = QTreeWidgetItem(self.counts_tree, [f"skipped files ({len(result.skipped)})"])
            # the lines span the count columns: in the class column alone they were cut to
            # "readm..."; the tooltip holds the whole reason and the full path
            skipped.setFirstColumnSpanned(True)
            for path, reason in result.skipped:
                item = QTreeWidgetItem(skipped, [f"{Path(path).name}: {reason}"])
                item.setFirstColumnSpanned(True)
                item.setToolTip(0, f"{path}\n{reason}")
        # Columns as wide as their contents: with the default widths the test column fell
        # off the dock's right edge at 1366x768.
        for column in range(self.counts_tree.columnCount()):
            self.counts_tree.resizeColumnToContents(column)
        total = sum(len(v) for v in result.splits.values())
        self.scan_label.setText(
            f"{len(result.classes)} classes, {total} images"
            + (f", {len(result.skipped)} skipped" if result.skipped else "")
        )
        self.scanned.emit(result)
        per_class: dict[str, list[str]] = {}
        for sample in result.splits.get("train", []):
            paths = per_class.setdefault(sample.label, [])
            if len(paths) < THUMBNAILS_PER_CLASS:
                paths.append(sample.path)
        items = [(label, path) for label, paths in per_class.items() for path in paths]
        self.changed.emit()
        run_in_background(
            lambda: load_thumbnails(items),
            lambda images: self._show_thumbnails(images, generation),
            lambda message, details: self._scan_errored(message, details, generation),
            self,
        )

    def _show_detection_scan(self, result, generation: int) -> None:
        """Images / boxes per class and split, negatives, box sizes, then every skipped file
        and box problem (named with its file), and thumbnails with their boxes drawn."""
        from transferstudio.core.data.box_drawing import DrawnBox, class_colour

        counts, images = result.counts(), result.image_counts()
        splits = list(counts)
        self.counts_tree.setColumnCount(1 + len(splits))
        self.counts_tree.setHeaderLabels(["class (images / boxes)", *splits])
        for name in result.classes:
            cells = [f"{images[s][name]} / {counts[s][name]}" for s in splits]
            QTreeWidgetItem(self.counts_tree, [name, *cells])
        QTreeWidgetItem(
            self.counts_tree,
            ["no boxes (negatives)", *[str(images[s]["(no boxes)"]) for s in splits]],
        )
        sizes = result.size_counts()
        size_item = QTreeWidgetItem(
            self.counts_tree, ["box sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items())]
        )
        size_item.setFirstColumnSpanned(True)
        size_item.setToolTip(0, "COCO size classes: small < 32x32 px, medium < 96x96, large")
        for title, entries in (
            (f"skipped files ({len(result.skipped)})", result.skipped),
            (f"box problems ({len(result.problems)}, {result.clipped} clipped)", result.problems),
        ):
            if not entries:
                continue
            parent = QTreeWidgetItem(self.counts_tree, [title])
            parent.setFirstColumnSpanned(True)
            for path, reason in entries:
                item = QTreeWidgetItem(parent, [f"{Path(path).name}: {reason}"])
                item.setFirstColumnSpanned(True)
                item.setToolTip(0, f"{path}\n{reason}")
        for column in range(self.counts_tree.columnCount()):
            self.counts_tree.resizeColumnToContents(column)
        total = sum(len(v) for v in result.splits.values())
        n_boxes = sum(sum(c.values()) for c in counts.values())
        self.scan_label.setText(
            f"{len(result.classes)} classes, {total} images, {n_boxes} boxes"
            + (f", {len(result.skipped)} skipped" if result.skipped else "")
            + (f", {len(result.problems)} box problems" if result.problems else "")
        )
        self.scanned.emit(result)
        index = {c: i for i, c in enumerate(result.classes)}
        items, boxes = [], {}
        for sample in _thumbnail_samples(result.splits.get("train", []), result.classes):
            labels = sorted({b.label for b in sample.boxes})
            items.append((", ".join(labels) or "no boxes", sample.path))
            boxes[sample.path] = [
                DrawnBox(b.xmin, b.ymin, b.xmax, b.ymax, "", class_colour(index[b.label]))
                for b in sample.boxes
            ]
        self.changed.emit()
        run_in_background(
            lambda: load_thumbnails(items, boxes),
            lambda loaded: self._show_thumbnails(loaded, generation),
            lambda message, details: self._scan_errored(message, details, generation),
            self,
        )

    def _show_thumbnails(self, images, generation: int) -> None:
        if generation == self._scan_generation:
            fill_thumbnails(self.thumbnails, images)

    def _scan_errored(self, message: str, details: str, generation: int) -> None:
        if generation != self._scan_generation:
            return
        self.scanning = False
        self.data_error = message
        self.scan_label.setText(f"cannot use this data: {message}")
        self.scan_failed.emit(message)


def _thumbnail_samples(samples, classes, per_class: int = THUMBNAILS_PER_CLASS) -> list:
    """A few detection images to show: up to ``per_class`` holding each class (images with
    several objects first), then one negative, so the thumbnails show boxes of every class."""
    chosen: list = []
    for name in classes:
        holding = [s for s in samples if s not in chosen and any(b.label == name for b in s.boxes)]
        holding.sort(key=lambda s: -len(s.boxes))
        chosen += holding[:per_class]
    chosen += [s for s in samples if not s.boxes][:1]
    return chosen
