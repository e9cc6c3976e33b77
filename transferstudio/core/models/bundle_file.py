"""Reading a model bundle file (``.tsmodel``): its manifest and tensors, each entry bounded and
every manifest field checked before anything is built from it. No model is built here (that is
``core/models/bundle.py``), so reading a bundle's weights needs nothing else of ``models``."""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from transferstudio.api import BUNDLE_MANIFEST_ENTRY, BUNDLE_WEIGHTS_ENTRY, WeightsError
from transferstudio.core.files import limits

FORMAT = "transferstudio-bundle"
VERSION = 1
"""The manifest's ``format`` and the newest ``version`` this TransferStudio reads."""


def read_bundle(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A bundle's manifest and tensors, checked to be a bundle this version reads. Every entry
    is bounded before it is read (declared size, compression ratio, bytes actually read; see
    ``core.limits``) and every manifest field is checked before anything is built from it, so
    a crafted or damaged file is a :class:`WeightsError` naming the file and key."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"model bundle {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = _parse_manifest(
                _read_entry(archive, BUNDLE_MANIFEST_ENTRY, limits.MAX_MANIFEST_BYTES, path), path
            )
            raw = _read_entry(archive, BUNDLE_WEIGHTS_ENTRY, limits.MAX_WEIGHTS_BYTES, path)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise WeightsError(
            f"{path} is not a readable TransferStudio model bundle ({exc}); export it again"
        ) from None
    try:
        weights = load(raw)
    except SafetensorError as exc:
        raise WeightsError(
            f"{path}: its entry {BUNDLE_WEIGHTS_ENTRY} is not a valid safetensors file ({exc}); "
            "export the model again"
        ) from None
    return manifest, weights


# What zipfile can decompress; anything else (or an encrypted entry) is refused by name
# rather than with zipfile's NotImplementedError / RuntimeError.
_COMPRESSIONS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflated",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


def _read_entry(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    """Entry ``name`` of a bundle, refused before reading when it is encrypted, compressed in
    a way zipfile cannot read, declares more than ``limit`` bytes or more data than the file
    holds, or expands suspiciously; reading stops as soon as more bytes come than declared."""
    where = f"{path} (entry {name})"
    advice = "this is not a bundle TransferStudio wrote; export the model again"
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise WeightsError(f"{path} has no {name} entry; export the model again") from None
    if info.flag_bits & 0x1:
        raise WeightsError(f"{where} is encrypted; TransferStudio bundles never are. {advice}")
    if info.compress_type not in _COMPRESSIONS:
        raise WeightsError(
            f"{where} uses zip compression method {info.compress_type}, which TransferStudio "
            f"does not read ({', '.join(_COMPRESSIONS.values())}); {advice}"
        )
    limits.check_limit(
        info.file_size, limit, file=where, what="the declared size (bytes)", advice=advice
    )
    if info.header_offset + info.compress_size > path.stat().st_size:
        raise WeightsError(
            f"{where} declares {info.compress_size:,} bytes of data, more than the file holds; "
            "the file is damaged or cut short: copy or export it again"
        )
    if info.file_size > limits.RATIO_CHECKED_FROM:
        limits.check_limit(
            info.file_size / max(1, info.compress_size),
            limits.MAX_COMPRESSION_RATIO,
            file=where,
            what="the compression ratio",
            advice=advice,
        )
    chunks, total = [], 0
    with archive.open(info) as entry:
        while chunk := entry.read(limits.READ_CHUNK):
            total += len(chunk)
            if total > info.file_size:  # never trust the declaration to bound the reading
                raise WeightsError(f"{where} holds more bytes than it declares; {advice}")
            chunks.append(chunk)
    return b"".join(chunks)


def _parse_manifest(raw: bytes, path: Path) -> dict[str, Any]:
    """The manifest of bundle ``path``, refused unless it is an object of the fields this
    version reads, each of the right type and within ``core.limits``."""
    advice = "export the model again"
    try:
        manifest = json.loads(raw)
    except RecursionError:
        raise WeightsError(
            f"{path}: {BUNDLE_MANIFEST_ENTRY} is nested too deeply to be a manifest; {advice}"
        ) from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError among them
        raise WeightsError(
            f"{path}: {BUNDLE_MANIFEST_ENTRY} is not JSON ({exc}); {advice}"
        ) from None
    if not isinstance(manifest, dict):
        raise WeightsError(
            f"{path}: {BUNDLE_MANIFEST_ENTRY} is a JSON {type(manifest).__name__}, not an object; "
            f"{advice}"
        )
    if manifest.get("format") != FORMAT:
        raise WeightsError(f"{path}: manifest format is {manifest.get('format')!r}, not {FORMAT}")
    version = manifest.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise WeightsError(
            f"{path}: manifest key 'version' must be a whole number, not {version!r}; {advice}"
        )
    if version > VERSION:
        raise WeightsError(
            f"{path} is bundle version {version}, newer than this TransferStudio "
            f"reads ({VERSION}); upgrade TransferStudio"
        )
    expected = {
        "backbone": str,
        "module": str,
        "class_names": list,
        "head_recipe": dict,
        "preprocessing": dict,
        "provenance": dict,
        "predictor_module": str,
    }
    for key, kind in expected.items():
        value = manifest.get(key)
        if value is not None and not isinstance(value, kind):
            raise WeightsError(
                f"{path}: manifest key {key!r} must be a JSON {_JSON_NAMES[kind]}, not "
                f"{type(value).__name__}; {advice}"
            )
    names = manifest.get("class_names") or []
    if not all(isinstance(n, str) for n in names):
        raise WeightsError(f"{path}: manifest key 'class_names' must list strings; {advice}")
    limits.check_limit(
        len(names), limits.MAX_CLASSES, file=path, what="the number of class_names", advice=advice
    )
    if manifest.get("preprocessing") is not None:
        limits.checked_preprocessing(manifest["preprocessing"], file=path)
    return manifest


_JSON_NAMES = {str: "string", list: "list", dict: "object"}


def read_bundle_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a bundle (for ``model.weights``: its backbone part is used)."""
    return read_bundle(path)[1]
