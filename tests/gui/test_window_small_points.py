"""The smaller things a newcomer trips over: stale thumbnails, a long data message, a run that
could not start, unsaved changes, the name after Save As, a visible whole-model export."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox


def _scan(window, qtbot, folder):
    window.data_path.setText(str(folder))
    window.data_path.editingFinished.emit()
    qtbot.waitUntil(
        lambda: window.scan_result is not None or bool(window.data_error), timeout=30_000
    )


def test_another_folder_replaces_the_thumbnails_and_one_class_disables_start(
    window, qtbot, make_images
):
    qtbot.waitUntil(lambda: window.thumbnails.count() > 0, timeout=30_000)
    assert {window.thumbnails.item(i).text() for i in range(window.thumbnails.count())} == {
        "red",
        "green",
        "blue",
    }
    one = make_images({"only": 6}, name="one")
    _scan(window, qtbot, one)
    assert window.thumbnails.count() == 0  # the old folder's images are gone at once
    assert "only one class" in window.scan_label.text()
    assert window.scan_label.wordWrap()  # a long reason wraps instead of widening the panel
    assert not window.act_start.isEnabled()
    assert "only one class" in window.form_error.text()

    two = make_images({"cat": 6, "dog": 6}, name="two")
    _scan(window, qtbot, two)
    assert window.act_start.isEnabled() and window.form_error.text() == ""
    qtbot.waitUntil(lambda: window.thumbnails.count() > 0, timeout=30_000)
    labels = {window.thumbnails.item(i).text() for i in range(window.thumbnails.count())}
    assert labels == {"cat", "dog"}


def test_skipped_files_show_their_whole_reason(window, qtbot, make_images):
    folder = make_images({"a": 6, "b": 6}, name="skips")
    (folder / "a" / "readme.txt.jpg").write_text("not an image")
    _scan(window, qtbot, folder)
    skipped = window.counts_tree.topLevelItem(window.counts_tree.topLevelItemCount() - 1)
    assert skipped.text(0).startswith("skipped files (1)")
    line = skipped.child(0)
    name, reason = line.text(0).split(": ", 1)
    assert name == "readme.txt.jpg" and reason
    assert reason in line.toolTip(0) and str(folder) in line.toolTip(0)
    # the line spans every column (class and split counts), not the narrow class column
    assert window.counts_tree.isFirstColumnSpanned(0, window.counts_tree.indexFromItem(skipped))
    assert line.isFirstColumnSpanned()


def test_a_run_refused_before_it_starts_says_it_could_not_start(window, qtbot, tmp_path):
    missing = tmp_path / "moved-away.pth"  # chosen, then gone before Start: seen only at setup
    window.model_panel.set_weights(str(missing))
    window.start_run()
    qtbot.waitUntil(lambda: not window.controller.running, timeout=30_000)
    qtbot.waitUntil(lambda: window.last_error is not None, timeout=10_000)
    assert window.error_box.windowTitle() == "The run could not start"
    assert "moved-away.pth" in window.last_error[0]
    assert "failed" not in window.epoch_bar.format()
    assert window.eta_label.text() == "not started: see the message"
    window.error_box.close()


def test_new_asks_before_discarding_changes_and_save_as_renames(
    window, qtbot, monkeypatch, tmp_path
):
    asked = []

    def answer(choice):
        def question(_parent, title, text, *_a, **_k):
            asked.append((title, text))
            return choice

        return question

    assert not window.has_unsaved_changes() and not window.isWindowModified()
    window.train_form.widgets["epochs"].setValue(7)
    assert window.has_unsaved_changes() and window.isWindowModified()

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Cancel))
    window.act_new.trigger()
    assert asked and asked[-1][0] == "Unsaved changes"
    assert window.train_form.widgets["epochs"].value() == 7  # cancelled: nothing discarded

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Discard))
    window.act_new.trigger()
    assert window.train_form.widgets["epochs"].value() != 7
    assert not window.has_unsaved_changes()
    assert window.experiment_name == "fine-tune"

    asked.clear()
    window.train_form.widgets["epochs"].setValue(3)
    path = tmp_path / "flowers.toml"
    assert window.save_to(path)
    assert window.experiment_name == "flowers" and 'name = "flowers"' in path.read_text()
    assert not window.has_unsaved_changes() and not window.isWindowModified()
    window.act_new.trigger()  # nothing unsaved: no question
    assert asked == []


def test_the_whole_model_is_exported_from_a_visible_button(window):
    button = window.export_button
    assert button.isVisibleTo(window) and button.text() == "Export model..."
    formats = [a.text() for a in button.menu().actions()]
    assert any(f.startswith("as safetensors") for f in formats)
    assert len(formats) == len(window.host.exporters)


def test_start_while_the_model_is_being_built_waits_and_repeats_the_headless_run(
    window, qtbot, tmp_path
):
    """Building the tree's model draws on torch's global generator, which a run seeds and then
    uses for its head: a run started meanwhile would not repeat its headless twin."""
    import json

    from tests.helpers import run_cli

    path = tmp_path / "raced.toml"
    assert window.save_to(path)
    window.model_form.widgets["head_dropout"].setValue(0.1)  # a new key: the tree is rebuilt
    window.model_form.widgets["head_dropout"].setValue(0.0)
    window.layer_tree.forget()
    window._rebuild_tree()
    assert not window.model_ready()
    window.start_run()
    assert not window.controller.running
    assert window.eta_label.text() == "starting once the model is built ..."
    qtbot.waitUntil(lambda: window.controller.running, timeout=30_000)
    with qtbot.waitSignal(window.controller.worker.finished, timeout=120_000) as blocker:
        pass
    qtbot.waitUntil(lambda: not window.controller.running, timeout=10_000)
    run_cli(tmp_path / "cli", "run", str(path))
    (report,) = (tmp_path / "cli" / "runs").glob("*/report.json")
    assert json.loads(report.read_text())["val"] == json.loads(
        json.dumps(blocker.args[0].report["val"])
    )


def test_save_keeps_the_comments_of_the_file_it_was_opened_from(window, tmp_path):
    """Ctrl+S on a hand-written file rewrites only the value edited in the window; Save As
    to another file writes a generated one."""
    import difflib

    path = tmp_path / "annotated.toml"
    text = window.current_experiment().to_toml(comments=False)
    text = "# why these settings: see the lab book, p. 12\n" + text.replace(
        "[train]\n", "[train]\n# 1e-2 diverged\n", 1
    )
    path.write_text(text)
    assert window.open_file(path)
    window.train_form.widgets["epochs"].setValue(window.train_form.widgets["epochs"].value() + 2)
    window.act_save.trigger()
    after = path.read_text()
    changed = [
        line for line in difflib.ndiff(text.splitlines(), after.splitlines()) if line[:1] in "+-"
    ]
    assert len(changed) == 2 and all("epochs = " in line for line in changed), changed
    assert "# why these settings" in after and "# 1e-2 diverged" in after
    other = tmp_path / "copy.toml"
    assert window.save_to(other)
    assert "# why these settings" not in other.read_text()


def test_open_best_sets_the_trials_values_in_the_users_file(window, tmp_path):
    """ "Open best as experiment" on the window's own file: the swept value is set, unsaved, and
    Save rewrites that one line of the file, keeping the author's notes. Without a file, the
    trial opens as a new experiment, so the run folder's record is never saved over."""
    import difflib

    path = tmp_path / "mine.toml"
    text = "# tuned by hand before the sweep\n" + window.current_experiment().to_toml(
        comments=False
    )
    path.write_text(text)
    assert window.open_file(path)
    trial_exp = window.current_experiment().with_absolute_paths()
    trial_exp.train.lr = 0.0042
    run_folder = tmp_path / "ws" / "runs" / "trial"
    run_folder.mkdir(parents=True)
    trial_file = run_folder / "experiment.toml"
    trial_file.write_text(trial_exp.to_toml())
    assert window.open_best_trial(str(trial_file), {"train.lr": 0.0042})
    assert window.experiment_path == path and window.has_unsaved_changes()
    assert window.train_form.widgets["lr"].value() == 0.0042
    window.act_save.trigger()
    changed = [
        line
        for line in difflib.ndiff(text.splitlines(), path.read_text().splitlines())
        if line[:1] in "+-"
    ]
    assert len(changed) == 2 and all(line[2:].startswith("lr = ") for line in changed), changed
    assert trial_file.read_text() == trial_exp.to_toml()

    window.act_new.trigger()  # no file: the trial opens as a new experiment
    assert window.open_best_trial(str(trial_file), {"train.lr": 0.0042})
    assert window.experiment_path is None and window.has_unsaved_changes()
    assert window.train_form.widgets["lr"].value() == 0.0042
