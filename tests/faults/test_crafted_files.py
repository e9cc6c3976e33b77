"""A corpus of crafted and damaged files, generated here (no committed binaries), each read the
way TransferStudio reads it: a refusal names the file and the limit or the damage, never a raw
traceback, never advice to switch ``weights_only`` off, and never an allocation of gigabytes.

The files are small on disk however large they claim to be: a 1x1,000,000 PNG compresses to
about 2 KB, a zip's entry header can declare 2 GiB over a few kilobytes of data. Nothing here
allocates more than a few megabytes, so the old code's failures are shown with sizes it would
have processed (a 1x20,000 image) or with declarations it would have trusted.

``CORPUS`` lists every kind; the figures in docs/reliability.md count it.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from transferstudio.core import data as D
from transferstudio.core.experiment import DataSettings
from transferstudio.core.images import check_image, load_rgb
from transferstudio.core.limits import MAX_IMAGE_ASPECT

CORPUS: dict[str, str] = {}
"""Kind of crafted file -> what TransferStudio must answer (filled in by :func:`crafted`)."""


def crafted(kind: str, answer: str):
    """Register a crafted-file kind of the corpus with the answer it must get."""
    CORPUS[kind] = answer

    def mark(test):
        return test

    return mark


# --------------------------------------------------------------------------- file builders


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def gray_png(width: int, height: int) -> bytes:
    """A real 8-bit grayscale PNG of any size, built row by row without holding it decoded: a
    1x1,000,000 image is 2 MB of filtered rows that deflate to about 2 KB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * width  # filter byte 0, then mid-gray pixels
    parts = [compressor.compress(row) for _ in range(height)]
    idat = b"".join(parts) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def png_with_bad_crc() -> bytes:
    """A valid 8x8 PNG whose IHDR checksum is zeroed (a bit flipped on disk or in transfer)."""
    data = bytearray(gray_png(8, 8))
    data[29:33] = b"\x00\x00\x00\x00"  # IHDR's CRC: 8 signature + 4 length + 4 type + 13 body
    return bytes(data)


def sideways_photo(path: Path) -> None:
    """An 8x4 PNG, red on the left and blue on the right, tagged EXIF orientation 6 (the camera
    was turned: viewers rotate it 90 degrees clockwise, to 4x8 with red on top)."""
    image = Image.new("RGB", (8, 4), (220, 30, 30))
    image.paste((30, 30, 220), (4, 0, 8, 4))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif)


def _split_folders(root: Path) -> Path:
    """``root/train`` and ``root/val``, two classes of five small images each."""
    for split in ("train", "val"):
        for k, name in enumerate(("ants", "bees")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (24, 24), (200 * k, 90, 40)).save(folder / f"{i}.png")
    return root


def _scan(root: Path) -> D.ScanResult:
    from transferstudio.core.plugins import load_plugins

    settings = DataSettings(path=str(root))
    source = D.choose_source(load_plugins(autoload=False).datasets, settings, root)
    return D.scan(source, settings, root)


# --------------------------------------------------------------------------- images


def test_the_tall_png_is_small_on_disk():
    assert len(gray_png(1, 1_000_000)) < 4_000


@crafted("PNG of 1x1,000,000 pixels (2 KB) in a validation split", "skipped: aspect limit")
def test_an_elongated_image_in_a_validation_split_is_skipped_with_the_limit(tmp_path):
    root = _split_folders(tmp_path / "data")
    tall = root / "val" / "ants" / "tall.png"
    tall.write_bytes(gray_png(1, 1_000_000))
    result = _scan(root)
    reasons = dict(result.skipped)
    assert str(tall) in reasons, "the 40-megapixel guard alone lets it through"
    assert "1x1000000 pixels" in reasons[str(tall)]
    assert f"aspect ratio limit {MAX_IMAGE_ASPECT}:1" in reasons[str(tall)]
    assert all(s.path != str(tall) for s in result.splits["val"])


@crafted("PNG of 1,000,000x1 pixels", "refused: aspect limit")
def test_a_wide_image_is_refused_when_loaded(tmp_path):
    from transferstudio.core.images import ImageProblem

    wide = tmp_path / "wide.png"
    wide.write_bytes(gray_png(1_000_000, 1))
    with pytest.raises(ImageProblem, match="1000000x1 pixels; aspect ratio limit"):
        load_rgb(str(wide))


@crafted("FIFO named like an image", "skipped: not a regular file (a FIFO/pipe)")
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_named_as_a_fifo_not_an_empty_file(tmp_path):
    root = _split_folders(tmp_path / "data")
    fifo = root / "train" / "ants" / "pipe.jpg"
    os.mkfifo(fifo)
    assert check_image(str(fifo)) == "not a regular file (a FIFO/pipe)"
    assert dict(_scan(root).skipped)[str(fifo)] == "not a regular file (a FIFO/pipe)"


@crafted("PNG whose IHDR CRC is broken", "skipped: damaged PNG file (CRC checksum mismatch)")
def test_a_png_with_a_broken_crc_is_called_damaged(tmp_path):
    path = tmp_path / "flipped.png"
    path.write_bytes(png_with_bad_crc())
    reason = check_image(str(path))
    assert reason.startswith("damaged PNG file (CRC checksum mismatch"), reason
    assert "IHDR" in reason


@crafted("photo with EXIF orientation 6 (turned camera)", "loaded upright")
def test_exif_orientation_is_applied_when_loading(tmp_path):
    path = tmp_path / "sideways.png"
    sideways_photo(path)
    image = load_rgb(str(path))
    assert image.size == (4, 8)
    top, bottom = image.getpixel((2, 0)), image.getpixel((2, 7))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # red above blue


def _tiny_predictor():
    from torch import nn

    from transferstudio.api import Preprocessing
    from transferstudio.core.predict import Predictor

    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    return Predictor(model, ["ants", "bees"], Preprocessing(resize=36, crop=32), "test model")


@crafted("PNG of 1x20,000 pixels among good images to predict", "skipped, others predicted")
def test_predict_reports_an_elongated_image_and_predicts_the_others(tmp_path):
    from transferstudio.core.predict import predict

    good = [tmp_path / f"good{i}.png" for i in range(3)]
    for path in good:
        Image.new("RGB", (40, 30), (10, 200, 30)).save(path)
    tall = tmp_path / "tall.png"
    tall.write_bytes(gray_png(1, 20_000))  # the old code resized it to 36x720,000
    paths = [str(good[0]), str(tall), str(good[1]), str(good[2])]
    report = predict(_tiny_predictor(), paths, top_k=1, batch_size=2)
    assert [p.path for p in report.predictions] == [str(good[0]), str(good[1]), str(good[2])]
    assert len(report.skipped) == 1 and report.skipped[0][0] == str(tall)
    assert "aspect ratio limit" in report.skipped[0][1]


def test_predict_goes_on_when_one_image_cannot_be_prepared(tmp_path, monkeypatch):
    # Running out of memory on one image cannot be caused safely in a test, so the transform
    # raises it for the one image whose width is odd.
    from transferstudio.core import predict as P

    real = P.build_transform

    def transform_failing_on_odd_widths(pre, augment):
        inner = real(pre, augment)

        def apply(image):
            if image.width % 2:
                raise MemoryError()
            return inner(image)

        return apply

    monkeypatch.setattr(P, "build_transform", transform_failing_on_odd_widths)
    paths = []
    for i, width in enumerate((40, 41, 40)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (width, 30), (10, 200, 30)).save(paths[-1])
    report = P.predict(_tiny_predictor(), paths, top_k=1, batch_size=8)
    assert [p.path for p in report.predictions] == [paths[0], paths[2]]
    assert report.skipped == [(paths[1], "cannot prepare the image (MemoryError)")]


# --------------------------------------------------------------------------- weights, checkpoints

# Torch's refusal of a file advises "Re-running torch.load with weights_only set to False";
# TransferStudio never passes that on.
FORBIDDEN_ADVICE = ("weights_only", "False", "please report")


def _assert_no_unsafe_advice(message: str) -> None:
    assert not any(a in message for a in FORBIDDEN_ADVICE), message


class _RunsCode:
    """A pickle that would call ``print`` when loaded: what a malicious ``.pt`` file does."""

    def __reduce__(self):
        return (print, ("this must never be printed",))


def malicious_pt(path: Path) -> None:
    import torch

    torch.save({"optimizer": _RunsCode()}, path)


def _checkpoint(folder: Path):
    import torch

    from transferstudio.core.checkpoint import CheckpointStore

    store = CheckpointStore(folder)
    meta = {"epoch": 1, "class_names": ["a", "b"], "preprocessing": _preprocessing()}
    store.save("best", {"model.weight": torch.ones(2, 3)}, meta, {"epoch": 1})
    return store


def _preprocessing(**changes) -> dict:
    pre = {"resize": 36, "crop": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    return {**pre, **changes}


@crafted("12-byte .pth given as model.weights", "WeightsError: damaged, no unsafe advice")
def test_a_corrupt_pth_is_called_damaged_without_torchs_advice(tmp_path):
    from transferstudio.api import WeightsError
    from transferstudio.core.weights import read_state_dict

    path = tmp_path / "cut.pth"
    path.write_bytes(b"\x80\x02garbage!!!")
    with pytest.raises(WeightsError) as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value) and "damaged" in str(caught.value)
    _assert_no_unsafe_advice(str(caught.value))


@crafted(".pt whose pickle would call a function", "WeightsError: would need to run code")
def test_a_pickle_that_runs_code_is_refused_without_torchs_advice(tmp_path, capsys):
    from transferstudio.api import WeightsError
    from transferstudio.core.weights import read_state_dict

    path = tmp_path / "evil.pt"
    malicious_pt(path)
    with pytest.raises(WeightsError) as caught:
        read_state_dict(path)
    assert "would need to run code" in str(caught.value) and "(it calls print)" in str(caught.value)
    _assert_no_unsafe_advice(str(caught.value))
    assert "must never" not in capsys.readouterr().out


@crafted("malicious state.pt of a checkpoint (resume)", "TransferStudioError, no unsafe advice")
def test_a_malicious_checkpoint_state_file_is_refused_in_our_words(tmp_path, capsys):
    from transferstudio.api import TransferStudioError

    store = _checkpoint(tmp_path / "checkpoints")
    malicious_pt(store.paths("best")[2])
    with pytest.raises(TransferStudioError) as caught:
        store.load("best")
    assert "state file" in str(caught.value) and "would need to run code" in str(caught.value)
    _assert_no_unsafe_advice(str(caught.value))
    assert "must never" not in capsys.readouterr().out


@crafted("corrupt best-N.safetensors in a run folder", "TransferStudioError naming the file")
def test_a_corrupt_checkpoint_weights_file_is_named(tmp_path):
    from transferstudio.api import TransferStudioError

    store = _checkpoint(tmp_path / "checkpoints")
    weights = store.paths("best")[1]
    weights.write_bytes(b"\xff" * 8 + b"{not json")
    with pytest.raises(TransferStudioError, match=f"weights file {weights.name} is damaged"):
        store.load("best", with_state=False)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("crop", 60000, "preprocessing.crop is 60,000, above TransferStudio's limit of 1,024"),
        ("resize", 10**9, "preprocessing.resize is 1,000,000,000, above"),
        ("std", [0.2, 0.0, 0.2], "preprocessing.std holds 0"),
        ("crop", "224", "preprocessing.crop must be a positive whole number, not '224'"),
    ],
)
def test_checkpoint_preprocessing_is_bounded_before_use(tmp_path, key, value, expected):
    import json

    from transferstudio.api import TransferStudioError
    from transferstudio.core.run_models import load_best_checkpoint

    store = _checkpoint(tmp_path / "run" / "checkpoints")
    meta_path = store.paths("best")[0]
    meta = json.loads(meta_path.read_text())
    meta["preprocessing"] = _preprocessing(**{key: value})
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TransferStudioError) as caught:
        load_best_checkpoint(tmp_path / "run")
    assert str(meta_path) in str(caught.value) and expected in str(caught.value)


CORPUS["best.json with preprocessing.crop = 60000 (asks 86 GB)"] = "refused: names file, limit"
CORPUS["best.json with preprocessing.std holding 0"] = "refused: names file and key"


@crafted("best.json with 200,000 class names over the limit", "refused: names the limit")
def test_checkpoint_class_count_is_bounded(tmp_path):
    import json

    from transferstudio.api import TransferStudioError

    store = _checkpoint(tmp_path / "checkpoints")
    meta_path = store.paths("best")[0]
    meta = json.loads(meta_path.read_text())
    meta["class_names"] = ["c"] * 200_000
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TransferStudioError, match="number of class_names is 200,000, above"):
        store.meta("best")


@crafted("best.json naming ../../ as its weights file", "refused: damaged checkpoint")
def test_checkpoint_files_must_be_in_its_folder(tmp_path):
    import json

    from transferstudio.api import TransferStudioError

    store = _checkpoint(tmp_path / "checkpoints")
    meta_path = store.paths("best")[0]
    meta = json.loads(meta_path.read_text())
    meta["weights_file"] = "../../elsewhere.safetensors"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TransferStudioError, match="weights_file must name a file in the same"):
        store.load("best")
