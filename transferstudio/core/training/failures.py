"""What the user reads when a run fails: our own errors as they are; a full disk, a file error,
running out of memory or losing a torchrun peer with what to change; a method that leaves out
a function the engine needs; anything else with the plugin whose code raised it named."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from transferstudio.api import TransferStudioError
from transferstudio.core.runs.workspace import is_disk_full
from transferstudio.core.training.device import describe

if TYPE_CHECKING:
    from transferstudio.core.training.loop import TrainingRun


def failure_message(exc: Exception, run: TrainingRun) -> str:
    """The message of ``exc``, which ended ``run``. Never raises: it runs inside the failure
    handler, often on a disk that just failed."""
    try:
        return _describe_failure(exc, run)
    except Exception:  # noqa: BLE001 - the plain error is still worth recording
        return f"{type(exc).__name__}: {exc}"


def _out_of_memory(exc: Exception) -> bool:
    # CUDA raises OutOfMemoryError; MPS, cuDNN and cuBLAS allocation failures a RuntimeError.
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _peer_lost(exc: Exception) -> bool:
    """A collective failed because another process is gone (Gloo reports a closed connection
    as a plain RuntimeError; NCCL and the store as DistError)."""
    text = str(exc).lower()
    lost = ("connection closed by peer", "connection reset by peer", "remote worker crash")
    return isinstance(exc, torch.distributed.DistNetworkError) or (
        isinstance(exc, RuntimeError) and any(s in text for s in lost)
    )


def _describe_failure(exc: Exception, run: TrainingRun) -> str:
    if isinstance(exc, TransferStudioError):
        return str(exc)
    session, files = run.session, run.files
    steps = session.step
    where = f"epoch {session.epoch + 1}" + (f" (after {steps} training steps)" if steps else "")
    checkpoints = files.checkpoints
    last = checkpoints.record("last").epoch + 1 if checkpoints.exists("last") else None
    kept = (
        f"; the checkpoint of epoch {last} is kept: resume with the changed settings "
        f"('transferstudio run --resume {files.run_id} --set ...')"
        if last
        else ""
    )
    if is_disk_full(exc, files.folder if files.run_id else files.workspace):
        target = getattr(exc, "filename", None)
        return (
            f"no space left on the disk of {files.workspace}"
            + (f" writing {target}" if target else "")
            + f" at {where} ({type(exc).__name__}: {exc}). Free some space, or choose another "
            f"workspace (--workspace){kept}" + (" once there is space" if kept else "")
        )
    if isinstance(exc, OSError):
        target = f" {exc.filename}" if exc.filename else ""
        return (
            f"file error{target} at {where}: {exc.strerror or exc}. Check the disk (free space, "
            f"permissions, a removed drive) or choose another workspace (--workspace){kept}"
        )
    if _out_of_memory(exc):
        exp = session.exp
        advice = [
            f"lower data.batch_size (now {exp.data.batch_size}; try {max(1, exp.data.batch_size // 2)})"
        ]
        if session.amp_dtype is None:
            advice.append('turn on mixed precision (train.precision = "auto")')
        advice.append("use a smaller data.image_size or backbone, or freeze more layers")
        return (
            f"out of memory on {describe(session.device)} at {where}: " + "; ".join(advice) + kept
        )
    if session.dist.enabled and _peer_lost(exc):
        first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return (
            f"another training process stopped at {where}, and this one could not go on "
            f"({type(exc).__name__}: {first_line}); torchrun ends the others. Its own error is "
            f"in the processes' output{kept}"
        )
    missing = _unimplemented_hook(exc, run)
    if missing:
        return missing + kept
    plugin = session.host.plugin_in_traceback(exc.__traceback__)
    source = f"plugin {plugin}" if plugin else "TransferStudio itself (please report it)"
    return (
        f"{type(exc).__name__} raised by {source} at {where}: {exc}{kept}. The traceback is in "
        "the run's log.txt"
    )


def _unimplemented_hook(exc: Exception, run: TrainingRun) -> str | None:
    """A method that leaves out a :class:`TransferMethod` function the engine needs raises
    the base class's ``NotImplementedError`` inside ``api/methods.py``: the method is at fault,
    not TransferStudio."""
    from transferstudio.api import methods

    frames = traceback.extract_tb(exc.__traceback__)
    if not isinstance(exc, NotImplementedError) or not frames:
        return None
    if Path(frames[-1].filename) != Path(methods.__file__):
        return None
    cls = type(run.session.method)
    return (
        f"method {run.session.exp.method!r} ({cls.__module__}.{cls.__qualname__}) does not "
        f"implement {frames[-1].name}(), which the engine calls: its plugin must define it (see "
        "docs/method-api.md)"
    )
