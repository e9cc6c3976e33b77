"""Built-in detection data formats: Pascal VOC XML, COCO instances JSON and YOLO label files.

Each format lists images and their boxes as a :class:`~transferstudio.api.DetectionListing`:

* **Pascal VOC** (``voc``): one XML file per image (``Annotations/``, ``annotations/`` or beside
  the images) with ``<object>`` elements holding a ``<name>`` and a ``<bndbox>`` of absolute
  pixel corners. Images sit in ``JPEGImages/``, ``images/`` or beside the XML files. Split lists
  (``ImageSets/Main/{train,val,trainval,test}.txt``, or ``train.txt``/``val.txt``/``test.txt`` at
  the top) name the images of each split; without them everything is listed under ``"all"``.
  VOC declares no class list, so the classes are derived from the boxes.
* **COCO** (``coco``): an instances JSON file (``images``, ``annotations``, ``categories``) whose
  ``bbox`` is ``[x, y, width, height]`` in pixels; a folder with ``annotations/instances_*.json``
  gives one split per file.
* **YOLO** (``yolo``): an Ultralytics ``data.yaml`` (or a folder with ``classes.txt`` /
  ``obj.names``) and one ``.txt`` label file per image, found by replacing the image path's last
  ``/images/`` part with ``/labels/``; each line is ``class x_center y_center width height``
  normalised to the image size, so the image's size is read (from its header) to give pixels.

A format only parses. The boxes are returned as the files have them: the host checks each box
against its image (clipping, inverted or empty boxes, unknown classes) when it scans the data.
What a format cannot use itself (an unparsable file or line, an annotation without its image, a
class id outside the class list) goes into ``skipped`` with the file and the reason, and the rest
of the data is still listed. An image whose annotations were all left out is left out too: as a
negative image it would teach that its objects are background.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from transferstudio.api import (
    IMAGE_SUFFIXES,
    TASK_DETECTION,
    Box,
    DataError,
    DatasetSpec,
    DetectionListing,
    DetectionSample,
)

SPLITS = ("train", "val", "test")
Skipped = list[tuple[str, str]]

# Folder names, compared lower-cased.
VOC_ANNOTATION_DIRS = ("annotations",)
VOC_IMAGE_DIRS = ("jpegimages", "images")
SPLIT_DIR_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
YOLO_CLASS_FILES = ("classes.txt", "obj.names")
YAML_SUFFIXES = (".yaml", ".yml")
EXIF_ORIENTATION = 0x0112
# Orientations 5 to 8 turn the image by a quarter: the upright image's width is the stored height.
QUARTER_TURNS = (5, 6, 7, 8)


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _child_dir(folder: Path, names: Iterable[str]) -> Path | None:
    """The first subfolder of ``folder`` whose lower-cased name is in ``names`` (in that order)."""
    try:
        children = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    except OSError:
        return None
    return next((children[n] for n in names if n in children), None)


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    """Image files in ``folder`` (sorted; hidden files and folders left out)."""
    if not recursive:
        return sorted(
            p for p in folder.iterdir() if not p.name.startswith(".") and _is_image(p.name)
        )
    found = []
    # followlinks=False: a symlink loop cannot trap the walk.
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath, f) for f in sorted(filenames) if not f.startswith(".") and _is_image(f)
        ]
    return found


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` where it lies inside it (shorter messages), else in full."""
    try:
        return (
            Path(os.path.relpath(path, root)).as_posix() if path.is_relative_to(root) else str(path)
        )
    except ValueError:  # another drive on Windows
        return str(path)


def _number(text: Any) -> float | None:
    """``text`` as a finite float, or None."""
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _all_left_out(count: int, kind: str) -> str:
    return (
        f"none of its {count} {kind} is usable (see the messages about them); the image is left "
        "out rather than used as a negative image"
    )


def _read_split_list(list_file: Path, skipped: Skipped) -> list[tuple[int, str]]:
    """The non-empty lines of a split list as ``(line number, text)``."""
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        skipped.append((str(list_file), f"cannot read this split list: {exc}"))
        return []
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


# ---------------------------------------------------------------------------------------------
# Pascal VOC


def _voc_folders(root: Path) -> tuple[Path, Path]:
    """The annotation folder and the image folder of a VOC data set (the root where absent)."""
    annotations = _child_dir(root, VOC_ANNOTATION_DIRS) or root
    images = _child_dir(root, VOC_IMAGE_DIRS) or root
    return annotations, images


def _has_xml(folder: Path) -> bool:
    try:
        return any(p.suffix.lower() == ".xml" for p in folder.iterdir())
    except OSError:
        return False


def _voc_object(obj: ET.Element, number: int) -> tuple[Box | None, str]:
    """One ``<object>`` as a Box, or None and why it is left out."""
    name = (obj.findtext("name") or "").strip()
    where = f"object {number} ({name!r})" if name else f"object {number}"
    if not name:
        return None, f"{where}: no <name>; the object is left out"
    bndbox = obj.find("bndbox")
    if bndbox is None:
        return None, f"{where}: no <bndbox>; the object is left out"
    corners = []
    for key in ("xmin", "ymin", "xmax", "ymax"):
        text = bndbox.findtext(key)
        if text is None:
            return None, f"{where}: <bndbox> has no <{key}>; the object is left out"
        value = _number(text)
        if value is None:
            return (
                None,
                f"{where}: <{key}> is {text.strip()!r}, not a number; the object is left out",
            )
        corners.append(value)
    return Box(name, *corners), ""


def _voc_image(
    xml_file: Path, filename: str, image_dir: Path, by_name: dict[str, Path], by_stem: dict
) -> Path | None:
    """The image an XML file annotates: its ``<filename>`` in the image folder, else an image
    named like the XML file (``<filename>`` is often stale after files were renamed)."""
    if filename:
        direct = image_dir / filename
        if direct.is_file():
            return direct
        if Path(filename).name in by_name:
            return by_name[Path(filename).name]
    return by_stem.get(xml_file.stem)


def _voc_split_lists(root: Path) -> dict[str, Path]:
    """Split name -> list file: ``ImageSets/Main/*.txt`` first, else top-level ``*.txt``."""
    main = root / "ImageSets" / "Main"
    lists = {s: main / f"{s}.txt" for s in ("train", "val", "trainval", "test")}
    lists = {s: f for s, f in lists.items() if f.is_file()}
    if not lists:
        lists = {s: root / f"{s}.txt" for s in SPLITS if (root / f"{s}.txt").is_file()}
    if "trainval" in lists:
        # trainval is the union of train and val: used only where those two are absent.
        trainval = lists.pop("trainval")
        if "train" not in lists and "val" not in lists:
            lists["train"] = trainval
    return {s: lists[s] for s in SPLITS if s in lists}


def list_voc(path: str) -> DetectionListing:
    """List a Pascal VOC folder: XML annotations (``Annotations/``, ``annotations/`` or beside
    the images) and images (``JPEGImages/``, ``images/`` or beside the XML files).

    Each XML names its image with ``<filename>`` (else the image with the XML's stem is used).
    Images without an XML file are negative images (no boxes). ``difficult`` objects are kept:
    they are real objects, and leaving them out would make the detector learn them as
    background. Splits come from ``ImageSets/Main/{train,val,trainval,test}.txt`` or top-level
    ``train.txt``/``val.txt``/``test.txt`` (one image file name, path or id per line); without
    them every image is listed under ``"all"``. VOC has no class list: ``classes`` is None.
    """
    root = Path(path)
    ann_dir, image_dir = _voc_folders(root)
    xml_files = sorted(p for p in ann_dir.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not xml_files:
        raise DataError(
            f"no Pascal VOC annotations in {path}: expected .xml files in Annotations/ or "
            "annotations/ (or beside the images)"
        )
    images = _images_in(image_dir, recursive=False)
    by_name = {p.name: p for p in images}
    by_stem: dict[str, Path] = {}
    for p in images:
        by_stem.setdefault(p.stem, p)
    skipped: Skipped = []
    samples: dict[Path, DetectionSample] = {}
    claimed: dict[Path, Path] = {}  # image -> the XML file that annotates it
    for xml_file in xml_files:
        try:
            tree = ET.parse(xml_file)
        except (ET.ParseError, OSError) as exc:
            skipped.append((str(xml_file), f"not a readable XML file: {exc}"))
            # Its image must not become a negative image: its objects are unknown.
            if xml_file.stem in by_stem:
                claimed.setdefault(by_stem[xml_file.stem], xml_file)
            continue
        filename = (tree.getroot().findtext("filename") or "").strip()
        image = _voc_image(xml_file, filename, image_dir, by_name, by_stem)
        if image is None:
            looked = _shown(image_dir / (filename or f"{xml_file.stem}.jpg"), root)
            skipped.append((str(xml_file), f"annotation without an image: looked for {looked}"))
            continue
        if image in claimed:
            skipped.append(
                (str(xml_file), f"annotates the same image as {claimed[image].name}; left out")
            )
            continue
        claimed[image] = xml_file
        objects = tree.getroot().findall("object")
        boxes = []
        for number, obj in enumerate(objects, start=1):
            box, reason = _voc_object(obj, number)
            if box is None:
                skipped.append((str(xml_file), reason))
            else:
                boxes.append(box)
        if objects and not boxes:
            skipped.append((str(image), _all_left_out(len(objects), "objects")))
            continue
        samples[image] = DetectionSample(str(image), tuple(boxes), str(xml_file))
    for image in images:
        if image not in claimed:
            samples[image] = DetectionSample(str(image))
    ordered = [samples[p] for p in sorted(samples)]
    lists = _voc_split_lists(root)
    if not lists:
        return DetectionListing({"all": ordered}, None, skipped)
    left_out = set(claimed) - set(samples)
    splits = _voc_assign_splits(root, ordered, lists, left_out, skipped)
    return DetectionListing(splits, None, skipped)


def _voc_assign_splits(
    root: Path,
    samples: list[DetectionSample],
    lists: dict[str, Path],
    left_out: set[Path],
    skipped: Skipped,
) -> dict[str, list[DetectionSample]]:
    """Samples by the split lists; an entry may be a path from the root, a file name or an id."""
    keys: dict[str, Path] = {}
    for image in [Path(s.path) for s in samples] + sorted(left_out):
        # A key two images share (a.jpg and a.png share the id "a") names the first of them.
        for key in (_shown(image, root), image.name, image.stem):
            keys.setdefault(key, image)
    by_image = {Path(s.path): s for s in samples}
    where: dict[Path, str] = {}  # image -> "train.txt line 3", where it was first listed
    splits: dict[str, list[DetectionSample]] = {s: [] for s in lists}
    for split, list_file in lists.items():
        for line_no, entry in _read_split_list(list_file, skipped):
            image = keys.get(Path(entry).as_posix().removeprefix("./")) or keys.get(
                Path(entry).name
            )
            if image is None:
                skipped.append(
                    (str(list_file), f"line {line_no}: {entry!r} names no known image; left out")
                )
            elif image in where:
                skipped.append(
                    (
                        str(list_file),
                        f"line {line_no}: {entry!r} is listed already ({where[image]})",
                    )
                )
            else:
                where[image] = f"{list_file.name} line {line_no}"
                if image in by_image:  # a left-out image was reported already
                    splits[split].append(by_image[image])
    names = ", ".join(_shown(f, root) for f in lists.values())
    for image, sample in by_image.items():
        if image not in where:
            skipped.append((sample.path, f"in no split list ({names}); left out"))
    return splits


# ---------------------------------------------------------------------------------------------
# COCO


def _split_of(name: str) -> str | None:
    """The split a file name stands for: train before val before test (``trainval`` trains)."""
    lowered = name.lower()
    return next((s for s in SPLITS if any(n in lowered for n in SPLIT_DIR_NAMES[s])), None)


def _coco_files(root: Path) -> list[tuple[Path, str]]:
    """The COCO JSON files of a folder and their splits (none: not a COCO folder).

    ``annotations/instances_*.json`` (or ``instances_*.json`` at the top) give their split in the
    name; else a single ``*.json`` at the top or in ``annotations/`` holds everything (``"all"``);
    else one JSON file in each of ``train/``, ``valid/``, ``test/`` (the Roboflow export)."""
    ann_dir = _child_dir(root, ("annotations",))
    folders = [f for f in (ann_dir, root) if f is not None]
    for folder in folders:
        named = sorted(folder.glob("instances_*.json"))
        if len(named) == 1 and _split_of(named[0].stem.removeprefix("instances_")) is None:
            return [(named[0], "all")]  # e.g. CVAT's instances_default.json
        if named:
            return [(f, _split_of(f.stem.removeprefix("instances_")) or "") for f in named]
    for folder in folders:
        found = sorted(p for p in folder.glob("*.json") if p.is_file())
        if len(found) == 1:
            return [(found[0], "all")]
    by_split = []
    for split, names in SPLIT_DIR_NAMES.items():
        folder = _child_dir(root, names)
        found = sorted(folder.glob("*.json")) if folder else []
        if len(found) == 1:
            by_split.append((found[0], split))
    return by_split if any(s == "train" for _, s in by_split) else []


class _ImageFinder:
    """Resolves COCO ``file_name`` entries: beside the JSON, in ``images/``, ``images/<split>/``
    and ``<split>/`` (the split as the JSON file names it, e.g. ``train2017``, and as ``train``),
    then the same under the JSON's parent folder (``annotations/`` usually sits beside the image
    folders). The first existing file wins."""

    def __init__(self, json_file: Path, split: str):
        tag = json_file.stem.removeprefix("instances_")
        subfolders = [Path(), Path("images")]
        subfolders += [Path("images", t) for t in dict.fromkeys((tag, split)) if t]
        subfolders += [Path(t) for t in dict.fromkeys((tag, split)) if t]
        bases = list(dict.fromkeys((json_file.parent, json_file.parent.parent)))
        # Folders that do not exist are dropped once, so a large file costs few stat calls.
        self.folders = [b / s for b in bases for s in subfolders if (b / s).is_dir()]
        self.shown = ", ".join(_shown(f, bases[-1]) + "/" for f in self.folders)

    def find(self, file_name: str) -> Path | None:
        if Path(file_name).is_absolute():
            return Path(file_name) if Path(file_name).is_file() else None
        return next((f / file_name for f in self.folders if (f / file_name).is_file()), None)


def _coco_box(ann: dict, label: str) -> Box | None:
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        return None
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in bbox):
        return None
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None
    return Box(label, x, y, x + w, y + h)


def _load_coco(json_file: Path, skipped: Skipped) -> dict | None:
    """The parsed JSON file, or None (and why in ``skipped``)."""
    try:
        data = json.loads(json_file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        skipped.append((str(json_file), f"not a readable JSON file: {exc}"))
        return None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        skipped.append((str(json_file), "not a COCO instances file: it has no 'images' list"))
        return None
    if not isinstance(data.get("annotations"), list):
        skipped.append(
            (
                str(json_file),
                "has no 'annotations' list: an image-info file (such as COCO's test set) has no "
                "boxes to train or score on",
            )
        )
        return None
    if not isinstance(data.get("categories"), list):
        skipped.append((str(json_file), "has no 'categories' list: the classes are unknown"))
        return None
    return data


def _coco_file(
    json_file: Path, split: str, categories: dict[Any, tuple[str, str]], skipped: Skipped
) -> tuple[list[DetectionSample], set[str]]:
    """The samples of one instances file and the class names its boxes use; ``categories``
    collects ``id -> (name, supercategory)`` over the files."""
    data = _load_coco(json_file, skipped)
    if data is None:
        return [], set()
    names: dict[Any, str] = {}
    for cat in data["categories"]:
        if not isinstance(cat, dict) or "id" not in cat or not str(cat.get("name", "")).strip():
            skipped.append((str(json_file), f"category {cat!r} needs an 'id' and a 'name'"))
            continue
        name = str(cat["name"]).strip()
        names[cat["id"]] = name
        categories.setdefault(cat["id"], (name, str(cat.get("supercategory", ""))))
    files: dict[Any, str] = {}
    for image in data["images"]:
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
            skipped.append((str(json_file), f"image entry {image!r} has no 'file_name'"))
        elif image.get("id") in files:
            skipped.append((str(json_file), f"image id {image['id']!r} is listed twice"))
        else:
            files[image.get("id")] = image["file_name"]
    boxes: dict[Any, list[Box]] = {i: [] for i in files}
    counts: dict[Any, int] = dict.fromkeys(files, 0)
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            skipped.append((str(json_file), f"annotation {ann!r} is not an object"))
            continue
        where = f"annotation {ann.get('id', '?')}"
        image_id = ann.get("image_id")
        if image_id not in files:
            skipped.append((str(json_file), f"{where}: image_id {image_id!r} is not in 'images'"))
            continue
        counts[image_id] += 1
        category = ann.get("category_id")
        if category not in names:
            skipped.append(
                (str(json_file), f"{where}: category_id {category!r} is not in 'categories'")
            )
        elif ann.get("iscrowd"):
            skipped.append((str(json_file), f"{where}: crowd annotation, not a box to detect"))
        elif (box := _coco_box(ann, names[category])) is None:
            skipped.append(
                (str(json_file), f"{where}: bbox {ann.get('bbox')!r} is not [x, y, width, height]")
            )
        else:
            boxes[image_id].append(box)
    finder = _ImageFinder(json_file, split)
    samples, used = [], set()
    for image_id, file_name in files.items():
        found = finder.find(file_name)
        if found is None:
            skipped.append(
                (
                    str(json_file),
                    f"image listed in {json_file.name} not found: {file_name} "
                    f"(looked in {finder.shown or 'no existing folder'})",
                )
            )
        elif counts[image_id] and not boxes[image_id]:
            skipped.append((str(found), _all_left_out(counts[image_id], "annotations")))
        else:
            samples.append(DetectionSample(str(found), tuple(boxes[image_id]), str(json_file)))
            used.update(b.label for b in boxes[image_id])
    return samples, used


def list_coco(path: str) -> DetectionListing:
    """List COCO instances data: ``path`` is an instances JSON file (listed under ``"all"``), or
    a folder with ``annotations/instances_{train,val,test}*.json`` (one split each), a single
    ``*.json`` (``"all"``), or one JSON file in each of ``train/``, ``valid/``, ``test/``.

    ``bbox`` ``[x, y, w, h]`` becomes ``Box(x, y, x + w, y + h)``. Classes follow the category
    ids. Crowd annotations and annotations of an unknown image or category go to ``skipped``
    (with the file and the annotation id), as do images whose file is missing. Images without
    annotations are negative images. A category that only groups others (it is their
    ``supercategory`` and no box uses it, as Roboflow exports write) is not a class.
    """
    root = Path(path)
    if root.is_file():
        files = [(root, "all")]
    else:
        files = _coco_files(root)
        if not files:
            raise DataError(
                f"no COCO JSON file in {path}: expected annotations/instances_train.json (and "
                "val, test), a single .json file, or give the JSON file itself"
            )
    skipped: Skipped = []
    categories: dict[Any, tuple[str, str]] = {}
    splits: dict[str, list[DetectionSample]] = {}
    used: set[str] = set()
    for json_file, split in files:
        if not split:
            skipped.append(
                (str(json_file), "its name names no split (train, val or test); left out")
            )
            continue
        samples, labels = _coco_file(json_file, split, categories, skipped)
        splits.setdefault(split, []).extend(samples)
        used |= labels
    groups = {sup for _, sup in categories.values()}
    classes: list[str] = []
    for _, (name, sup) in sorted(categories.items(), key=lambda item: _id_order(item[0])):
        if name in groups and name != sup and name not in used:
            continue
        if name not in classes:
            classes.append(name)
    return DetectionListing(splits or {"all": []}, classes, skipped)


def _id_order(category_id: Any) -> tuple[int, Any]:
    """Sort key: numeric ids by value, then any others as text."""
    if isinstance(category_id, int | float) and not isinstance(category_id, bool):
        return (0, category_id)
    return (1, str(category_id))


# ---------------------------------------------------------------------------------------------
# YOLO


def _swap_folder(path: Path, old: str, new: str) -> Path:
    """``path`` with its last folder named ``old`` renamed ``new`` (unchanged without one)."""
    parts = list(path.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == old:
            parts[i] = new
            break
    return Path(*parts)


def _label_path(image: Path) -> Path:
    """The Ultralytics rule: the last ``/images/`` part becomes ``/labels/``, the suffix
    ``.txt`` (an image path without an ``images`` folder keeps its label beside it)."""
    return _swap_folder(image, "images", "labels").with_suffix(".txt")


def _image_of_label(label: Path) -> Path | None:
    """The image a label file would belong to (the rule backwards), if one exists."""
    folder, stem = _swap_folder(label, "labels", "images").parent, label.stem
    return next(
        (folder / f"{stem}{s}" for s in IMAGE_SUFFIXES if (folder / f"{stem}{s}").is_file()),
        None,
    )


def _upright_size(image: Path) -> tuple[int, int]:
    """The size of the image as shown (EXIF orientation applied, as the host loads it): YOLO
    coordinates are fractions of that. Reads the header only."""
    from PIL import Image

    with Image.open(image) as im:
        width, height = im.size
        try:
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        except Exception:  # noqa: BLE001 - a damaged EXIF block: the host loads it unturned too
            orientation = 1
    return (height, width) if orientation in QUARTER_TURNS else (width, height)


def _yolo_line(fields: list[str], names: dict[int, str]) -> tuple[tuple | None, str]:
    """One label line as ``(class name, xc, yc, w, h)``, or None and why it is left out."""
    if len(fields) > 5 and len(fields) % 2 == 1:
        return None, (
            f"{len(fields)} fields: a segmentation polygon (class x1 y1 x2 y2 ...), not a box "
            "'class x_center y_center width height'; export the data set for detection"
        )
    if len(fields) != 5:
        return None, f"{len(fields)} fields; expected 5: class x_center y_center width height"
    class_value = _number(fields[0])
    if class_value is None or class_value != int(class_value):
        return None, f"class {fields[0]!r} is not a whole number"
    if int(class_value) not in names:
        known = f"0 to {len(names) - 1}" if list(names) == list(range(len(names))) else "listed"
        return None, f"class {int(class_value)} is not among the {len(names)} names ({known})"
    values = [_number(f) for f in fields[1:]]
    if None in values:
        bad = next(f for f, v in zip(fields[1:], values, strict=True) if v is None)
        return None, f"{bad!r} is not a number"
    return (names[int(class_value)], *values), ""


def _yolo_sample(image: Path, names: dict[int, str], skipped: Skipped) -> DetectionSample | None:
    """The image and its boxes in pixels (None: left out, and why in ``skipped``)."""
    label = _label_path(image)
    if not label.is_file():
        return DetectionSample(str(image))  # no label file: a negative image
    try:
        lines = label.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        skipped.append((str(label), f"cannot read this label file: {exc}"))
        return None
    rows, count = [], 0
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        count += 1
        row, reason = _yolo_line(line.split(), names)
        if row is None:
            skipped.append((str(label), f"line {line_no}: {reason}; the line is left out"))
        else:
            rows.append(row)
    if count and not rows:
        skipped.append((str(image), _all_left_out(count, "label lines")))
        return None
    if not rows:
        return DetectionSample(str(image), (), str(label))  # an empty label file: negative
    try:
        width, height = _upright_size(image)
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a damaged file
        skipped.append(
            (str(image), f"cannot read the image's size, which its YOLO boxes need: {exc}")
        )
        return None
    boxes = tuple(
        Box(
            name,
            (xc - w / 2) * width,
            (yc - h / 2) * height,
            (xc + w / 2) * width,
            (yc + h / 2) * height,
        )
        for name, xc, yc, w, h in rows
    )
    return DetectionSample(str(image), boxes, str(label))


def _yolo_names(raw: Any, nc: Any, source: Path) -> dict[int, str]:
    """``names`` (a list, or ``{id: name}``) as ``id -> name``; ``nc`` alone names ``class_0``
    and on, as Ultralytics does."""
    if isinstance(raw, list):
        names = {i: str(n) for i, n in enumerate(raw)}
    elif isinstance(raw, dict):
        try:
            names = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            raise DataError(
                f"{source}: the keys of 'names' must be class ids (0, 1, ...)"
            ) from None
        names = dict(sorted(names.items()))
    elif raw is None and isinstance(nc, int) and nc > 0:
        names = {i: f"class_{i}" for i in range(nc)}
    else:
        raise DataError(f"{source}: 'names' must list the class names (or give 'nc')")
    if nc is not None and nc != len(names):
        raise DataError(f"{source}: nc is {nc} but 'names' has {len(names)} classes")
    return names


def _yolo_yaml(folder: Path) -> Path | None:
    """A folder's data set YAML: ``data.yaml``, else the first ``*.yaml`` with ``names``."""
    import yaml

    for name in ("data.yaml", "data.yml"):
        if (folder / name).is_file():
            return folder / name
    for candidate in sorted(p for p in folder.iterdir() if p.suffix.lower() in YAML_SUFFIXES):
        try:
            data = yaml.safe_load(candidate.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and ("names" in data or "nc" in data):
            return candidate
    return None


def _yaml_split_images(
    key: str, entry: Any, root: Path, yaml_file: Path, lists: set[Path], skipped: Skipped
) -> list[Path]:
    """The images one ``train``/``val``/``test`` entry names: a folder (searched recursively),
    a ``.txt`` list of image paths, or a list of those."""
    if isinstance(entry, list):
        return [
            p for e in entry for p in _yaml_split_images(key, e, root, yaml_file, lists, skipped)
        ]
    text = str(entry)
    candidates = [root / text, yaml_file.parent / text]
    if text.startswith("../"):
        # Roboflow's data.yaml says "../train/images" for a folder beside it: Ultralytics
        # drops the "../" when the path does not exist, and so does this.
        candidates += [root / text[3:], yaml_file.parent / text[3:]]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        looked = ", ".join(dict.fromkeys(str(c) for c in candidates))
        skipped.append((str(yaml_file), f"{key}: {text!r} not found (looked for {looked})"))
        return []
    if found.is_dir():
        return _images_in(found, recursive=True)
    lists.add(found)
    images = []
    for line_no, line in _read_split_list(found, skipped):
        # Relative entries are relative to the list's folder, else to the data set root.
        options = [Path(line)] if Path(line).is_absolute() else [found.parent / line, root / line]
        image = next((o for o in options if o.is_file()), None)
        if image is None:
            skipped.append((str(found), f"line {line_no}: image {line!r} not found; left out"))
        else:
            images.append(image)
    return images


def _yolo_from_yaml(yaml_file: Path, skipped: Skipped) -> tuple[dict, dict, set[Path]]:
    """Split -> images, the class names, and the list files, from an Ultralytics YAML."""
    import yaml

    try:
        data = yaml.safe_load(yaml_file.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        raise DataError(f"{yaml_file} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{yaml_file} is not a YOLO data set file (no train/val/names keys)")
    names = _yolo_names(data.get("names"), data.get("nc"), yaml_file)
    root = yaml_file.parent
    if data.get("path"):
        root = Path(str(data["path"]))
        if not root.is_absolute():
            root = yaml_file.parent / root
    entries = {s: data[s] for s in SPLITS if data.get(s)}
    if not entries:
        raise DataError(f"{yaml_file} names no images: give 'train' (and 'val', 'test')")
    lists: set[Path] = set()
    splits = {
        s: _yaml_split_images(s, e, root, yaml_file, lists, skipped) for s, e in entries.items()
    }
    # A split whose folder is missing (reported above) or empty is no split at all.
    return {s: images for s, images in splits.items() if images}, names, lists


def _yolo_from_folder(root: Path) -> tuple[dict, dict]:
    """Split -> images and the class names of a folder with ``classes.txt`` or ``obj.names``
    and ``images/`` (optionally ``images/train``, ``images/val``...)."""
    class_file = next((root / n for n in YOLO_CLASS_FILES if (root / n).is_file()), None)
    if class_file is None:
        raise DataError(
            f"no YOLO data set in {root}: expected data.yaml, or classes.txt (or obj.names) "
            "with images/ and labels/ folders"
        )
    lines = class_file.read_text(encoding="utf-8-sig").splitlines()
    names = dict(enumerate(n.strip() for n in lines if n.strip()))
    images_root = _child_dir(root, ("images",)) or root
    split_dirs = {s: _child_dir(images_root, n) for s, n in SPLIT_DIR_NAMES.items()}
    split_dirs = {s: d for s, d in split_dirs.items() if d is not None}
    if "train" in split_dirs:
        return {s: _images_in(d, recursive=True) for s, d in split_dirs.items()}, names
    return {"all": _images_in(images_root, recursive=True)}, names


def list_yolo(path: str) -> DetectionListing:
    """List a YOLO data set: an Ultralytics ``data.yaml`` (its ``train``/``val``/``test``
    folders or ``.txt`` image lists, relative to its ``path`` or its folder; ``names`` a list or
    ``{id: name}``), a folder holding one, or a folder with ``classes.txt``/``obj.names`` and
    ``images/`` + ``labels/`` (``images/train``... give the splits, else ``"all"``).

    Each image's label file is found by the Ultralytics rule (``/images/`` -> ``/labels/``,
    suffix ``.txt``); its normalised ``class xc yc w h`` lines are turned into pixels with the
    image's size (read from its header, EXIF orientation applied). An image without a label
    file is a negative image. Malformed lines, class ids outside the names, segmentation
    polygons, label files without an image and images whose size cannot be read go to
    ``skipped``.
    """
    source = Path(path)
    skipped: Skipped = []
    lists: set[Path] = set()
    if source.is_file():
        by_split, names, lists = _yolo_from_yaml(source, skipped)
    elif (yaml_file := _yolo_yaml(source)) is not None:
        by_split, names, lists = _yolo_from_yaml(yaml_file, skipped)
    else:
        by_split, names = _yolo_from_folder(source)
    splits: dict[str, list[DetectionSample]] = {}
    expected: set[Path] = set()
    for split, images in by_split.items():
        splits[split] = []
        for image in images:
            expected.add(_label_path(image))
            sample = _yolo_sample(image, names, skipped)
            if sample is not None:
                splits[split].append(sample)
    _orphan_labels(expected, lists, skipped)
    return DetectionListing(splits, list(names.values()), skipped)


def _orphan_labels(expected: set[Path], lists: set[Path], skipped: Skipped) -> None:
    """Report label files in the label folders that belong to no listed image."""
    ignored = {n.lower() for n in YOLO_CLASS_FILES}
    for folder in sorted({p.parent for p in expected}):
        if not folder.is_dir():
            continue
        for label in sorted(folder.glob("*.txt")):
            if label in expected or label in lists or label.name.lower() in ignored:
                continue
            image = _image_of_label(label)
            if image is None:
                looked = _swap_folder(label, "labels", "images").with_suffix(".*")
                skipped.append((str(label), f"annotation without an image: looked for {looked}"))
            else:
                skipped.append((str(label), f"its image {image} is in no split; left out"))


# ---------------------------------------------------------------------------------------------
# Which format


def detection_format(path: str) -> str | None:
    """Which detection format ``path`` holds: ``"coco"`` (a ``.json`` file, or a folder with
    COCO JSON files), ``"yolo"`` (a ``.yaml`` file, or a folder with ``data.yaml``, or with a
    ``.yaml``/``classes.txt``/``obj.names`` and a ``labels`` folder), ``"voc"`` (a folder with
    XML annotations), or None."""
    p = Path(path)
    if p.is_file():
        suffix = p.suffix.lower()
        return "coco" if suffix == ".json" else "yolo" if suffix in YAML_SUFFIXES else None
    if not p.is_dir():
        return None
    try:
        names = {c.name.lower(): c for c in p.iterdir()}
    except OSError:
        return None
    labels = "labels" in names and names["labels"].is_dir()
    if "data.yaml" in names or "data.yml" in names:
        return "yolo"
    if labels and (
        any(n in names for n in YOLO_CLASS_FILES) or any(n.endswith(YAML_SUFFIXES) for n in names)
    ):
        return "yolo"
    ann_dir = _child_dir(p, ("annotations",))
    # instances_*.json before XML files: the file names say COCO plainly.
    if any(next(f.glob("instances_*.json"), None) for f in (ann_dir, p) if f is not None):
        return "coco"
    annotations, _ = _voc_folders(p)
    if _has_xml(annotations):
        return "voc"
    return "coco" if _coco_files(p) else None


# ---------------------------------------------------------------------------------------------
# Examples

EXAMPLE_CLASSES = ("circle", "square")
EXAMPLE_SIZE = (64, 64)
# (file stem, split, shapes as (class, xmin, ymin, xmax, ymax) with exclusive max corners):
# both classes in train, one image of both in val, and one negative image.
EXAMPLE_IMAGES = (
    ("both", "train", (("circle", 6, 8, 26, 28), ("square", 36, 34, 58, 54))),
    ("square", "train", (("square", 20, 12, 44, 40),)),
    ("empty", "train", ()),
    ("pair", "val", (("square", 4, 4, 24, 22), ("circle", 34, 30, 60, 58))),
)
EXAMPLE_COLOURS = {"circle": (220, 60, 40), "square": (40, 80, 220)}


def _write_example_images(folder_of: Callable[[str], Path]) -> list[tuple[Path, str, list[Box]]]:
    """Draw the example images as PNGs in ``folder_of(split)``: ``(image, split, boxes)`` each,
    the boxes exactly around the drawn shapes."""
    from PIL import Image, ImageDraw

    written = []
    for stem, split, shapes in EXAMPLE_IMAGES:
        image = Image.new("RGB", EXAMPLE_SIZE, (235, 235, 225))
        draw = ImageDraw.Draw(image)
        boxes = []
        for label, x0, y0, x1, y1 in shapes:
            # PIL's corners are inclusive; a box's max corner is exclusive.
            corners = (x0, y0, x1 - 1, y1 - 1)
            if label == "circle":
                draw.ellipse(corners, fill=EXAMPLE_COLOURS[label])
            else:
                draw.rectangle(corners, fill=EXAMPLE_COLOURS[label])
            boxes.append(Box(label, x0, y0, x1, y1))
        target = folder_of(split)
        target.mkdir(parents=True, exist_ok=True)
        image.save(target / f"{stem}.png")
        written.append((target / f"{stem}.png", split, boxes))
    return written


def write_voc_example(folder: str) -> str:
    """A VOC example under ``folder``: ``Annotations/``, ``JPEGImages/`` (PNG files) and
    ``ImageSets/Main/{train,val}.txt``; the negative image has no XML. Returns the folder."""
    root = Path(folder) / "voc"
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    written = _write_example_images(lambda split: root / "JPEGImages")
    ids: dict[str, list[str]] = {"train": [], "val": []}
    for image, split, boxes in written:
        ids[split].append(image.stem)
        if not boxes:
            continue
        objects = "".join(
            f"<object><name>{b.label}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{b.xmin}</xmin><ymin>{b.ymin}</ymin><xmax>{b.xmax}</xmax><ymax>{b.ymax}</ymax>"
            "</bndbox></object>"
            for b in boxes
        )
        width, height = EXAMPLE_SIZE
        (root / "Annotations" / f"{image.stem}.xml").write_text(
            f"<annotation><folder>JPEGImages</folder><filename>{image.name}</filename>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"{objects}</annotation>\n",
            encoding="utf-8",
        )
    for split, names in ids.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(
            "\n".join(names) + "\n", encoding="utf-8"
        )
    return str(root)


def write_coco_example(folder: str) -> str:
    """A COCO example under ``folder``: ``images/`` and ``annotations/instances_{train,val}.json``.
    Returns the folder."""
    root = Path(folder) / "coco"
    written = _write_example_images(lambda split: root / "images")
    categories = [{"id": i, "name": n} for i, n in enumerate(EXAMPLE_CLASSES, start=1)]
    ids = {n: i for i, n in enumerate(EXAMPLE_CLASSES, start=1)}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        images, annotations = [], []
        for image_id, (image, image_split, boxes) in enumerate(written, start=1):
            if image_split != split:
                continue
            width, height = EXAMPLE_SIZE
            images.append(
                {"id": image_id, "file_name": image.name, "width": width, "height": height}
            )
            annotations += [
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ids[b.label],
                    "bbox": [b.xmin, b.ymin, b.width, b.height],
                    "area": b.area,
                    "iscrowd": 0,
                }
                for b in boxes
            ]
        document = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps(document, indent=1), encoding="utf-8"
        )
    return str(root)


def write_yolo_example(folder: str) -> str:
    """A YOLO example under ``folder``: ``data.yaml``, ``images/{train,val}`` and
    ``labels/{train,val}``; the negative image has no label file. Returns the folder."""
    root = Path(folder) / "yolo"
    written = _write_example_images(lambda split: root / "images" / split)
    ids = {n: i for i, n in enumerate(EXAMPLE_CLASSES)}
    width, height = EXAMPLE_SIZE
    for image, split, boxes in written:
        if not boxes:
            continue
        lines = [
            f"{ids[b.label]} {(b.xmin + b.xmax) / 2 / width} {(b.ymin + b.ymax) / 2 / height} "
            f"{b.width / width} {b.height / height}"
            for b in boxes
        ]
        label = root / "labels" / split / f"{image.stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + "\n", encoding="utf-8")
    names = "".join(f"  {i}: {n}\n" for n, i in ids.items())
    (root / "data.yaml").write_text(
        f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names}", encoding="utf-8"
    )
    return str(root)


def _detects(name: str) -> Callable[[str], bool]:
    return lambda path: detection_format(path) == name


def detection_sources() -> list[DatasetSpec]:
    """The Pascal VOC, COCO and YOLO detection data formats."""
    return [
        DatasetSpec(
            name="voc",
            description="Pascal VOC: an XML file of boxes per image (Annotations/, JPEGImages/)",
            detect=_detects("voc"),
            list_samples=list_voc,
            write_example=write_voc_example,
            task=TASK_DETECTION,
        ),
        DatasetSpec(
            name="coco",
            description="COCO: an instances JSON file, or annotations/instances_<split>.json",
            detect=_detects("coco"),
            list_samples=list_coco,
            write_example=write_coco_example,
            task=TASK_DETECTION,
        ),
        DatasetSpec(
            name="yolo",
            description="YOLO: data.yaml (or classes.txt) with images/ and labels/ text files",
            detect=_detects("yolo"),
            list_samples=list_yolo,
            write_example=write_yolo_example,
            task=TASK_DETECTION,
        ),
    ]
