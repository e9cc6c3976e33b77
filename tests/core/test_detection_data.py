"""Detection data on the host's side: the synthetic generator, the scan's box checks and
splits, and the loader's augmentation moving boxes with the pixels."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from transferstudio.api import Box, DataError, DatasetSpec, DetectionListing, DetectionSample
from transferstudio.core.data.detection_demo import (
    DETECTION_CLASSES,
    generate_detection_data,
    make_detection_image,
)
from transferstudio.core.data.detection_loader import (
    DetectionDataset,
    collate_detection,
    detection_transform,
)
from transferstudio.core.data.detection_scan import (
    DetectionScan,
    check_boxes,
    scan_detection,
    scan_from_dict,
)
from transferstudio.core.settings.sections import AugmentSettings, DataSettings


def test_generated_boxes_are_exactly_the_shapes_pixels():
    rng = random.Random(3)
    seen = 0
    for _ in range(20):
        image, objects = make_detection_image(rng, 128, 96)
        pixels = np.asarray(image, dtype=np.int16)
        background = np.median(pixels.reshape(-1, 3), axis=0)
        for kind, (x0, y0, x1, y1) in objects:
            seen += 1
            assert kind in DETECTION_CLASSES
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 96
            inside = np.abs(pixels[y0:y1, x0:x1] - background).sum(axis=2) > 60
            # The shape touches every side of its box, and nothing of it lies outside.
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
    assert seen > 10


def test_generator_is_deterministic(tmp_path):
    a = generate_detection_data(tmp_path / "a", images=4, seed=5)
    b = generate_detection_data(tmp_path / "b", images=4, seed=5)
    for name in ("annotations/0003.xml", "images/0002.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def _image(path, size=(100, 50)):
    Image.new("RGB", size, (40, 90, 160)).save(path)
    return str(path)


def test_box_checks_clip_and_leave_out_naming_each_box():
    sample = DetectionSample(
        "x.png",
        (
            Box("cat", 10, 10, 20, 20),  # fine
            Box("cat", 90, 40, 130, 70),  # reaches outside: clipped
            Box("cat", 30, 30, 20, 40),  # inverted
            Box("cat", 5, 5, 5, 9),  # zero area
            Box("dog", 1, 1, 9, 9),  # unknown class
            Box("cat", 120, 10, 140, 20),  # wholly outside
        ),
        annotation="x.xml",
    )
    checked, messages, clipped = check_boxes(sample, (100, 50), {"cat"})
    assert checked.boxes == (Box("cat", 10, 10, 20, 20), Box("cat", 90, 40, 100, 50))
    assert clipped == 1
    text = "\n".join(messages)
    assert "box 2" in text and "clipped" in text
    assert "box 3" in text and "inverted" in text
    assert "box 4" in text and "zero area" in text
    assert "box 5" in text and "unknown class 'dog'" in text
    assert "box 6" in text and "outside the 100x50 image" in text


def _source(listing: DetectionListing) -> DatasetSpec:
    return DatasetSpec("fake", "", lambda p: True, lambda p: listing, task="detection")


def test_scan_checks_images_splits_seeded_and_reports(tmp_path):
    good = [
        DetectionSample(_image(tmp_path / f"{i}.png"), (Box("cat", 1, 1, 30, 30),))
        for i in range(10)
    ]
    negative = DetectionSample(_image(tmp_path / "empty.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    outside = DetectionSample(
        _image(tmp_path / "edge.png"), (Box("cat", 80, 20, 120, 40),), "edge.xml"
    )
    listing = DetectionListing(
        {"all": [*good, negative, DetectionSample(str(broken)), outside]},
        skipped=[("lost.xml", "annotation without an image")],
    )
    settings = DataSettings(val_split=0.25, split_seed=2)
    scan = scan_detection(_source(listing), settings, tmp_path)
    assert scan.classes == ["cat"]
    assert sum(len(v) for v in scan.splits.values()) == 12  # the broken image is skipped
    assert {"train", "val"} <= set(scan.splits)
    assert any("broken.png" in p for p, _ in scan.skipped)
    assert ("lost.xml", "annotation without an image") in scan.skipped
    assert scan.clipped == 1 and scan.problems[0][0].endswith("edge.xml")
    report = scan.report()
    assert "(no boxes)" in report and "clipped" in report and "box sizes:" in report
    again = scan_detection(_source(listing), settings, tmp_path)
    assert again.fingerprint() == scan.fingerprint()
    assert scan_from_dict(scan.to_dict()).splits == scan.splits


def test_scan_carves_validation_out_of_train_when_only_train_and_test_are_given(tmp_path):
    train = [
        DetectionSample(_image(tmp_path / f"t{i}.png"), (Box("cat", 1, 1, 9, 9),))
        for i in range(10)
    ]
    test = [DetectionSample(_image(tmp_path / "q.png"), (Box("cat", 1, 1, 9, 9),))]
    listing = DetectionListing({"train": train, "test": test}, classes=["cat"])
    scan = scan_detection(_source(listing), DataSettings(val_split=0.2), tmp_path)
    assert len(scan.splits["val"]) == 2 and len(scan.splits["train"]) == 8
    assert scan.splits["test"] == test


def test_scan_refuses_data_without_training_boxes_naming_the_problems(tmp_path):
    only_bad = DetectionSample(_image(tmp_path / "a.png"), (Box("cat", 5, 5, 5, 5),), "a.xml")
    listing = DetectionListing({"all": [only_bad] * 1})
    with pytest.raises(DataError, match="no training images with boxes.*1 box problem"):
        scan_detection(_source(listing), DataSettings(), tmp_path)


def test_flip_moves_the_boxes_with_the_pixels(tmp_path):
    image = Image.new("RGB", (100, 50), (0, 0, 0))
    image.paste((255, 255, 255), (10, 5, 30, 25))
    path = tmp_path / "one.png"
    image.save(path)
    sample = DetectionSample(str(path), (Box("cat", 10, 5, 30, 25),))
    augment = AugmentSettings(hflip=True, random_resized_crop=False, color_jitter=0.0)
    dataset = DetectionDataset([sample], ["cat"], detection_transform(augment))
    flipped = None
    for seed in range(20):
        torch.manual_seed(seed)
        tensor, target = dataset[0]
        x0, y0, x1, y1 = target["boxes"][0].tolist()
        # Wherever the box is, the white square is exactly under it.
        assert tensor[:, int(y0) : int(y1), int(x0) : int(x1)].min() == 1.0
        assert tensor.sum() == pytest.approx(3 * 20 * 20)
        if x0 == 70:
            flipped = (x0, x1)
    assert flipped == (70, 90)
    assert target["labels"].tolist() == [1]


def test_crop_keeps_boxes_valid_and_negatives_pass(tmp_path):
    rng = random.Random(0)
    samples = []
    for i in range(6):
        image, objects = make_detection_image(rng, 128, 96)
        image.save(tmp_path / f"{i}.png")
        boxes = tuple(Box(k, *b) for k, b in objects)
        samples.append(DetectionSample(str(tmp_path / f"{i}.png"), boxes))
    augment = SimpleNamespace(color_jitter=0.4, random_resized_crop=True, hflip=True)
    dataset = DetectionDataset(samples, list(DETECTION_CLASSES), detection_transform(augment))
    for _ in range(5):
        images, targets = collate_detection([dataset[i] for i in range(len(dataset))])
        for image, target in zip(images, targets, strict=True):
            h, w = image.shape[-2:]
            boxes = target["boxes"]
            assert len(boxes) == len(target["labels"])
            if len(boxes):
                assert (boxes[:, 2] - boxes[:, 0] >= 2).all()
                assert (boxes[:, 3] - boxes[:, 1] >= 2).all()
                assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all()
                assert (boxes[:, 3] <= h).all()
            assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_detection_scan_round_trips_through_its_dict(tmp_path):
    scan = DetectionScan(
        ["a", "b"],
        {"train": [DetectionSample("x.png", (Box("a", 1, 2, 3, 4), Box("b", 0, 0, 5, 5)))]},
    )
    back = scan_from_dict(scan.to_dict())
    assert isinstance(back, DetectionScan) and back.splits == scan.splits
    assert back.counts() == {"train": {"a": 1, "b": 1}}
