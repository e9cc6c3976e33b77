"""Live training curves: one curve item per series, appended to growing arrays, redrawn on
demand (the window throttles redraws; see ``CURVE_REFRESH_MS`` in ``main_window``).

Paint cost matters here: pyqtgraph paints in Python while holding the GIL the training thread
needs. Measured offscreen (three plots, ~600 points): a redraw took ~31 ms with
``showGrid`` (the axis items replay their grid lines), ~8 ms without it, and ~4 ms once the
x range is fixed to the run's epochs (no tick regeneration or relayout on every redraw). So
the plots have no grid and their x axis spans the whole run from the start."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QGridLayout, QWidget


class Series:
    """A growing (x, y) array pair with amortised O(1) appends."""

    def __init__(self) -> None:
        self.x = np.empty(256)
        self.y = np.empty(256)
        self.n = 0

    def append(self, x: float, y: float) -> None:
        if self.n == len(self.x):
            self.x = np.resize(self.x, 2 * self.n)
            self.y = np.resize(self.y, 2 * self.n)
        self.x[self.n] = x
        self.y[self.n] = y
        self.n += 1

    def clear(self) -> None:
        self.n = 0


class TrainingCurves(QWidget):
    """Three plots: loss (per batch and per epoch), accuracy per epoch, learning rate."""

    SERIES = {
        "loss": [
            ("train (batch)", "batch_loss", (150, 150, 150)),
            ("train", "train_loss", "b"),
            ("val", "val_loss", "r"),
        ],
        "accuracy": [
            ("train", "train_acc", "b"),
            ("val", "val_acc", "r"),
            # Detection runs measure mAP instead (the plot is retitled when they do).
            ("val mAP@0.5", "val_map50", "m"),
            ("val mAP@[.5:.95]", "val_map", (200, 120, 0)),
        ],
        "learning rate": [("lr", "lr", "g")],
    }

    FIXED_KEYS = frozenset(key for entries in SERIES.values() for _, key, _ in entries)
    PER_BATCH_KEYS = frozenset({"batch_loss", "lr"})

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # Loss and accuracy side by side, learning rate (and a method's diagnostics) below:
        # stacked three high, each plot was ~60 px tall at 768 px and its labels overlapped.
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setRowStretch(0, 3)
        layout.setRowStretch(1, 2)
        self.series: dict[str, Series] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.plots: dict[str, pg.PlotWidget] = {}
        for title, entries in self.SERIES.items():
            plot = _plot(title, legend_below=title == "accuracy")
            # No showGrid: it made each repaint about four times dearer (see module doc).
            for label, key, colour in entries:
                per_batch = key in self.PER_BATCH_KEYS
                curve = plot.plot(
                    name=label,
                    pen=pg.mkPen(colour, width=1 if key == "batch_loss" else 2),
                    # Per-epoch series get a dot per point: after epoch 1 a series is one
                    # point, which a line alone does not draw. Per-batch series have
                    # thousands of points and no symbols (they would dominate the paint time).
                    symbol=None if per_batch else "o",
                    symbolSize=6,
                    symbolBrush=colour,
                    symbolPen=colour,
                )
                curve.setDownsampling(auto=True, method="peak")
                curve.setClipToView(True)
                self.curves[key] = curve
                self.series[key] = Series()
            self.plots[title] = plot
        layout.addWidget(self.plots["loss"], 0, 0)
        layout.addWidget(self.plots["accuracy"], 0, 1)
        self._place_lower_row()
        self.show_map(False)  # mAP entries join the legend when a detection run reports them

    MAP_KEYS = ("val_map50", "val_map")
    ACCURACY_KEYS = ("train_acc", "val_acc")

    def show_map(self, detection: bool) -> None:
        """The accuracy plot as a detection run's mAP plot (title and legend), or back."""
        plot = self.plots["accuracy"]
        plot.setTitle("mAP (validation)" if detection else "accuracy")
        legend = plot.getPlotItem().legend
        if legend is None:
            return
        shown, hidden = (
            (self.MAP_KEYS, self.ACCURACY_KEYS)
            if detection
            else (self.ACCURACY_KEYS, self.MAP_KEYS)
        )
        names = {key: label for entries in self.SERIES.values() for label, key, _ in entries}
        for key in hidden:
            legend.removeItem(self.curves[key])
        for key in shown:
            if not any(sample.item is self.curves[key] for sample, _ in legend.items):
                legend.addItem(self.curves[key], names[key])

    def _place_lower_row(self) -> None:
        """Learning rate across the lower row, or beside the diagnostics once there are some."""
        layout = self.layout()
        diagnostics = self.plots.get("diagnostics")
        layout.addWidget(self.plots["learning rate"], 1, 0, 1, 1 if diagnostics else 2)
        if diagnostics is not None:
            layout.addWidget(diagnostics, 1, 1)

    def set_epochs(self, epochs: int) -> None:
        """Fix every plot's x axis to [0, epochs]: the curves fill in from the left, and a
        redraw no longer rescales the x axis (which regenerates ticks and relayouts)."""
        for plot in self.plots.values():
            plot.enableAutoRange(x=False)
            plot.setXRange(0, max(epochs, 1), padding=0.02)

    DIAGNOSTIC_COLOURS = ("m", "c", (200, 120, 0), (0, 130, 90), (120, 60, 200), "k")

    def append_diagnostic(self, key: str, x: float, y: float) -> None:
        """A method's own scalar (``StepOutput.logs``, ``epoch_diagnostics``): a series of the
        *diagnostics* plot, created on first use; the plot shows once it has one."""
        plot = self.plots.get("diagnostics")
        if plot is None:
            plot = _plot("diagnostics")
            x_range = self.plots["loss"].getViewBox().viewRange()[0]
            if not self.plots["loss"].getViewBox().autoRangeEnabled()[0]:
                plot.enableAutoRange(x=False)
                plot.setXRange(*x_range, padding=0)
            self.plots["diagnostics"] = plot
            self._place_lower_row()
        if key not in self.series:
            colour = self.DIAGNOSTIC_COLOURS[
                sum(k not in self.FIXED_KEYS for k in self.series) % len(self.DIAGNOSTIC_COLOURS)
            ]
            per_epoch = key.startswith("val ")  # epoch_diagnostics: one point per epoch
            curve = plot.plot(
                name=key,
                pen=pg.mkPen(colour, width=2),
                symbol="o" if per_epoch else None,
                symbolSize=6,
                symbolBrush=colour,
                symbolPen=colour,
            )
            curve.setDownsampling(auto=True, method="peak")
            self.curves[key] = curve
            self.series[key] = Series()
        self.append(key, x, y)

    def diagnostic_keys(self) -> list[str]:
        """The method-specific series received so far."""
        return [k for k in self.series if k not in self.FIXED_KEYS]

    def append(self, key: str, x: float, y: float) -> None:
        self.series[key].append(x, y)

    def redraw(self, keys=None) -> None:
        for key in keys or self.series:
            s = self.series[key]
            x, y = s.x[: s.n], s.y[: s.n]
            curve = self.curves[key]
            if curve.opts["symbol"] is not None:
                # A method without a validation loss sends NaN: pyqtgraph's scatter cannot
                # bound an all-NaN series (it warns from inside a paint), so it gets none.
                finite = np.isfinite(y)
                x, y = x[finite], y[finite]
            curve.setData(x, y)

    def clear(self) -> None:
        for key, s in self.series.items():
            s.clear()
            self.curves[key].setData([], [])
        for plot in self.plots.values():
            plot.enableAutoRange(x=True)
        self.show_map(False)  # a detection run had made it an mAP plot
        # Diagnostics belong to one run's method: drop their series and the plot.
        for key in self.diagnostic_keys():
            del self.series[key], self.curves[key]
        plot = self.plots.pop("diagnostics", None)
        if plot is not None:
            plot.setParent(None)
            plot.deleteLater()
            self._place_lower_row()

    def points(self, key: str) -> int:
        return self.series[key].n


def _plot(title: str, legend_below: bool = False) -> pg.PlotWidget:
    """A live plot: white, titled, x axis in epochs, a legend that does not hide the curves:
    top right where curves fall (losses, a decaying learning rate), bottom right where they
    rise (accuracy ends high on the right, where a top legend sat on its last points)."""
    plot = pg.PlotWidget(title=title)
    plot.setObjectName(f"plot:{title}")
    plot.setBackground("w")
    plot.addLegend(offset=(-10, -10 if legend_below else 10), brush=(255, 255, 255, 210))
    plot.setLabel("bottom", "epoch")
    return plot
