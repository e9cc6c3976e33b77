"""A spin box for floats of any magnitude: learning rates, weight decays, temperatures.

QDoubleSpinBox rounds every value to a fixed number of decimals, so with 6 a learning rate of
3e-7 from an experiment file showed, and was saved, as 0. This box keeps the double it is
given, shows it in the shortest text that reads back to the same number (``1e-07``,
``0.0003``), and accepts scientific notation as typed.
"""

from __future__ import annotations

import math
import re

from PySide6.QtGui import QValidator
from PySide6.QtWidgets import QDoubleSpinBox

# Qt's largest precision (DBL_MAX_10_EXP + DBL_DIG): setValue() then rounds nothing away.
_ALL_DECIMALS = 323
# What a number looks like half-typed: "", "-", "1.", "1e", "1e-", ".5E+"
_PARTIAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d*)?([eE][+-]?\d*)?")


def float_text(value: float) -> str:
    """The shortest readable text that parses back to exactly ``value``."""
    text = f"{value:.15g}"
    return text if float(text) == value else repr(value)


class FloatSpinBox(QDoubleSpinBox):
    """A QDoubleSpinBox that neither rounds nor hides small values (see the module doc)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setDecimals(_ALL_DECIMALS)

    def textFromValue(self, value: float) -> str:  # noqa: N802 - Qt's name
        return float_text(value)

    def valueFromText(self, text: str) -> float:  # noqa: N802 - Qt's name
        try:
            return float(text.strip())
        except ValueError:  # validate() lets only numbers through; keep the value as it was
            return self.value()

    def validate(self, text: str, pos: int) -> QValidator.State:
        stripped = text.strip()
        try:
            value = float(stripped)
        except ValueError:
            partial = _PARTIAL.fullmatch(stripped) is not None
            return QValidator.State.Intermediate if partial else QValidator.State.Invalid
        if not math.isfinite(value):  # "inf" and "nan" parse, but no setting takes them
            return QValidator.State.Invalid
        if self.minimum() <= value <= self.maximum():
            return QValidator.State.Acceptable
        return QValidator.State.Intermediate  # out of range: the user may still be typing

    def fixup(self, text: str) -> str:
        return float_text(self.value())  # an unfinished entry goes back to the value
