"""Choosing the device and the mixed-precision mode."""

from __future__ import annotations

import torch

from transferstudio.api import ExperimentError


def choose_device(requested: str = "auto") -> torch.device:
    """``auto``: CUDA, then MPS, then CPU. An explicit device that is absent is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ExperimentError(
            f"{requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps", "train.device"
        ) from None
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        raise ExperimentError(
            f"{requested!r} asked for, but no such CUDA device is available; use 'auto' or 'cpu'",
            "train.device",
        )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ExperimentError(
            "'mps' asked for, but Metal is not available; use 'auto' or 'cpu'", "train.device"
        )
    return device


def choose_precision(device: torch.device, requested: str = "auto") -> torch.dtype | None:
    """The autocast dtype, or ``None`` for fp32. Mixed precision is used on CUDA only."""
    if device.type != "cuda" or requested == "fp32":
        return None
    if requested == "bf16" or (requested == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def describe(device: torch.device) -> str:
    """``NVIDIA H200 (139.8 GiB)``, ``Apple MPS`` or ``CPU (N threads)``."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"
