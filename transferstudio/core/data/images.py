"""Opening image files safely and turning every mode into 8-bit RGB."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from transferstudio.api import IMAGE_SUFFIXES
from transferstudio.core.files.limits import MAX_IMAGE_ASPECT, MAX_IMAGE_PIXELS

MAX_PIXELS = MAX_IMAGE_PIXELS
"""Images above this many pixels are refused (decompression-bomb guard; see ``core.limits``)."""

MAX_ASPECT = MAX_IMAGE_ASPECT
"""Images whose long side exceeds this many times the short side are refused: resizing the
short side to the backbone's size would blow the long side up (see ``core.limits``)."""

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


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO/pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def _open(path: str) -> Image.Image:
    if os.path.islink(path) and not os.path.exists(path):
        raise ImageProblem("broken symbolic link")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageProblem("file not found") from None
    except OSError as exc:
        raise ImageProblem(f"cannot read the file ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        # Checked before opening: reading a FIFO would block until a writer appears, and its
        # size of 0 would otherwise be reported as an empty file.
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "special")
        raise ImageProblem(f"not a regular file ({kind})")
    if info.st_size == 0:
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
        raise ImageProblem(_unidentified_reason(path)) from None
    except OSError as exc:
        raise ImageProblem(_decode_reason(exc)) from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise ImageProblem(f"image too large ({width}x{height} pixels; limit {MAX_PIXELS:,})")
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        image.close()
        raise ImageProblem(
            f"image too elongated ({width}x{height} pixels; aspect ratio limit {MAX_ASPECT}:1, "
            "as resizing its short side to the model's input would need far too much memory)"
        )
    return image


# Signatures of the formats Pillow reads for TransferStudio's suffixes: a file that starts like
# one of them but cannot be identified is a damaged image, not some other kind of file.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _unidentified_reason(path: str) -> str:
    """Why Pillow could not identify ``path``: a damaged file of a known format (a PNG chunk
    whose CRC checksum does not match, say), or contents of no image format at all."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        return f"cannot read the file ({exc.strerror})"
    fmt = next((name for sig, name in _SIGNATURES if head.startswith(sig)), None)
    if fmt is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        fmt = "WebP"
    if fmt is None:
        return "not an image (unrecognised file contents)"
    if fmt == "PNG":
        # Image.open hides the plugin's reason behind "cannot identify"; ask the PNG reader.
        from PIL import PngImagePlugin

        try:
            PngImagePlugin.PngImageFile(path).close()
        except (SyntaxError, OSError, ValueError) as exc:
            detail = str(exc).removeprefix("broken PNG file ").strip("()")
            if "checksum" in detail or "crc" in detail.lower():
                return f"damaged PNG file (CRC checksum mismatch: {detail})"
            return f"damaged PNG file ({detail})"
    return f"damaged {fmt} file (its header cannot be read)"


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
    """Open a file as an 8-bit RGB image, upright as its EXIF orientation says (a phone photo
    taken sideways is stored sideways with a tag), raising :class:`ImageProblem` with the
    reason. Training, evaluation and prediction all load images here."""
    try:
        with _open(path) as image:
            image.load()
            return to_rgb(_upright(image))
    except ImageProblem:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(_decode_reason(exc)) from None


_ORIENTATION = 0x0112  # the EXIF tag


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation tag says (the pixels as the camera saw them)."""
    try:
        if image.getexif().get(_ORIENTATION, 1) == 1:
            return image  # upright already: no copy
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a damaged EXIF block; the pixels themselves are fine
        return image


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
