"""Prediction with few-shot runs: ``protonet`` and ``maml`` learn no fixed classes, so they
classify the classes of a support folder given at prediction time (``--support``).

The runs train briefly on procedurally drawn glyphs; the support and query images are drawn from
five glyph classes generated with another seed, so they are classes the runs never saw. Each
prediction through the product path (run folder or bundle -> rebuilt method -> support folder
read from disk -> classifier) is compared with the plugin's own in-memory functions on the same
tensors, and scored against the true classes.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from transferstudio_builtins.protonet import predict_with_support

from tests.helpers import fewshot_experiment, write_glyphs
from transferstudio.api import DataError, TransferStudioError, WeightsError
from transferstudio.cli import main
from transferstudio.core.data.images import load_rgb
from transferstudio.core.data.loaders import build_transform
from transferstudio.core.inference.export import export_run
from transferstudio.core.inference.predict import gather_images, open_predictor, predict
from transferstudio.core.models.support_set import read_support_folder
from transferstudio.core.plugins.host import load_plugins
from transferstudio.core.runs.finished import load_run_predictor
from transferstudio.core.training.engine import PlainState, run_experiment

WAY = 5


@pytest.fixture(scope="module")
def host():
    return load_plugins(autoload=False)


@pytest.fixture(scope="module")
def new_classes(tmp_path_factory):
    """``support/<class>/`` (one image each) and ``queries/<class>/`` (five each) of five glyph
    classes the runs never trained on."""
    root = tmp_path_factory.mktemp("new-classes")
    drawn = write_glyphs(root / "drawn", classes=WAY, per_class=6, seed=7)
    for folder in sorted(drawn.iterdir()):
        for i, image in enumerate(sorted(folder.iterdir())):
            target = root / ("support" if i == 0 else "queries") / folder.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, target / image.name)
    return root / "support", root / "queries"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, host):
    """A protonet run and a first-order maml run (2 short epochs each) in one workspace."""
    tmp = tmp_path_factory.mktemp("fewshot-runs")
    glyphs = write_glyphs(tmp / "glyphs")
    episodes = {"n_way": WAY, "k_shot": 1, "queries": 3, "val_episodes": 4}
    settings = {
        "protonet": {"episodes_per_epoch": 50},
        "maml": {
            "episodes_per_epoch": 40,
            "meta_batch": 2,
            "inner_steps": 1,
            "eval_inner_steps": 3,
            "inner_lr": 0.1,
            "first_order": True,
        },
    }
    out = {}
    for method, params in settings.items():
        exp = fewshot_experiment(
            tmp / method, host, method, data=glyphs, epochs=2, test_split=0.0,
            **episodes, **params,
        )  # fmt: skip
        result = run_experiment(exp, host, PlainState(), tmp / "ws")
        assert result.status == "completed", result.message
        out[method] = result
    out["workspace"] = tmp / "ws"
    return out


def _accuracy(report) -> float:
    right = sum(Path(p.path).parent.name == p.top[0][0] for p in report.predictions)
    return right / len(report.predictions)


def _tensors(folder: Path, preprocessing):
    transform = build_transform(preprocessing, None)
    paths, _ = gather_images([str(folder)])
    return paths, torch.stack([transform(load_rgb(p)) for p in paths])


def test_protonet_run_predicts_new_classes_from_a_support_folder(runs, host, new_classes):
    support, queries = new_classes
    predictor = open_predictor(runs["protonet"].run_id, host, runs["workspace"], support)
    assert predictor.class_names == sorted(p.name for p in support.iterdir())
    paths, _ = gather_images([str(queries)])
    report = predict(predictor, paths, top_k=WAY)
    assert len(report.predictions) == 25 and not report.skipped
    # Measured 0.80 (chance 0.20) on unseen classes after 100 training episodes.
    assert _accuracy(report) >= 0.6

    # The same encoder scored directly on the same tensors: identical probabilities.
    encoder = load_encoder(runs["protonet"].folder)
    support_set = read_support_folder(support, predictor.preprocessing)
    _, images = _tensors(queries, predictor.preprocessing)
    _, probabilities = predict_with_support(
        encoder, support_set.images, support_set.targets, images
    )
    for item, row in zip(report.predictions, probabilities, strict=True):
        top_label, top_p = item.top[0]
        assert predictor.class_names[int(row.argmax())] == top_label
        assert float(row.max()) == pytest.approx(top_p, abs=1e-5)


def load_encoder(folder):
    """The protonet run's encoder, read independently of ``core.support``."""
    from transferstudio.core.models.build import build_backbone
    from transferstudio.core.runs.checkpoint import CheckpointStore

    store = CheckpointStore(Path(folder) / "checkpoints")
    ck = store.load("best" if store.exists("best") else "last", with_state=False)
    encoder = build_backbone(load_plugins(autoload=False).backbone("conv4"), None)
    encoder.load_state_dict({k[8:]: v for k, v in ck.weights.items() if k.startswith("encoder.")})
    return encoder.eval()


def test_maml_run_adapts_to_the_support_folder_then_predicts(runs, host, new_classes):
    support, queries = new_classes
    predictor = open_predictor(runs["maml"].run_id, host, runs["workspace"], support)
    paths, _ = gather_images([str(queries)])
    whole = predict(predictor, paths, top_k=WAY, batch_size=len(paths))
    # Measured 0.68 (chance 0.20) on unseen classes after 80 first-order training tasks.
    assert _accuracy(whole) >= 0.5
    # Normalised with the support set's statistics, an image gets the same answer alone or in
    # a batch (with each batch's statistics: 0.60 one by one, 0.52 in batches of one class).
    alone = predict(predictor, paths, top_k=WAY, batch_size=1)
    for a, b in zip(alone.predictions, whole.predictions, strict=True):
        assert [label for label, _ in a.top] == [label for label, _ in b.top]
        assert [p for _, p in a.top] == pytest.approx([p for _, p in b.top], abs=1e-5)

    # The head is the plugin's own inner loop (3 steps of 0.1) applied to the support set, on
    # a copy: the meta-learned initialisation is untouched.
    from transferstudio_builtins.maml import adapt, meta_parameters

    from transferstudio.core.models.support_set import rebuild_method
    from transferstudio.core.runs.finished import load_best_checkpoint

    ck = load_best_checkpoint(Path(runs["maml"].folder))
    meta_model = rebuild_method(ck.meta, host, ck.weights, "test").predictor()
    support_set = read_support_folder(support, predictor.preprocessing)
    weights = {k: w.detach() for k, w in meta_parameters(meta_model).items()}
    fast = adapt(meta_model, weights, support_set.images, support_set.targets, 3, 0.1, False)
    assert torch.allclose(predictor.model.head.weight, fast["head.weight"], atol=1e-6)
    assert not torch.allclose(predictor.model.head.weight, meta_model.head.weight)
    for name, value in meta_model.state_dict().items():
        assert torch.equal(value, ck.weights[f"meta_model.{name}"])


def test_a_few_shot_bundle_predicts_from_a_support_folder_like_its_run(
    runs, host, new_classes, tmp_path
):
    support, queries = new_classes
    bundle = tmp_path / "protonet.tsmodel"
    result = export_run(runs["protonet"].run_id, "bundle", bundle, host, runs["workspace"])
    assert result.max_abs_diff == 0.0 and "few-shot" in result.note
    paths, _ = gather_images([str(queries)])
    from_run = predict(
        open_predictor(runs["protonet"].run_id, host, runs["workspace"], support), paths
    )
    from_bundle = predict(open_predictor(str(bundle), host, runs["workspace"], support), paths)
    for a, b in zip(from_bundle.predictions, from_run.predictions, strict=True):
        assert [label for label, _ in a.top] == [label for label, _ in b.top]
        assert [p for _, p in a.top] == pytest.approx([p for _, p in b.top], abs=1e-6)
    with pytest.raises(TransferStudioError, match="support folder"):
        open_predictor(str(bundle), host, runs["workspace"])


def test_predict_command_takes_a_support_folder(runs, new_classes, tmp_path, capsys):
    support, queries = new_classes
    (support / "notes.txt").write_text("not a class")  # a stray file beside the class folders
    (support / "glyph00" / "broken.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "p.csv"
    argv = ["--workspace", str(runs["workspace"]), "predict", runs["protonet"].run_id]
    try:
        code = main([*argv, str(queries), "--support", str(support), "--csv", str(out)])
    finally:
        (support / "glyph00" / "broken.png").unlink()
        (support / "notes.txt").unlink()
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.count("\n") == 25
    assert "support: skipped" in captured.err and "broken.png" in captured.err
    with out.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 26 and {row[1] for row in rows[1:]} <= {p.name for p in support.iterdir()}


def test_few_shot_runs_without_a_support_folder_or_with_a_wrong_one_say_what_to_do(
    runs, host, new_classes, tmp_path
):
    support, _ = new_classes
    ws = runs["workspace"]
    with pytest.raises(TransferStudioError, match="--support FOLDER"):
        open_predictor(runs["protonet"].run_id, host, ws)
    three = tmp_path / "three"
    for name in sorted(p.name for p in support.iterdir())[:3]:
        shutil.copytree(support / name, three / name)
    with pytest.raises(DataError, match="n_way = 5 .* exactly 5 class subfolders, not 3"):
        open_predictor(runs["maml"].run_id, host, ws, three)
    single = tmp_path / "single"
    shutil.copytree(support / sorted(p.name for p in support.iterdir())[0], single / "only")
    with pytest.raises(DataError, match="1 class subfolder"):
        open_predictor(runs["protonet"].run_id, host, ws, single)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(DataError, match="holds no readable image"):
        open_predictor(runs["protonet"].run_id, host, ws, tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        open_predictor(runs["protonet"].run_id, host, ws, tmp_path / "nowhere")


def test_a_maml_run_is_no_classifier_of_its_training_classes(runs):
    # Its head has n_way outputs that mean nothing before adapting: no teacher, no predictor.
    with pytest.raises(WeightsError, match="learns no fixed classes"):
        load_run_predictor(runs["maml"].folder, load_plugins(autoload=False), runs["workspace"])


def test_a_support_folder_is_refused_for_a_run_with_fixed_classes(host, tmp_path, new_classes):
    support, _ = new_classes
    data = write_glyphs(tmp_path / "few", classes=3, per_class=4)
    exp = fewshot_experiment(tmp_path, host, "fine-tune", data=data, test_split=0.0)
    result = run_experiment(exp, host, PlainState(), tmp_path / "ws")
    assert result.status == "completed", result.message
    with pytest.raises(TransferStudioError, match="predicts the classes it was trained on"):
        open_predictor(result.run_id, host, tmp_path / "ws", support)


def test_onnx_refuses_batch_statistics_normalisation_by_name(runs, host, tmp_path):
    target = tmp_path / "maml.onnx"
    with pytest.raises(TransferStudioError, match="batch statistics .* torchscript"):
        export_run(runs["maml"].run_id, "onnx", target, host, runs["workspace"])
    assert not target.exists()
    result = export_run(
        runs["maml"].run_id, "torchscript", tmp_path / "maml.pt", host, runs["workspace"]
    )
    assert result.max_abs_diff == 0.0


def test_a_failing_support_classifier_is_reported_naming_the_method(
    runs, host, new_classes, monkeypatch
):
    from transferstudio_builtins.protonet import ProtoNet

    from transferstudio.api import PluginError

    def broken(self, images, targets, num_classes):
        raise ValueError("prototypes went missing")

    monkeypatch.setattr(ProtoNet, "classifier_from_support", broken)
    support, _ = new_classes
    with pytest.raises(PluginError, match="method 'protonet' .*ValueError: prototypes went"):
        open_predictor(runs["protonet"].run_id, host, runs["workspace"], support)


def test_a_few_shot_run_from_before_support_set_was_recorded_exports_a_usable_bundle(
    runs, host, new_classes, tmp_path
):
    import json

    old = tmp_path / "old-run"
    shutil.copytree(runs["protonet"].folder, old)
    for kind in ("best", "last"):  # what checkpoints held before API 1.2
        meta_file = old / "checkpoints" / f"{kind}.json"
        meta = json.loads(meta_file.read_text())
        meta.pop("support_set", None)
        meta.pop("predictor_module", None)
        meta_file.write_text(json.dumps(meta))
    bundle = tmp_path / "old.tsmodel"
    export_run(str(old), "bundle", bundle, host, runs["workspace"])
    support, queries = new_classes
    paths, _ = gather_images([str(queries)])
    from_bundle = predict(open_predictor(str(bundle), host, runs["workspace"], support), paths)
    from_run = predict(
        open_predictor(runs["protonet"].run_id, host, runs["workspace"], support), paths
    )
    assert [p.top for p in from_bundle.predictions] == [p.top for p in from_run.predictions]
