"""The built-in detection data formats (Pascal VOC, COCO, YOLO) on small generated data and on the
raccoon set from ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageChops
from transferstudio_builtins.detection_sources import (
    detection_format,
    detection_sources,
    list_coco,
    list_voc,
    list_yolo,
)

from transferstudio.api import TASK_DETECTION, Box, DetectionListing

RACCOON = Path(__file__).resolve().parents[3] / "shared" / "data" / "raccoon"


def _image(path: Path, size=(64, 48), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (120, 130, 140)).save(path, **save)
    return path


def _boxes(listing: DetectionListing) -> dict[str, tuple[str, list[Box]]]:
    """File name -> (split, boxes) over every split."""
    return {
        Path(s.path).name: (split, list(s.boxes))
        for split, samples in listing.splits.items()
        for s in samples
    }


def _reasons(listing: DetectionListing) -> list[str]:
    return [f"{Path(where).name}: {why}" for where, why in listing.skipped]


def _voc_xml(filename: str, objects: str) -> str:
    return f"<annotation><filename>{filename}</filename>{objects}</annotation>"


def _voc_object(name: str, xmin="1", ymin="2", xmax="30", ymax="40", difficult="0") -> str:
    corners = "".join(
        f"<{k}>{v}</{k}>"
        for k, v in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax))
        if v is not None
    )
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult>"
        f"<bndbox>{corners}</bndbox></object>"
    )


# --- the examples each format writes -------------------------------------------------------


@pytest.mark.parametrize("spec", detection_sources(), ids=lambda s: s.name)
def test_example_round_trip(spec, tmp_path):
    path = spec.write_example(str(tmp_path))
    assert spec.task == TASK_DETECTION
    assert detection_format(path) == spec.name
    others = [s for s in detection_sources() if s.name != spec.name]
    assert not any(s.detect(path) for s in others)
    assert spec.detect(path)
    listing = spec.list_samples(path)
    assert isinstance(listing, DetectionListing)
    assert listing.skipped == []
    assert listing.classes == (None if spec.name == "voc" else ["circle", "square"])
    found = {n: (split, sorted(b, key=repr)) for n, (split, b) in _boxes(listing).items()}
    assert found == {
        "both.png": (
            "train",
            [Box("circle", 6, 8, 26, 28), Box("square", 36, 34, 58, 54)],
        ),
        "square.png": ("train", [Box("square", 20, 12, 44, 40)]),
        "empty.png": ("train", []),
        "pair.png": (
            "val",
            [Box("circle", 34, 30, 60, 58), Box("square", 4, 4, 24, 22)],
        ),
    }


@pytest.mark.parametrize("spec", detection_sources(), ids=lambda s: s.name)
def test_example_boxes_fit_the_drawn_shapes(spec, tmp_path):
    """Every box touches its shape on all four sides, and nothing is drawn outside the boxes."""
    listing = spec.list_samples(spec.write_example(str(tmp_path)))
    for sample in (s for samples in listing.splits.values() for s in samples):
        with Image.open(sample.path) as im:
            image = im.convert("RGB")
        background = Image.new("RGB", image.size, image.getpixel((0, 0)))
        drawn = ImageChops.difference(image, background).convert("L").point(lambda v: v > 0 and 255)
        for box in sample.boxes:
            corners = (int(box.xmin), int(box.ymin), int(box.xmax), int(box.ymax))
            crop = drawn.crop(corners)
            assert crop.getbbox() == (0, 0, *crop.size), (sample.path, box)
            drawn.paste(0, corners)
        assert drawn.getbbox() is None, f"{sample.path}: shapes outside the boxes"


def test_registered_with_the_builtin_data_sources():
    import transferstudio_builtins

    specs = {s.name: s for s in transferstudio_builtins.transferstudio_datasets()}
    assert {"image-folder", "csv", "voc", "coco", "yolo"} <= set(specs)
    assert {specs[n].task for n in ("voc", "coco", "yolo")} == {TASK_DETECTION}
    assert specs["csv"].task != TASK_DETECTION


# --- which format ---------------------------------------------------------------------------


def test_detection_format_tells_the_formats_apart(tmp_path):
    (tmp_path / "voc" / "Annotations").mkdir(parents=True)
    (tmp_path / "voc" / "Annotations" / "a.xml").write_text(_voc_xml("a.jpg", ""))
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "instances_train.json").write_text("{}")
    (tmp_path / "yolo" / "labels").mkdir(parents=True)
    (tmp_path / "yolo" / "classes.txt").write_text("cat\n")
    (tmp_path / "roboflow").mkdir()
    (tmp_path / "roboflow" / "data.yaml").write_text("names: [cat]\ntrain: train/images\n")
    (tmp_path / "plain" / "cats").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("")
    assert detection_format(str(tmp_path / "voc")) == "voc"
    assert detection_format(str(tmp_path / "coco")) == "coco"
    assert detection_format(str(tmp_path / "coco" / "annotations" / "instances_train.json")) == (
        "coco"
    )
    assert detection_format(str(tmp_path / "yolo")) == "yolo"
    assert detection_format(str(tmp_path / "roboflow")) == "yolo"
    assert detection_format(str(tmp_path / "roboflow" / "data.yaml")) == "yolo"
    assert detection_format(str(tmp_path / "plain")) is None
    assert detection_format(str(tmp_path / "notes.txt")) is None
    assert detection_format(str(tmp_path / "missing")) is None


# --- Pascal VOC -----------------------------------------------------------------------------


def test_voc_split_lists_negatives_and_unlisted_images(tmp_path):
    for stem in ("a", "b", "c", "d", "neg", "stray"):
        _image(tmp_path / "JPEGImages" / f"{stem}.jpg")
    ann = tmp_path / "Annotations"
    ann.mkdir()
    (ann / "a.xml").write_text(
        _voc_xml("a.jpg", _voc_object("cat", "1.5", "2", "30.25", "40", difficult="1"))
    )
    (ann / "b.xml").write_text(_voc_xml("b.jpg", _voc_object("dog") + _voc_object("cat")))
    (ann / "c.xml").write_text(_voc_xml("c.jpg", _voc_object("dog")))
    (ann / "d.xml").write_text(_voc_xml("d.jpg", _voc_object("cat")))
    (ann / "stray.xml").write_text(_voc_xml("stray.jpg", _voc_object("cat")))
    main = tmp_path / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("a\nb\nneg\n")
    (main / "val.txt").write_text("c\n\nmissing\n")
    (main / "test.txt").write_text("d\na\n")
    # trainval repeats train and val: read only when they are absent.
    (main / "trainval.txt").write_text("a\nb\nneg\nc\nstray\n")

    listing = list_voc(str(tmp_path))
    found = _boxes(listing)
    assert listing.classes is None
    assert {n: s for n, (s, _) in found.items()} == {
        "a.jpg": "train",
        "b.jpg": "train",
        "neg.jpg": "train",
        "c.jpg": "val",
        "d.jpg": "test",
    }
    # Floats are kept, and so is the difficult object.
    assert found["a.jpg"][1] == [Box("cat", 1.5, 2, 30.25, 40)]
    assert [b.label for b in found["b.jpg"][1]] == ["dog", "cat"]
    assert found["neg.jpg"][1] == []
    negative = next(s for s in listing.splits["train"] if s.path.endswith("neg.jpg"))
    assert negative.annotation == ""
    assert sorted(_reasons(listing)) == sorted(
        [
            "val.txt: line 3: 'missing' names no known image; left out",
            "test.txt: line 2: 'a' is listed already (train.txt line 1)",
            "stray.jpg: in no split list (ImageSets/Main/train.txt, ImageSets/Main/val.txt, "
            "ImageSets/Main/test.txt); left out",
        ]
    )


def test_voc_without_split_lists_lists_all_and_names_bad_objects(tmp_path):
    images, ann = tmp_path / "images", tmp_path / "annotations"
    for stem in ("good", "partial", "broken", "allbad", "neg"):
        _image(images / f"{stem}.png")
    ann.mkdir()
    # <filename> says .jpg but the image is a PNG: the XML's stem finds it.
    (ann / "good.xml").write_text(_voc_xml("good.jpg", _voc_object("cat", "10", "5", "50", "45")))
    (ann / "partial.xml").write_text(
        _voc_xml(
            "partial.png",
            _voc_object("dog")
            + _voc_object("cat", xmax=None)
            + _voc_object("bird", ymin="twelve")
            + "<object><name>fox</name></object>",
        )
    )
    (ann / "broken.xml").write_text("<annotation><filename>broken.png</filename>")
    (ann / "allbad.xml").write_text(_voc_xml("allbad.png", _voc_object("cat", xmin="")))
    (ann / "orphan.xml").write_text(_voc_xml("orphan.jpg", _voc_object("cat")))

    listing = list_voc(str(tmp_path))
    assert list(listing.splits) == ["all"]
    found = _boxes(listing)
    # The broken and all-bad images are neither used nor taken for negative images.
    assert sorted(found) == ["good.png", "neg.png", "partial.png"]
    assert found["good.png"][1] == [Box("cat", 10, 5, 50, 45)]
    assert found["partial.png"][1] == [Box("dog", 1, 2, 30, 40)]
    assert found["neg.png"][1] == []
    reasons = _reasons(listing)
    assert "partial.xml: object 2 ('cat'): <bndbox> has no <xmax>; the object is left out" in (
        reasons
    )
    assert (
        "partial.xml: object 3 ('bird'): <ymin> is 'twelve', not a number; the object is left out"
        in reasons
    )
    assert "partial.xml: object 4 ('fox'): no <bndbox>; the object is left out" in reasons
    assert any(r.startswith("broken.xml: not a readable XML file:") for r in reasons)
    assert any(r.startswith("allbad.png: none of its 1 objects is usable") for r in reasons)
    assert "orphan.xml: annotation without an image: looked for images/orphan.jpg" in reasons
    assert "allbad.xml: object 1 ('cat'): <xmin> is '', not a number; the object is left out" in (
        reasons
    )
    assert len(reasons) == 7


def test_voc_top_level_lists_of_file_names(tmp_path):
    """The raccoon layout: images/, annotations/ and train.txt/test.txt of image file names."""
    for stem in ("r-1", "r-2", "r-3"):
        _image(tmp_path / "images" / f"{stem}.jpg")
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"{stem}.xml").write_text(
            _voc_xml(f"{stem}.jpg", _voc_object("raccoon"))
        )
    (tmp_path / "train.txt").write_text("r-1.jpg\nimages/r-2.jpg\n")
    (tmp_path / "test.txt").write_text("r-3\n")
    listing = list_voc(str(tmp_path))
    assert {n: s for n, (s, _) in _boxes(listing).items()} == {
        "r-1.jpg": "train",
        "r-2.jpg": "train",
        "r-3.jpg": "test",
    }
    assert listing.skipped == []


# --- COCO -----------------------------------------------------------------------------------


def _coco(images, annotations, categories=None) -> dict:
    categories = categories or [{"id": 3, "name": "dog"}, {"id": 1, "name": "cat"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def test_coco_file_converts_xywh_and_skips_crowds_and_unknowns(tmp_path):
    for name in ("a.jpg", "b.jpg", "neg.jpg", "crowd.jpg"):
        _image(tmp_path / name)
    images = [
        {"id": 1, "file_name": "a.jpg"},
        {"id": 2, "file_name": "b.jpg"},
        {"id": 3, "file_name": "neg.jpg"},
        {"id": 4, "file_name": "crowd.jpg"},
        {"id": 5, "file_name": "gone.jpg"},
    ]
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30.5, 40], "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]},
        {"id": 12, "image_id": 2, "category_id": 3, "bbox": [1, 2, 3, 4]},
        {"id": 13, "image_id": 2, "category_id": 7, "bbox": [1, 2, 3, 4]},
        {"id": 14, "image_id": 99, "category_id": 1, "bbox": [1, 2, 3, 4]},
        {"id": 15, "image_id": 4, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 1},
        {"id": 16, "image_id": 2, "category_id": 1, "bbox": [1, 2, "x", 4]},
    ]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_coco(images, annotations)))

    listing = list_coco(str(path))
    assert list(listing.splits) == ["all"]
    assert listing.classes == ["cat", "dog"]  # by category id, not by listing order
    found = _boxes(listing)
    assert found["a.jpg"][1] == [Box("cat", 10, 20, 40.5, 60), Box("dog", 0, 0, 5, 5)]
    assert found["b.jpg"][1] == [Box("dog", 1, 2, 4, 6)]
    assert found["neg.jpg"][1] == []
    assert "crowd.jpg" not in found  # its only object is a crowd: not a negative image
    reasons = _reasons(listing)
    assert "instances.json: annotation 13: category_id 7 is not in 'categories'" in reasons
    assert "instances.json: annotation 14: image_id 99 is not in 'images'" in reasons
    assert "instances.json: annotation 15: crowd annotation, not a box to detect" in reasons
    assert any(r.startswith("instances.json: annotation 16: bbox") for r in reasons)
    assert any(
        r.startswith("instances.json: image listed in instances.json not found: gone.jpg")
        for r in reasons
    )
    assert any(r.startswith("crowd.jpg: none of its 1 annotations is usable") for r in reasons)
    assert len(reasons) == 6


def test_coco_folder_splits_by_file_name_and_finds_the_image_folders(tmp_path):
    """The COCO layout: annotations/instances_train2017.json beside train2017/ and val2017/."""
    _image(tmp_path / "train2017" / "t.jpg")
    _image(tmp_path / "images" / "v.jpg")
    (tmp_path / "annotations").mkdir()
    cats = [{"id": 1, "name": "cat"}]
    (tmp_path / "annotations" / "instances_train2017.json").write_text(
        json.dumps(
            _coco(
                [{"id": 1, "file_name": "t.jpg"}],
                [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}],
                cats,
            )
        )
    )
    (tmp_path / "annotations" / "instances_val2017.json").write_text(
        json.dumps(_coco([{"id": 1, "file_name": "v.jpg"}], [], cats))
    )
    (tmp_path / "annotations" / "instances_extra.json").write_text("{}")
    assert detection_format(str(tmp_path)) == "coco"
    listing = list_coco(str(tmp_path))
    assert {n: s for n, (s, _) in _boxes(listing).items()} == {"t.jpg": "train", "v.jpg": "val"}
    assert _boxes(listing)["t.jpg"][1] == [Box("cat", 1, 1, 3, 3)]
    assert _reasons(listing) == [
        "instances_extra.json: its name names no split (train, val or test); left out"
    ]


def test_coco_unreadable_json_and_roboflow_group_category(tmp_path):
    _image(tmp_path / "a.jpg")
    (tmp_path / "annotations").mkdir()
    categories = [
        {"id": 0, "name": "animals", "supercategory": "none"},
        {"id": 1, "name": "cat", "supercategory": "animals"},
        {"id": 2, "name": "dog", "supercategory": "animals"},
    ]
    good = _coco(
        [{"id": 1, "file_name": "a.jpg"}],
        [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 4, 4]}],
        categories,
    )
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(good))
    (tmp_path / "annotations" / "instances_val.json").write_text('{"images": [')
    listing = list_coco(str(tmp_path))
    # "animals" only groups the others: not a class. "cat" has no box but is declared.
    assert listing.classes == ["cat", "dog"]
    assert [Path(s.path).name for s in listing.splits["train"]] == ["a.jpg"]
    assert listing.splits["val"] == []
    (reason,) = _reasons(listing)
    assert reason.startswith("instances_val.json: not a readable JSON file:")


# --- YOLO -----------------------------------------------------------------------------------


def test_yolo_converts_normalised_boxes_on_a_non_square_image(tmp_path):
    _image(tmp_path / "images" / "wide.png", size=(80, 40))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "wide.txt").write_text("1 0.5 0.5 0.25 0.5\n0 0.125 0.25 0.25 0.5\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    assert detection_format(str(tmp_path)) == "yolo"
    listing = list_yolo(str(tmp_path))
    assert listing.classes == ["cat", "dog"]
    assert list(listing.splits) == ["all"]
    (sample,) = listing.splits["all"]
    assert sample.boxes == (Box("dog", 30, 10, 50, 30), Box("cat", 0, 0, 20, 20))
    assert sample.annotation == str(tmp_path / "labels" / "wide.txt")
    assert listing.skipped == []


def test_yolo_size_follows_the_exif_orientation(tmp_path):
    """A photo stored 80x40 with orientation 6 is shown (and loaded by the host) 40x80."""
    exif = Image.Exif()
    exif[0x0112] = 6
    _image(tmp_path / "images" / "turned.jpg", size=(80, 40), exif=exif)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "turned.txt").write_text("0 0.5 0.5 0.5 0.25\n")
    (tmp_path / "classes.txt").write_text("cat\n")
    (sample,) = list_yolo(str(tmp_path)).splits["all"]
    assert sample.boxes == (Box("cat", 10, 30, 30, 50),)


@pytest.mark.parametrize(
    ("names", "classes"),
    [("names: [cat, dog]", ["cat", "dog"]), ("names:\n  1: dog\n  0: cat\nnc: 2", ["cat", "dog"])],
    ids=["list", "dict"],
)
def test_yolo_data_yaml_with_list_or_dict_names(tmp_path, names, classes):
    for split in ("train", "val"):
        _image(tmp_path / "images" / split / f"{split}.jpg", size=(100, 50))
        (tmp_path / "labels" / split).mkdir(parents=True)
        (tmp_path / "labels" / split / f"{split}.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (tmp_path / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\n{names}\n")
    listing = list_yolo(str(tmp_path / "data.yaml"))
    assert listing.classes == classes
    found = _boxes(listing)
    assert found["train.jpg"] == ("train", [Box("dog", 40, 20, 60, 30)])
    assert found["val.jpg"] == ("val", [Box("dog", 40, 20, 60, 30)])
    assert listing.skipped == []


def test_yolo_names_bad_lines_with_file_and_line(tmp_path):
    _image(tmp_path / "images" / "a.jpg", size=(10, 10))
    _image(tmp_path / "images" / "poly.jpg", size=(10, 10))
    _image(tmp_path / "images" / "neg.jpg", size=(10, 10))
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n"
        "0 0.5 0.5 0.2\n"
        "\n"
        "0 0.5 zero 0.2 0.2\n"
        "2 0.5 0.5 0.2 0.2\n"
        "1.5 0.5 0.5 0.2 0.2\n"
        "1 0.1 0.1 0.2 0.2 0.9\n"
    )
    (labels / "poly.txt").write_text("0 0.1 0.1 0.9 0.1 0.5 0.9\n")
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (labels / "classes.txt").write_text("cat\ndog\n")
    (tmp_path / "data.yaml").write_text("train: images\nnames: [cat, dog]\n")
    listing = list_yolo(str(tmp_path))
    found = _boxes(listing)
    assert found == {
        "a.jpg": ("train", [Box("cat", 4, 4, 6, 6)]),
        "neg.jpg": ("train", []),
    }
    reasons = _reasons(listing)
    assert reasons[:5] == [
        "a.txt: line 2: 4 fields; expected 5: class x_center y_center width height; "
        "the line is left out",
        "a.txt: line 4: 'zero' is not a number; the line is left out",
        "a.txt: line 5: class 2 is not among the 2 names (0 to 1); the line is left out",
        "a.txt: line 6: class '1.5' is not a whole number; the line is left out",
        "a.txt: line 7: 6 fields; expected 5: class x_center y_center width height; "
        "the line is left out",
    ]
    assert reasons[5].startswith("poly.txt: line 1: 7 fields: a segmentation polygon")
    assert reasons[6].startswith("poly.jpg: none of its 1 label lines is usable")
    assert reasons[7] == (
        f"orphan.txt: annotation without an image: looked for {tmp_path}/images/orphan.*"
    )
    assert len(reasons) == 8


def test_yolo_txt_lists_roboflow_paths_and_unreadable_images(tmp_path):
    """A split given as a list of image paths; Roboflow's '../valid/images' for a folder beside
    data.yaml; an image whose size cannot be read is left out with the reason."""
    _image(tmp_path / "train" / "images" / "a.jpg", size=(20, 10))
    (tmp_path / "train" / "images" / "bad.jpg").write_bytes(b"not a jpeg")
    _image(tmp_path / "valid" / "images" / "v.jpg", size=(20, 10))
    for split, stem in (("train", "a"), ("train", "bad"), ("valid", "v")):
        (tmp_path / split / "labels").mkdir(exist_ok=True)
        (tmp_path / split / "labels" / f"{stem}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "train.txt").write_text("./train/images/a.jpg\ntrain/images/bad.jpg\nnope.jpg\n")
    (tmp_path / "data.yaml").write_text(
        "train: train.txt\nval: ../valid/images\ntest: ../test/images\nnames: {0: cat}\n"
    )
    listing = list_yolo(str(tmp_path))
    assert {n: s for n, (s, _) in _boxes(listing).items()} == {"a.jpg": "train", "v.jpg": "val"}
    assert _boxes(listing)["v.jpg"][1] == [Box("cat", 5, 2.5, 15, 7.5)]
    assert "test" not in listing.splits
    reasons = _reasons(listing)
    assert "train.txt: line 3: image 'nope.jpg' not found; left out" in reasons
    assert any(r.startswith("bad.jpg: cannot read the image's size") for r in reasons)
    assert any(r.startswith("data.yaml: test: '../test/images' not found") for r in reasons)
    assert len(reasons) == 3


# --- real data ------------------------------------------------------------------------------


@pytest.mark.slow
def test_raccoon_voc_set():
    if not RACCOON.is_dir():
        pytest.skip(f"the raccoon data set is not at {RACCOON}")
    assert detection_format(str(RACCOON)) == "voc"
    listing = list_voc(str(RACCOON))
    assert listing.skipped == []
    assert {s: len(v) for s, v in listing.splits.items()} == {"train": 160, "test": 40}
    samples = [s for v in listing.splits.values() for s in v]
    assert sum(len(s.boxes) for s in samples) == 217
    assert all(Path(s.path).is_file() and s.boxes for s in samples)
    assert listing.classes is None
    assert sorted({b.label for s in samples for b in s.boxes}) == ["raccoon"]
