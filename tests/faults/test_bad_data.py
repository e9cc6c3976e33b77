"""A bad-data corpus: one data folder holding every awkward kind of file we know of, scanned and
trained on for real. Each unusable file is skipped with its own reason, each odd but valid image
loads as RGB, and training goes on with the rest; class names that would collide on Windows and
macOS stop the run before training.

tests/core/test_data.py checks some of these kinds on their own (and a dangling symlink and an
unknown suffix, which are not repeated here); its byte builders and scan helper are reused.
"""

from __future__ import annotations

import builtins
import errno
import os
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.core.test_data import _jpeg_bytes, _png_bytes, _scan
from tests.helpers import tiny_experiment
from transferstudio.api import DataError, Preprocessing
from transferstudio.core.data.images import load_rgb
from transferstudio.core.data.loaders import build_transform
from transferstudio.core.training.engine import PlainState, run_experiment

ANT_RED = (220, 40, 40)  # the colour tests.helpers gives the first class, so odd files fit in

SKIPPED = {
    "ants/truncated.jpg": "truncated or damaged image data",
    "ants/truncated.png": "truncated or damaged image data",
    "ants/empty.jpg": "empty file (0 bytes)",
    "ants/notes.jpg": "not an image (unrecognised file contents)",
    # Declared 100000x100000: Pillow's own guard refuses it while reading the header.
    "ants/bomb.png": "image too large (possible decompression bomb)",
    # Declared 8000x6000: below Pillow's guard, above ours (images.MAX_PIXELS).
    "ants/oversized.png": "image too large (8000x6000 pixels; limit 40,000,000)",
    "ants/loop": "symbolic link loop (it points back to a folder that contains it); not followed",
    # The same loop one level up: a "class folder" linking to the data folder itself.
    "everything": "symbolic link loop (it points back to a folder that contains it); not followed",
    # Folder links are never followed inside a class folder; one that is no loop is named too.
    "bees/elsewhere": (
        "symbolic link to a folder; not followed (move or copy its images into the class folder)"
    ),
    "ants/unreadable.png": "permission denied",
}
"""Relative path in the corpus -> the exact reason the scan gives for skipping it."""

USABLE = {
    "ants/png-named.jpg": ("ants", True),
    "ants/jpeg-named.png": ("ants", True),
    "ants/one-pixel.png": ("ants", True),
    "ants/cmyk.jpg": ("ants", True),
    "ants/deep-16bit.png": ("ants", False),
    "ants/palette.png": ("ants", True),
    "ants/rgba.png": ("ants", True),
    "fourmis rouges/été 1.png": ("fourmis rouges", True),
}
"""Relative path -> (class, whether it is red): odd files that must load as 8-bit RGB."""


def _png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG of a few dozen bytes whose header declares ``width`` x ``height``:
    a real huge-dimension file, cheap to write (only the declared size makes it unusable)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _make_unreadable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` unreadable: chmod 000 where that works (POSIX, not root). Root reads through
    chmod 000 and Windows ignores it, so there the refusal the OS would give is injected into
    ``open`` for exactly this path."""
    if os.name == "posix" and os.geteuid() != 0:
        path.chmod(0)
        return
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if isinstance(file, str | os.PathLike) and os.fspath(file) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)


@pytest.fixture
def corpus(make_images, monkeypatch) -> Path:
    """Three good classes (one with spaces and accents in its name) plus every awkward file."""
    root = make_images({"ants": 6, "bees": 6, "fourmis rouges": 5})
    ants = root / "ants"
    red = Image.new("RGB", (20, 20), ANT_RED)

    (ants / "truncated.jpg").write_bytes(_jpeg_bytes((200, 200))[:400])
    png = _png_bytes(Image.new("RGB", (64, 64), ANT_RED))
    (ants / "truncated.png").write_bytes(png[: len(png) // 2])
    (ants / "empty.jpg").write_bytes(b"")
    (ants / "notes.jpg").write_text("this is text, not a JPEG")
    (ants / "bomb.png").write_bytes(_png_claiming(100_000, 100_000))
    (ants / "oversized.png").write_bytes(_png_claiming(8000, 6000))
    os.symlink(ants, ants / "loop", target_is_directory=True)
    os.symlink(root, root / "everything", target_is_directory=True)
    outside = make_images({"more bees": 2}, name="outside") / "more bees"
    os.symlink(outside, root / "bees" / "elsewhere", target_is_directory=True)
    red.save(ants / "unreadable.png")
    _make_unreadable(ants / "unreadable.png", monkeypatch)

    red.save(ants / "png-named.jpg", "PNG")
    red.save(ants / "jpeg-named.png", "JPEG")
    Image.new("RGB", (1, 1), ANT_RED).save(ants / "one-pixel.png")
    Image.new("CMYK", (20, 20), (0, 200, 200, 20)).save(ants / "cmyk.jpg")
    ramp = Image.fromarray(np.linspace(0, 65535, 400, dtype=np.uint16).reshape(20, 20))
    assert ramp.mode == "I;16"
    ramp.save(ants / "deep-16bit.png")
    red.convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(ants / "palette.png")
    Image.new("RGBA", (20, 20), (*ANT_RED, 200)).save(ants / "rgba.png")
    red.save(root / "fourmis rouges" / "été 1.png")
    return root


@pytest.mark.parametrize("relative, reason", SKIPPED.items(), ids=list(SKIPPED))
def test_each_unusable_file_is_skipped_with_its_own_reason(corpus, relative, reason):
    skipped = dict(_scan(corpus).skipped)
    assert skipped.get(str(corpus / relative)) == reason


def test_nothing_else_is_skipped(corpus):
    skipped = {str(Path(p).relative_to(corpus)) for p, _ in _scan(corpus).skipped}
    assert skipped == set(SKIPPED)


@pytest.mark.parametrize("relative, expected", USABLE.items(), ids=list(USABLE))
def test_each_odd_image_loads_as_rgb_and_resizes(corpus, relative, expected):
    label, is_red = expected
    path = str(corpus / relative)
    result = _scan(corpus)
    labels = {s.path: s.label for samples in result.splits.values() for s in samples}
    assert labels.get(path) == label
    image = load_rgb(path)
    assert image.mode == "RGB"
    if is_red:  # a mode converted wrongly (an inverted CMYK, a lost palette) loses the red
        r, g, b = image.getpixel((0, 0))
        assert r > g + 60 and r > b + 60, (r, g, b)
    tensor = build_transform(Preprocessing(resize=36, crop=32), None)(image)
    assert tuple(tensor.shape) == (3, 32, 32)


def test_training_goes_on_with_the_usable_files(corpus, host, tmp_path):
    result = run_experiment(
        tiny_experiment(corpus, train__epochs=1), host, PlainState(), tmp_path / "ws"
    )
    assert result.status == "completed", result.message
    log = (result.folder / "log.txt").read_text(encoding="utf-8")
    assert f"skipped {len(SKIPPED)} file(s)" in log


def _same_name_folders(root: Path, first: str, second: str) -> None:
    (root / first).mkdir(parents=True)
    if (root / second).exists():
        pytest.skip(f"this file system cannot hold both {first!r} and {second!r}")
    for folder in (first, second, "dog"):
        (root / folder).mkdir(exist_ok=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(root / folder / f"{i}.png")


@pytest.mark.parametrize(
    "first, second, how",
    [
        ("Cat", "cat", "letter case"),
        (unicodedata.normalize("NFD", "été"), "été", "Unicode form"),
    ],
    ids=["case", "unicode-form"],
)
def test_class_names_that_collide_stop_the_run_before_training(tmp_path, host, first, second, how):
    root = tmp_path / "pets"
    _same_name_folders(root, first, second)
    with pytest.raises(DataError) as scan_error:
        _scan(root)
    message = str(scan_error.value)
    assert f"{first!r} and {second!r}" in message and how in message
    assert "rename one of them" in message
    with pytest.raises(DataError, match="rename one of them"):
        run_experiment(tiny_experiment(root, train__epochs=1), host, PlainState(), tmp_path / "ws")
    assert not (tmp_path / "ws" / "runs").exists()


def test_colliding_class_names_are_refused_for_few_shot_episodes_too(tmp_path):
    from transferstudio_builtins.datasets import image_folder_source

    from transferstudio.core.data.roles import split_classes
    from transferstudio.core.settings.experiment import DataSettings

    root = tmp_path / "glyphs"
    _same_name_folders(root, "Alpha", "alpha")
    with pytest.raises(DataError, match="'Alpha' and 'alpha' .* letter case"):
        split_classes(image_folder_source(), root, DataSettings(path=str(root)))
