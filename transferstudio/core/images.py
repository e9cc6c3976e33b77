"""Opening image files safely and turning every mode into 8-bit RGB."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from transferstudio.api import IMAGE_SUFFIXES

MAX_PIXELS = 40_000_000
"""Images above this many pixels are refused (decompression-bomb guard)."""

_CHECK_SIZE = (64, 64)


class ImageProblem(Exception):
    """A file that cannot be used as an image; the message is the reason shown to the user."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert grayscale, palette, alpha, CMYK and 16-bit images to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and 32-bit grayscale: stretch the actual range to 0..255 (a plain convert("L")
        # clips everything above 255 to white).
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        scaled = (array - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(array)
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparent pixels onto white rather than the undefined colour under them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _open(path: str) -> Image.Image:
    if os.path.islink(path) and not os.path.exists(path):
        raise ImageProblem("broken symbolic link")
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise ImageProblem("file not found") from None
    except OSError as exc:
        raise ImageProblem(f"cannot read the file ({exc.strerror})") from None
    if size == 0:
        raise ImageProblem("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except PermissionError:
        raise ImageProblem("permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageProblem("image too large (possible decompression bomb)") from None
    except Image.UnidentifiedImageError:
        raise ImageProblem("not an image (unrecognised file contents)") from None
    except OSError as exc:
        raise ImageProblem(_decode_reason(exc)) from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise ImageProblem(f"image too large ({width}x{height} pixels; limit {MAX_PIXELS:,})")
    return image


def check_image(path: str) -> str | None:
    """Decode a file far enough to know it is a usable image; returns a reason when it is not.

    JPEGs are decoded in draft mode (reduced scale), which still reads every byte, so truncated
    files are caught at a fraction of the full decoding cost.
    """
    try:
        with _open(path) as image:
            image.draft("RGB", _CHECK_SIZE)
            image.load()
    except ImageProblem as exc:
        return str(exc)
    except (OSError, SyntaxError, ValueError) as exc:
        return _decode_reason(exc)
    return None


def _decode_reason(exc: BaseException) -> str:
    message = str(exc)
    lowered = message.lower()
    if "truncated" in lowered or "broken data stream" in lowered or "premature end" in lowered:
        return "truncated or damaged image data"
    return f"cannot decode the image ({message or type(exc).__name__})"


def load_rgb(path: str) -> Image.Image:
    """Open a file as an 8-bit RGB image, raising :class:`ImageProblem` with the reason."""
    try:
        with _open(path) as image:
            image.load()
            return to_rgb(image)
    except ImageProblem:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(_decode_reason(exc)) from None


NOT_AN_IMAGE = "not an image (unknown suffix)"


def image_files(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files under folder ``root`` (recursively, sorted, hidden files left out) by
    suffix, and the other files with the reason they are skipped. Nothing is decoded here."""
    images: list[str] = []
    others: list[tuple[str, str]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(str(path))
        else:
            others.append((str(path), NOT_AN_IMAGE))
    return images, others
