"""The data scan: every kind of bad file is listed with its reason; odd modes are converted;
data that cannot train is refused with a message naming the class or split."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferstudio.api import DataError, ExperimentError
from transferstudio.core.data import loaders as D
from transferstudio.core.data.images import check_image, load_rgb
from transferstudio.core.settings.experiment import DataSettings


def _jpeg_bytes(size=(40, 40), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 120, 200) if mode == "RGB" else (10, 120, 200, 0)).save(buf, "JPEG")
    return buf.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def messy(make_images):
    """Two good classes plus one of every bad-file kind inside them."""
    root = make_images({"ants": 6, "bees": 6})
    ants = root / "ants"
    (ants / "truncated.jpg").write_bytes(_jpeg_bytes((200, 200))[:400])
    png = _png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    (ants / "truncated.png").write_bytes(png[: len(png) // 2])
    (ants / "empty.jpg").write_bytes(b"")
    (ants / "notes.jpg").write_text("this is text, not a JPEG")
    (ants / "readme.txt").write_text("not an image")
    os.symlink(ants / "does-not-exist.png", ants / "dangling.png")
    return root


def _scan(root: Path, **settings) -> D.ScanResult:
    from transferstudio_builtins.datasets import image_folder_source

    return D.scan(image_folder_source(), DataSettings(path=str(root), **settings), root)


def test_every_bad_file_kind_is_skipped_with_a_specific_reason(messy):
    result = _scan(messy)
    reasons = {Path(p).name: r for p, r in result.skipped}
    assert reasons["truncated.jpg"] == "truncated or damaged image data"
    assert "truncated" in reasons["truncated.png"] or "damaged" in reasons["truncated.png"]
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["notes.jpg"] == "not an image (unrecognised file contents)"
    assert reasons["readme.txt"] == "not an image file (unknown suffix)"
    assert reasons["dangling.png"] == "broken symbolic link"
    assert sum(result.counts()[s]["ants"] for s in result.splits) == 6
    assert "skipped 6 file(s)" in result.report()


def test_gif_placeholder_loads_as_rgb(tmp_path):
    gif = tmp_path / "placeholder.gif"
    Image.new("P", (30, 20), 3).save(gif)
    assert check_image(str(gif)) is None
    assert load_rgb(str(gif)).mode == "RGB"


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "I", "1"])
def test_image_modes_are_converted_to_rgb(tmp_path, mode):
    if mode == "I;16":
        image = Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 150)
        assert image.mode == "I;16"
    elif mode == "I":
        image = Image.fromarray(np.arange(400, dtype=np.int32).reshape(20, 20) * 1000)
        assert image.mode == "I"
    else:
        image = Image.new(mode, (20, 20))
    path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    if mode == "CMYK":
        image.save(path, "JPEG")
    elif mode == "I":
        image.save(path.with_suffix(".tif"))
        path = path.with_suffix(".tif")
    else:
        image.save(path)
    assert check_image(str(path)) is None
    rgb = load_rgb(str(path))
    assert rgb.mode == "RGB" and rgb.size == (20, 20)


def test_sixteen_bit_range_is_stretched_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 256, dtype=np.uint16).reshape(16, 16)
    path = tmp_path / "deep.png"
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    image.save(path)
    gray = np.asarray(load_rgb(str(path)))[..., 0]
    assert gray.min() == 0 and gray.max() == 255
    assert len(np.unique(gray)) > 200  # a plain convert("L") would clip nearly all to 255


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(path)
    assert load_rgb(str(path)).getpixel((0, 0)) == (255, 255, 255)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    from transferstudio.core.data import images

    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    path = tmp_path / "big.png"
    Image.new("RGB", (200, 200)).save(path)
    assert "too large" in check_image(str(path))


def test_stratified_split_is_per_class_and_repeatable(make_images):
    root = make_images({"a": 20, "b": 10})
    first = _scan(root, val_split=0.2, test_split=0.1, split_seed=7)
    again = _scan(root, val_split=0.2, test_split=0.1, split_seed=7)
    other = _scan(root, val_split=0.2, test_split=0.1, split_seed=8)
    assert first.counts() == {
        "train": {"a": 14, "b": 7},
        "val": {"a": 4, "b": 2},
        "test": {"a": 2, "b": 1},
    }
    assert first.splits == again.splits
    assert first.splits["val"] != other.splits["val"]
    assert not {s.path for s in first.splits["train"]} & {s.path for s in first.splits["val"]}


def test_train_val_folders_are_used_as_given(make_images, tmp_path):
    make_images({"cat": 5, "dog": 5}, name="set/train")
    make_images({"cat": 2, "dog": 3}, name="set/val", seed=1)
    result = _scan(tmp_path / "set")
    assert result.counts() == {"train": {"cat": 5, "dog": 5}, "val": {"cat": 2, "dog": 3}}


def test_empty_class_is_an_error_naming_it(make_images):
    root = make_images({"a": 5, "b": 5})
    (root / "lonely").mkdir()
    with pytest.raises(DataError, match="class 'lonely' has no usable training images"):
        _scan(root)


def test_class_with_only_broken_files_is_an_error_naming_it(make_images):
    root = make_images({"a": 5, "b": 5})
    (root / "c").mkdir()
    (root / "c" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="class 'c'"):
        _scan(root)


def test_single_class_is_an_error(make_images):
    root = make_images({"only": 6})
    with pytest.raises(DataError, match="only one class \\('only'\\)"):
        _scan(root)


def test_val_label_unseen_in_train_is_an_error(make_images, tmp_path):
    make_images({"cat": 5, "dog": 5}, name="set/train")
    make_images({"cat": 2, "emu": 2}, name="set/val")
    with pytest.raises(DataError, match="val label 'emu' never appears in train"):
        _scan(tmp_path / "set")


def test_missing_path_names_the_key(tmp_path):
    with pytest.raises(ExperimentError, match="data.path"):
        _scan(tmp_path / "nowhere")


def test_csv_source_resolves_relative_paths_and_reports_bad_rows(make_images, tmp_path):
    from transferstudio_builtins.datasets import csv_source

    root = make_images({"red": 6, "green": 6})
    rows = ["path,label"]
    rows += [f"data/red/red_{i:03d}.png,red" for i in range(6)]
    rows += [f"{root}/green/green_{i:03d}.png,green" for i in range(6)]
    rows += ["data/red/red_000.png", "data/missing.png,red"]
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    spec = csv_source()
    result = D.scan(spec, DataSettings(path=str(csv_path), val_split=0.34), csv_path)
    assert sum(sum(c.values()) for c in result.counts().values()) == 12
    reasons = dict(result.skipped)
    assert reasons[f"{csv_path}:14"] == "row needs 'path,label'"
    assert reasons[str(tmp_path / "data/missing.png")] == "file not found"


def test_fingerprint_changes_when_a_file_changes(make_images):
    root = make_images({"a": 5, "b": 5})
    before = _scan(root).fingerprint()
    target = root / "a" / "a_000.png"
    Image.new("RGB", (24, 24), (0, 0, 0)).save(target)
    os.utime(target, ns=(1, 1))
    assert _scan(root).fingerprint() != before


def test_augmented_transform_yields_normalised_tensors_of_the_crop_size():
    from transferstudio.api import Preprocessing
    from transferstudio.core.settings.experiment import AugmentSettings

    tf = D.build_transform(
        Preprocessing(resize=40, crop=32), AugmentSettings(rotation=10, color_jitter=0.2)
    )
    out = tf(Image.new("RGB", (50, 70), (128, 128, 128)))
    assert tuple(out.shape) == (3, 32, 32)
    assert out.dtype.is_floating_point
