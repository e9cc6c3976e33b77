"""Validation while typing: every field the run would refuse is marked as it is edited, with
the reason, and Start stays disabled until it is fixed (docs/gui.md, the Method panel)."""

from __future__ import annotations

from transferstudio.gui.settings_form import INVALID_STYLE


def _line(form, name):
    return form.widgets[name]


def test_an_unknown_device_is_marked_at_once_and_start_waits_for_a_valid_one(window):
    assert window.act_start.isEnabled()
    device = _line(window.train_form, "device")
    device.setText("gibberish")
    assert not window.act_start.isEnabled()
    assert device.styleSheet() == INVALID_STYLE
    assert "'gibberish' is not a device" in device.toolTip()
    assert "train.device" in window.form_error.text()
    device.setText("cuda:7")  # a device torch knows that this machine does not have
    assert not window.act_start.isEnabled()
    assert "no such CUDA device" in window.form_error.text()
    device.setText("cpu")
    assert window.act_start.isEnabled()
    assert device.styleSheet() == "" and window.form_error.text() == ""


def test_freeze_patterns_are_checked_against_the_layer_tree_while_typing(window):
    form = window.method_form
    freeze = _line(form, "freeze")
    freeze.setText("backbone.nothing")
    assert not window.act_start.isEnabled()
    assert freeze.styleSheet() == INVALID_STYLE
    assert "'backbone.nothing' matches no module" in window.form_error.text()

    freeze.setText("backbone.layer1")  # a real module: valid, and the tree shows it frozen
    assert window.act_start.isEnabled() and freeze.styleSheet() == ""
    assert any(n.startswith("backbone.layer1.") for n in window.tree_model.frozen)

    up_to = _line(form, "freeze_up_to")
    up_to.setText("backbone.layr2")
    assert not window.act_start.isEnabled() and up_to.styleSheet() == INVALID_STYLE
    assert "did you mean 'backbone.layer2'?" in window.form_error.text()
    up_to.setText("")

    unfreeze = _line(form, "unfreeze")
    unfreeze.setText("2:backbone.layer9")
    assert not window.act_start.isEnabled() and unfreeze.styleSheet() == INVALID_STYLE
    assert "'backbone.layer9' matches no module" in window.form_error.text()
    unfreeze.setText("2:backbone.layer4")
    assert window.act_start.isEnabled()
