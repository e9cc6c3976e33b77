"""Built-in model exporters: safetensors weights, a PyTorch state_dict, TorchScript, ONNX and the
model bundle. Each can reload its file (``load``); the host verifies an export by comparing the
reloaded file's outputs with the source module's."""

from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path

from transferstudio.api import (
    BUNDLE_MANIFEST_ENTRY,
    BUNDLE_WEIGHTS_ENTRY,
    ExporterSpec,
    PluginError,
)


def _clone_with(module, state):
    clone = copy.deepcopy(module).eval()
    clone.load_state_dict(state)
    return clone


def export_safetensors(module, example, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata=_strings(metadata))


def load_safetensors(module, path: Path):
    from safetensors.torch import load_file

    return _clone_with(module, load_file(str(path)))


def export_state_dict(module, example, path: Path, metadata: dict) -> None:
    import torch

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    torch.save(state, str(path))


def load_state_dict(module, path: Path):
    import torch

    # weights_only: the file is read back the way TransferStudio reads any .pt file.
    return _clone_with(module, torch.load(str(path), map_location="cpu", weights_only=True))


def export_bundle(module, example, path: Path, metadata: dict) -> None:
    """One zip: the weights as safetensors and ``manifest.json`` (the metadata the host gives:
    architecture recipe, class names, preprocessing, provenance). Nothing in it is a pickle."""
    import zipfile

    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as bundle:
        bundle.writestr(BUNDLE_MANIFEST_ENTRY, _json(metadata))
        bundle.writestr(BUNDLE_WEIGHTS_ENTRY, save(state))


def load_bundle_weights(module, path: Path):
    import zipfile

    from safetensors.torch import load

    with zipfile.ZipFile(path) as bundle:
        return _clone_with(module, load(bundle.read(BUNDLE_WEIGHTS_ENTRY)))


@contextlib.contextmanager
def _quiet_legacy_exporters():
    # torch marks TorchScript and the TorchScript-based ONNX exporter deprecated in favour of
    # torch.export; the files they write are still what C++, mobile and ONNX runtimes load, and
    # each export here is verified, so the warnings are noise to the user.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
        warnings.filterwarnings(
            "ignore", category=DeprecationWarning, message=".*(TorchScript|torch.jit).*"
        )
        # An optimisation the ONNX exporter skips for some padding slices (EfficientNet's
        # "same" padding): the graph stays correct, as the verification shows.
        warnings.filterwarnings("ignore", category=UserWarning, message="Constant folding")
        yield


def export_torchscript(module, example, path: Path, metadata: dict) -> None:
    import torch

    with _quiet_legacy_exporters(), torch.no_grad():
        try:
            scripted = torch.jit.trace(module, example)
        except Exception:  # noqa: BLE001 - some modules only script
            scripted = torch.jit.script(module)
        torch.jit.save(scripted, str(path), _extra_files={"transferstudio.json": _json(metadata)})


def load_torchscript(module, path: Path):
    import torch

    with _quiet_legacy_exporters():
        return torch.jit.load(str(path), map_location="cpu")


def export_onnx(module, example, path: Path, metadata: dict) -> None:
    import torch

    batch_statistics = [
        name
        for name, layer in module.named_modules()
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm) and layer.running_mean is None
    ]
    if batch_statistics:
        # ONNX's BatchNormalization needs running statistics; MAML normalises with each batch's.
        raise PluginError(
            f"ONNX cannot express BatchNorm that normalises with batch statistics (layers "
            f"{', '.join(batch_statistics[:3])}{' ...' if len(batch_statistics) > 3 else ''}, "
            "as MAML models use); export as torchscript, bundle or safetensors instead"
        )
    try:
        import onnx
    except ImportError:
        raise PluginError(
            "ONNX export needs the onnx packages: pip install 'transferstudio[onnx]'"
        ) from None
    with _quiet_legacy_exporters():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, _strings({key: value})[key]
    onnx.save(model, str(path))


def load_onnx(module, path: Path):
    try:
        import onnxruntime
    except ImportError:
        raise PluginError(
            "ONNX verification needs onnxruntime: pip install 'transferstudio[onnx]'"
        ) from None
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(images):
        (output,) = session.run(None, {"input": images.detach().cpu().numpy()})
        return torch.from_numpy(output)

    return run


def _strings(metadata: dict) -> dict[str, str]:
    # String-only metadata (safetensors, ONNX metadata_props): nested values as JSON.
    return {k: v if isinstance(v, str) else _json(v) for k, v in metadata.items()}


def _json(metadata) -> str:
    import json

    return json.dumps(metadata, sort_keys=True, default=str)


def builtin_exporters() -> list[ExporterSpec]:
    formats = [
        (
            "safetensors",
            ".safetensors",
            export_safetensors,
            load_safetensors,
            "weights only, safe to load anywhere",
        ),
        (
            "bundle",
            ".tsmodel",
            export_bundle,
            load_bundle_weights,
            "model bundle: weights, architecture, classes, preprocessing and provenance in one "
            "file; TransferStudio reopens it to predict or to fine-tune further",
        ),
        (
            "state_dict",
            ".pth",
            export_state_dict,
            load_state_dict,
            "PyTorch state_dict (torch.save of tensors; load with weights_only=True)",
        ),
        (
            "torchscript",
            ".pt",
            export_torchscript,
            load_torchscript,
            "TorchScript (trace, script as fallback); runs without Python code",
        ),
        ("onnx", ".onnx", export_onnx, load_onnx, "ONNX opset 17, dynamic batch axis"),
    ]
    return [
        ExporterSpec(name, suffix, export, description, load=load)
        for name, suffix, export, load, description in formats
    ]
