"""Text from files and folders made safe to show or to hand to another program.

Class names, file names and labels come from the user's data and may hold anything: terminal
escape codes that rewrite the screen, bidirectional overrides that reorder it, bytes that are
not UTF-8, or spreadsheet formulas (``=cmd|' /C calc'!A0``) that run when a CSV is opened.
Every place that prints such text or writes it to a CSV goes through these helpers.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterable
from typing import Any

_KEPT_CONTROLS = {"\n", "\t"}
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def printable(text: Any) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``), not obeyed.

    Line feeds and tabs are kept (messages span lines); every other C0/C1 control, DEL, the
    bidirectional overrides and lone surrogates (file names that are not UTF-8) become visible
    ``\\xNN``/``\\uNNNN`` escapes, so a crafted class name cannot move the cursor, clear the
    screen or hide text.
    """
    text = str(text)
    if text.isprintable():  # the common case, without building a new string
        return text
    out = []
    for ch in text:
        if ch in _KEPT_CONTROLS or not (
            ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs")
        ):
            out.append(ch)
        else:
            out.append(ascii(ch)[1:-1])
    return "".join(out)


def display_path(path: str | bytes | os.PathLike) -> str:
    """A path as text that can always be printed, logged and stored: bytes that are not UTF-8
    (Linux allows any bytes in a file name) are shown as ``\\xff`` escapes."""
    raw = os.fsencode(path)
    return printable(raw.decode("utf-8", "backslashreplace"))


def is_utf8_text(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (a name from the file system or argv with bytes that
    are not UTF-8 holds lone surrogates, which every file, log and database write refuses)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def csv_cell(value: Any) -> Any:
    """One CSV cell that a spreadsheet shows as text, never runs as a formula.

    Text starting with ``= + - @``, a tab or a carriage return gets a leading apostrophe (the
    OWASP advice for CSV injection); numbers, and text that is a plain number such as ``-0.5``,
    are kept as they are.
    """
    if not isinstance(value, str) or not value.startswith(_FORMULA_STARTS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def csv_row(values: Iterable[Any]) -> list[Any]:
    """A CSV row with every cell passed through :func:`csv_cell`."""
    return [csv_cell(v) for v in values]
