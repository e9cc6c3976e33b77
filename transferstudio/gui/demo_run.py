"""The window's demo (``transferstudio gui --demo``, what ``python3 tasks.py demo`` opens): the
demo run, then its transfer-gain baseline, one after the other, through the window's own
actions (Start, then Runs > Measure transfer gain), so the Runs panel ends with the gain on the
demo run's row."""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot


class QtDemoSequence(QObject):
    """Starts the experiment open in ``window``; when that run completes and ``transfer`` is
    true (pretrained weights), selects it in Runs and measures its transfer gain
    (``MainWindow.run_selected_baseline``). A run that is stopped, fails or cannot start ends
    the sequence; ``ended`` then carries what happened, also shown in the status bar."""

    ended = Signal(str)

    def __init__(self, window, transfer: bool) -> None:
        super().__init__(window)
        self.window = window
        self.transfer = transfer
        self.stage = "idle"  # demo | baseline | done
        self.run_id: str | None = None
        self.message = ""
        self._result = None
        # The run's ``finished`` arrives before the controller is idle again: poll until it is.
        self._idle_timer = QTimer(self)
        self._idle_timer.setInterval(100)
        self._idle_timer.timeout.connect(self._after_run)

    def start(self) -> None:
        # The window scans the data and builds the layer tree in the background when it
        # opens; Start waits for both (MainWindow.model_ready), so wait here before watching.
        if not self.window.model_ready() or self.window.scan_result is None:
            if self.window.data_error:
                self._end(f"the demo run could not start: {self.window.data_error}")
                return
            QTimer.singleShot(100, self.start)
            return
        self.window.start_run()
        self._watch("demo", "the demo run could not start (see the window's message)")

    def _watch(self, stage: str, refused: str) -> None:
        worker = self.window.controller.worker
        if worker is None:
            self._end(refused)
            return
        self.stage = stage
        worker.finished.connect(self._on_finished)
        worker.errored.connect(self._on_errored)

    @Slot(object)
    def _on_finished(self, result) -> None:
        self._result = result
        self._idle_timer.start()

    @Slot(str, str)
    def _on_errored(self, message: str, _details: str = "") -> None:
        self._end(f"demo: the {self.stage} run failed: {message}")

    def _after_run(self) -> None:
        if self.window.controller.running:
            return
        self._idle_timer.stop()
        result = self._result
        if self.stage == "demo":
            if result.status != "completed":
                self._end(f"demo run {result.run_id}: {result.status}; no baseline run")
                return
            self.run_id = result.run_id
            if not self.transfer or not self.window.isVisible():
                self._end(f"demo run {result.run_id}: completed")
                return
            self._select(result.run_id)
            self.window.run_selected_baseline()
            self._watch("baseline", "the baseline run could not start (see the window's message)")
            return
        self.window.refresh_runs()
        self._select(self.run_id)
        gain = self.window.run_gains.get(self.run_id)
        if gain is None:
            self._end(f"demo: the baseline run is {result.status}; no transfer gain")
        else:
            self._end(f"demo: transfer gain of run {self.run_id}: {gain.describe()}")

    def _select(self, run_id: str | None) -> None:
        """Select the run's row and scroll its "transfer gain" cell (the last column, often
        past the right edge) into view."""
        table = self.window.runs_table
        headers = [table.horizontalHeaderItem(c) for c in range(table.columnCount())]
        gain_column = next(
            (c for c, h in enumerate(headers) if h is not None and h.text() == "transfer gain"), 0
        )
        for row in range(table.rowCount()):
            item = table.item(row, 0)
            if item is not None and item.data(Qt.ItemDataRole.UserRole) == run_id:
                table.selectRow(row)
                table.scrollToItem(table.item(row, gain_column) or item)
                return

    def _end(self, message: str) -> None:
        self._idle_timer.stop()
        self.stage, self.message = "done", message
        self.window.statusBar().showMessage(message)
        self.window.log_view.appendPlainText(message)
        self.ended.emit(message)
