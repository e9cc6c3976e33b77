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

The formats live in ``voc_format``, ``coco_format`` and ``yolo_format`` (shared helpers in
``detection_files``); this module tells them apart and declares their specs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transferstudio.api import TASK_DETECTION, DatasetSpec

from .coco_format import coco_files, list_coco, write_coco_example
from .detection_files import child_dir
from .voc_format import has_xml, list_voc, voc_folders, write_voc_example
from .yolo_format import YAML_SUFFIXES, YOLO_CLASS_FILES, list_yolo, write_yolo_example

__all__ = ["detection_format", "detection_sources", "list_coco", "list_voc", "list_yolo"]


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
    ann_dir = child_dir(p, ("annotations",))
    # instances_*.json before XML files: the file names say COCO plainly.
    if any(next(f.glob("instances_*.json"), None) for f in (ann_dir, p) if f is not None):
        return "coco"
    annotations, _ = voc_folders(p)
    if has_xml(annotations):
        return "voc"
    return "coco" if coco_files(p) else None


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
