"""Reading weights from local files only: safetensors, or ``.pt``/``.pth`` without unpickling code.

TransferStudio never downloads: a backbone's pretrained weights come from a file its plugin ships,
the local torch cache (where torchvision would have stored a past download) or a file the user
names.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferstudio.api import BackboneSpec, WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def torch_cache_dir() -> Path:
    """The folder where torchvision keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def find_cached(spec: BackboneSpec) -> Path:
    """The backbone's pretrained file: the one its plugin ships (``packaged_weights``), else the
    one in the local torch cache; a :class:`WeightsError` when there is none."""
    if spec.packaged_weights is not None:
        try:
            packaged = Path(spec.packaged_weights())
        except Exception as exc:  # noqa: BLE001 - a plugin's own lookup, e.g. a missing package
            raise WeightsError(
                f"backbone {spec.name!r}: its plugin could not locate its packaged weights "
                f"({type(exc).__name__}: {exc}); reinstall the plugin with its weights package"
            ) from None
        if packaged.is_file():
            return packaged
        raise WeightsError(
            f"backbone {spec.name!r}: the weights file its plugin ships, {packaged}, is missing; "
            "reinstall the plugin"
        )
    folder = torch_cache_dir()
    for name in spec.cache_files:
        if (folder / name).is_file():
            return folder / name
    wanted = ", ".join(spec.cache_files) or "(this backbone names no cache file)"
    raise WeightsError(
        f"no pretrained weights for {spec.name!r} in the local torch cache {folder} (looked for "
        f"{wanted}). Copy the file there, or set model.weights to a .pth/.safetensors path, or "
        "to 'none' for random initialisation. TransferStudio never downloads."
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file. ``.safetensors`` never unpickles; ``.pt``/``.pth`` load with
    ``weights_only=True`` so a file that would run code is refused. A checkpoint that wraps the
    state dict (``{"state_dict": ...}`` or ``{"model": ...}``) is unwrapped."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".tsmodel" or is_bundle(path):
        # A bundle under another suffix (renamed to .pth, say) is read as the bundle it is,
        # not handed to torch.load, which would call it a damaged pickle.
        from transferstudio.core.models.bundle_file import read_bundle_weights

        return read_bundle_weights(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise WeightsError(f"{path} is not a valid safetensors file: {exc}") from None
    obj: Any = load_tensors_only(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return obj


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a TransferStudio bundle: a zip holding our manifest entry (torch's
    own ``.pt`` files are zips too, without it)."""
    import zipfile

    from transferstudio.api import BUNDLE_MANIFEST_ENTRY

    try:
        with zipfile.ZipFile(path) as archive:
            return BUNDLE_MANIFEST_ENTRY in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


# Torch's refusals advise loading with weights_only=False or allow-listing the callable a
# pickle names (or filing a torch issue): lines saying so are never shown, since following
# them would let a file run code.
_TORCH_ADVICE = (
    "weights_only",
    "trust",
    "safe_globals",
    "allowlist",
    "file an issue",
    "torch.load",
)
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_tensors_only(path: str | Path, what: str = "weights file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with every failure a
    :class:`WeightsError` in TransferStudio's own words: a file that would need to run code to
    load, or a damaged one. Torch's own message advises switching ``weights_only`` off; that
    advice is never passed on."""
    import pickle

    import torch

    try:
        with warnings.catch_warnings():
            # Torch warns of any pickle protocol but 2 and asks for a torch issue: noise to
            # the user, and the load that follows refuses what it cannot read anyway.
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{what} {path} does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as exc:
        raise WeightsError(unsafe_or_damaged(path, exc, what)) from None


def unsafe_or_damaged(path: str | Path, exc: BaseException, what: str = "weights file") -> str:
    """The message for a ``.pt``/``.pth`` file that ``torch.load(weights_only=True)`` refused:
    what it would need (the Python callable a pickle names) or what is damaged."""
    text = str(exc)
    needs = _GLOBAL.search(text)
    detail = next(
        (
            line.strip().removeprefix("WeightsUnpickler error:").strip().rstrip(".")
            for line in text.splitlines()
            if line.strip().removeprefix("WeightsUnpickler error:").strip()
            and not any(a in line for a in _TORCH_ADVICE)
        ),
        type(exc).__name__,
    )
    advice = (
        "TransferStudio loads .pt/.pth files as weights only (tensors, numbers, strings) and "
        "never runs code from a file; re-save the weights with "
        "torch.save(model.state_dict(), ...) or as .safetensors"
    )
    if needs:
        return (
            f"{what} {path} was refused: it is not a plain tensor file, it would need to run "
            f"code to load (it calls {needs.group(1)}). {advice}"
        )
    return (
        f"{what} {path} was refused: it is damaged or not a PyTorch weights file ({detail}). "
        f"{advice}; "
        "or copy the file again if it was cut short"
    )


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file (first 16 hex digits), for provenance and cache keys."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def default_weights(spec: BackboneSpec) -> str:
    """What a new experiment on ``spec`` starts from: ``"cache"`` when its pretrained weights
    are on this machine (the plugin's own file, or the torch cache), else ``"none"``. A tool for
    transfer should not start a newcomer from random initialisation when it need not."""
    try:
        find_cached(spec)
    except WeightsError:
        return "none"
    return "cache"
