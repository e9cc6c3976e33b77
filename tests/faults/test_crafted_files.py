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

from transferstudio.api import TransferStudioError
from transferstudio.core.data import loaders as D
from transferstudio.core.data.images import check_image, load_rgb
from transferstudio.core.files.limits import MAX_IMAGE_ASPECT
from transferstudio.core.settings.experiment import DataSettings

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
    from transferstudio.core.plugins.host import load_plugins

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
    from transferstudio.core.data.images import ImageProblem

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
    from transferstudio.core.inference.predict import Predictor

    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    return Predictor(model, ["ants", "bees"], Preprocessing(resize=36, crop=32), "test model")


@crafted("PNG of 1x20,000 pixels among good images to predict", "skipped, others predicted")
def test_predict_reports_an_elongated_image_and_predicts_the_others(tmp_path):
    from transferstudio.core.inference.predict import predict

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
    from transferstudio.core.inference import predict as P

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

    from transferstudio.core.runs.checkpoint import CheckpointStore

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
    from transferstudio.core.models.weights import read_state_dict

    path = tmp_path / "cut.pth"
    path.write_bytes(b"\x80\x02garbage!!!")
    with pytest.raises(WeightsError) as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value) and "damaged" in str(caught.value)
    _assert_no_unsafe_advice(str(caught.value))


@crafted(".pt whose pickle would call a function", "WeightsError: would need to run code")
def test_a_pickle_that_runs_code_is_refused_without_torchs_advice(tmp_path, capsys):
    from transferstudio.api import WeightsError
    from transferstudio.core.models.weights import read_state_dict

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
        ("interpolation", "bicubik", "preprocessing.interpolation is 'bicubik'"),
    ],
)
def test_checkpoint_preprocessing_is_bounded_before_use(tmp_path, key, value, expected):
    import json

    from transferstudio.api import TransferStudioError
    from transferstudio.core.runs.finished import load_best_checkpoint

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
CORPUS["best.json with preprocessing.resize = 10^9"] = "refused: names file, limit"
CORPUS['best.json with preprocessing.crop = "224" (a string)'] = "refused: names file and key"


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


# --------------------------------------------------------------------------- bundles


def _manifest(**changes) -> dict:
    """A manifest as the bundle exporter writes it: resnet18 with a 3-class linear head."""
    manifest = {
        "format": "transferstudio-bundle",
        "version": 1,
        "module": "",
        "backbone": "resnet18",
        "head_recipe": {
            "sequential": True,
            "layers": [{"type": "Linear", "in": 512, "out": 3, "bias": True}],
        },
        "class_names": ["blue", "green", "red"],
        "predictor_module": "model",
        "support_set": False,
        "preprocessing": _preprocessing(),
        "output_shape": [3],
        "provenance": {"method": "fine-tune", "plugin_versions": {"transferstudio": "1.0"}},
    }
    return {**manifest, **changes}


def bundle_file(path: Path, manifest=None, weights: bytes | None = None, raw_manifest=None):
    """A bundle zip: ``manifest.json`` (``manifest``, or ``raw_manifest`` bytes as they are)
    and ``weights.safetensors`` (``weights`` bytes, by default a tiny real safetensors)."""
    import json
    import zipfile

    import torch
    from safetensors.torch import save

    if raw_manifest is None:
        raw_manifest = json.dumps(_manifest() if manifest is None else manifest).encode()
    if weights is None:
        weights = save({"head.0.weight": torch.zeros(3, 4)})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", raw_manifest)
        archive.writestr("weights.safetensors", weights)
    return path


def patch_entry(path: Path, name: str, **fields: int) -> None:
    """Rewrite header fields of zip entry ``name`` in both its local header and the central
    directory (``flag``, ``method``, ``compress_size``, ``file_size``): a declaration changed
    without writing the data it declares."""
    data = bytearray(path.read_bytes())
    local = {"flag": (6, "<H"), "method": (8, "<H"), "compress_size": (18, "<I"),
             "file_size": (22, "<I")}  # fmt: skip
    central = {"flag": (8, "<H"), "method": (10, "<H"), "compress_size": (20, "<I"),
               "file_size": (24, "<I")}  # fmt: skip
    for signature, offsets, name_at in ((b"PK\x03\x04", local, 30), (b"PK\x01\x02", central, 46)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            if data[start + name_at : start + name_at + len(name)] == name.encode():
                for key, value in fields.items():
                    offset, fmt = offsets[key]
                    struct.pack_into(fmt, data, start + offset, value)
            start += 4
    path.write_bytes(bytes(data))


def _refusal(path: Path) -> str:
    """The WeightsError message of reading bundle ``path`` (which must be refused)."""
    from transferstudio.api import WeightsError
    from transferstudio.core.models.bundle_file import read_bundle

    with pytest.raises(WeightsError) as caught:
        read_bundle(path)
    message = str(caught.value)
    assert str(path) in message
    _assert_no_unsafe_advice(message)
    return message


BUNDLE_ENTRY_FAULTS = {
    "weights entry declaring 2 GiB over 2 KB of data": (
        dict(file_size=2 << 30),
        "the compression ratio is",
    ),
    "manifest entry declaring 100 MiB": (
        dict(file_size=100 << 20),
        "the declared size (bytes) is 104,857,600, above TransferStudio's limit of 16,777,216",
    ),
    "weights entry declaring more data than the file holds": (
        dict(compress_size=1 << 30),
        "more than the file holds",
    ),
    "encrypted weights entry": (dict(flag=0x1), "is encrypted"),
    "weights entry with an unsupported compression method (99)": (
        dict(method=99),
        "zip compression method 99, which TransferStudio does not read",
    ),
    "weights entry holding more bytes than it declares": (
        dict(file_size=100),
        "not a readable TransferStudio model bundle",
    ),
}
for _kind in BUNDLE_ENTRY_FAULTS:
    CORPUS[_kind] = "WeightsError naming the file, entry and limit"


@pytest.mark.parametrize("kind", list(BUNDLE_ENTRY_FAULTS))
def test_bundle_entries_are_bounded_before_they_are_read(tmp_path, kind):
    fields, expected = BUNDLE_ENTRY_FAULTS[kind]
    entry = "manifest.json" if kind.startswith("manifest") else "weights.safetensors"
    path = bundle_file(tmp_path / "crafted.tsmodel", weights=bytes(2048))
    patch_entry(path, entry, **fields)
    assert path.stat().st_size < 4096
    message = _refusal(path)
    assert expected in message and entry in message


BUNDLE_MANIFEST_FAULTS = {
    "manifest that is a JSON list": (dict(raw_manifest=b"[1, 2]"), "is a JSON list, not an object"),
    "manifest nested 200,000 deep": (
        dict(raw_manifest=b"[" * 200_000 + b"]" * 200_000),
        "nested too deeply",
    ),
    "manifest that is not UTF-8 JSON": (dict(raw_manifest=b"\xff\xfe{"), "is not JSON"),
    'manifest with "version": "one"': (
        dict(manifest=_manifest(version="one")),
        "manifest key 'version' must be a whole number, not 'one'",
    ),
    "manifest with preprocessing.crop = 60000 (asks 86 GB)": (
        dict(manifest=_manifest(preprocessing=_preprocessing(crop=60000))),
        "preprocessing.crop is 60,000, above TransferStudio's limit of 1,024",
    ),
    "manifest with a std of 0": (
        dict(manifest=_manifest(preprocessing=_preprocessing(std=[0, 0, 0]))),
        "preprocessing.std holds 0",
    ),
    "manifest whose provenance is a string": (
        dict(manifest=_manifest(provenance="me")),
        "manifest key 'provenance' must be a JSON object, not str",
    ),
    "manifest with 200,000 class names": (
        dict(manifest=_manifest(class_names=["c"] * 200_000)),
        "the number of class_names is 200,000, above",
    ),
    "weights entry that is not safetensors": (
        dict(weights=b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}"),
        "its entry weights.safetensors is not a valid safetensors file",
    ),
}
for _kind in BUNDLE_MANIFEST_FAULTS:
    CORPUS[_kind] = "WeightsError naming the file and key"


@pytest.mark.parametrize("kind", list(BUNDLE_MANIFEST_FAULTS))
def test_bundle_manifests_are_checked_before_use(tmp_path, kind):
    options, expected = BUNDLE_MANIFEST_FAULTS[kind]
    path = bundle_file(tmp_path / "crafted.tsmodel", **options)
    assert expected in _refusal(path)


def _load_refusal(path: Path, host) -> str:
    from transferstudio.api import WeightsError
    from transferstudio.core.models.bundle import load_bundle

    with pytest.raises(WeightsError) as caught:
        load_bundle(path, host)
    assert str(path) in str(caught.value)
    return str(caught.value)


@crafted("head recipe with a Linear of 10^11 outputs", "WeightsError naming key and limit")
def test_a_head_of_absurd_size_is_refused_before_it_is_built(tmp_path, host):
    recipe = {"layers": [{"type": "Linear", "in": 512, "out": 10**11, "bias": True}]}
    path = bundle_file(tmp_path / "huge.tsmodel", _manifest(head_recipe=recipe))
    message = _load_refusal(path, host)
    assert "head_recipe.layers[0].out is 100,000,000,000, above" in message


@crafted("head recipe with a Linear of 1,000,000 x 1,000,000", "WeightsError: parameter count")
def test_a_head_of_absurd_parameter_count_is_refused(tmp_path, host):
    recipe = {"layers": [{"type": "Linear", "in": 1_000_000, "out": 1_000_000, "bias": True}]}
    path = bundle_file(tmp_path / "huge.tsmodel", _manifest(head_recipe=recipe))
    assert "the parameter count of head_recipe.layers[0]" in _load_refusal(path, host)


@crafted("classifier bundle with too few class names", "WeightsError: names vs outputs")
def test_too_few_class_names_are_refused_when_loading(tmp_path, host):
    from safetensors.torch import save

    from transferstudio.core.models.build import ClassifierModel, head_from_recipe

    recipe = _manifest()["head_recipe"]
    spec = host.backbone("resnet18")
    state = ClassifierModel(spec.build(), head_from_recipe(recipe)).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("backbone.fc.")}
    weights = save({k: v.contiguous() for k, v in state.items()})
    path = bundle_file(tmp_path / "few.tsmodel", _manifest(class_names=["only"]), weights)
    assert "lists 1 names, but its head has 3 outputs" in _load_refusal(path, host)


@crafted("bundle whose backbone plugin is not installed", "names the recorded plugin")
def test_a_missing_backbone_plugin_is_named_from_the_provenance(tmp_path, host):
    from transferstudio.core.inference.predict import open_predictor

    recorded = {"name": "transferstudio-efficientnet-lite", "version": "0.3"}
    manifest = _manifest(backbone="lite9", provenance={"backbone_plugin": recorded})
    path = bundle_file(tmp_path / "lite.tsmodel", manifest)
    with pytest.raises(TransferStudioError) as caught:
        open_predictor(str(path), host, tmp_path)
    message = str(caught.value)
    assert "backbone 'lite9'" in message and "transferstudio-efficientnet-lite 0.3" in message
    # A bundle from before the backbone's plugin was recorded: the recorded plugins that are
    # not installed here are the candidates.
    older = _manifest(backbone="lite9", provenance={"plugin_versions": {"lite-plugin": "2.1"}})
    bundle_file(path, older)
    with pytest.raises(TransferStudioError, match="made with plugin lite-plugin 2.1"):
        open_predictor(str(path), host, tmp_path)


@crafted("crafted bundle given as model.weights", "WeightsError, not 'method failed'")
def test_a_crafted_bundle_as_model_weights_is_blamed_on_the_file(tmp_path, make_images, host):
    from tests.helpers import tiny_experiment
    from transferstudio.core.training.engine import PlainState, run_experiment

    path = bundle_file(tmp_path / "list.tsmodel", raw_manifest=b"[]")
    exp = tiny_experiment(make_images({"a": 4, "b": 4}), train__epochs=1)
    exp.model.weights = str(path)
    with pytest.raises(TransferStudioError) as caught:
        run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert "failed while setting up" not in str(caught.value)
    assert str(path) in str(caught.value) and "not an object" in str(caught.value)


@crafted("bundle renamed to .pth given as model.weights", "read as the bundle it is")
def test_a_bundle_under_another_suffix_is_read_as_a_bundle(tmp_path):
    from transferstudio.core.models.weights import read_state_dict

    path = bundle_file(tmp_path / "renamed.pth")
    assert list(read_state_dict(path)) == ["head.0.weight"]


def test_an_export_records_the_plugin_that_provides_the_backbone(host):
    from transferstudio.core.models.bundle import backbone_plugin, bundle_manifest

    plugin = backbone_plugin(host, "resnet18")
    assert plugin is not None and plugin["name"] == "transferstudio"
    meta = {"backbone": "resnet18", "backbone_plugin": plugin, "preprocessing": _preprocessing()}
    assert bundle_manifest(meta, "", [3])["provenance"]["backbone_plugin"] == plugin


def test_resuming_a_run_whose_state_file_was_replaced_by_a_malicious_pickle(tmp_path, capsys):
    """End to end: ``run --resume`` of a run whose ``last-N.state.pt`` would run code fails
    the run in our words; it used to say "(please report it) ... Re-running torch.load with
    weights_only set to False will likely succeed"."""
    from tests.helpers import tiny_experiment, write_class_images
    from transferstudio.cli import main
    from transferstudio.core.plugins.host import load_plugins
    from transferstudio.core.runs.workspace import RunStore
    from transferstudio.core.training.engine import PlainState, run_experiment

    data = write_class_images(tmp_path / "data", {"a": 4, "b": 4}, 32, 0)
    workspace = tmp_path / "ws"
    state = PlainState(
        should_stop=lambda: any(type(e).__name__ == "EpochEnded" for e in state.events)
    )
    exp = tiny_experiment(data, train__epochs=3)
    stopped = run_experiment(exp, load_plugins(autoload=False), state, workspace)
    assert stopped.status == "cancelled"
    (state_file,) = (stopped.folder / "checkpoints").glob("last-*.state.pt")
    malicious_pt(state_file)
    code = main(["--workspace", str(workspace), "run", "--resume", stopped.run_id])
    out = capsys.readouterr()
    assert code == 1
    message = RunStore(workspace).get(stopped.run_id).message
    assert "would need to run code" in message or "not a plain tensor file" in message, message
    _assert_no_unsafe_advice(message + out.out + out.err)
    assert "please report" not in message
    assert "this must never be printed" not in out.out + out.err
