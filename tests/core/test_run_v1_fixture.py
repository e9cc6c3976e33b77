"""A run written before checkpoint metadata had a schema (``tests/fixtures/run_v1``, see its
``make_run_v1.py``) still opens, resumes, exports and predicts with today's code."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from transferstudio.core.inference.export import export_run
from transferstudio.core.inference.predict import open_predictor, predict
from transferstudio.core.models.bundle import load_bundle
from transferstudio.core.runs.checkpoint import CHECKPOINT_SCHEMA, CheckpointStore
from transferstudio.core.runs.resume import experiment_to_resume, is_resumable
from transferstudio.core.runs.workspace import RunStore
from transferstudio.core.training.engine import PlainState, run_experiment

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_v1"
PLACEHOLDER = "@FIXTURE@"


def copy_fixture(target: Path) -> Path:
    """A copy of the fixture under ``target`` with its placeholder paths made real; returns
    the copy's workspace."""
    shutil.copytree(FIXTURE / "data", target / "data")
    shutil.copytree(FIXTURE / "workspace", target / "workspace")
    for path in (target / "workspace").rglob("*"):
        if path.suffix in (".toml", ".json", ".txt"):
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace(PLACEHOLDER, str(target)), encoding="utf-8")
    with sqlite3.connect(target / "workspace" / "runs.sqlite") as db:
        db.execute("UPDATE runs SET folder = replace(folder, ?, ?)", (PLACEHOLDER, str(target)))
    db.close()
    return target / "workspace"


def test_a_v1_run_lists_and_its_checkpoint_reads_as_a_typed_record(tmp_path):
    workspace = copy_fixture(tmp_path)
    (record,) = RunStore(workspace).list()
    raw = json.loads((Path(record.folder) / "checkpoints" / "best.json").read_text("utf-8"))
    assert "schema_version" not in raw  # the fixture is as version 1 wrote it
    assert record.status == "cancelled" and is_resumable(record)
    best = CheckpointStore(Path(record.folder) / "checkpoints").record("best")
    assert best.schema_version == CHECKPOINT_SCHEMA
    assert best.class_names == ["class_00", "class_01", "class_02"]
    assert best.backbone == "lenet" and best.method == "fine-tune" and best.epoch == 0
    assert best.predictor_module == "model" and best.head_recipe and best.history is None


def test_a_v1_run_resumes_exports_and_predicts(tmp_path, host):
    workspace = copy_fixture(tmp_path)
    store = RunStore(workspace)
    run_id = store.list()[0].id
    _, exp = experiment_to_resume(store, run_id, host.method_params)
    result = run_experiment(exp, host, PlainState(), workspace, resume=run_id)
    assert result.status == "completed", result.message
    assert result.epochs_done == 2
    last = CheckpointStore(result.folder / "checkpoints").record("last")
    assert last.epoch == 1 and last.schema_version == CHECKPOINT_SCHEMA
    assert [row["epoch"] for row in last.history] == [0, 1]

    target = tmp_path / "model.tsmodel"
    exported = export_run(run_id, "bundle", target, host, workspace)
    assert exported.max_abs_diff <= 1e-4
    assert load_bundle(target, host).class_names == ["class_00", "class_01", "class_02"]

    images = sorted(str(p) for p in (tmp_path / "data").rglob("*.png"))[:4]
    for ref in (run_id, str(target)):
        report = predict(open_predictor(ref, host, workspace), images, top_k=2)
        assert len(report.predictions) == 4
