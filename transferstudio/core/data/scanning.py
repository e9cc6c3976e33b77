"""From a data source to validated splits: the data scan.

The scan opens every listed image once (in threads: PIL releases the GIL while decoding), lists
unusable files with their reason, splits class-stratified when the source has no split, and
refuses data that cannot train (an empty class, a single class, a val/test class unseen in
train) with a message naming it.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import unicodedata
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferstudio.api import (
    TASK_CLASSIFICATION,
    DataError,
    DatasetSpec,
    ExperimentError,
    Sample,
)
from transferstudio.core.data.images import check_image
from transferstudio.core.files.safe_text import display_path, is_utf8_text

if TYPE_CHECKING:  # pragma: no cover
    from transferstudio.core.settings.experiment import DataSettings

SPLITS = ("train", "val", "test")


SPLITS_FILE = "splits.json"
"""The file in a run folder holding the run's exact split (:meth:`ScanResult.to_dict`)."""

NOT_UTF8_NAME = (
    "its name is not valid UTF-8 (written on a system with another encoding); rename it, "
    "e.g. with 'convmv -f latin1 -t utf8', to use it"
)


@dataclass
class ScanResult:
    """The checked contents of a data source: usable samples per split, and what was skipped."""

    classes: list[str]
    splits: dict[str, list[Sample]]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class: count}}`` for every split and class (zeros included)."""
        out = {}
        for split, samples in self.splits.items():
            counter = Counter(s.label for s in samples)
            out[split] = {c: counter.get(c, 0) for c in self.classes}
        return out

    def targets(self, split: str) -> list[int]:
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[s.label] for s in self.splits[split]]

    def fingerprint(self) -> str:
        """A hash of every file (path, size, mtime) and label: same files, same fingerprint."""
        digest = hashlib.sha256()
        for split in sorted(self.splits):
            for sample in self.splits[split]:
                line = f"{split}|{sample.path}|{sample.label}|{file_stamp(sample.path)}\n"
                # surrogateescape: the bytes of a file name that is not UTF-8, as on disk.
                digest.update(line.encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:16]

    def to_dict(self) -> dict:
        """The classes and every split's ``[path, label]`` list (a run's ``splits.json``)."""
        return {
            "classes": list(self.classes),
            "fingerprint": self.fingerprint(),
            "splits": {k: [[s.path, s.label] for s in v] for k, v in self.splits.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> ScanResult:
        """Inverse of :meth:`to_dict` (files are not checked again)."""
        splits = {k: [Sample(path, label) for path, label in v] for k, v in data["splits"].items()}
        return cls(list(data["classes"]), splits)

    def report(self) -> str:
        """A human-readable summary: counts per class and split, then skipped files."""
        counts = self.counts()
        splits = [s for s in SPLITS if s in counts]
        width = max([len(c) for c in self.classes] + [5])
        lines = [f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in splits)]
        for c in self.classes:
            lines.append(f"{c:<{width}}  " + "  ".join(f"{counts[s][c]:>6}" for s in splits))
        lines.append(
            f"{'total':<{width}}  " + "  ".join(f"{len(self.splits[s]):>6}" for s in splits)
        )
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines.extend(f"  {path}: {reason}" for path, reason in self.skipped)
        return "\n".join(lines)


def file_stamp(path: str) -> str:
    """``size:mtime_ns`` of a file (``missing`` when it is gone): what data fingerprints use."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def choose_source(
    sources: dict[str, DatasetSpec],
    settings: DataSettings,
    path: Path,
    task: str = TASK_CLASSIFICATION,
) -> DatasetSpec:
    """The data-source plugin named in the settings, or the first that recognises the path;
    only the sources of ``task`` (``DatasetSpec.task``) take part."""
    sources = {n: spec for n, spec in sources.items() if spec.task == task}
    if settings.source != "auto":
        if settings.source not in sources:
            raise ExperimentError(
                f"no {task} data source {settings.source!r}; available: "
                f"{', '.join(sorted(sources))}, auto",
                "data.source",
            )
        return sources[settings.source]
    for spec in sources.values():
        try:
            if spec.detect(str(path)):
                return spec
        except Exception:  # noqa: BLE001,S112 - a faulty detector must not hide the others
            continue
    raise ExperimentError(
        f"no data source recognises {path}; {_WHAT_TO_GIVE.get(task, 'see data.source')}, "
        "or set data.source",
        "data.path",
    )


_WHAT_TO_GIVE = {
    TASK_CLASSIFICATION: "give an image folder or a .csv file",
    "detection": "give a Pascal VOC folder (XML per image), a COCO instances .json file or a "
    "YOLO folder or data.yaml",
}


def scan(
    spec: DatasetSpec, settings: DataSettings, path: Path, workers: int | None = None
) -> ScanResult:
    """List, check and split the data. Raises :class:`DataError` when it cannot train."""
    if not path.exists():
        raise ExperimentError(
            f"{path} does not exist; choose an image folder or CSV file", "data.path"
        )
    listing = list_source(spec, path)
    skipped = [(display_path(p), reason) for p, reason in listing.skipped]

    all_samples = [s for samples in listing.splits.values() for s in samples]
    unique, repeated = check_duplicates(all_samples, path)
    skipped.extend(repeated)
    usable, bad = check_samples(unique, workers)
    skipped.extend(bad)
    kept = {id(s) for s in usable}
    good = {
        split: [s for s in samples if id(s) in kept] for split, samples in listing.splits.items()
    }

    if "all" in good:
        pool_samples = good.pop("all")
        good.update(
            stratified_split(
                pool_samples,
                settings.val_split,
                settings.test_split,
                settings.split_seed,
                existing=good,
            )
        )
    classes = (
        listing.classes
        if listing.classes is not None
        else sorted({s.label for s in good.get("train", [])})
    )
    result = ScanResult(
        classes=list(classes), splits={s: good[s] for s in SPLITS if s in good}, skipped=skipped
    )
    validate(result, path)
    return result


def list_source(spec: DatasetSpec, path: Path) -> Any:
    """``spec.list_samples(path)``, with a file the source cannot read, decode or parse as a
    :class:`DataError` naming it (and the line, for a CSV) instead of a traceback."""
    try:
        return spec.list_samples(str(path))
    except OSError as exc:
        raise DataError(f"cannot read {display_path(path)}: {exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(text_file_problem(path, exc)) from None


def text_file_problem(path: Path, exc: Exception) -> str:
    """What is wrong with a text (CSV) file that failed to decode or parse, naming its line."""
    shown = display_path(path)
    if isinstance(exc, UnicodeDecodeError):
        line = _first_non_utf8_line(path)
        where = f" at line {line}" if line else ""
        return (
            f"{shown} is not UTF-8 text{where}; save it as UTF-8 (Excel: 'CSV UTF-8'; "
            "LibreOffice: character set 'Unicode (UTF-8)')"
        )
    line = _csv_error_line(path)
    where = f" line {line}" if line else ""
    if "field larger than field limit" in str(exc):
        return (
            f"{shown}{where}: a field is longer than {csv.field_size_limit():,} characters; a cell "
            'holds a path or a label, so a quote (") is probably left open there and takes in '
            "the lines after it: close or remove it"
        )
    return f"{shown}{where} is not valid CSV ({exc}); fix that line or save the file again as CSV"


def _first_non_utf8_line(path: Path) -> int | None:
    # A line feed byte never occurs inside a UTF-8 sequence, so lines decode independently.
    try:
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    return number
    except OSError:
        return None
    return None


def _csv_error_line(path: Path) -> int | None:
    """The line where the row that :mod:`csv` refuses starts (a quoted field spans lines)."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
            reader = csv.reader(handle)
            start = 1
            while True:
                try:
                    next(reader)
                except StopIteration:
                    return None
                except csv.Error:
                    return start
                start = reader.line_num + 1
    except OSError:
        return None


def check_duplicates(
    samples: Sequence[Sample], source: Path
) -> tuple[list[Sample], list[tuple[str, str]]]:
    """The samples with each file once, and ``(path, reason)`` for repeats of the same label.

    A file listed under two labels is refused: it would teach both, and could sit in the train
    and the validation split at once."""
    first: dict[str, Sample] = {}
    unique, repeated = [], []
    for sample in samples:
        key = os.path.normpath(sample.path)
        if key not in first:
            first[key] = sample
            unique.append(sample)
        elif first[key].label == sample.label:
            repeated.append((display_path(sample.path), "listed twice; used once"))
        else:
            raise DataError(
                f"{display_path(sample.path)} is listed under two labels in {display_path(source)}"
                f": {first[key].label!r} and {sample.label!r}; an image has one class: remove "
                "one of the entries"
            )
    return unique, repeated


def check_samples(
    samples: Sequence[Sample], workers: int | None = None
) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Open every image once (in threads: PIL releases the GIL while decoding); return the
    usable samples in order and ``(path, reason)`` for the others (paths shown printable)."""
    # A file name that is not UTF-8 would fail every later write of its path (splits.json,
    # the log, the data fingerprint) after the run exists: skip it here, named.
    named = [s for s in samples if is_utf8_text(s.path)]
    bad = [(display_path(s.path), NOT_UTF8_NAME) for s in samples if not is_utf8_text(s.path)]
    workers = workers or min(16, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(check_image, (s.path for s in named)))
    good = [s for s, r in zip(named, reasons, strict=True) if not r]
    bad += [(s.path, r) for s, r in zip(named, reasons, strict=True) if r]
    return good, bad


def stratified_split(
    samples: Sequence[Sample], val: float, test: float, seed: int, existing: dict[str, list[Sample]]
) -> dict[str, list[Sample]]:
    """Split per class with a seeded shuffle; splits already given by the source are kept."""
    rng = random.Random(seed)
    by_class: dict[str, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: s.path):
        by_class.setdefault(sample.label, []).append(sample)
    out: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    want_val = val > 0 and "val" not in existing
    want_test = test > 0 and "test" not in existing
    for _label, items in sorted(by_class.items()):
        rng.shuffle(items)
        n = len(items)
        n_val = max(1, round(n * val)) if want_val and n >= 3 else 0
        n_test = max(1, round(n * test)) if want_test and n >= 3 else 0
        out["val"].extend(items[:n_val])
        out["test"].extend(items[n_val : n_val + n_test])
        out["train"].extend(items[n_val + n_test :])
    result = {"train": out["train"] + existing.get("train", [])}
    for split in ("val", "test"):
        if split in existing:
            result[split] = existing[split]
        elif out[split]:
            result[split] = out[split]
    return result


def validate(result: ScanResult, path: Path) -> None:
    """Refuse data that cannot train, naming the class or split at fault."""
    counts = result.counts()
    train = counts.get("train", {})
    if not result.classes or not sum(train.values()):
        raise DataError(
            f"no usable training images in {path}; expected one folder per class "
            "(or train/val folders of those) or a path,label CSV"
            + (f". {len(result.skipped)} file(s) were skipped" if result.skipped else "")
        )
    check_class_names(result.classes, path)
    empty = [c for c in result.classes if train.get(c, 0) == 0]
    if empty:
        raise DataError(
            f"class {empty[0]!r} has no usable training images in {path}"
            + (f" (also empty: {', '.join(empty[1:])})" if len(empty) > 1 else "")
            + "; add images or remove the folder"
        )
    if len(result.classes) < 2:
        raise DataError(
            f"only one class ({result.classes[0]!r}) in {path}; a classifier needs "
            "at least two class folders"
        )
    known = set(result.classes)
    for split in ("val", "test"):
        unseen = sorted({s.label for s in result.splits.get(split, [])} - known)
        if unseen:
            raise DataError(
                f"{split} label {unseen[0]!r} never appears in train ({path}); every "
                f"{split} class needs training images"
            )
    if "val" not in result.splits or not result.splits["val"]:
        raise DataError(
            f"no validation images in {path}: add a val folder, or set "
            "data.val_split above 0 with at least 3 images per class"
        )


def check_class_names(classes: Sequence[str], path: Path) -> None:
    """Refuse two classes whose names differ only in letter case or Unicode form ("Cat" and
    "cat"): Windows and macOS see one folder there, and exported class names would collide."""
    seen: dict[str, str] = {}
    for name in classes:
        if not is_utf8_text(name):
            raise DataError(
                f"class folder '{display_path(name)}' in {display_path(path)}: {NOT_UTF8_NAME}"
            )
        key = unicodedata.normalize("NFC", name).casefold()
        if key in seen:
            first = seen[key]
            how = (
                "letter case"
                if first.casefold() == name.casefold()
                else "how their accents are encoded (Unicode form)"
            )
            raise DataError(
                f"classes {first!r} and {name!r} in {path} differ only in {how}; on Windows "
                "and macOS they would be one folder, and exported class names would collide: "
                "rename one of them (or merge their images)"
            )
        seen[key] = name
