"""The run store's own guarantees, on a real SQLite file."""

import sqlite3

import pytest

from transferstudio.core.runs.workspace import RunStore


def test_a_new_run_carries_its_tags(tmp_path):
    store = RunStore(tmp_path)
    store.create("r1", "exp", "resnet18", "finetune", "accuracy", tags={"sweep": "s", "trial": "1"})
    assert store.tags("r1") == {"sweep": "s", "trial": "1"}
    assert store.tagged("sweep", "s") == {"r1": "s"}


def test_a_run_and_its_tags_are_written_together(tmp_path):
    # A sweep finds the run of a trial killed before it reported its id by the run's tags, so
    # a row must never exist without them: a failing tag write leaves no run at all.
    store = RunStore(tmp_path)
    with pytest.raises(sqlite3.IntegrityError):
        store.create("r1", "exp", "resnet18", "finetune", "accuracy", tags={None: "x"})
    assert store.list() == []
