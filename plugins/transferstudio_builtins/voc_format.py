"""Pascal VOC detection data (``voc``): one XML file of ``<object>`` boxes per image, images in
``JPEGImages/``, split lists in ``ImageSets/Main``. See ``detection_sources`` for the layouts."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from transferstudio.api import Box, DataError, DetectionListing, DetectionSample

from .detection_files import (
    EXAMPLE_SIZE,
    SPLITS,
    Skipped,
    all_left_out,
    child_dir,
    finite_number,
    images_in,
    read_split_list,
    shown,
    write_example_images,
)

# Folder names, compared lower-cased.
VOC_ANNOTATION_DIRS = ("annotations",)
VOC_IMAGE_DIRS = ("jpegimages", "images")


def voc_folders(root: Path) -> tuple[Path, Path]:
    """The annotation folder and the image folder of a VOC data set (the root where absent)."""
    annotations = child_dir(root, VOC_ANNOTATION_DIRS) or root
    images = child_dir(root, VOC_IMAGE_DIRS) or root
    return annotations, images


def has_xml(folder: Path) -> bool:
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
        value = finite_number(text)
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
    ann_dir, image_dir = voc_folders(root)
    xml_files = sorted(p for p in ann_dir.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not xml_files:
        raise DataError(
            f"no Pascal VOC annotations in {path}: expected .xml files in Annotations/ or "
            "annotations/ (or beside the images)"
        )
    images = images_in(image_dir, recursive=False)
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
            looked = shown(image_dir / (filename or f"{xml_file.stem}.jpg"), root)
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
            skipped.append((str(image), all_left_out(len(objects), "objects")))
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
        for key in (shown(image, root), image.name, image.stem):
            keys.setdefault(key, image)
    by_image = {Path(s.path): s for s in samples}
    where: dict[Path, str] = {}  # image -> "train.txt line 3", where it was first listed
    splits: dict[str, list[DetectionSample]] = {s: [] for s in lists}
    for split, list_file in lists.items():
        for line_no, entry in read_split_list(list_file, skipped):
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
    names = ", ".join(shown(f, root) for f in lists.values())
    for image, sample in by_image.items():
        if image not in where:
            skipped.append((sample.path, f"in no split list ({names}); left out"))
    return splits


def write_voc_example(folder: str) -> str:
    """A VOC example under ``folder``: ``Annotations/``, ``JPEGImages/`` (PNG files) and
    ``ImageSets/Main/{train,val}.txt``; the negative image has no XML. Returns the folder."""
    root = Path(folder) / "voc"
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    written = write_example_images(lambda split: root / "JPEGImages")
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
