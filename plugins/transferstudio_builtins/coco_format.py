"""COCO detection data (``coco``): an instances JSON file (``images``, ``annotations``,
``categories``, ``bbox`` as ``[x, y, width, height]``), or one per split. See
``detection_sources`` for the layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from transferstudio.api import Box, DataError, DetectionListing, DetectionSample

from .detection_files import (
    EXAMPLE_CLASSES,
    EXAMPLE_SIZE,
    SPLIT_DIR_NAMES,
    Skipped,
    all_left_out,
    child_dir,
    shown,
    split_of,
    write_example_images,
)


def coco_files(root: Path) -> list[tuple[Path, str]]:
    """The COCO JSON files of a folder and their splits (none: not a COCO folder).

    ``annotations/instances_*.json`` (or ``instances_*.json`` at the top) give their split in the
    name; else a single ``*.json`` at the top or in ``annotations/`` holds everything (``"all"``);
    else one JSON file in each of ``train/``, ``valid/``, ``test/`` (the Roboflow export)."""
    ann_dir = child_dir(root, ("annotations",))
    folders = [f for f in (ann_dir, root) if f is not None]
    for folder in folders:
        named = sorted(folder.glob("instances_*.json"))
        if len(named) == 1 and split_of(named[0].stem.removeprefix("instances_")) is None:
            return [(named[0], "all")]  # e.g. CVAT's instances_default.json
        if named:
            return [(f, split_of(f.stem.removeprefix("instances_")) or "") for f in named]
    for folder in folders:
        found = sorted(p for p in folder.glob("*.json") if p.is_file())
        if len(found) == 1:
            return [(found[0], "all")]
    by_split = []
    for split, names in SPLIT_DIR_NAMES.items():
        folder = child_dir(root, names)
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
        self.shown = ", ".join(shown(f, bases[-1]) + "/" for f in self.folders)

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
            skipped.append((str(found), all_left_out(counts[image_id], "annotations")))
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
        files = coco_files(root)
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


def write_coco_example(folder: str) -> str:
    """A COCO example under ``folder``: ``images/`` and ``annotations/instances_{train,val}.json``.
    Returns the folder."""
    root = Path(folder) / "coco"
    written = write_example_images(lambda split: root / "images")
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
