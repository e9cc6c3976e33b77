"""A run in several processes: the window launches torchrun and streams rank 0's events back.

:class:`ProcessRun` has the signals of :class:`~transferstudio.gui.worker.RunWorker`, so the
window draws a torchrun run exactly like a run in its own thread. The experiment the window
shows is written to a temporary file; ``transferstudio run --event-stream`` turns rank 0's
events into lines (core/progress/event_stream.py), read here as they arrive. Stop and pause are files in
a control folder every rank watches; a rank that dies ends the run (torchrun stops the others)
and the last lines the processes wrote to stderr are shown with the error.
"""

from __future__ import annotations

import collections
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QProcess, QProcessEnvironment, Signal

from transferstudio.core.progress import event_stream as S
from transferstudio.core.progress import events as E
from transferstudio.gui.worker import RunSignals

STDERR_TAIL_LINES = 60


def torchrun_command(processes: int, workspace: Path, cli_args: list[str]) -> list[str]:
    """The command line (program first) that runs ``transferstudio CLI_ARGS`` in ``processes``
    local processes under torchrun."""
    launch = ["--standalone", f"--nproc-per-node={processes}"]
    app = ["--workspace", str(workspace), *cli_args]
    if getattr(sys, "frozen", False):
        # The installed application is its own torchrun and its own worker
        # (installer/launcher.py); it has no "python -m".
        return [sys.executable, "torchrun", *launch, "--no-python", sys.executable, *app]
    return [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "transferstudio", *app]


class ProcessRun(RunSignals):
    """One experiment run by torchrun in ``processes`` processes; signals as RunWorker's."""

    ended = Signal()  # the processes have exited; emitted last

    def __init__(self, experiment, workspace: Path, processes: int) -> None:
        super().__init__()
        self.experiment = experiment
        self.workspace = Path(workspace)
        self.processes = processes
        self.run_id: str | None = None
        self.run_folder: Path | None = None
        self.folder = Path(tempfile.mkdtemp(prefix="transferstudio-torchrun-"))
        self.control_dir = self.folder / "control"
        self.control_dir.mkdir()
        self.process: QProcess | None = None
        self.launch: list[str] = []  # the command line started
        self.result: S.StreamResult | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stdout_rest = b""
        self._stderr_rest = b""
        self._wants_layer_stats = False
        self._stop_requested = False

    # -- what RunController and the window use --------------------------------------------

    @property
    def wants_layer_stats(self) -> bool:
        return self._wants_layer_stats

    @wants_layer_stats.setter
    def wants_layer_stats(self, value: bool) -> None:
        self._wants_layer_stats = bool(value)
        S.set_flag(self.control_dir, S.LAYER_STATS_FILE, self._wants_layer_stats)

    def request_stop(self) -> None:
        self._stop_requested = True
        S.set_flag(self.control_dir, S.STOP_FILE, True)
        S.set_flag(self.control_dir, S.PAUSE_FILE, False)

    def set_paused(self, paused: bool) -> None:
        S.set_flag(self.control_dir, S.PAUSE_FILE, paused)

    def command(self) -> list[str]:
        exp_file = self.folder / "experiment.toml"
        # Absolute paths: the file is not beside the experiment the window opened.
        exp_file.write_text(self.experiment.with_absolute_paths().to_toml(), "utf-8")
        return torchrun_command(
            self.processes,
            self.workspace,
            ["run", str(exp_file), "--event-stream", str(self.control_dir)],
        )

    def start(self) -> None:
        self.launch = self.command()
        program, *args = self.launch
        self.process = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        self.process.setProcessEnvironment(env)
        self.process.readyReadStandardOutput.connect(self._read_stdout)
        self.process.readyReadStandardError.connect(self._read_stderr)
        self.process.finished.connect(self._on_exit)
        self.process.errorOccurred.connect(self._on_process_error)
        self.logged.emit(f"launching {self.processes} processes: " + " ".join([program, *args]))
        self.process.start(program, args)

    def wait(self, timeout_ms: int) -> bool:
        """Block until the processes have exited; end them after ``timeout_ms``. First
        SIGTERM to torchrun, which stops its workers before it exits (killing torchrun alone
        would leave them training); SIGKILL only if that takes more than 30 s."""
        if self.process is None or self.process.state() == QProcess.ProcessState.NotRunning:
            return True
        if self.process.waitForFinished(timeout_ms):
            return True
        self.process.terminate()
        if not self.process.waitForFinished(30_000):
            self.process.kill()
            self.process.waitForFinished(5000)
        return False

    # -- reading the processes' output ------------------------------------------------------

    def _lines(self, data: bytes, rest_attr: str) -> list[str]:
        data = getattr(self, rest_attr) + data
        *lines, rest = data.split(b"\n")
        setattr(self, rest_attr, rest)
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def _read_stdout(self) -> None:
        assert self.process is not None
        for line in self._lines(bytes(self.process.readAllStandardOutput()), "_stdout_rest"):
            self._handle_line(line)

    def _read_stderr(self) -> None:
        assert self.process is not None
        for line in self._lines(bytes(self.process.readAllStandardError()), "_stderr_rest"):
            if line.strip():
                self._stderr_tail.append(line)
                self.logged.emit(line)

    def _handle_line(self, line: str) -> None:
        event = S.decode(line)
        if event is None:
            if line.strip():
                self.logged.emit(line)
            return
        if isinstance(event, S.StreamResult):
            self.result = event
            return
        if isinstance(event, E.RunStarted):
            self.run_id, self.run_folder = event.run_id, Path(event.folder)
        self.dispatch(event)

    # -- the end ----------------------------------------------------------------------------

    def _on_process_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self.errored.emit(
                f"Could not start torchrun ({shlex.join(self.launch[:3])})",
                self.process.errorString() if self.process is not None else "",
            )
            self._end()

    def _on_exit(self, code: int, status: QProcess.ExitStatus) -> None:
        self._read_stdout()
        self._read_stderr()
        for rest in ("_stdout_rest", "_stderr_rest"):
            if getattr(self, rest):  # a last line without its newline
                line = getattr(self, rest).decode("utf-8", "replace")
                setattr(self, rest, b"")
                self._handle_line(line) if rest == "_stdout_rest" else self.logged.emit(line)
        self.flush(time.monotonic())
        result = self.result
        # The processes' last stderr lines go with every error: when a rank dies, rank 0 often
        # reports the failed collective first, and the dying rank's own error is there.
        details = "\n".join(self._stderr_tail)
        if result is not None and result.status == "error":
            self.errored.emit(result.message, details)
        elif result is not None:
            from transferstudio.core.training.engine import RunResult

            if result.status == "failed":
                self.errored.emit(result.message, details)
            fields = {f: getattr(result, f) for f in result.__dataclass_fields__}
            self.finished.emit(RunResult(**{**fields, "folder": Path(result.folder)}))
        elif self._stop_requested and status == QProcess.ExitStatus.CrashExit:
            self.errored.emit("The processes were ended before the run could stop cleanly.", "")
        else:
            how = "crashed" if status == QProcess.ExitStatus.CrashExit else f"exit code {code}"
            message = (
                f"A training process failed ({how}) and torchrun ended the others. The details "
                "show the last lines the processes wrote."
            )
            if self.run_folder and (self.run_folder / "checkpoints" / "last.json").exists():
                resume = torchrun_command(
                    self.processes, self.workspace, ["run", "--resume", self.run_id]
                )
                message += " Its saved checkpoints are kept; resume it with:\n" + shlex.join(resume)
            self.errored.emit(message, details)
        self._end()

    def _end(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.ended.emit()
