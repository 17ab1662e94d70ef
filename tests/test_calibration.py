"""Temperature scaling: the fit, the metrics, the model file, every consumer (issue 18)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES

from vitcli.errors import VitError
from vitcli.evaluation import calibration as cal


def overconfident(n: int = 3000, k: int = 5, scale: float = 5.0, seed: int = 0):
    """Logits drawn so that softmax(z) is the true posterior, then scaled ×`scale`.

    Labels are sampled from softmax(z) itself, so T = 1 is calibrated by construction and
    the ×5 model is over-confident by exactly a factor 5.
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, k))
    p = cal.probabilities(z)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return z * scale, labels


def test_calibration_lowers_ece_on_an_overconfident_model():
    logits, labels = overconfident()
    t = cal.fit_temperature(logits, labels)
    assert t == pytest.approx(5.0, rel=0.1)  # it finds the factor the logits were scaled by
    m = cal.measure(logits, labels, t)
    assert m.ece_before > 0.1 and m.ece_after < 0.03
    assert m.ece_after < m.ece_before / 4
    assert m.nll_after < m.nll_before and m.brier_after < m.brier_before
    # top-1 cannot change
    assert (cal.probabilities(logits, t).argmax(1) == logits.argmax(1)).all()


def test_ece_brier_nll_by_hand():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    # bins of width 1/15: 0.9 → bin 13 (correct), 0.8 → bin 11 (correct),
    # 0.6 and 0.55 → bin 8 ((0.5333, 0.6]): one right, one wrong, confidence 0.575
    expected = (abs(1 - 0.9) + abs(1 - 0.8) + 2 * abs(0.5 - 0.575)) / 4
    assert cal.ece(probs, labels) == pytest.approx(expected)
    brier = np.mean([0.01 + 0.01, 0.36 + 0.36, 0.04 + 0.04, 0.2025 + 0.2025])
    assert cal.brier(probs, labels) == pytest.approx(brier)
    logits = np.log(probs)
    assert cal.nll(logits, labels) == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.55])))
    cov, acc = cal.coverage_curve(probs, labels)
    assert cov.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert acc.tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.75])


def test_no_or_too_little_validation_data_leaves_temperature_one():
    assert cal.fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0
    logits, labels = overconfident(n=5)
    assert cal.fit_temperature(logits, labels) == 1.0
    # a flat NLL (all logits equal) gives no reason to move T
    assert cal.fit_temperature(np.zeros((50, 3)), np.arange(50) % 3) == 1.0


def test_temperature_round_trips_through_the_model_file(tmp_path: Path, tiny_model):
    from vitcli.model.checkpoint import load_model, save_model

    path = save_model(tmp_path / "m.safetensors", tiny_model, class_names=CLASSES,
                      temperature=2.5)
    mf = load_model(path)
    assert mf.temperature == 2.5


def test_older_files_have_temperature_one_and_no_unknown_rule(tiny_model_file: Path):
    from vitcli.model.checkpoint import load_model, read_metadata

    assert "temperature" not in read_metadata(tiny_model_file)
    mf = load_model(tiny_model_file)
    assert mf.temperature == 1.0 and mf.ood is None


@pytest.mark.parametrize("value", ["nan", "-1", "0", "abc", "1e9"])
def test_a_bad_stored_temperature_is_a_one_line_error(tmp_path: Path, tiny_model, value):
    from vitcli.model.checkpoint import load_model, save_model

    path = save_model(tmp_path / "m.safetensors", tiny_model, class_names=CLASSES,
                      extra={"temperature": value})
    with pytest.raises(VitError, match="temperature"):
        load_model(path)


@pytest.mark.slow
def test_temperature_travels_into_the_onnx_graph(tmp_path: Path, tiny_model):
    """Same probabilities (1e-5) from the model file on PyTorch and from the ONNX file, and
    they are softmax(logits / T) of the bare model: every consumer sees one set."""
    import torch

    from vitcli.deploy.backends import open_backend
    from vitcli.deploy.export import export_onnx
    from vitcli.deploy.onnx_checks import random_inputs
    from vitcli.evaluation.metrics import softmax
    from vitcli.model.checkpoint import load_model, save_model

    path = save_model(tmp_path / "m.safetensors", tiny_model, class_names=CLASSES,
                      temperature=0.25)  # sharpens: differences would show
    onnx_path = export_onnx(path, tmp_path / "m.onnx").path
    mf = load_model(path)
    x = random_inputs(mf, 8, seed=0)
    with torch.no_grad():
        expected = softmax(tiny_model(torch.from_numpy(x)).numpy() / 0.25)
    torch_probs = softmax(open_backend(path, device="cpu").logits(x))
    onnx_backend = open_backend(onnx_path)
    onnx_probs = softmax(onnx_backend.logits(x))
    np.testing.assert_allclose(torch_probs, expected, atol=1e-5)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5)
    assert onnx_backend.metadata["temperature"] == "0.25"
    assert not np.allclose(expected, softmax(tiny_model(torch.from_numpy(x)).detach().numpy()),
                           atol=1e-3)  # T really changed them


@pytest.mark.parametrize("scale", [0.3, 1.0, 30.0])
def test_no_validation_error_sets_laplaces_confidence_not_certainty(scale):
    """100 of 100 right: the NLL would fall to T → 0 (every probability 1.0000). T is set where
    the mean top-1 probability is 101/102 instead, for under- and over-confident logits."""
    rng = np.random.default_rng(0)
    labels = np.arange(100) % 5
    logits = rng.normal(0, 0.3, (100, 5))
    logits[np.arange(100), labels] += 2.0  # every image right
    logits *= scale
    t = cal.fit_temperature(logits, labels)
    assert cal.T_MIN < t < cal.T_MAX
    confidence = cal.probabilities(logits, t).max(axis=1)
    assert confidence.mean() == pytest.approx(101 / 102, abs=1e-6)
    assert confidence.min() < 0.9999  # not certainty
    one_wrong = labels.copy()
    one_wrong[0] = (labels[0] + 1) % 5  # one error: the NLL has a minimum, fitted as before
    assert cal.fit_temperature(logits, one_wrong) != pytest.approx(t, rel=1e-3)


# ----------------------------------------------- a fitted T that makes calibration worse


def one_confident_mistake():
    """10 images, 2 classes: nine right at 90 %, one wrong at 99 %. Accuracy is 90 %, and the
    one mistake rules the NLL: the fit softens every image (T ≈ 1.7), which takes the nine
    right ones further below their 100 % and the ECE from 18.9 % to 28.9 %."""
    logits = np.array([[np.log(9.0), 0.0]] * 9 + [[np.log(99.0), 0.0]])
    labels = np.array([0] * 9 + [1])
    return logits, labels


def test_a_fitted_temperature_that_raises_the_ece_is_not_kept():
    """A 0.01-minute run on few validation images stored a T that took its ECE from 3.5 % to
    6.3 %: the fitted T is kept only when it makes neither the ECE nor the NLL worse."""
    logits, labels = one_confident_mistake()
    fitted = cal.fit_temperature(logits, labels)
    assert fitted > 1.2  # the NLL alone asks for it
    assert cal.nll(logits, labels, fitted) < cal.nll(logits, labels)
    choice = cal.choose_temperature(logits, labels)
    assert choice.temperature == 1.0 and choice.fitted == pytest.approx(fitted)
    assert not choice.kept_fit and choice.images == 10
    assert choice.ece_at_1 == pytest.approx(0.189) and choice.ece_fitted > 0.28
    assert choice.reason == (f"the fitted T = {fitted:.3g} would raise the validation ECE "
                             "from 18.9% to 28.9%")
    assert choice.summary() == "T = 1 kept, since " + choice.reason
    record = choice.to_dict()
    assert record["temperature"] == 1.0 and record["fitted_temperature"] == pytest.approx(fitted)
    assert record["kept_fit"] is False and record["fitted"]["ece"] > record["at_1"]["ece"]


def test_a_fitted_temperature_that_lowers_the_ece_is_kept_and_said():
    logits, labels = overconfident()
    choice = cal.choose_temperature(logits, labels)
    assert choice.kept_fit and choice.reason == ""
    assert choice.temperature == pytest.approx(cal.fit_temperature(logits, labels))
    assert choice.ece_fitted < choice.ece_at_1 and choice.nll_fitted < choice.nll_at_1
    assert choice.summary().startswith(f"T = {choice.temperature:.3g} fitted on 3,000 "
                                       "validation images: ECE ")


@pytest.mark.parametrize("n, reason", [(0, "there are no validation images"),
                                       (1, "1 validation image is too few to fit one "
                                           "(10 needed)"),
                                       (5, "5 validation images are too few")])
def test_too_few_images_keep_one_and_say_why(n, reason):
    logits, labels = overconfident(n=max(n, 1))
    choice = cal.choose_temperature(logits[:n], labels[:n])
    assert choice.temperature == 1.0 and reason in choice.reason


@pytest.mark.parametrize("seed", range(40))
def test_the_stored_temperature_never_makes_the_validation_calibration_worse(seed):
    """Whatever the validation set (small, barely trained, all right or all wrong), what is
    stored has an ECE and an NLL no worse than T = 1 on the images it was chosen on."""
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(10, 40)), int(rng.integers(2, 6))
    logits = rng.normal(0, rng.uniform(0.3, 4.0), (n, k))
    labels = rng.integers(0, k, n) if seed % 3 else logits.argmax(1)  # every third all right
    choice = cal.choose_temperature(logits, labels)
    t = choice.temperature
    assert cal.ece(cal.probabilities(logits, t), labels) <= cal.ece(cal.probabilities(logits),
                                                                     labels) + 1e-12
    assert cal.nll(logits, labels, t) <= cal.nll(logits, labels) + 1e-12
    assert (t == choice.fitted) == choice.kept_fit or choice.fitted == 1.0


def test_training_stores_t_1_and_says_why_in_the_file_and_vit_info(tmp_path: Path,
                                                                   tiny_model_file: Path,
                                                                   monkeypatch):
    """The end of `vit train` (training/calibrate.py) goes through the same rule: a fit that
    would raise the validation ECE leaves T = 1 in the model file, whose `calibration` entry
    says why, and `vit info` shows that sentence."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from vitcli.cli import app
    from vitcli.model.checkpoint import load_model, read_metadata
    from vitcli.training.calibrate import calibrate_model_file

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    data = SimpleNamespace(train_pixels=pixels[:18], train_labels=np.arange(18) % 3,
                           val_pixels=pixels[18:], val_labels=np.arange(12) % 3)
    # Whatever the NLL fit finds, a T of 0.05 turns a random model's probabilities into
    # near-certainty on a third of the images right: it must not be stored.
    monkeypatch.setattr(cal, "fit_temperature", lambda logits, labels: cal.T_MIN)
    trust = calibrate_model_file(tiny_model_file, data, device="cpu")
    assert trust is not None and trust.temperature == 1.0 and not trust.choice.kept_fit
    assert trust.calibration.ece_after == trust.calibration.ece_before
    assert load_model(tiny_model_file).temperature == 1.0
    said = read_metadata(tiny_model_file)["calibration"]
    assert said.startswith("T = 1 kept, since the fitted T = 0.05 would raise the validation")
    shown = CliRunner().invoke(app, ["info", str(tiny_model_file)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and said in shown.output, shown.output
