"""YOLO detection data (``yolo``): an Ultralytics ``data.yaml`` (or ``classes.txt``) and a
``labels/*.txt`` file per image of normalised ``class xc yc w h`` lines. See
``detection_sources`` for the layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferstudio.api import IMAGE_SUFFIXES, Box, DataError, DetectionListing, DetectionSample

from .detection_files import (
    EXAMPLE_CLASSES,
    EXAMPLE_SIZE,
    SPLIT_DIR_NAMES,
    SPLITS,
    Skipped,
    all_left_out,
    child_dir,
    finite_number,
    images_in,
    read_split_list,
    write_example_images,
)

YOLO_CLASS_FILES = ("classes.txt", "obj.names")
YAML_SUFFIXES = (".yaml", ".yml")
EXIF_ORIENTATION = 0x0112
# Orientations 5 to 8 turn the image by a quarter: the upright image's width is the stored height.
QUARTER_TURNS = (5, 6, 7, 8)


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
    class_value = finite_number(fields[0])
    if class_value is None or class_value != int(class_value):
        return None, f"class {fields[0]!r} is not a whole number"
    if int(class_value) not in names:
        known = f"0 to {len(names) - 1}" if list(names) == list(range(len(names))) else "listed"
        return None, f"class {int(class_value)} is not among the {len(names)} names ({known})"
    values = [finite_number(f) for f in fields[1:]]
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
        skipped.append((str(image), all_left_out(count, "label lines")))
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
        return images_in(found, recursive=True)
    lists.add(found)
    images = []
    for line_no, line in read_split_list(found, skipped):
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
    images_root = child_dir(root, ("images",)) or root
    split_dirs = {s: child_dir(images_root, n) for s, n in SPLIT_DIR_NAMES.items()}
    split_dirs = {s: d for s, d in split_dirs.items() if d is not None}
    if "train" in split_dirs:
        return {s: images_in(d, recursive=True) for s, d in split_dirs.items()}, names
    return {"all": images_in(images_root, recursive=True)}, names


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


def write_yolo_example(folder: str) -> str:
    """A YOLO example under ``folder``: ``data.yaml``, ``images/{train,val}`` and
    ``labels/{train,val}``; the negative image has no label file. Returns the folder."""
    root = Path(folder) / "yolo"
    written = write_example_images(lambda split: root / "images" / split)
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
