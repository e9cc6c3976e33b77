"""A form generated from a settings dataclass: one description, three uses (see core.params)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLineEdit,
    QSpinBox,
    QWidget,
)

from transferstudio.api import ExperimentError
from transferstudio.core.settings import params as P
from transferstudio.gui.float_box import FloatSpinBox

INVALID_STYLE = "background-color: #ffd7d7;"


class SettingsForm(QWidget):
    """Widgets for every field of ``cls``: spin boxes with ranges, combo boxes for choices, check
    boxes, tooltips from help. ``values()`` returns a mapping; ``error`` names the first invalid
    field (highlighted with its reason), or is empty.

    A value a widget cannot show (a number outside a spin box's range, which Qt would silently
    clamp; a value that is not among a combo box's choices) is never replaced quietly: the field
    is marked invalid with the value and its allowed range until the user picks another. The
    plugin host refuses a method whose own defaults do that, so this guards values from
    elsewhere."""

    changed = Signal()

    def __init__(self, cls: type, prefix: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.cls = cls
        self.prefix = prefix
        self.error = ""
        self.unshown: dict[str, str] = {}
        """Fields whose given value the widget could not show, with why (see the class)."""
        self.context_check: Callable[[Any], None] | None = None
        """Checks the built settings against what the form cannot see (the devices of this
        machine, the modules of the model); raises ExperimentError naming the field. Set by the
        window so that everything the run would refuse is marked while the user types."""
        self.infos = {info.name: info for info in P.fields_of(cls)}
        self.widgets: dict[str, QWidget] = {}
        layout = QFormLayout(self)
        for info in self.infos.values():
            widget = self._make(info)
            widget.setObjectName(f"setting:{prefix}{info.name}")
            widget.setAccessibleName(f"{prefix}{info.name}")
            widget.setToolTip(info.help)
            self.widgets[info.name] = widget
            layout.addRow(info.name.replace("_", " "), widget)
        self.set_values(P.to_dict(cls()))

    def _make(self, info: P.FieldInfo) -> QWidget:
        def edited(*_: Any) -> None:
            self.unshown.pop(info.name, None)  # the user chose a value: nothing is hidden now
            self._on_change()

        if info.choices:
            widget = QComboBox()
            widget.addItems([str(c) for c in info.choices])
            widget.currentIndexChanged.connect(edited)
        elif info.kind is bool:
            widget = QCheckBox()
            widget.toggled.connect(edited)
        elif info.kind is int:
            widget = QSpinBox()
            widget.setRange(
                int(info.min if info.min is not None else -(2**31)),
                int(info.max if info.max is not None else 2**31 - 1),
            )
            widget.valueChanged.connect(edited)
        elif info.kind is float:
            widget = FloatSpinBox()
            widget.setRange(
                info.min if info.min is not None else -1e9,
                info.max if info.max is not None else 1e9,
            )
            widget.setSingleStep(_step(info))
            widget.valueChanged.connect(edited)
        else:  # str, and lists of strings (comma separated)
            widget = QLineEdit()
            if info.kind is list:
                widget.setPlaceholderText("comma-separated")
            widget.textChanged.connect(edited)
        return widget

    def _on_change(self, *_: Any) -> None:
        self.validate()
        self.changed.emit()

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, widget in self.widgets.items():
            info = self.infos[name]
            if isinstance(widget, QComboBox):
                out[name] = info.choices[widget.currentIndex()]
            elif isinstance(widget, QCheckBox):
                out[name] = widget.isChecked()
            elif isinstance(widget, QSpinBox | QDoubleSpinBox):
                out[name] = widget.value()
            elif info.kind is list:
                out[name] = [s.strip() for s in widget.text().split(",") if s.strip()]
            else:
                out[name] = widget.text()
        return out

    def set_values(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            widget = self.widgets.get(name)
            if widget is None:
                continue
            self.unshown.pop(name, None)
            widget.blockSignals(True)
            try:
                if isinstance(widget, QComboBox):
                    choices = list(self.infos[name].choices)
                    if value in choices:
                        widget.setCurrentIndex(choices.index(value))
                    else:
                        self._not_shown(name, value)
                elif isinstance(widget, QCheckBox):
                    widget.setChecked(bool(value))
                elif isinstance(widget, QSpinBox | QDoubleSpinBox):
                    try:
                        widget.setValue(value)
                    except TypeError:  # not a number: the box keeps its previous value
                        self._not_shown(name, value)
                    else:
                        if widget.value() != value:  # Qt clamped it into the box's range
                            self._not_shown(name, value)
                elif isinstance(value, list):
                    widget.setText(", ".join(str(v) for v in value))
                else:
                    widget.setText(str(value))
            finally:
                widget.blockSignals(False)
        self.validate()

    def _not_shown(self, name: str, value: Any) -> None:
        """Remember that ``value`` could not be shown in ``name``'s widget, with the reason."""
        try:
            P.coerce_value(self.infos[name], value, None)  # type: ignore[arg-type]
            why = f"{P.shown(value)} does not fit in this box"
        except ExperimentError as exc:  # the usual case: out of range, not a choice, a wrong type
            why = str(exc)
        self.unshown[name] = f"{why}; choose a value"

    def build(self) -> Any:
        """The dataclass instance of the current values (raises ExperimentError)."""
        if self.unshown:  # checked first: values() holds what Qt made of the value, not it
            name, why = next(iter(self.unshown.items()))
            raise ExperimentError(why, self.prefix + name)
        instance = P.build(self.cls, self.values(), self.prefix)
        check = getattr(instance, "validate", None)
        if callable(check):
            try:
                check()
            except ValueError as exc:
                raise ExperimentError(str(exc), self.prefix.rstrip(".")) from None
        return instance

    def validate(self) -> bool:
        for name, widget in self.widgets.items():
            widget.setStyleSheet("")
            widget.setToolTip(self.infos[name].help)
        try:
            instance = self.build()
            if self.context_check is not None:
                self.context_check(instance)
        except ExperimentError as exc:
            self.error = str(exc)
            name = (exc.key or "").removeprefix(self.prefix)
            widget = self.widgets.get(name) or next(
                (w for n, w in self.widgets.items() if self.infos[n].kind is list), None
            )
            if widget is not None:
                widget.setStyleSheet(INVALID_STYLE)
                widget.setToolTip(f"{self.error}\n\n{widget.toolTip()}")
            return False
        self.error = ""
        return True


def _step(info: P.FieldInfo) -> float:
    default = abs(float(info.default or 0))
    if 0 < default < 0.01:
        return default
    return 0.05 if (info.max or 0) <= 1 else 0.5
