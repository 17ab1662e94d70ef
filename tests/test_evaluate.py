"""Metrics against hand-computed values, predict_logits against the model, and `vit eval`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vitcli.errors import VitError
from vitcli.evaluation.evaluate import map_labels, predict_logits
from vitcli.evaluation.metrics import compute_metrics, confusion_matrix, top_k_accuracy

NAMES = ["a", "b", "c", "d"]
# Six images; logits are log-probabilities so the loss is -mean(log p[true]).
# Class c is never predicted (precision must be 0, not NaN); class d has no image at all.
PROBS = np.array([
    [0.7, 0.1, 0.1, 0.1],  # a → a
    [0.4, 0.3, 0.2, 0.1],  # a → a
    [0.3, 0.4, 0.2, 0.1],  # a → b  (confidence 0.4)
    [0.1, 0.6, 0.2, 0.1],  # b → b
    [0.5, 0.1, 0.3, 0.1],  # b → a  (confidence 0.5)
    [0.1, 0.6, 0.2, 0.1],  # c → b  (confidence 0.6)
])
LABELS = np.array([0, 0, 0, 1, 1, 2])
PATHS = [f"img{i}.png" for i in range(6)]


@pytest.fixture
def metrics():
    return compute_metrics(np.log(PROBS).astype(np.float32), LABELS, NAMES, PATHS)


def test_accuracy_and_loss_by_hand(metrics):
    assert metrics.num_images == 6
    assert metrics.top1 == pytest.approx(3 / 6)
    expected_loss = -(math.log(0.7) + math.log(0.4) + math.log(0.3) + math.log(0.6)
                      + math.log(0.1) + math.log(0.2)) / 6
    assert metrics.loss == pytest.approx(expected_loss, rel=1e-6)
    # Four classes: top-k is top-4, which always holds the true class.
    assert metrics.top_k == 4 and metrics.top5 == 1.0


def test_confusion_rows_are_true_columns_predicted(metrics):
    np.testing.assert_array_equal(metrics.confusion, [
        [2, 1, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 0],
    ])
    # Orientation on its own: two "0"s predicted as "1" land in row 0, column 1.
    np.testing.assert_array_equal(confusion_matrix(np.array([0, 0, 1]), np.array([1, 1, 1]), 2),
                                  [[0, 2], [0, 1]])


def test_per_class_by_hand(metrics):
    got = {m.name: (m.precision, m.recall, m.f1, m.support) for m in metrics.per_class}
    assert got["a"] == pytest.approx((2 / 3, 2 / 3, 2 / 3, 3))
    assert got["b"] == pytest.approx((1 / 3, 1 / 2, 0.4, 2))
    assert got["c"] == (0.0, 0.0, 0.0, 1)  # never predicted: precision 0, not NaN
    assert got["d"] == (0.0, 0.0, 0.0, 0)  # zero support
    assert not any(math.isnan(v) for m in metrics.per_class for v in (m.precision, m.recall, m.f1))


def test_macro_and_weighted_averages_by_hand(metrics):
    # Macro over the classes seen in labels or predictions (a, b, c): d is not in the data.
    assert (metrics.macro.precision, metrics.macro.recall, metrics.macro.f1) == pytest.approx(
        ((2 / 3 + 1 / 3 + 0) / 3, (2 / 3 + 1 / 2 + 0) / 3, (2 / 3 + 0.4 + 0) / 3))
    # Weighted by support 3, 2, 1, 0 out of 6.
    assert (metrics.weighted.precision, metrics.weighted.recall, metrics.weighted.f1) == \
        pytest.approx(((3 * 2 / 3 + 2 / 3) / 6, (2 + 1) / 6, (2 + 0.8) / 6))
    assert metrics.macro.support == metrics.weighted.support == 6


def test_most_confused_and_misclassified(metrics):
    assert metrics.most_confused == [("a", "b", 1), ("b", "a", 1), ("c", "b", 1)]
    got = [(p, t, pr, round(c, 6)) for p, t, pr, c in metrics.misclassified]
    assert got == [("img5.png", "c", "b", 0.6), ("img4.png", "b", "a", 0.5),
                   ("img2.png", "a", "b", 0.4)]


def test_top_k_by_hand():
    logits = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # true 0 ranks 6th: outside top-5
                       [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # true 4 ranks 5th: inside top-5
                       [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])  # all tied: counts as a hit
    labels = np.array([0, 4, 5])
    assert top_k_accuracy(logits, labels, 5) == pytest.approx(2 / 3)
    assert top_k_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    m = compute_metrics(logits, labels, list("uvwxyz"))
    assert m.top_k == 5 and m.top5 == pytest.approx(2 / 3)
    assert m.misclassified[0][0] in {"0", "1"}  # no paths: named by index
    two = compute_metrics(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([0, 1]), ["x", "y"])
    assert two.top_k == 2 and two.top5 == 1.0 and two.top1 == 0.5


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_in_the_data(metrics):
    # Recall a 2/3, b 1/2, c 0; d has no image, so it is not in the mean.
    assert metrics.balanced_accuracy == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    # Nine "x" all right, one "y" wrong: top-1 says 90 %, balanced accuracy 50 %.
    logits = np.array([[2.0, 0.0]] * 10)
    skewed = compute_metrics(logits, np.array([0] * 9 + [1]), ["x", "y"])
    assert skewed.top1 == pytest.approx(0.9) and skewed.balanced_accuracy == pytest.approx(0.5)
    # Balanced classes: equal to top-1.
    even = compute_metrics(np.array([[1.0, 0], [1.0, 0], [0, 1.0], [1.0, 0]]),
                           np.array([0, 0, 1, 1]), ["x", "y"])
    assert even.balanced_accuracy == pytest.approx(even.top1) == pytest.approx(0.75)


def test_to_dict_is_json(metrics):
    data = json.loads(json.dumps(metrics.to_dict()))
    assert data["top1"] == 0.5 and data["top_k"] == 4
    assert data["balanced_accuracy"] == pytest.approx(7 / 18)
    assert data["confusion"][2] == [0, 1, 0, 0]
    assert data["per_class"][2] == {"name": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                    "support": 1}
    assert data["most_confused"][0] == {"true": "a", "predicted": "b", "count": 1}
    assert data["misclassified"][0]["path"] == "img5.png"
    assert set(data["macro_avg"]) == {"precision", "recall", "f1", "support"}


def test_map_labels_by_name_and_unknown_class_error():
    # Data classes in another order, and only two of the model's three.
    got = map_labels(["triangle", "circle"], ["circle", "square", "triangle"],
                     np.array([0, 1, 1, 0]))
    np.testing.assert_array_equal(got, [2, 0, 0, 2])
    with pytest.raises(VitError, match="hexagon") as err:
        map_labels(["circle", "hexagon"], ["circle", "square"], np.array([0, 1]), data="imgs")
    assert str(err.value).startswith("imgs: class hexagon not known to the model")


def test_predict_logits_matches_preprocessing_and_model(tiny_model):
    import torch

    from vitcli.model.checkpoint import default_preprocessing

    pre = default_preprocessing(tiny_model.config)
    pre.mean, pre.std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(pre.normalize(pixels))).numpy()
    tiny_model.train()
    seen = []
    got = predict_logits(tiny_model, pixels, mean=pre.mean, std=pre.std, batch_size=2,
                         progress=lambda done, total: seen.append((done, total)))
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert tiny_model.training  # the caller's mode is restored
    assert seen == [(2, 5), (4, 5), (5, 5)]


# ------------------------------------------------------------------------------- vit eval


def _run(args: list[str], cwd: Path, monkeypatch):
    from typer.testing import CliRunner

    from vitcli.cli import app

    monkeypatch.chdir(cwd)  # the default --out folder is relative: runs/eval/<name>
    monkeypatch.setenv("COLUMNS", "160")
    return CliRunner().invoke(app, args)


def test_eval_lines_read_whole_at_80_columns(tiny_model_file, image_folder, tmp_path,
                                             monkeypatch):
    """The confusion matrix's note was its caption, wrapped to a 3-class table's width
    ('... also in' / 'confusion_matrix.png'); the header and the skipped-files warning
    wrapped mid-phrase too. Each now breaks between its facts."""
    (image_folder / "square" / "notes.txt").write_text("seen on 3 May")
    (image_folder / "circle" / "broken.png").write_bytes(b"not a png")
    monkeypatch.chdir(tmp_path)
    from typer.testing import CliRunner

    from vitcli.cli import app

    assert tiny_model_file.parent == image_folder.parent == tmp_path  # names as typed here
    result = CliRunner().invoke(app, ["eval", "--model", tiny_model_file.name, "--data",
                                      image_folder.name, "--precision", "auto", "--device",
                                      "cpu"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    out = [line.rstrip() for line in result.stdout.splitlines()]
    assert "rows: true class, columns: predicted; also in confusion_matrix.png" in out
    assert out[0] == f"{tiny_model_file.name} on folder {image_folder.name}/: 24 images; 3 classes"
    import torch

    from vitcli.devices import batch_of, choose_precision
    from vitcli.model.config import call_macs

    macs = call_macs(auto_config(tiny_model_file), 24)  # the folder's 24 images, one batch
    reason = choose_precision("auto", torch.device("cpu"), macs=macs, call=batch_of(24)).reason
    assert reason and any(line.endswith(f"({reason})") for line in out[1:3]), out[:3]
    err = [line.rstrip() for line in result.stderr.splitlines()]
    assert "warning: skipped 1 file that is not an image and 1 unreadable image" in err, err


def test_cli_eval_sections_files_and_json(tiny_model_file, image_folder, tmp_path, monkeypatch):
    (image_folder / "circle" / "broken.png").write_bytes(b"not a png")
    result = _run(["eval", "--model", str(tiny_model_file), "--data", str(image_folder),
                   "--json", str(tmp_path / "report.json"), "--batch-size", "7"],
                  tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    # 3 classes: top-k would always read 100 %, so the summary leaves it out.
    assert "top-3" not in result.stdout and "top-5" not in result.stdout
    for section in ("top-1 accuracy", "balanced accuracy", "per class", "macro avg", "weighted avg", "confusion matrix", "true \\ predicted",
                    "circle", "square", "triangle", "results in"):
        assert section in result.stdout, section
    assert "skipped 1 unreadable image" in result.stderr and "broken.png" in result.stderr

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["num_images"] == 24 and report["top_k"] == 3
    recalls = [c["recall"] for c in report["per_class"]]
    assert report["balanced_accuracy"] == pytest.approx(sum(recalls) / 3)
    assert report["class_names"] == ["circle", "square", "triangle"]
    assert np.array(report["confusion"]).sum(axis=1).tolist() == [8, 8, 8]
    assert [b["path"].endswith("broken.png") for b in report["bad_files"]] == [True]
    assert len(report["misclassified"]) == 24 - round(report["top1"] * 24)

    out = tmp_path / "runs" / "eval" / f"tiny-on-{image_folder.name}"
    for name in ("metrics.json", "per_class.csv", "misclassified.csv", "confusion_matrix.png",
                 "bad_files.txt"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["top1"] == report["top1"]
    rows = (out / "misclassified.csv").read_text().splitlines()
    assert rows[0] == "path,true,predicted,confidence"
    assert len(rows) == 1 + len(report["misclassified"])


def test_cli_eval_lists_mistakes_relative_to_the_data_folder_given(tiny_model_file, image_folder,
                                                                   tmp_path, monkeypatch):
    """The misclassified table showed /abs/path/to/shapes/circle/000.png on every row when
    --data was the relative `shapes`: rows are relative to the folder the user named, and a
    stranger's file name still reaches the terminal escaped."""
    evil = image_folder / "circle" / "\x1b[2Jevil.png"
    (image_folder / "circle" / "000.png").rename(evil)
    for n, given in enumerate(("shapes", "./shapes/")):
        result = _run(["eval", "--model", str(tiny_model_file), "--data", given,
                       "--out", str(tmp_path / f"out{n}"), "--show", "100"],
                      tmp_path, monkeypatch)
        assert result.exit_code == 0, result.output
        table = result.stdout.split("misclassified (")[1]
        rows = [line for line in table.splitlines() if ".png" in line]
        assert rows and not any(str(tmp_path) in row for row in rows), rows
        assert all(row.strip("│ ").startswith(("circle/", "square/", "triangle/")) for row in rows)
        assert "\x1b" not in result.stdout
    report = json.loads((tmp_path / "out1" / "metrics.json").read_text())
    shown = [m for m in report["misclassified"] if "evil" in m["path"]]
    assert not shown or "\\x1b[2Jevil.png" in table  # escaped, shown if misclassified


def test_eval_equals_hand_pipeline(tiny_model_file, image_folder):
    """The figures equal the model run image by image through Preprocessing.load."""
    import torch

    from vitcli.evaluation.evaluate import evaluate
    from vitcli.model.checkpoint import load_model

    report = evaluate(tiny_model_file, image_folder, device="cpu")
    mf = load_model(tiny_model_file)
    paths = sorted(image_folder.glob("*/*.png"))
    with torch.no_grad():
        logits = mf.model(torch.from_numpy(np.stack([mf.preprocessing.load(p) for p in paths])))
    labels = np.array([mf.class_names.index(p.parent.name) for p in paths])
    expected = compute_metrics(logits.numpy(), labels, mf.class_names)
    assert report.metrics.num_images == len(paths) == 24
    assert report.metrics.top1 == pytest.approx(expected.top1)
    assert report.metrics.loss == pytest.approx(expected.loss, rel=1e-5)
    np.testing.assert_array_equal(report.metrics.confusion, expected.confusion)


def test_cli_eval_subset_of_model_classes_is_fine(tiny_model_file, tmp_path, monkeypatch):
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "two", per_class=3, classes=["triangle", "circle"])
    result = _run(["eval", "-m", str(tiny_model_file), "-d", str(data), "--out",
                   str(tmp_path / "o")], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert report["absent_classes"] == ["square"]
    assert [c["support"] for c in report["per_class"]] == [3, 0, 3]


def test_cli_eval_unknown_class_is_one_line_error(tiny_model_file, tmp_path, monkeypatch):
    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "odd", per_class=2, classes=["circle", "hexagon"])
    result = _run(["eval", "--model", str(tiny_model_file), "--data", str(data)],
                  tmp_path, monkeypatch)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "hexagon" in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing written for a failed evaluation


def test_cli_eval_needs_model(tmp_path, monkeypatch):
    result = _run(["eval", "--data", str(tmp_path)], tmp_path, monkeypatch)
    assert result.exit_code == 2 and "--model" in result.stderr


def test_cli_eval_output_mistakes_are_caught_before_reading(tiny_model_file, image_folder,
                                                            tmp_path, monkeypatch):
    (tmp_path / "taken").write_text("a file, not a folder")
    for args, words in ((["--out", str(tmp_path / "taken")], "is a file"),
                        (["--json", str(tmp_path)], "is a folder")):
        result = _run(["eval", "-m", str(tiny_model_file), "-d", str(image_folder), *args],
                      tmp_path, monkeypatch)
        assert result.exit_code == 2 and result.exception is not None
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    result = _run(["eval", "-m", str(tiny_model_file), "-d", str(image_folder),
                   "--json", str(tmp_path / "taken" / "r.json")], tmp_path, monkeypatch)
    assert result.exit_code == 1 and "cannot write" in result.stderr
    assert "Traceback" not in result.output


def auto_config(path):
    from vitcli.model.checkpoint import check_model_file

    return check_model_file(path).config


def test_eval_precision_is_chosen_recorded_and_printed(tiny_model_file, image_folder, tmp_path,
                                                       monkeypatch):
    """bf16 autocast gives the fp32 top-1 on (nearly) every image; the choice is in the JSON."""
    from vitcli.evaluation.evaluate import evaluate

    fp32 = evaluate(tiny_model_file, image_folder, device="cpu", precision="fp32")
    bf16 = evaluate(tiny_model_file, image_folder, device="cpu", precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    agree = (np.diag(fp32.metrics.confusion).sum(), np.diag(bf16.metrics.confusion).sum())
    assert abs(int(agree[0]) - int(agree[1])) <= 1
    auto = evaluate(tiny_model_file, image_folder, device="cpu")  # tiny: fp32 everywhere
    assert auto.precision == "fp32" and auto.precision_reason.startswith("auto")
    assert auto.metrics.top1 == fp32.metrics.top1
    # on a CPU with bf16 units `auto` weighs the batch it will run: --batch-size 256 of
    # this model is enough work for bf16 here, the folder's 24 images are not
    import vitcli.devices as devices
    from vitcli.model.config import call_macs

    monkeypatch.setattr(devices, "cpu_bf16_units", lambda: "AMX-BF16")
    monkeypatch.setattr(devices, "BF16_MIN_MACS", call_macs(auto_config(tiny_model_file), 100))
    few = evaluate(tiny_model_file, image_folder, device="cpu", batch_size=256)
    assert few.precision == "fp32" and "pays from" in few.precision_reason
    monkeypatch.setattr(devices, "BF16_MIN_MACS", call_macs(auto_config(tiny_model_file), 20))
    enough = evaluate(tiny_model_file, image_folder, device="cpu", batch_size=256)
    assert enough.precision == "bf16" and enough.precision_reason.startswith("auto: AMX-BF16")
    assert np.array_equal(enough.raw_logits, bf16.raw_logits)  # the bf16 weights: same numbers

    result = _run(["eval", "--model", str(tiny_model_file), "--data", str(image_folder),
                   "--precision", "bf16", "--json", str(tmp_path / "r.json")],
                  tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "precision bf16" in result.stdout
    written = json.loads((tmp_path / "r.json").read_text())
    # one name per meaning: "precision" is the classification metric only
    assert written["compute_precision"] == "bf16" and "precision" not in written
    assert written["compute_precision_reason"] == "asked for"
    assert set(written["macro_avg"]) == {"precision", "recall", "f1", "support"}
    bad = _run(["eval", "--model", str(tiny_model_file), "--data", str(image_folder),
                "--precision", "half"], tmp_path, monkeypatch)
    assert bad.exit_code != 0 and "--precision must be one of" in bad.stderr


def test_eval_runs_on_the_threads_chosen_and_records_them(tiny_model_file, image_folder,
                                                          tmp_path, monkeypatch):
    """eval ran torch on every core whatever the load (2 cores, one busy: 11 images/s
    instead of 57); the model now runs on the cores free, or --threads N, and the device
    line and the JSON say how many and why. torch's own count is put back after."""
    import torch

    import vitcli.devices as devices
    import vitcli.evaluation.evaluate as E

    ran_on: list[int] = []
    real = E.predict_logits
    monkeypatch.setattr(E, "predict_logits",
                        lambda *a, **kw: ran_on.append(torch.get_num_threads()) or real(*a, **kw))
    monkeypatch.setattr(devices, "usable_cores", lambda: 4)
    monkeypatch.setattr(devices, "load_average", lambda: 1.0)  # 3 of the 4 cores free
    before = torch.get_num_threads()
    report = E.evaluate(tiny_model_file, image_folder, device="cpu")
    assert ran_on == [3] and torch.get_num_threads() == before
    assert (report.threads, report.threads_reason) == (3, "3 of 4 cores free, load 1.0")
    asked = E.evaluate(tiny_model_file, image_folder, device="cpu", threads=1)
    assert ran_on[-1] == 1 and (asked.threads, asked.threads_reason) == (1, "--threads")

    result = _run(["eval", "--model", str(tiny_model_file), "--data", str(image_folder),
                   "--device", "cpu", "--json", str(tmp_path / "r.json")], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "cpu, 3 threads (3 of 4 cores free, load 1.0), " in result.stdout
    written = json.loads((tmp_path / "r.json").read_text())
    assert (written["threads"], written["threads_reason"]) == (3, "3 of 4 cores free, load 1.0")
    monkeypatch.setattr(devices, "thread_limit", lambda: 8)
    for bad in ("9", "5000", "-1"):  # past this machine's limit, past --threads' own, negative
        result = _run(["eval", "--model", str(tiny_model_file), "--data", str(image_folder),
                       "--threads", bad], tmp_path, monkeypatch)
        assert result.exit_code == 2 and result.stderr.startswith("error:"), result.output
        assert result.stderr.count("\n") == 1 and "--threads" in result.stderr


def test_eval_folders_are_named_by_model_and_data_and_numbered_readably(tmp_path):
    from vitcli.evaluation.evaluate import new_eval_dir

    run_model = tmp_path / "e100" / "weights" / "best.safetensors"
    run_model.parent.mkdir(parents=True)
    run_model.write_bytes(b"")
    root = tmp_path / "runs" / "eval"
    first = new_eval_dir(run_model, root, data="examples/shapes/val")
    again = new_eval_dir(run_model, root, data="examples/shapes/val")
    third = new_eval_dir(run_model, root, data="examples/shapes/val/")
    assert [first.name, again.name, third.name] == [
        "e100-on-shapes-val", "e100-on-shapes-val-2", "e100-on-shapes-val-3"]  # not e1002
    assert new_eval_dir(tmp_path / "m.safetensors", root, data="imgs").name == "m-on-imgs"


def _train_tiny(tmp_path, data, **kw):
    import torch

    from vitcli.training.recipe import TrainOptions
    from vitcli.training.trainer import train

    torch.set_num_threads(1)
    options = TrainOptions(data=str(data), project=str(tmp_path / "runs"), patch=8, depth=1,
                           embed_dim=16, heads=2, mlp_ratio=2.0, batch_size=16, epochs=1,
                           device="cpu", cache_dir=str(tmp_path / "cache"), threads=1, **kw)
    return train(options)


@pytest.mark.slow
def test_eval_val_split_on_a_model_that_validated_on_a_val_folder_warns(tmp_path, monkeypatch):
    from conftest import make_image_folder

    from vitcli.evaluation.evaluate import evaluate

    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=10)
    make_image_folder(data / "val", per_class=3)
    result = _train_tiny(tmp_path, data)
    best = result.best_path
    report = evaluate(best, data, val_split=0.1, seed=0, device="cpu")
    assert report.warnings and "trained on" in report.warnings[0]
    assert evaluate(best, data / "val", device="cpu").warnings == []  # the right images

    carved = _train_tiny(tmp_path, data / "train", val_split=0.2, seed=1, name="carved")
    assert evaluate(carved.best_path, data / "train", val_split=0.2, seed=1,
                    device="cpu").warnings == []
    other = evaluate(carved.best_path, data / "train", val_split=0.1, seed=0, device="cpu")
    assert other.warnings and "--val-split 0.2 --seed 1" in other.warnings[0]



def test_a_class_missing_from_the_data_reads_dash_not_zero(tiny_model_file, image_folder,
                                                           tmp_path, monkeypatch):
    """Data holding only some of the model's classes: the missing class has no recall or F1
    (and no precision unless predicted), shown as "—" rather than as a 0.000 failure."""
    import shutil

    shutil.rmtree(image_folder / "triangle")
    result = _run(["eval", "--model", str(tiny_model_file), "--data", str(image_folder)],
                  tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    line = next(row for row in result.stdout.splitlines() if "triangle" in row and "│" in row
                and row.strip().startswith("│ triangle"))
    cells = [c.strip() for c in line.strip("│ ").split("│")]
    assert cells[0] == "triangle" and cells[2:] == ["—", "—", "0"], cells


def test_eval_calls_a_text_file_a_file_that_is_not_an_image(tiny_model_file, image_folder,
                                                              tmp_path, monkeypatch):
    """'skipped 1 unreadable image (first: square/notes.txt: not an image file; ignored)': a
    .txt is no image at all. The warning counts skipped files by kind, as every command."""
    (image_folder / "square" / "notes.txt").write_text("seen on 3 May")
    (image_folder / "circle" / "broken.png").write_bytes(b"not a png")
    result = _run(["eval", "--model", str(tiny_model_file), "--data", str(image_folder)],
                  tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    err = " ".join(result.stderr.split())
    assert "skipped 1 file that is not an image and 1 unreadable image" in err, err
    assert "unreadable images" not in err and "; ignored" not in err


def test_auto_names_the_batch_it_weighed(tiny_model_file, image_folder, monkeypatch):
    """"auto: 0.5 GMAC a batch, below the 1 GMAC ..." (the wording then) left a user of --batch-size 256 on 24
    images guessing which batch; the reason names it: the images, when fewer than a batch."""
    import vitcli.devices as devices
    from vitcli.evaluation.evaluate import evaluate

    monkeypatch.setattr(devices, "cpu_bf16_units", lambda: "AMX-BF16")
    few = evaluate(tiny_model_file, image_folder, device="cpu", batch_size=256)
    assert few.precision == "fp32"
    assert few.precision_reason.startswith("auto: ") and \
        " GMAC a batch of 24 images; AMX-BF16 pays from 1 GMAC" \
        in few.precision_reason
    one = evaluate(tiny_model_file, image_folder, device="cpu", batch_size=1)
    assert " GMAC a batch of 1 image; AMX-BF16 pays" in one.precision_reason
