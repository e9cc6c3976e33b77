"""The learning-rate range test: its suggestion lands where training works on a synthetic task,
and nothing is written."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.helpers import tiny_experiment, write_class_images
from transferstudio.core.training.engine import run_experiment
from transferstudio.core.training.lr_finder import find_lr, suggest


def test_the_suggestion_lies_on_the_longest_fall_of_the_loss():
    lrs = [10 ** (-7 + 8 * i / 99) for i in range(100)]
    # flat with noise until 1e-4, falling to 1e-2, then rising: the valley is 1e-4..1e-2
    losses = []
    for i, lr in enumerate(lrs):
        x = math.log10(lr)
        base = 1.0 if x < -4 else (1.0 - 0.45 * (x + 4) if x < -2 else 0.1 + 0.8 * (x + 2))
        losses.append(base + 0.01 * (-1) ** i)
    suggestion, minimum = suggest(lrs, losses)
    assert 1e-4 < suggestion < 1e-2
    assert minimum == pytest.approx(1e-2, rel=0.3)
    assert suggest(lrs[:4], losses[:4]) == (None, None)
    rising = [1.0 + i for i in range(len(lrs))]
    assert suggest(lrs, rising)[0] is None  # the loss never fell: no suggestion


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lr")
    data = write_class_images(tmp / "data", {"a": 30, "b": 30, "c": 30}, 24, 0)

    def experiment(lr: float, epochs: int = 1):
        return tiny_experiment(
            data,
            model__backbone="lenet",
            data__batch_size=8,
            train__lr=lr,
            train__epochs=epochs,
            train__schedule="constant",
        )

    return tmp, experiment


def test_the_suggestion_trains_where_much_lower_and_higher_rates_do_not(task, host):
    tmp, experiment = task
    points = []
    result = find_lr(
        experiment(0.001), host, tmp / "ws", steps=100, on_point=lambda *p: points.append(p)
    )
    assert len(result.lrs) == len(points) == 100 and result.lrs[0] == pytest.approx(1e-7)
    assert result.lrs[-1] == pytest.approx(10.0)
    # AdamW on a small network: a sensible rate is 1e-4 .. 1e-2
    assert 1e-4 <= result.suggestion <= 1e-2, result.suggestion
    assert not (tmp / "ws" / "runs").exists()  # nothing written
    val_loss = {}
    for factor in (1, 1e-3, 1e3):
        lr = result.suggestion * factor
        run = run_experiment(experiment(lr), host, None, tmp / f"ws-{factor}")
        val_loss[factor] = run.report["val"]["metrics"]["loss"]
    # one epoch at the suggestion learns the task; 1000x lower barely moves from chance
    # (ln 3 = 1.10), and 1000x higher blows up
    assert val_loss[1] < 0.2 < 1.0 < val_loss[1e-3], val_loss
    assert val_loss[1e3] > 10 * val_loss[1], val_loss


def test_the_sweep_stops_when_asked_and_keeps_its_points(task, host):
    tmp, experiment = task
    seen = []
    result = find_lr(
        experiment(0.001),
        host,
        tmp / "ws",
        steps=100,
        on_point=lambda *p: seen.append(p),
        should_stop=lambda: len(seen) >= 12,
    )
    assert len(result.lrs) == 12 and result.stopped_because == "stopped by the user"
    assert result.suggestion is None  # 12 of 100 steps: no valley to suggest from


def test_a_zero_train_lr_and_discriminative_rates_are_handled(task, host):
    tmp, experiment = task
    exp = experiment(0.0)  # allowed by the setting; the sweep sets its own rates
    exp.method_params.backbone_lr_mult = 0.1
    result = find_lr(exp, host, tmp / "ws", steps=40)
    assert len(result.lrs) == 40 and all(math.isfinite(x) for x in result.losses)


def test_lr_find_command_prints_and_applies_the_suggestion(task, tmp_path):
    _, experiment = task
    exp_file = tmp_path / "exp.toml"
    # A file its author has annotated: --apply changes the lr line and keeps the rest.
    text = "# my notes, kept by --apply\n" + experiment(0.5).to_toml().replace(
        "\nlr = 0.5\n", "\nlr = 0.5  # first guess\n"
    )
    exp_file.write_text(text, "utf-8")
    curve = tmp_path / "curve.json"
    done = subprocess.run(
        [sys.executable, "-m", "transferstudio", "--workspace", str(tmp_path / "ws"), "lr-find"]
        + [str(exp_file), "--steps", "60", "--apply", "--json", str(curve)]
        + ["--set", "data.batch_size=4"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "suggested learning rate" in done.stdout and "<- suggested" in done.stdout
    saved = json.loads(curve.read_text())
    assert len(saved["lrs"]) == 60
    import tomllib

    written = tomllib.loads(exp_file.read_text())
    lr = written["train"]["lr"]
    assert lr == pytest.approx(saved["suggestion"], rel=1e-2) and lr != 0.5
    assert written["data"]["batch_size"] == 8  # only train.lr changed, not the --set override
    before, after = text.splitlines(), exp_file.read_text("utf-8").splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [("lr = 0.5  # first guess", f"lr = {lr!r}  # first guess")]


def test_stop_is_heard_while_a_feature_cache_is_built(task, host):
    tmp, experiment = task
    exp = tiny_experiment(
        experiment(0.001).data.path,
        model__backbone="lenet",
        data__batch_size=8,
        method__name="feature-extract",
        method__params={"head": "linear"},
    )
    asked = []

    def should_stop():  # no on the first question, yes from the second on
        asked.append(True)
        return len(asked) > 1

    result = find_lr(exp, host, tmp / "ws", steps=100, should_stop=should_stop)
    # Both questions came while the cache was built, before the first step; were stop only
    # checked between steps, step 0 would have run.
    assert result.lrs == [] and result.stopped_because == "stopped by the user"
