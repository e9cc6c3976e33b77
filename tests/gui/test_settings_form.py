"""The settings form keeps every float it is given: small learning rates and weight decays read
from an experiment file come back out unchanged, and scientific notation can be typed."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QValidator

from transferstudio.core.settings import experiment as X
from transferstudio.gui.float_box import FloatSpinBox, float_text
from transferstudio.gui.settings_form import SettingsForm


@pytest.fixture
def train_form(qtbot):
    form = SettingsForm(X.TrainSettings, "train.")
    qtbot.addWidget(form)
    form.show()
    return form


def test_small_values_from_a_file_come_back_unchanged(train_form):
    # six fixed decimals turned both of these into 0, and saving wrote the 0 back
    train_form.set_values({"lr": 3e-7, "weight_decay": 1.5e-9})
    assert train_form.values()["lr"] == 3e-7
    assert train_form.values()["weight_decay"] == 1.5e-9
    assert train_form.widgets["lr"].text() == "3e-07"
    assert train_form.build().lr == 3e-7 and train_form.error == ""


def test_scientific_notation_can_be_typed(train_form, qtbot):
    box = train_form.widgets["lr"]
    box.setFocus()
    box.lineEdit().selectAll()
    qtbot.keyClicks(box, "2.5e-5")
    qtbot.keyClick(box, Qt.Key.Key_Return)
    assert box.value() == 2.5e-5 and train_form.values()["lr"] == 2.5e-5


def test_leaving_the_box_unedited_keeps_every_digit(train_form):
    box = train_form.widgets["lr"]
    exact = 0.1 + 0.2  # 0.30000000000000004: no short text reads back to it
    box.setValue(exact)
    box.interpretText()  # what focus-out and Return do with the shown text
    assert box.value() == exact
    assert float(float_text(exact)) == exact and float_text(0.001) == "0.001"


@pytest.mark.parametrize(
    "text, state",
    [
        ("1e-4", QValidator.State.Acceptable),
        ("1e-", QValidator.State.Intermediate),  # half-typed
        (".", QValidator.State.Intermediate),
        ("", QValidator.State.Intermediate),
        ("20", QValidator.State.Intermediate),  # above lr's maximum of 10
        ("abc", QValidator.State.Invalid),
        ("inf", QValidator.State.Invalid),
        ("nan", QValidator.State.Invalid),
    ],
)
def test_what_the_box_lets_through(train_form, text, state):
    assert train_form.widgets["lr"].validate(text, len(text)) == state


def test_an_out_of_range_entry_falls_back_to_the_value(qtbot):
    box = FloatSpinBox()
    qtbot.addWidget(box)
    box.setRange(0.0, 1.0)
    box.setValue(0.25)
    box.lineEdit().setText("7")
    box.interpretText()
    assert box.value() == 0.25
