"""The `unknown` answer (issue 18): statistics in the model file, the same rule on PyTorch and
ONNX, `vit predict --unknown on|off`, `vit eval`'s share, and the end of `vit train`.

The end-to-end check has the spirit of "a model trained on digits, shown a photograph of a
building, says unknown and keeps calling digits digits": a small ViT trained on generated
shapes must call uniform noise and an unrelated kind of image it never saw (stripes and
checkerboards) unknown, and keep >= 95 % of new images of its own classes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES
from PIL import Image
from typer.testing import CliRunner

from benchmarks.ood_scores import (
    KNOWN,
    noise,
    photo_crops,
    pink_noise,
    shapes,
    train_tiny,
    unrelated,
)
from vitcli.cli import app
from vitcli.errors import VitError

MEAN_STD = dict(mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """A tiny ViT trained on shapes, with its temperature and unknown rule fitted and stored,
    and exported to ONNX (the expensive part, once)."""
    import torch

    from vitcli.deploy.export import export_onnx
    from vitcli.evaluation.ood import fit_trust
    from vitcli.model.checkpoint import default_preprocessing, save_model

    root = tmp_path_factory.mktemp("unknown")
    train_x, train_y = shapes(KNOWN, 40, seed=0)  # examples/make_shapes.py, cross held out
    val_x, val_y = shapes(KNOWN, 25, seed=1000)
    torch.set_num_threads(1)
    model = train_tiny(train_x, train_y, len(KNOWN), steps=60, seed=0)
    trust = fit_trust(model, train_pixels=train_x, train_labels=train_y, val_pixels=val_x,
                      val_labels=val_y, num_classes=len(KNOWN), **MEAN_STD)
    path = save_model(root / "model.safetensors", model, class_names=list(KNOWN),
                      preprocessing=default_preprocessing(model.config),
                      temperature=trust.temperature, ood=trust.ood)
    onnx_path = export_onnx(path, root / "model.onnx").path
    torch.set_num_threads(2)
    test_x, test_y = shapes(KNOWN, 30, seed=2000)
    sets = {"in": test_x, "noise": noise(60, seed=0), "unrelated": unrelated(60, seed=0),
            "pink noise": pink_noise(60, seed=0), "photo crops": photo_crops(60, seed=0)}
    return path, onnx_path, trust, sets, test_y, root


def _outputs(backend, pixels: np.ndarray):
    batch = backend.preprocessing.normalize(pixels)  # (N, C, S, S)
    return backend.outputs(batch)


@pytest.mark.slow
def test_noise_and_an_unrelated_class_are_unknown_in_distribution_kept(trained):
    from vitcli.deploy.backends import open_backend

    path, _, trust, sets, labels, _ = trained
    backend = open_backend(path, device="cpu")
    assert trust.ood.quantile == 0.975
    logits, scores = _outputs(backend, sets["in"])
    assert (logits.argmax(1) == labels).mean() >= 0.6  # it learned the shapes (4 classes)
    threshold = trust.ood.threshold
    assert np.mean(scores <= threshold) >= 0.95  # keeps calling shapes shapes
    for kind in REJECT:
        _, s = _outputs(backend, sets[kind])
        assert np.mean(s > threshold) >= REJECT[kind], kind


# pink noise has natural images' spectrum; photo crops are cut from examples/photos
REJECT = {"noise": 0.95, "unrelated": 0.8, "pink noise": 0.9, "photo crops": 0.6}


@pytest.mark.slow
def test_onnx_gives_the_same_answers_as_pytorch(trained):
    """Same calibrated probabilities (1e-5), same unknown decisions, scores within 1e-4."""
    import onnx

    from vitcli.deploy.backends import ONNX_SCORE, open_backend
    from vitcli.evaluation.metrics import softmax

    path, onnx_path, trust, sets, _, _ = trained
    graph = onnx.load(str(onnx_path)).graph
    assert [o.name for o in graph.output] == ["logits", ONNX_SCORE]
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(meta["ood"])["threshold"] == pytest.approx(trust.ood.threshold)
    torch_b, onnx_b = open_backend(path, device="cpu"), open_backend(onnx_path)
    assert onnx_b.ood_threshold == torch_b.ood_threshold == trust.ood.threshold
    for kind, pixels in sets.items():
        (tl, ts), (ol, os_) = _outputs(torch_b, pixels), _outputs(onnx_b, pixels)
        np.testing.assert_allclose(softmax(ol), softmax(tl), atol=1e-5, err_msg=kind)
        np.testing.assert_allclose(os_, ts, rtol=1e-4, atol=1e-4, err_msg=kind)
        assert ((os_ > trust.ood.threshold) == (ts > trust.ood.threshold)).all(), kind


@pytest.mark.slow
def test_export_reports_whether_int8_keeps_the_unknown_answers(trained, tmp_path: Path):
    """int8 blocks feed the float32 score too, so the int8 file's unknown answers can drift
    (a newcomer saw 4 of 100 against 1): `vit export --int8 --data` counts both, at the same
    threshold, and how often they agree."""
    import re

    from vitcli.deploy.backends import open_onnx

    path, _, trust, sets, labels, _ = trained
    data = tmp_path / "data"
    for i, (pixels, label) in enumerate(zip(sets["in"], labels)):  # class folders
        (data / KNOWN[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(data / KNOWN[label] / f"{i:03d}.png")
    for i, pixels in enumerate(sets["photo crops"][:20]):  # some that should be unknown
        Image.fromarray(pixels).save(data / KNOWN[i % len(KNOWN)] / f"photo_{i:02d}.png")
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(app, ["export", "--onnx", "-m", str(path), "-o", str(out),
                                      "--int8", "--data", str(data)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    found = re.search(r"unknown answers: ONNX fp32 calls (\d+) of (\d+) unknown, int8 (\d+); "
                      r"the same answer on ([\d.]+)%", text)
    assert found, text
    fp32, int8 = open_onnx(out), open_onnx(out.with_suffix(".int8.onnx"))
    batch = fp32.preprocessing.normalize(np.concatenate([sets["in"], sets["photo crops"][:20]]))
    a, b = fp32.outputs(batch)[1] > trust.ood.threshold, int8.outputs(batch)[1] > trust.ood.threshold
    assert [int(g) for g in found.groups()[:3]] == [a.sum(), len(batch), b.sum()]
    assert float(found.group(4)) == pytest.approx(100 * (a == b).mean(), abs=0.01)
    assert a.sum() >= 10  # the photo crops: there is something to agree on
    assert ("warning:" in text) == bool((a != b).any())


def test_the_threshold_passes_its_quantile_of_new_in_distribution_images():
    """Rank ceil(q·(n + 1)) of n validation scores: a new image from the same distribution
    passes with probability rank / (n + 1) >= q (split conformal). numpy's "higher"
    quantile took rank 98 of 100, which passes 97.0 % for a 97.5 % promise."""
    from vitcli.model.ood import threshold_for

    assert threshold_for(np.arange(100.0)) == 98.0  # the 99th smallest of 100
    assert threshold_for(np.arange(80.0)) == 78.0  # the 79th of 80: 79/81 = 97.5 %
    assert threshold_for(np.arange(10.0)) == 9.0  # too few for 97.5 %: the largest
    assert threshold_for(np.arange(4.0), quantile=0.6) == 2.0  # 0.6 · 5 = 3: whole
    rng = np.random.default_rng(0)
    for n in (40, 80, 100, 250):
        # uniform scores: a threshold t passes a new image with probability t
        passed = [threshold_for(rng.random(n)) for _ in range(2000)]
        assert np.mean(passed) >= 0.975 - 0.002, n


def test_the_promise_stated_is_the_one_the_threshold_keeps():
    """`vit train` and `vit info` state rank / (n + 1): 97.5 % is not reachable below 39
    validation images, and 100 of them give 99 / 101."""
    from vitcli.model.ood import pass_probability, threshold_for

    assert pass_probability(12, 0.975) == pytest.approx(12 / 13)
    assert pass_probability(39, 0.975) == pytest.approx(39 / 40)
    assert pass_probability(100, 0.975) == pytest.approx(99 / 101)
    assert pass_probability(None, 0.975) == 0.975
    rng = np.random.default_rng(0)
    for n in (12, 80, 100):  # the promise holds: simulated new images pass at that rate
        passed = []
        for _ in range(2000):
            scores = rng.standard_normal(n + 1)
            passed.append(scores[-1] <= threshold_for(scores[:-1], 0.975))
        assert np.mean(passed) == pytest.approx(pass_probability(n, 0.975), abs=0.015)


def test_score_blocks_spread_over_the_depth_first_and_last_kept():
    from vitcli.model.ood import score_blocks

    assert score_blocks(1) == (0,) and score_blocks(2) == (0, 1)
    assert score_blocks(4) == (0, 1, 2, 3)
    assert score_blocks(12) == (0, 4, 7, 11) and score_blocks(24) == (0, 8, 15, 23)


def test_each_block_gets_a_ridge_in_its_own_scale():
    """Later blocks' tokens are larger: a ridge from the mean variance of all features would
    drown the small block's directions. Per block, the score does not change when one
    block's features are scaled (as a Mahalanobis distance should not)."""
    from vitcli.model.ood import OodStats, fit_gaussians, mahalanobis_numpy

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    f = rng.normal(size=(120, 8)) + np.repeat(rng.normal(size=(3, 8)) * 3, 40, axis=0)
    x = rng.normal(size=(9, 8)) * 2

    def scores(scale: float, blocks: int) -> np.ndarray:
        big = np.array([1.0] * 4 + [scale] * 4)  # the second block's features scaled
        means, chol = fit_gaussians(f * big, labels, 3, shrinkage=0.3, num_blocks=blocks)
        return mahalanobis_numpy(x * big, OodStats(means, chol, threshold=1.0))

    np.testing.assert_allclose(scores(100.0, 2), scores(1.0, 2), rtol=1e-5)
    assert not np.allclose(scores(100.0, 1), scores(1.0, 1), rtol=1e-2)  # one ridge: not so
    with pytest.raises(ValueError, match="do not split into 3 blocks"):
        fit_gaussians(f, labels, 3, num_blocks=3)


def test_mahalanobis_score_by_hand():
    """The graph's expanded form equals the direct distance to the nearest class mean."""
    import torch

    from vitcli.model.ood import OodStats, fit_gaussians, mahalanobis_numpy
    from vitcli.model.outputs import MahalanobisScore

    rng = np.random.default_rng(0)
    f = rng.normal(size=(200, 6)) + np.repeat(np.eye(6)[:4] * 4, 50, axis=0)
    labels = np.repeat(np.arange(4), 50)
    means, chol = fit_gaussians(f, labels, 4, shrinkage=0.0)
    np.testing.assert_allclose(means, [f[labels == k].mean(0) for k in range(4)], rtol=1e-5)
    centred = f - means[labels]
    precision = np.linalg.inv(centred.T @ centred / len(f))
    np.testing.assert_allclose(chol @ chol.T, precision, rtol=1e-4, atol=1e-4)
    stats = OodStats(class_means=means, precision_cholesky=chol, threshold=1.0)
    x = rng.normal(size=(7, 6)) * 3
    direct = np.sqrt(np.min([np.einsum("nd,de,ne->n", x - m, precision, x - m)
                             for m in means], axis=0))  # (7,)
    np.testing.assert_allclose(mahalanobis_numpy(x, stats), direct, rtol=1e-4)
    got = MahalanobisScore(stats)(torch.from_numpy(x).float()).numpy()
    np.testing.assert_allclose(got, direct, rtol=1e-4)


# ------------------------------------------------------------------------ vit predict


def _folder(root: Path, sets: dict[str, np.ndarray], n: int = 3) -> Path:
    """root/<kind>_<i>.png for the first n images of each set."""
    root.mkdir(parents=True, exist_ok=True)
    for kind, pixels in sets.items():
        for i in range(n):
            Image.fromarray(pixels[i]).save(root / f"{kind}_{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("which", ["safetensors", "onnx"])
def test_predict_says_unknown_in_tables_json_and_csv(trained, which, tmp_path: Path):
    path, onnx_path, _, sets, _, _ = trained
    model = path if which == "safetensors" else onnx_path
    images = _folder(tmp_path / "images", {"in": sets["in"], "noise": sets["noise"]})
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(images), "--model", str(model), "--json"])
    assert result.exit_code == 0, result.output
    rows = {Path(r["image"]).stem: r for r in map(json.loads, result.stdout.splitlines())}
    for i in range(3):
        noisy = rows[f"noise_{i}"]
        assert noisy["label"] == "unknown" and noisy["unknown"] is True
        assert noisy["nearest"] in KNOWN and noisy["score"] > noisy["threshold"]
        assert noisy["topk"][0]["label"] == noisy["nearest"]
    assert sum(rows[f"in_{i}"]["label"] in KNOWN for i in range(3)) >= 2

    table = runner.invoke(app, ["predict", str(images / "noise_0.png"), "--model", str(model)])
    assert table.exit_code == 0 and "unknown (nearest: " in table.stdout
    more = _folder(tmp_path / "more", {"in": sets["in"], "noise": sets["noise"]}, n=5)
    summary = runner.invoke(app, ["predict", str(more), "--model", str(model)],
                            env={"COLUMNS": "160"})  # 10 images: one table, a score column
    threshold = rows["noise_0"]["threshold"]
    assert f"unknown score (> {threshold:.2f}: unknown)" in summary.stdout  # its meaning
    csv_path = tmp_path / "out.csv"
    runner.invoke(app, ["predict", str(images), "--model", str(model), "--csv", str(csv_path)])
    with open(csv_path, newline="") as f:
        records = {Path(r["image"]).stem: r for r in csv.DictReader(f)}
    assert records["noise_0"]["label"] == "unknown"
    assert records["noise_0"]["nearest"] in KNOWN and float(records["noise_0"]["unknown_score"])

    off = runner.invoke(app, ["predict", str(images), "--model", str(model), "--json",
                              "--unknown", "off"])
    assert off.exit_code == 0
    labels = [json.loads(line)["label"] for line in off.stdout.splitlines()]
    assert labels and all(label in KNOWN for label in labels)  # class names, as before


def test_older_files_predict_as_before_and_refuse_unknown_on(tiny_model_file: Path,
                                                             image_file: Path):
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(image_file), "--model", str(tiny_model_file),
                                 "--json"])
    assert result.exit_code == 0
    record = json.loads(result.stdout)
    assert record["label"] in CLASSES and "unknown" not in record and "score" not in record
    refused = runner.invoke(app, ["predict", str(image_file), "--model", str(tiny_model_file),
                                  "--unknown", "on"])
    assert refused.exit_code != 0 and "no unknown rule" in refused.output
    assert "Traceback" not in refused.output
    bad = runner.invoke(app, ["predict", str(image_file), "--model", str(tiny_model_file),
                              "--unknown", "maybe"])
    assert bad.exit_code != 0 and "on or off" in bad.output


# ------------------------------------------------------------------- the model file


def _stats(k: int = 3, d: int = 32):
    from vitcli.model.ood import OodStats

    return OodStats(class_means=np.zeros((k, d), np.float32),
                    precision_cholesky=np.eye(d, dtype=np.float32), threshold=5.0)


@pytest.mark.slow
def test_files_of_the_last_block_rule_score_as_before_on_pytorch_and_onnx(trained,
                                                                         tmp_path: Path):
    """A file written before the rule read every block (method "mahalanobis", the last
    block's features, class means (K, D)) keeps its rule: the same scores as that rule
    computed by hand, from PyTorch and from its ONNX export."""
    from safetensors.torch import load_file

    from vitcli.deploy.backends import open_backend
    from vitcli.deploy.export import export_onnx
    from vitcli.evaluation.ood import features_and_logits
    from vitcli.model.checkpoint import load_model, read_metadata, save_tensors
    from vitcli.model.ood import OodStats, fit_gaussians, mahalanobis_numpy

    path, _, _, sets, _, _ = trained
    mf = load_model(path)
    train_x, train_y = shapes(KNOWN, 40, seed=0)  # the fixture's training images
    feats, _ = features_and_logits(mf.model, train_x, **MEAN_STD)  # (N, D): last block
    means, chol = fit_gaussians(feats, train_y, len(KNOWN))
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith("ood.")}
    tensors.update({"ood.class_means": torch_tensor(means),
                    "ood.precision_cholesky": torch_tensor(chol)})
    old_rule = {"method": "mahalanobis", "threshold": 7.5, "quantile": 0.975,
                "feature": "pooled_tokens_before_final_norm"}  # as files were written
    old = save_tensors(tmp_path / "old.safetensors", tensors,
                       {**read_metadata(path), "ood": json.dumps(old_rule)})
    loaded = load_model(old)
    assert loaded.ood.blocks is None and loaded.ood.class_means.shape == (4, 48)
    want = {k: mahalanobis_numpy(features_and_logits(mf.model, x, **MEAN_STD)[0],
                                 OodStats(means, chol, threshold=7.5))
            for k, x in sets.items()}
    onnx_path = export_onnx(old, tmp_path / "old.onnx").path
    for backend in (open_backend(old, device="cpu"), open_backend(onnx_path)):
        assert backend.ood_threshold == 7.5
        for kind, pixels in sets.items():
            _, got = _outputs(backend, pixels)
            np.testing.assert_allclose(got, want[kind], rtol=1e-4, atol=1e-4, err_msg=kind)


def torch_tensor(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def test_statistics_round_trip_and_broken_ones_are_refused(tmp_path: Path, tiny_model):
    from vitcli.model.checkpoint import load_model, save_model, save_tensors

    path = save_model(tmp_path / "m.safetensors", tiny_model, class_names=CLASSES,
                      ood=_stats())
    mf = load_model(path)
    assert mf.ood.threshold == 5.0 and mf.ood.class_means.shape == (3, 32)
    assert not any(k.startswith("ood.") for k in mf.model.state_dict())

    wrong = save_model(tmp_path / "wrong.safetensors", tiny_model, class_names=CLASSES,
                       ood=_stats(d=8))
    with pytest.raises(VitError, match="ood.class_means should have shape"):
        load_model(wrong)

    from safetensors.torch import load_file

    from vitcli.model.checkpoint import read_metadata

    tensors, meta = load_file(str(path)), read_metadata(path)
    orphan = save_tensors(tmp_path / "orphan.safetensors", tensors,
                          {k: v for k, v in meta.items() if k != "ood"})
    with pytest.raises(VitError, match="without their 'ood' metadata"):
        load_model(orphan)
    bad = save_tensors(tmp_path / "bad.safetensors", tensors,
                       {**meta, "ood": json.dumps({"method": "mahalanobis",
                                                   "threshold": float("nan")})})
    with pytest.raises(VitError, match="threshold"):
        load_model(bad)
    tensors["ood.class_means"][0, 0] = float("inf")
    inf = save_tensors(tmp_path / "inf.safetensors", tensors, meta)
    with pytest.raises(VitError, match="NaN or infinite"):
        load_model(inf)


def test_the_every_block_rule_round_trips_and_its_blocks_are_checked(tmp_path: Path,
                                                                     tiny_model):
    from safetensors.torch import load_file

    from vitcli.model.checkpoint import load_model, read_metadata, save_model, save_tensors
    from vitcli.model.ood import OodStats

    d = 2 * 32  # both blocks of the tiny model (depth 2, width 32)
    stats = OodStats(class_means=np.ones((3, d), np.float32),
                     precision_cholesky=np.eye(d, dtype=np.float32), threshold=4.0,
                     blocks=(0, 1))
    path = save_model(tmp_path / "m.safetensors", tiny_model, class_names=CLASSES, ood=stats)
    mf = load_model(path)
    assert mf.ood.blocks == (0, 1) and mf.ood.class_means.shape == (3, d)
    rule = json.loads(read_metadata(path)["ood"])
    assert rule["method"] == "mahalanobis_blocks" and rule["blocks"] == [0, 1]

    tensors, meta = load_file(str(path)), read_metadata(path)
    for blocks, message in [([0, 2], "beyond the model's 2"), ([1, 0], "increasing block"),
                            ([], "increasing block"), (["0"], "increasing block"),
                            ([0, 0], "increasing block")]:
        bad = save_tensors(tmp_path / "bad.safetensors", tensors,
                           {**meta, "ood": json.dumps({**rule, "blocks": blocks})})
        with pytest.raises(VitError, match=message):
            load_model(bad)
    one = save_tensors(tmp_path / "one.safetensors", tensors,
                       {**meta, "ood": json.dumps({**rule, "blocks": [1]})})
    with pytest.raises(VitError, match=r"ood.class_means should have shape \(3, 32\)"):
        load_model(one)  # one block named, two blocks' statistics stored
    other = save_tensors(tmp_path / "other.safetensors", tensors,
                         {**meta, "ood": json.dumps({**rule, "method": "energy"})})
    # a method from a newer vitcli is named as that, not as corruption, on both back ends
    with pytest.raises(VitError, match="method 'energy' is not one this vitcli knows.*newer"):
        load_model(other)
    from vitcli.deploy.backends import _onnx_threshold

    with pytest.raises(VitError, match="method 'energy' is not one this vitcli knows.*newer"):
        _onnx_threshold(other, {**meta, "ood": json.dumps({**rule, "method": "energy"})},
                        has_score=True)
    result = CliRunner().invoke(app, ["info", str(path)], env={"COLUMNS": "200"})
    text = " ".join(result.stdout.replace("│", " ").split())
    assert ("Mahalanobis distance on the features of blocks 1, 2; unknown beyond 4.00 (a new "
            "image like the validation images passes with probability ≥ 97.5%)") in text, text
    # with the count recorded, the promise is what the threshold's rank gives: 12 validation
    # images cannot reach 97.5 % (the largest of 12 passes 12/13 = 92.3 %)
    few = save_tensors(tmp_path / "few.safetensors", tensors,
                       {**meta, "ood": json.dumps({**rule, "validation_images": 12})})
    result = CliRunner().invoke(app, ["info", str(few)], env={"COLUMNS": "200"})
    assert "(a new image like the 12 validation images passes with probability ≥ 92.3%)" in \
        " ".join(result.stdout.replace("│", " ").split()), result.stdout
    assert load_model(few).ood.validation_images == 12
    for n in (0, -3, 2.5, "12", True):
        bad = save_tensors(tmp_path / "badn.safetensors", tensors,
                           {**meta, "ood": json.dumps({**rule, "validation_images": n})})
        with pytest.raises(VitError, match="validation_images must be a whole number"):
            load_model(bad)


# ------------------------------------------------------------------------ vit eval


@pytest.mark.slow
def test_eval_reports_calibration_the_unknown_share_and_writes_the_figures(trained,
                                                                            tmp_path: Path):
    path, _, trust, sets, labels, _ = trained
    data = tmp_path / "data"
    for k, name in enumerate(KNOWN):
        (data / name).mkdir(parents=True)
        for i, pixels in enumerate(sets["in"][labels == k][:10]):
            Image.fromarray(pixels).save(data / name / f"{i}.png")
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--model", str(path), "--data", str(data),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "ECE (15 equal-width bins)" in result.stdout and "called unknown" in result.stdout
    report = json.loads((out / "metrics.json").read_text())
    assert report["calibration"]["temperature"] == pytest.approx(trust.temperature)
    assert report["calibration"]["ece_bins"] == 15
    assert 0 <= report["unknown"]["share"] <= 0.1
    for name in ("reliability.png", "coverage.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 300 and im.size[1] > 300


# ------------------------------------------------------------------------ vit train


@pytest.mark.slow
def test_training_stores_the_temperature_and_the_rule_in_the_best_model(tmp_path: Path):
    from test_train import bar_folder, options

    from vitcli.model.checkpoint import load_model, read_metadata
    from vitcli.training.trainer import train

    data = bar_folder(tmp_path / "bars", per_class=12)
    events: list[tuple[str, dict]] = []
    result = train(options(tmp_path, data, epochs=2, val_split=0.25),
                   on_event=lambda kind, **f: events.append((kind, f)))
    mf = load_model(result.best_path)
    # the pooled class token of both blocks (32 wide) side by side: 64 features
    assert mf.ood is not None and mf.ood.blocks == (0, 1)
    assert mf.ood.class_means.shape == (3, 64) and mf.ood.precision_cholesky.shape == (64, 64)
    rule = json.loads(read_metadata(result.best_path)["ood"])
    assert rule["method"] == "mahalanobis_blocks"
    assert rule["validation_images"] == result.num_val  # what the stated promise rests on
    assert "temperature" in read_metadata(result.best_path)
    assert "epoch" in mf.metadata  # the other keys survive the rewrite
    fitted = [f["trust"] for kind, f in events if kind == "calibrated"]
    assert fitted and fitted[0].temperature == pytest.approx(mf.temperature)
    assert fitted[0].calibration.num_images == result.num_val

    no_val = train(options(tmp_path, data, epochs=1, val_split=0.0, name="noval"),
                   on_event=lambda kind, **f: events.append((kind, f)))
    mf = load_model(no_val.best_path)
    assert mf.ood is None and mf.temperature == 1.0


def test_info_counts_the_model_not_the_unknown_rule(tmp_path: Path, tiny_model):
    """Every trained model file carries ood.* statistics; `vit info` once added them to the
    parameters and called the file corrupt. It shows the rule and the temperature in words."""
    from typer.testing import CliRunner

    from vitcli.cli import app
    from vitcli.model.checkpoint import save_model
    from vitcli.model.config import count_params

    path = save_model(tmp_path / "m.safetensors", tiny_model, class_names=CLASSES,
                      temperature=0.5, ood=_stats())
    result = CliRunner().invoke(app, ["info", str(path)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert f"{count_params(tiny_model.config):,}" in result.output
    assert "unknown beyond 5" in result.output and "0.5 (probabilities" in result.output
    as_json = CliRunner().invoke(app, ["info", str(path), "--json"])
    assert json.loads(as_json.stdout)["parameters"] == count_params(tiny_model.config)
    from vitcli.model.checkpoint import count_file_params, read_header

    header, _ = read_header(path)  # what `vit patchify --model` counts too
    assert any(k.startswith("ood.") for k in header)
    assert count_file_params(header) == count_params(tiny_model.config)


@pytest.mark.parametrize("edit", [
    {"temperature": "-1"}, {"temperature": "hot"},
    {"ood": {"threshold": float("nan")}}, {"ood": {"quantile": 2}},
    {"ood": {"blocks": [0, 9]}}, {"ood": {"method": "cosine"}}, {"ood": "{not json"}])
def test_info_refuses_the_metadata_predict_refuses(tmp_path: Path, tiny_model, edit: dict):
    """`vit info` showed 'temperature -1', 'unknown beyond nan' and '200.0% pass' with exit 0
    for files that predict, eval and export refuse: one check, one answer, on both formats."""
    from safetensors.torch import load_file

    from vitcli.deploy.export import export_onnx
    from vitcli.model.checkpoint import read_metadata, save_model, save_tensors
    from vitcli.model.ood import OodStats

    d = 2 * 32
    stats = OodStats(class_means=np.zeros((3, d), np.float32),
                     precision_cholesky=np.eye(d, dtype=np.float32), threshold=4.0,
                     blocks=(0, 1), validation_images=50)
    good = save_model(tmp_path / "good.safetensors", tiny_model, class_names=CLASSES,
                      ood=stats, extra={"temperature": "0.5"})
    meta = read_metadata(good)
    key, change = next(iter(edit.items()))
    value = change if not isinstance(change, dict) else json.dumps(
        {**json.loads(meta["ood"]), **change})
    bad = save_tensors(tmp_path / "bad.safetensors", load_file(str(good)), {**meta, key: value})
    runner = CliRunner()
    refused = runner.invoke(app, ["predict", str(tmp_path), "--model", str(bad)])
    shown = runner.invoke(app, ["info", str(bad)])
    assert refused.exit_code == 1 and shown.exit_code == 1, shown.output
    assert shown.output.startswith("error:") and shown.output.count("\n") == 1, shown.output
    assert shown.output.split(": ", 2)[-1] == refused.output.split(": ", 2)[-1]

    if key == "temperature" or set(change) & {"threshold", "quantile"}:  # ONNX metadata too
        import onnx

        onnx_path = export_onnx(good, tmp_path / "m.onnx").path
        graph = onnx.load(str(onnx_path))
        for prop in graph.metadata_props:
            if prop.key == key:
                prop.value = value
        onnx.save(graph, str(tmp_path / "bad.onnx"))
        shown = runner.invoke(app, ["info", str(tmp_path / "bad.onnx")])
        assert shown.exit_code == 1 and "corrupt vitcli metadata" in shown.output, shown.output
        refused = runner.invoke(app, ["predict", str(tmp_path), "--model",
                                      str(tmp_path / "bad.onnx")])  # the same check
        assert refused.exit_code == 1 and refused.output == shown.output, refused.output
