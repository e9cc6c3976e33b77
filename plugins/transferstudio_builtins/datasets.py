"""Built-in data sources: an image folder (class subfolders) and a ``path,label`` CSV file.

A source only lists files; the host opens every image during its scan, converts odd modes and
reports unreadable ones.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from transferstudio.api import IMAGE_SUFFIXES, DataError, DatasetSpec, Sample, SourceListing

SPLIT_FOLDERS = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}


LINK_LOOP = "symbolic link loop (it points back to a folder that contains it); not followed"
LINKED_FOLDER = (
    "symbolic link to a folder; not followed (move or copy its images into the class folder)"
)


def _points_back(link: Path, folder: str | Path) -> bool:
    """Whether folder symlink ``link`` (inside ``folder``) leads to ``folder`` or one above it."""
    target = Path(os.path.realpath(link))
    here = Path(os.path.realpath(folder))
    return target == here or target in here.parents


def _find_split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if name in children:
                found[split] = children[name]
                break
    return found if "train" in found else {}


def _list_class_folders(
    root: Path, skipped: list[tuple[str, str]]
) -> tuple[list[Sample], list[str]]:
    samples: list[Sample] = []
    classes = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() and _points_back(entry, root):
            # A class folder linking to the data folder itself would list every class again.
            skipped.append((str(entry), LINK_LOOP))
            continue
        if not entry.is_dir():
            skipped.append(
                (
                    str(entry),
                    "not inside a class folder; put each image in a folder named after its class",
                )
            )
            continue
        classes.append(entry.name)
        # followlinks=False: a symlink loop inside a class folder cannot trap the scan. The
        # linked folders are reported rather than dropped silently, so that missing images
        # have an explanation.
        for dirpath, dirnames, filenames in os.walk(entry, followlinks=False):
            kept = []
            for name in sorted(d for d in dirnames if not d.startswith(".")):
                folder = Path(dirpath, name)
                if folder.is_symlink():
                    skipped.append(
                        (str(folder), LINK_LOOP if _points_back(folder, dirpath) else LINKED_FOLDER)
                    )
                else:
                    kept.append(name)
            dirnames[:] = kept
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                path = os.path.join(dirpath, filename)
                if os.path.splitext(filename)[1].lower() in IMAGE_SUFFIXES:
                    samples.append(Sample(path, entry.name))
                else:
                    skipped.append((path, "not an image file (unknown suffix)"))
    return samples, classes


def list_image_folder(path: str) -> SourceListing:
    """List ``root/<class>/*`` or ``root/{train,val,test}/<class>/*``."""
    root = Path(path)
    skipped: list[tuple[str, str]] = []
    split_dirs = _find_split_dirs(root)
    if not split_dirs:
        samples, classes = _list_class_folders(root, skipped)
        return SourceListing({"all": samples}, skipped, classes)
    splits = {}
    classes: list[str] = []
    for split, folder in split_dirs.items():
        samples, names = _list_class_folders(folder, skipped)
        splits[split] = samples
        if split == "train":
            classes = names
    return SourceListing(splits, skipped, classes)


def list_csv(path: str) -> SourceListing:
    """List a CSV of ``path,label`` rows (an optional third ``split`` column; an optional header).

    Relative paths are resolved against the CSV file's folder.
    """
    csv_path = Path(path)
    base = csv_path.parent
    skipped: list[tuple[str, str]] = []
    by_split: dict[str, list[Sample]] = {}
    seen: dict[str, tuple[int, str]] = {}  # file -> (line, label) where it was first listed
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
        start = 2
    else:
        start = 1
    for line_no, row in enumerate(rows, start=start):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            skipped.append((f"{csv_path}:{line_no}", "row needs 'path,label'"))
            continue
        split = row[2].strip().lower() if len(row) > 2 and row[2].strip() else "all"
        if split not in ("all", "train", "val", "test"):
            skipped.append(
                (f"{csv_path}:{line_no}", f"unknown split {split!r} (use train, val or test)")
            )
            continue
        file_path = Path(row[0].strip())
        if not file_path.is_absolute():
            file_path = base / file_path
        key, label = os.path.normpath(file_path), row[1].strip()
        if key in seen:
            first_line, first_label = seen[key]
            if first_label != label:
                raise DataError(
                    f"{csv_path}: {row[0].strip()!r} is labelled {first_label!r} at line "
                    f"{first_line} and {label!r} at line {line_no}; an image has one class: "
                    "remove one of the rows"
                )
            skipped.append((f"{csv_path}:{line_no}", f"repeats line {first_line}; used once"))
            continue
        seen[key] = (line_no, label)
        by_split.setdefault(split, []).append(Sample(str(file_path), row[1].strip()))
    if "all" in by_split and len(by_split) > 1:
        # Rows without a split join the training set when other rows name their split.
        by_split.setdefault("train", []).extend(by_split.pop("all"))
    return SourceListing(by_split or {"all": []}, skipped)


def _write_example_images(folder: Path) -> list[tuple[str, str]]:
    """Four 16 px PNGs in each of two class folders: ``(path relative to folder, class)``."""
    from PIL import Image

    written = []
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            shade = tuple(min(255, c + 12 * i) for c in colour)
            Image.new("RGB", (16, 16), shade).save(folder / label / f"{i}.png")
            written.append((f"{label}/{i}.png", label))
    return written


def write_image_folder_example(folder: str) -> str:
    """An example image folder (two classes) under ``folder``: the path to use."""
    root = Path(folder) / "images"
    _write_example_images(root)
    return str(root)


def write_csv_example(folder: str) -> str:
    """An example ``path,label`` CSV over two classes of images beside it: its path."""
    root = Path(folder)
    rows = _write_example_images(root)
    path = root / "labels.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return str(path)


def image_folder_source() -> DatasetSpec:
    return DatasetSpec(
        name="image-folder",
        description="a folder with one subfolder per class, or train/val[/test] folders of those",
        detect=lambda p: Path(p).is_dir(),
        list_samples=list_image_folder,
        write_example=write_image_folder_example,
    )


def csv_source() -> DatasetSpec:
    return DatasetSpec(
        name="csv",
        description="a CSV file of path,label rows (optional split column), paths relative to it",
        detect=lambda p: Path(p).is_file() and Path(p).suffix.lower() == ".csv",
        list_samples=list_csv,
        write_example=write_csv_example,
    )
