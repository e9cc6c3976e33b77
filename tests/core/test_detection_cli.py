"""Detection from the command line: ``init --task detection``, ``predict`` writing COCO
results, CSV and drawn images, ``runs show`` with mAP, and the detection demo's experiment."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from PIL import Image

from tests.core.test_detection_engine import detection_experiment
from tests.helpers import CLI_ENV, run_cli
from transferstudio.core.data.detection_demo import generate_detection_data
from transferstudio.core.plugins.host import load_plugins
from transferstudio.core.settings import experiment as X
from transferstudio.core.training.engine import PlainState, run_experiment


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("detection-run")
    data = generate_detection_data(root / "shapes", images=16, seed=4)
    exp = detection_experiment(data, train__epochs=1)
    result = run_experiment(exp, load_plugins(autoload=False), PlainState(), root / "ws")
    assert result.status == "completed", result.message
    return root / "ws", result, data


def test_init_writes_a_detection_experiment_with_torchvisions_defaults(tmp_path):
    done = run_cli(tmp_path, "init", "--task", "detection", "--backbone", "resnet18")
    text = done.stdout
    assert 'task = "detection"' in text and 'name = "detect"' in text
    assert 'freeze_up_to = "backbone.body.layer1"' in text  # the last 3 of 4 stages train
    assert 'early_stopping_metric = "map50"' in text
    (tmp_path / "d.toml").write_text(text)
    exp = X.load(tmp_path / "d.toml", load_plugins(autoload=False).method_params)
    assert exp.task == "detection" and exp.data.batch_size == 4


def test_init_refuses_a_method_of_another_task(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "transferstudio", "init", "--task", "classification"]
        + ["--method", "detect"],
        env=CLI_ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "method 'detect' is for detection, not classification" in done.stderr


def test_predict_writes_coco_results_csv_and_drawn_images(detection_run, tmp_path):
    workspace, result, data = detection_run
    images = sorted((data / "images").glob("*.png"))[:3]
    out = run_cli(
        workspace,
        "predict",
        str(result.folder),
        *map(str, images),
        "--score-threshold",
        "0.0",
        "--json",
        str(tmp_path / "boxes.json"),
        "--csv",
        str(tmp_path / "boxes.csv"),
        "--draw",
        str(tmp_path / "drawn"),
    )
    assert "3 images" in out.stderr
    results = json.loads((tmp_path / "boxes.json").read_text())
    assert results, "an untrained detector still proposes boxes at threshold 0"
    for entry in results:
        assert 1 <= entry["image_id"] <= 3 and 1 <= entry["category_id"] <= 3
        x, y, w, h = entry["bbox"]
        assert w > 0 and h > 0 and 0 <= entry["score"] <= 1
        assert entry["category"] in ("circle", "square", "triangle")
    with (tmp_path / "boxes.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["path", "label", "score", "xmin", "ymin", "xmax", "ymax"]
    assert len(rows) - 1 == len(results)
    drawn = sorted((tmp_path / "drawn").glob("*.png"))
    assert [p.name for p in drawn] == [p.name for p in images]
    with Image.open(drawn[0]) as a, Image.open(images[0]) as b:
        assert a.size == b.size


def test_classifier_only_options_and_detector_options_are_kept_apart(detection_run, tmp_path):
    workspace, result, data = detection_run
    image = str(next((data / "images").glob("*.png")))
    done = subprocess.run(
        [sys.executable, "-m", "transferstudio", "--workspace", str(workspace)]
        + ["predict", str(result.folder), image, "--score-threshold", "1.5"],
        env=CLI_ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "between 0 and 1" in done.stderr


def test_runs_show_prints_map(detection_run):
    workspace, result, _ = detection_run
    shown = run_cli(workspace, "runs", "show", result.run_id).stdout
    assert "map50=" in shown and "AP50" in shown
    assert "val_map50" in shown


def test_the_detection_demo_experiment_loads(tmp_path):
    from transferstudio.core.models.detection_demo import DEMO_IMAGES, prepare_detection_demo

    host = load_plugins()
    path = prepare_detection_demo(tmp_path, host)
    exp = X.load(path, host.method_params)
    assert exp.task == "detection" and exp.method == "detect"
    assert len(list((tmp_path / "demo" / "detection-data" / "images").glob("*.png"))) == (
        DEMO_IMAGES
    )
    path.write_text(path.read_text().replace("epochs = 8", "epochs = 3"))
    assert prepare_detection_demo(tmp_path, host) == path  # the user's edit is kept
    assert "epochs = 3" in path.read_text()


def test_the_console_shows_each_epochs_map_not_accuracy(tmp_path):
    """A detector has no accuracy: the epoch line shows its mAP (it showed "acc nan")."""
    data = generate_detection_data(tmp_path / "shapes", images=12, seed=2)
    exp = tmp_path / "shapes.toml"
    exp.write_text(detection_experiment(data, train__epochs=1).to_toml(), "utf-8")
    out = run_cli(tmp_path / "ws", "run", str(exp)).stdout
    (line,) = [row for row in out.splitlines() if row.startswith("epoch 1/1 (")]
    assert "mAP@0.5" in line and "train loss" in line
    assert "nan" not in line and " acc " not in line
