"""The settings form never changes a value quietly: one its widget cannot show (a number outside
a spin box's range, which Qt would clamp; a value that is not among a combo box's choices) is
marked invalid with its allowed range, and the form cannot be built until the user picks one.
The plugin host already refuses a method whose own defaults do this (see
tests/faults/test_plugin_declarations.py); these values come from elsewhere."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from transferstudio.api import ExperimentError, param
from transferstudio.gui.settings_form import INVALID_STYLE, SettingsForm


@dataclass
class Params:
    """Settings with a range and choices."""

    alpha: float = param(0.5, min=0.0, max=1.0)
    ways: int = param(5, min=2, max=20)
    mode: str = param("slow", choices=["slow", "exact"])


@pytest.fixture
def form(qtbot):
    form = SettingsForm(Params, "method.params.")
    qtbot.addWidget(form)
    return form


@pytest.mark.parametrize(
    "name, value, reason",
    [
        (
            "alpha",
            5.0,
            "method.params.alpha: 5.0 is out of range; expected a number from 0.0 to 1.0",
        ),
        ("ways", 50, "method.params.ways: 50 is out of range; expected an integer from 2 to 20"),
        ("mode", "fast", "method.params.mode: 'fast' is not allowed; expected one of 'slow'"),
    ],
)
def test_a_value_the_widget_cannot_show_is_marked_not_clamped(form, name, value, reason):
    assert form.error == ""
    form.set_values({name: value})  # the spin box clamps 5.0 to 1.0; "fast" has no entry
    assert form.error.startswith(reason)
    assert form.widgets[name].styleSheet() == INVALID_STYLE
    with pytest.raises(ExperimentError, match=name):
        form.build()  # never the clamped value


def test_choosing_a_value_clears_the_mark(form):
    form.set_values({"alpha": 5.0})
    form.widgets["alpha"].setValue(0.25)  # the user's choice
    assert form.error == "" and form.build().alpha == 0.25
