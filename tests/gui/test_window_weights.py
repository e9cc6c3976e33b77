"""Pretrained weights in the window: folded BatchNorm is found when the weights are picked,
bn mode is set to frozen-stats with the reason in view, and proposed again if switched back."""

from __future__ import annotations

from tests.core.test_bn_check import conv4_weights
from tests.helpers import tiny_experiment


def _bn_mode(window):
    return window.method_form.values()["bn_mode"]


def test_picking_folded_weights_sets_frozen_stats_and_says_why(
    open_window, qtbot, make_images, tmp_path, host
):
    window = open_window(tiny_experiment(make_images({"a": 6, "b": 6}), model__backbone="conv4"))
    assert _bn_mode(window) == "train" and window.bn_warning.isHidden()
    folded = conv4_weights(tmp_path, True, host)
    window.model_panel.set_weights(str(folded))  # what the file dialog's choice does
    window.model_panel.check_weights_batchnorm(adopt=True)
    qtbot.waitUntil(lambda: _bn_mode(window) == "frozen-stats", timeout=30_000)
    assert not window.bn_warning.isHidden()
    assert window.bn_warning.text().startswith("bn mode set to frozen-stats for these weights")
    assert "4 of 4 BatchNorm layers in folded.pth" in window.bn_warning.text()
    assert window.bn_fix.isHidden()

    # the user may switch back; the warning then stands out and offers the fix
    window.method_form.set_values({"bn_mode": "train"})
    window._on_method_params_changed()
    assert window.bn_warning.text().startswith("⚠ 4 of 4")
    assert not window.bn_fix.isHidden()
    window.bn_fix.click()
    assert _bn_mode(window) == "frozen-stats" and window.bn_fix.isHidden()

    # ordinary weights: nothing to say
    window.model_panel.set_weights(str(conv4_weights(tmp_path, False, host)))
    window.model_panel.check_weights_batchnorm(adopt=True)
    qtbot.waitUntil(lambda: window.bn_warning.isHidden(), timeout=30_000)


def test_an_opened_experiment_with_folded_weights_is_offered_the_fix(
    open_window, qtbot, make_images, tmp_path, host
):
    folded = conv4_weights(tmp_path, True, host)
    exp = tiny_experiment(
        make_images({"a": 6, "b": 6}), model__backbone="conv4", model__weights=str(folded)
    )
    window = open_window(exp)
    qtbot.waitUntil(lambda: not window.bn_warning.isHidden(), timeout=30_000)
    assert _bn_mode(window) == "train"  # a saved choice is not changed behind the user's back
    assert (not window.bn_fix.isHidden()) and window.bn_warning.text().startswith("⚠")


def test_file_new_starts_from_pretrained_weights_that_are_on_the_machine(
    open_window, qtbot, make_images, tmp_path, host
):
    import os
    from pathlib import Path

    import torch

    from transferstudio.core.models.weights import torch_cache_dir
    from transferstudio.core.settings import experiment as X

    window = open_window(tiny_experiment(make_images({"a": 6, "b": 6}), model__backbone="conv4"))
    assert Path(os.environ["TORCH_HOME"]).is_relative_to(tmp_path)  # conftest's own cache
    spec = host.backbone(X.ModelSettings().backbone)
    model = spec.build()
    for module in model.modules():  # a torch-cache file saved with BatchNorm folded
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.fill_(1 - module.eps)
    torch_cache_dir().mkdir(parents=True)
    torch.save(model.state_dict(), torch_cache_dir() / spec.cache_files[0])

    window.new_experiment()
    assert window.weights_value == "cache"
    assert window.weights_combo.currentData() == "cache"
    qtbot.waitUntil(lambda: _bn_mode(window) == "frozen-stats", timeout=30_000)
    assert f"BatchNorm layers in {spec.cache_files[0]} hold identity" in window.bn_warning.text()
    qtbot.waitUntil(lambda: window.tree_model is not None, timeout=60_000)
