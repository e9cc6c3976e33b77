"""Limits on what TransferStudio reads from files, checked before anything is allocated.

A few bytes of a crafted or damaged file can ask for gigabytes: a 2 KB PNG declaring
1x1,000,000 pixels, a zip entry declaring 2 GiB, a manifest's ``crop = 60000``, a head recipe's
Linear of 10^11 outputs. Every such number is compared with a limit here first, and a refusal
names the file, the key and the limit (:func:`check_limit`), so the user learns which file is
at fault rather than meeting a MemoryError or a raw traceback.

The values are far above anything a real model or photo needs; each comment says why.
"""

from __future__ import annotations

import math
from typing import Any

from transferstudio.api import WeightsError

MAX_IMAGE_PIXELS = 40_000_000
"""Pixels of one image: a 40-megapixel photo decodes to 120 MB of RGB; larger files are
decompression bombs far more often than photos a classifier should read whole."""

MAX_IMAGE_ASPECT = 50
"""Longer side over shorter side of one image. Resizing the short side to the backbone's size
scales the long side by the same factor: a 1x1,000,000 image resized to 256 would be
256x256,000,000 (65 gigapixels). Panoramas stay under 10:1; 50:1 keeps the resized image of
the largest allowed preprocessing (``MAX_RESIZE``) under 100 megapixels."""

MAX_CROP = 1024
"""``preprocessing.crop``: the largest ``data.image_size`` an experiment may set (a batch of 32
float images of 1024x1024 is 400 MB); 60,000 would ask 86 GB."""

MAX_RESIZE = 1280
"""``preprocessing.resize`` (the short side before the centre crop): the largest crop at the
usual 256/224 ratio (1024 -> 1170) with room to spare."""

MAX_CLASSES = 100_000
"""Class names of one model: ImageNet-21k has 21,841 classes."""

MAX_LAYER_FEATURES = 1 << 20
"""Inputs or outputs of one head layer (Linear, BatchNorm1d): the widest backbone features are a
few thousand wide and the most classes are ``MAX_CLASSES``."""

MAX_LAYER_PARAMS = 1 << 28
"""Parameters of one head layer: 268 million float32 values (1 GiB), well above a 21k-class
head on 8,192 features (179 million)."""

MAX_MANIFEST_BYTES = 16 << 20
"""A bundle's ``manifest.json``: 100,000 class names of 60 characters are 6 MB."""

MAX_WEIGHTS_BYTES = 8 << 30
"""A weights entry of a bundle: ViT-H/14 is 2.5 GB in float32; 8 GiB leaves room for the
largest models a workstation fine-tunes while refusing entries that declare absurd sizes."""

MAX_COMPRESSION_RATIO = 100
"""Uncompressed over compressed size of a bundle entry larger than ``RATIO_CHECKED_FROM``.
Trained float weights hardly compress (about 1.1:1); a ratio of 1000:1 is a zip bomb."""

RATIO_CHECKED_FROM = 16 << 20
"""Entries up to this size are not ratio-checked: a small JSON or a zero-initialised head may
compress very well, and expanding them costs nothing."""

READ_CHUNK = 1 << 20
"""Bytes read at a time from a zip entry, so that reading stops just past a limit."""


class LimitError(WeightsError):
    """A model file (bundle, checkpoint) declares a size or value above one of TransferStudio's
    limits, or of the wrong type."""


def check_limit(
    value: float,
    limit: float,
    *,
    file: object,
    what: str,
    advice: str,
    error: type[Exception] = LimitError,
) -> None:
    """Raise ``error`` when ``value`` exceeds ``limit``: the message names ``file``, ``what``
    (the key or quantity) and the limit, and ends with ``advice`` (what the user can do)."""
    if value > limit:
        raise error(
            f"{file}: {what} is {_number(value)}, above TransferStudio's limit of "
            f"{_number(limit)}; {advice}"
        )


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.4g}"


def positive_int(value: Any, *, file: object, what: str, limit: int, advice: str) -> int:
    """``value`` as an int in ``1..limit``, else a :class:`LimitError` naming ``file`` and
    ``what`` (JSON read from a file may hold a string, a float or a bool anywhere)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LimitError(f"{file}: {what} must be a positive whole number, not {value!r}; {advice}")
    check_limit(value, limit, file=file, what=what, advice=advice)
    return value


INTERPOLATIONS = ("bilinear", "bicubic")
"""The resize interpolations the image pipeline knows (core.data.build_transform)."""


def checked_preprocessing(data: Any, *, file: object, key: str = "preprocessing") -> dict:
    """A preprocessing mapping read from a file (bundle manifest, checkpoint metadata), checked
    before anything is built from it: ``resize`` and ``crop`` within limits, three finite
    ``mean`` values and three finite, non-zero ``std`` values. Returns ``data`` unchanged."""
    advice = "export the model again, or fix the value in the file"
    if not isinstance(data, dict):
        raise LimitError(f"{file}: {key} must be an object, not {type(data).__name__}; {advice}")
    for name, limit in (("resize", MAX_RESIZE), ("crop", MAX_CROP)):
        if name not in data:
            raise LimitError(f"{file}: {key}.{name} is missing; {advice}")
        positive_int(data[name], file=file, what=f"{key}.{name}", limit=limit, advice=advice)
    for name in ("mean", "std"):
        values = data.get(name)
        if (
            not isinstance(values, list | tuple)
            or len(values) != 3
            or not all(_finite(v) for v in values)
        ):
            raise LimitError(
                f"{file}: {key}.{name} must be three finite numbers (R, G, B), not {values!r}; "
                f"{advice}"
            )
    interpolation = data.get("interpolation", "bilinear")  # older files do not record it
    if interpolation not in INTERPOLATIONS:
        raise LimitError(
            f"{file}: {key}.interpolation is {interpolation!r}; it must be one of "
            + ", ".join(repr(i) for i in INTERPOLATIONS)
            + f"; {advice}"
        )
    if any(v == 0 for v in data["std"]):
        raise LimitError(
            f"{file}: {key}.std holds 0 ({data['std']!r}); normalising divides by it, so every "
            f"value must be non-zero; {advice}"
        )
    return data


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
