"""`vit predict`: inputs, both back ends giving the same answers, JSON, bad input, no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, TINY, make_image_folder
from PIL import Image
from typer.testing import CliRunner

from vitcli.cli import app
from vitcli.errors import VitError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model.safetensors, model.onnx exported from it, an image folder), built once."""
    import torch

    from vitcli.deploy.export import export_onnx
    from vitcli.model.checkpoint import save_model
    from vitcli.model.vit import create_model

    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = create_model(num_classes=len(CLASSES), **TINY).eval()
    st = save_model(root / "model.safetensors", model, class_names=CLASSES)
    onnx = export_onnx(st, root / "model.onnx").path
    images = make_image_folder(root / "shapes", per_class=3)
    Image.new("RGB", (50, 20), (200, 30, 30)).save(images / "wide.jpg")  # not square
    return st, onnx, images


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["predict", *args])
    return result.exit_code, result.stdout, result.stderr


def test_collect_images_expands_files_folders_and_globs(models):
    from vitcli.deploy.predict import collect_images

    _, _, images = models
    paths, missing = collect_images([images / "wide.jpg", str(images / "circle"),
                                     f"{images}/*/00[01].png", f"{images}/**/nothing*.png"])
    assert paths[0] == images / "wide.jpg"
    assert len(paths) == 1 + 3 + 4  # the glob's circles are not repeated
    assert [m.path.name for m in missing] == ["nothing*.png"] and not missing[0].ok


def test_a_glob_that_matches_folders_takes_the_images_inside(models):
    from vitcli.deploy.predict import collect_images

    _, _, images = models
    paths, missing = collect_images([f"{images}/c*/"])  # matches the circle folder
    assert not missing
    assert paths and all(p.parent.name == "circle" for p in paths)


def test_backends_agree_on_files_folders_and_globs(models):
    from vitcli.deploy.predict import predict

    st, onnx, images = models
    inputs = [str(images / "wide.jpg"), str(images / "square"), f"{images}/tri*/*.png"]
    by_torch = predict(st, inputs, topk=3, device="cpu")
    by_onnx = predict(onnx, inputs, topk=3)
    assert len(by_torch) == len(by_onnx) == 7
    for t, o in zip(by_torch, by_onnx):
        assert t.path == o.path and t.ok and o.ok
        assert t.labels[0] == o.labels[0]
        np.testing.assert_allclose(t.probabilities, o.probabilities, atol=1e-4)
        assert sorted(t.labels) == sorted(CLASSES)


def test_predict_precision_on_pytorch_and_ignored_on_onnx(models):
    from vitcli.deploy.predict import predict

    st, onnx, images = models
    fp32 = predict(st, [images / "circle"], device="cpu", precision="fp32")
    bf16 = predict(st, [images / "circle"], device="cpu", precision="bf16")
    assert [p.labels[0] for p in fp32] == [p.labels[0] for p in bf16]
    for a, b in zip(fp32, bf16):  # bf16 autocast: close, not equal
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=0.05)
    code, _, err = run(str(images / "circle"), "--model", str(st), "--precision", "bf16")
    assert code == 0 and "precision bf16" in err
    code, _, err = run(str(images / "circle"), "--model", str(onnx), "--precision", "bf16")
    assert code == 0 and "note: this ONNX file runs in fp32, as exported; --precision bf16 " \
        "ignored" in err
    for honoured in ("fp32", "auto"):  # what an fp32 file does anyway: no note
        code, _, err = run(str(images / "circle"), "--model", str(onnx), "--precision", honoured)
        assert code == 0 and "note" not in err, err
    code, _, err = run(str(images / "circle"), "--model", str(onnx), "--precision", "fp8")
    assert code != 0 and err.startswith("error:") and "--precision must be one of" in err


def test_json_lines_parse_and_stdout_holds_nothing_else(models):
    _, onnx, images = models
    code, out, _ = run(str(images / "circle"), "--model", str(onnx), "--json", "--topk", "2")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3
    for record in records:
        assert record["label"] in CLASSES and 0.0 < record["probability"] <= 1.0
        assert [r["label"] for r in record["topk"]][0] == record["label"]
        assert len(record["topk"]) == 2


def test_broken_image_is_reported_and_the_rest_predicted(models, tmp_path: Path):
    st, onnx, images = models
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    good = images / "circle" / "000.png"
    for model in (st, onnx):
        code, out, err = run(str(good), str(broken), str(tmp_path / "gone.jpg"),
                             f"{tmp_path}/nothing*.png", "-m", str(model), "--json")
        assert code == 1
        records = [json.loads(line) for line in out.splitlines()]
        # inputs that match nothing come first (found before any image is read)
        assert [("error" in r) for r in records] == [True, False, True, True]
        assert records[0]["image"].endswith("nothing*.png") and records[1]["image"] == str(good)
        assert str(broken) in err and "gone.jpg" in err and "nothing*.png" in err
        # images counted apart from an input that gave none, as the table counts them
        assert "2 of 3 images could not be predicted; no image in 1 input" in err


def test_tables_and_csv(models, tmp_path: Path):
    st, _, images = models
    table_csv = tmp_path / "out.csv"
    code, out, _ = run(str(images), "-m", str(st), "--csv", str(table_csv), "-k", "1")
    assert code == 0
    assert f"10 images in {images}{os.sep}" in out.splitlines()  # many images: one table,
    assert "circle/000.png" in out and str(images / "circle") not in out  # files within it
    rows = table_csv.read_text().splitlines()
    assert rows[0].startswith("image,label,probability") and len(rows) == 11
    assert rows[-1].split(",")[0] == str(images / "wide.jpg")
    code, out, _ = run(str(images / "wide.jpg"), "-m", str(st))
    assert code == 0 and "probability" in out and all(c in out for c in CLASSES)


def test_common_folder_of_the_summary_table(tmp_path: Path):
    from vitcli.commands.predict import common_folder

    a, b = tmp_path / "x" / "a" / "1.png", tmp_path / "x" / "b" / "2.png"
    assert common_folder([a, b]) == tmp_path / "x"
    assert common_folder([a]) == tmp_path / "x" / "a"
    assert common_folder([Path("1.png"), Path("2.png")]) is None  # the current folder
    assert common_folder([a, Path("rel/2.png")]) is None  # absolute and relative mixed
    assert common_folder([]) is None


def test_single_image_name_is_never_broken_on_narrow_output(models, tmp_path: Path,
                                                             monkeypatch):
    """A table title wraps to the table's width; the file name must stay whole."""
    from vitcli.commands._common import console

    st, _, images = models
    deep = tmp_path / "a-rather-long-folder-name" / "and-another-one" / "image-of-a-shape.png"
    deep.parent.mkdir(parents=True)
    deep.write_bytes((images / "circle" / "000.png").read_bytes())
    assert len(str(deep)) > 60
    monkeypatch.setattr(console, "_width", 40)  # what Console(width=40) sets
    code, out, _ = run(str(deep), "-m", str(st), "-k", "2")
    assert code == 0
    assert str(deep) in out.splitlines()  # one whole line, not folded
    assert max(len(line.rstrip()) for line in out.splitlines() if line != str(deep)) <= 40


def test_newest_training_run_is_the_default_model(models, tmp_path: Path, monkeypatch):
    from vitcli.deploy.predict import find_latest_model

    st, _, images = models
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VitError, match="train one first"):
        find_latest_model()
    for i, name in enumerate(["older", "newer"]):
        weights = tmp_path / "runs" / "train" / name / "weights"
        weights.mkdir(parents=True)
        (weights / "best.safetensors").write_bytes(st.read_bytes())
        stamp = time.time() - 100 + i * 50
        os.utime(weights / "best.safetensors", (stamp, stamp))
    assert find_latest_model().parts[-3] == "newer"
    code, out, err = run(str(images / "wide.jpg"), "--json")
    assert code == 0 and "newer" in err and json.loads(out)["label"] in CLASSES


def test_the_pytorch_back_end_checks_the_model_file_once(models, monkeypatch):
    """open_torch parsed the metadata, then load_model checked the whole file again."""
    import vitcli.model.checkpoint as checkpoint
    from vitcli.deploy.backends import open_backend

    st, _, _ = models
    reads = []
    real = checkpoint.read_header
    monkeypatch.setattr(checkpoint, "read_header", lambda path: reads.append(path) or real(path))
    backend = open_backend(st, device="cpu", precision="fp32")
    assert backend.class_names == CLASSES and len(reads) == 1


def test_foreign_and_corrupt_model_files_are_one_line_errors(models, tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper

    _, _, images = models
    image = str(images / "wide.jpg")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not protobuf" * 20)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"  # IR 8, opset 17: one that any onnxruntime reads
    onnx.save(helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)]),
              str(foreign))
    too_new = tmp_path / "too-new.onnx"  # from an onnx newer than this onnxruntime
    newer = helper.make_model(graph)
    newer.ir_version = 99
    onnx.save(newer, str(too_new))
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(models[0].read_bytes()[:500])
    edited = onnx.load(str(models[1]))  # a vitcli graph whose preprocessing was edited since
    for prop in edited.metadata_props:
        if prop.key == "preprocessing":
            pre = json.loads(prop.value)
            prop.value = json.dumps({**pre, "image_size": 2 * pre["image_size"]})
    resized = tmp_path / "resized.onnx"
    onnx.save(edited, str(resized))
    for path, reason in [(junk, "not a valid ONNX file"), (foreign, "not one exported by vitcli"),
                         (too_new, "Unsupported model IR version: 99"),
                         (truncated, "truncated"), (resized, "corrupt vitcli metadata")]:
        code, out, err = run(image, "-m", str(path))
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and str(path) in err and reason in err


def _with_preprocessing(models, tmp_path: Path, changes: dict) -> tuple[Path, Path]:
    """Copies of both model files whose stored preprocessing has `changes` applied."""
    import onnx
    from safetensors.torch import load_file, save_file

    from vitcli.model.checkpoint import read_header

    st, onnx_path, _ = models
    _, metadata = read_header(st)
    pre = json.dumps({**json.loads(metadata["preprocessing"]), **changes})
    bad_st = tmp_path / "bad.safetensors"
    save_file(load_file(str(st)), str(bad_st), metadata={**metadata, "preprocessing": pre})
    edited = onnx.load(str(onnx_path))
    [prop] = [p for p in edited.metadata_props if p.key == "preprocessing"]
    prop.value = pre
    bad_onnx = tmp_path / "bad.onnx"
    onnx.save(edited, str(bad_onnx))
    return bad_st, bad_onnx


@pytest.mark.parametrize("changes, reason", [
    ({"image_size": "x"}, "preprocessing field 'image_size' should be an int"),
    ({"image_size": -32}, "image size must be at least 1"),
    ({"mean": ["a", "b", "c"]}, "preprocessing field 'mean' should be a list of numbers"),
    ({"std": [0.5, 0, 0.5]}, "std values must be positive"),
    ({"std": [0.5, -1, 0.5]}, "std values must be positive"),
    ({"interpolation": "cubic"}, "interpolation must be one of"),
    ({"color_mode": "CMYK"}, "color mode must be RGB or L"),
    ({"crop_fraction": 2}, "crop fraction must be in (0, 1]"),
    ({"crop_fraction": "0.9"}, "preprocessing field 'crop_fraction' should be a number"),
    ({"image_size": 64}, "preprocessing image size 64 differs from the config's image size 32"),
])
def test_corrupt_preprocessing_metadata_is_one_line_on_both_backends(models, tmp_path: Path,
                                                                     changes, reason):
    image = str(models[2] / "wide.jpg")
    for path in _with_preprocessing(models, tmp_path, changes):
        code, out, err = run(image, "-m", str(path))
        assert code == 1 and out == "", err
        assert err.startswith(f"error: {path}: corrupt vitcli metadata (") and reason in err
        assert err.count("\n") == 1


def test_explain_with_onnx_model_says_it_needs_safetensors(models, tmp_path: Path):
    _, onnx, images = models
    code, _, err = run(str(images / "wide.jpg"), "-m", str(onnx), "--explain", str(tmp_path))
    assert code == 2 and ".safetensors" in err
    assert not list(tmp_path.iterdir())


def test_output_places_that_cannot_be_written_are_one_line_errors(models, tmp_path: Path):
    st, _, images = models
    image = str(images / "wide.jpg")
    a_file = tmp_path / "a-file"
    a_file.write_text("in the way")
    for args, code, named in [(["--explain", str(a_file)], 2, a_file),
                              (["--csv", str(tmp_path)], 2, tmp_path),
                              (["--csv", str(a_file / "out.csv")], 1, a_file),
                              (["--explain", str(a_file / "maps")], 1, a_file)]:
        result_code, _, err = run(image, "-m", str(st), *args)
        assert result_code == code, err
        assert err.startswith("error:") and err.count("\n") == 1 and str(named) in err
    assert a_file.read_text() == "in the way"


def test_onnx_predict_never_imports_torch(models):
    """The whole ONNX path, in a fresh interpreter: torch must not appear in sys.modules."""
    _, onnx, images = models
    script = (
        "import sys\n"
        "from vitcli.cli import app\n"
        f"app(['predict', {str(images / 'wide.jpg')!r}, '--model', {str(onnx)!r}, '--json'],"
        " standalone_mode=False)\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert json.loads(lines[0])["label"] in CLASSES  # it really predicted
    assert lines[-1] == "NO-TORCH"


def test_info_reads_an_onnx_files_vitcli_metadata(models, tmp_path: Path):
    """`vit info model.onnx`: the same classes, config and parameters as the .safetensors."""
    import json

    st, onnx, _ = models
    a = CliRunner().invoke(app, ["info", str(st), "--json"])
    b = CliRunner().invoke(app, ["info", str(onnx), "--json"])
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    for key in ("class_names", "config", "preprocessing", "parameters"):
        assert ja[key] == jb[key], key
    assert jb["onnx_opset"] >= 17 and jb["int8"] is False
    assert ja["format_version"] == jb["format_version"] == 1


def test_info_json_of_an_onnx_file_types_its_metadata_as_for_a_model_file(models, tmp_path):
    """ONNX metadata_props are str → str too: `vit info model.onnx --json` decodes them by
    the same rule as the .safetensors file's (numbers, objects, null where empty)."""
    import json

    import onnx as onnx_lib

    _, onnx, _ = models
    proto = onnx_lib.load(str(onnx))
    stored = {"epoch": "4", "val_top1": "", "validation": '{"source": "val_split", '
              '"fraction": 0.2, "seed": 1}', "temperature": "0.75"}
    for key, value in stored.items():
        proto.metadata_props.add(key=key, value=value)
    edited = tmp_path / "edited.onnx"
    onnx_lib.save(proto, str(edited))
    result = CliRunner().invoke(app, ["info", str(edited), "--json"])
    assert result.exit_code == 0, result.output
    raw = json.loads(result.stdout)
    assert raw["format_version"] == 1 and raw["int8"] is False
    assert {k: raw["extra"][k] for k in stored} == {
        "epoch": 4, "val_top1": None, "temperature": 0.75,
        "validation": {"source": "val_split", "fraction": 0.2, "seed": 1}}
    table = CliRunner().invoke(app, ["info", str(onnx)], env={"COLUMNS": "120"})
    assert table.exit_code == 0 and "ONNX, opset" in table.stdout
    foreign = tmp_path / "junk.onnx"
    foreign.write_bytes(b"\x08\x07not really onnx")
    bad = CliRunner().invoke(app, ["info", str(foreign)])
    assert bad.exit_code == 1 and bad.stderr.startswith("error:") and "junk.onnx" in bad.stderr


def test_predict_summary_for_topk_1_has_no_empty_column(models):
    _, onnx, images = models
    code, out, _ = run(str(images), "-m", str(onnx), "--topk", "1")
    assert code == 0 and "probability" in out and "next best" not in out
    code, out, _ = run(str(images), "-m", str(onnx), "--topk", "2")
    assert code == 0 and "next best" in out


def test_precision_is_auto_by_default_and_the_line_says_why(models):
    """--precision auto is the default of train, eval, predict and export's reference; auto
    weighs the batch, so these 3 tiny images stay fp32 and the line says why."""
    import torch

    from vitcli.devices import batch_of, choose_for_batch
    from vitcli.model.checkpoint import check_model_file
    from vitcli.model.config import count_macs

    st, _, images = models
    code, _, err = run(str(images / "circle"), "--model", str(st), "--device", "cpu")
    auto = choose_for_batch("auto", torch.device("cpu"),
                            count_macs(check_model_file(st).config), 3)
    said = " ".join(err.split())
    assert code == 0 and f"precision {auto.name} ({auto.reason})" in said, said
    assert auto.reason.startswith("auto") and batch_of(3) in auto.reason
    code, _, err = run(str(images / "circle"), "--model", str(st), "--precision", "fp32")
    assert code == 0 and "precision fp32 (asked for)" in " ".join(err.split())


def test_unknown_scores_have_two_decimals(capsys):
    from vitcli.commands.predict import MANY, _show
    from vitcli.deploy.predict import Prediction

    scores = [6, 5.1, 9.3, 6.86, 12.345]
    results = [Prediction(Path(f"images/{i}.png"), labels=["a", "b"], probabilities=[0.9, 0.1],
                          score=scores[i % len(scores)], threshold=8.0, unknown=False)
               for i in range(MANY + 1)]
    _show(results, many=True)
    out = capsys.readouterr().out
    for text in ("6.00", "5.10", "9.30", "6.86", "12.35"):
        assert f" {text}" in out, out
    _show(results[:1], many=False)  # not unknown: no score line
    results[0].unknown = True
    _show(results[:1], many=False)
    assert "score 6.00 > threshold 8.00" in capsys.readouterr().out


def test_a_folder_count_agrees_with_the_closing_error(models, tmp_path: Path):
    """'33 images in DIR/' then 'error: 1 of 34 inputs could not be predicted': both lines
    count the images read (a notes.txt beside them is skipped with a note, no input)."""
    import shutil

    _, _, images = models
    st = models[0]
    folder = shutil.copytree(images, tmp_path / "photos")  # 10 images
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"not a png")
    result = CliRunner().invoke(app, ["predict", str(folder), "--model", str(st)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert f"10 of 11 images in {folder}{os.sep} (1 could not be predicted)" in result.stdout
    assert "skipped 1 file that is not an image" in result.stderr
    assert result.stderr.rstrip().endswith("error: 1 of 11 images could not be predicted")


def test_the_closing_error_names_inputs_apart_from_images():
    from vitcli.commands.predict import failure_line

    assert failure_line(34, 1) == "1 of 34 images could not be predicted"
    assert failure_line(1, 1, 1) == "1 of 1 image could not be predicted; no image in 1 input"
    assert failure_line(0, 0, 2, 1) == "no image in 2 inputs; 1 entry could not be read"


def test_fp32_matches_the_onnx_file_to_within_float_rounding(models):
    """`--precision fp32` promised 'exactly the probabilities of the exported ONNX file';
    they differ in the last bits (up to 3.2e-7 measured), so the help says 'to within float
    rounding (about 1e-6)', and that is what this holds it to."""
    from vitcli.deploy.predict import predict

    st, onnx, images = models
    by_torch = predict(st, [images / "circle", images / "wide.jpg"], device="cpu",
                       precision="fp32")
    by_onnx = predict(onnx, [images / "circle", images / "wide.jpg"])
    for t, o in zip(by_torch, by_onnx, strict=True):
        order = np.argsort(o.labels)  # both sorted best first: compare class by class
        np.testing.assert_allclose(np.asarray(t.probabilities)[np.argsort(t.labels)],
                                   np.asarray(o.probabilities)[order], rtol=0, atol=1e-6)
    from tests.test_help import render

    help_text = " ".join(render("predict").replace("│", " ").split())
    assert "exactly" not in help_text
    assert "to within float rounding (about 1e-6)" in help_text


def test_json_and_csv_record_the_precision_and_stderr_says_it(models, tmp_path: Path):
    """--json and --csv carry what the probabilities were computed in, on both back ends;
    the closing stderr line says it in --json mode too (stdout holds only the records)."""
    import csv

    st, onnx, images = models
    for model, args, want in [(st, [], "fp32"), (st, ["--precision", "bf16"], "bf16"),
                              (onnx, [], "fp32")]:
        table = tmp_path / f"{want}-{Path(model).suffix[1:]}.csv"
        code, out, err = run(str(images / "circle"), "-m", str(model), "--json",
                             "--csv", str(table), *args)
        assert code == 0, err
        records = [json.loads(line) for line in out.splitlines()]
        assert [r["compute_precision"] for r in records] == [want] * 3
        # the one statement, broken between its parts at 80 columns
        assert err.startswith(("PyTorch on cpu, ", "onnxruntime on cpu, ")), err
        assert f"precision {want}" in err and err.count("\n") <= 3
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["compute_precision"] for r in rows] == [want] * 3
    assert "precision fp32 (as exported)" in " ".join(err.split())


def edited_onnx(path: Path, out: Path, **metadata: str) -> Path:
    """A copy of an ONNX file with metadata keys set (as a user could set them by hand)."""
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("precision", "bf17", "precision 'bf17' is not a precision vitcli writes"),
    ("epoch", "-1", "epoch '-1' is not an epoch number"),
    ("val_top1", "high", "val_top1 'high' is not an accuracy"),
    ("validation", "{}", "validation '{}' is not how vitcli records"),
    ("vitcli_version", "\x1b[31m1", "vitcli_version"),
])
def test_an_onnx_file_with_a_bad_value_under_a_known_key_is_refused(models, tmp_path, key,
                                                                    value, reason):
    """The ONNX file's metadata keys get the model file's checks (and `precision` only the
    values `vit export --int8` writes): info and predict refuse it in one line."""
    _, onnx, images = models
    bad = edited_onnx(onnx, tmp_path / "bad.onnx", **{key: value})
    for args in (["info", str(bad)], ["predict", str(images / "wide.jpg"), "-m", str(bad)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1 and result.stdout == "", result.output
        assert result.stderr.startswith(f"error: {bad}: corrupt vitcli metadata ({key} ")
        assert reason in result.stderr and result.stderr.count("\n") == 1


def test_an_onnx_files_precision_must_match_its_weights_and_unknown_keys_pass(models,
                                                                            tmp_path):
    from vitcli.deploy.backends import int8_precision

    _, onnx, images = models
    claims = edited_onnx(onnx, tmp_path / "claims.onnx", precision=int8_precision(True))
    result = CliRunner().invoke(app, ["info", str(claims)])
    assert result.exit_code == 1 and "the graph holds no int8 weights" in result.stderr
    noted = edited_onnx(onnx, tmp_path / "noted.onnx", notes="by hand")
    result = CliRunner().invoke(app, ["info", str(noted), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["extra"]["notes"] == "by hand"
    code, _, _ = run(str(images / "wide.jpg"), "-m", str(noted))
    assert code == 0


def test_auto_is_weighed_on_the_first_batch_and_bf16_runs_autocasts_numbers(
        tiny_model_file, monkeypatch):
    """`auto` depends on a batch's work (devices.choose_precision), so the PyTorch back end
    decides on its first batch and keeps that choice; its bf16 copy stores the matrix
    weights in bf16 (the same numbers autocast would cast) and leaves the model file's
    fp32 model, which explanations read, as it was."""
    import numpy as np
    import torch

    import vitcli.devices as devices
    from vitcli.deploy.backends import open_backend
    from vitcli.model.config import call_macs

    monkeypatch.setattr(devices, "cpu_bf16_units", lambda: "AMX-BF16")
    one = open_backend(tiny_model_file, device="cpu", precision="auto")
    monkeypatch.setattr(devices, "BF16_MIN_MACS", call_macs(one.config, 4))
    x = np.random.default_rng(0).standard_normal(
        (8, 3, one.config.image_size, one.config.image_size)).astype(np.float32)
    one.logits(x[:1])
    assert one.compute_precision == "fp32" and "pays from" in one.precision.reason
    many = open_backend(tiny_model_file, device="cpu", precision="auto")
    got = many.logits(x)
    assert many.compute_precision == "bf16" and many.precision.reason.startswith("auto: AMX")
    many.logits(x[:1])
    assert many.compute_precision == "bf16"  # decided once
    model = many.model_file.model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    copied = many._outputs.model  # devices.bf16_copy: only the matrices are new, in bf16
    assert copied.pos_embed is model.pos_embed and copied.norm.weight is model.norm.weight
    assert copied.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(torch.from_numpy(x)).float().numpy()
    np.testing.assert_array_equal(got, want)


def test_auto_weighs_the_batch_asked_for_not_the_readable_images_of_the_first(
        tiny_model_file, tmp_path: Path, monkeypatch):
    """A folder whose first batch is mostly unreadable files ran every batch in fp32: `auto`
    was weighed on the first batch's readable images (3 of 8), so the batches of 8 after it
    kept fp32 too. It weighs --batch-size (or the image count when fewer) now, as eval does,
    and the closing line, --json and the work it names agree with what ran."""
    import vitcli.devices as devices
    from vitcli.model.checkpoint import check_model_file
    from vitcli.model.config import call_macs

    config = check_model_file(tiny_model_file).config
    monkeypatch.setattr(devices, "cpu_bf16_units", lambda: "AMX-BF16")
    monkeypatch.setattr(devices, "BF16_MIN_MACS", call_macs(config, 6))
    folder = make_image_folder(tmp_path / "imgs", per_class=4)  # 12 images, sorted after a*
    for i in range(5):
        (folder / f"a{i}.png").write_bytes(b"not an image")
    result = CliRunner().invoke(app, ["predict", str(folder), "-m", str(tiny_model_file),
                                      "--precision", "auto", "--batch-size", "8", "--json",
                                      "--device", "cpu"], env={"COLUMNS": "200"})
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sum("error" in r for r in records) == 5
    assert {r["compute_precision"] for r in records if "error" not in r} == {"bf16"}
    assert f"precision bf16 (auto: AMX-BF16, {devices.gmac(call_macs(config, 8))} GMAC a " \
        "batch of 8 images)" in " ".join(result.stderr.split())


def test_predict_runs_on_the_threads_chosen_on_both_back_ends(models, monkeypatch,
                                                              ort_threads):
    """predict ran torch and onnxruntime on every core whatever the load; both now run on
    the cores free (or --threads N), which the closing line says. torch's own count is put
    back after each call."""
    import torch

    import vitcli.devices as devices
    from vitcli.deploy.backends import open_backend
    from vitcli.deploy.predict import predict_paths

    st, onnx, images = models
    sessions = ort_threads  # 3 of the 4 cores free
    backend = open_backend(onnx)
    assert sessions == [3] and str(backend.threads) == "3 threads (3 of 4 cores free, load 1.0)"
    assert open_backend(onnx, threads=1).threads.reason == "--threads" and sessions[-1] == 1

    ran_on: list[int] = []
    image = [images / "circle" / "000.png"]
    before = torch.get_num_threads()
    for threads, want in ((0, 3), (1, 1)):
        backend = open_backend(st, device="cpu", threads=threads)
        backend.model_file.model.register_forward_pre_hook(
            lambda module, args: ran_on.append(torch.get_num_threads()))
        assert all(p.ok for p in predict_paths(backend, image))
        assert ran_on[-1] == want and torch.get_num_threads() == before

    code, _, err = run(str(images / "circle"), "-m", str(st), "--device", "cpu")
    assert code == 0 and err.startswith("PyTorch on cpu, 3 threads (3 of 4 cores free, "
                                        "load 1.0), precision "), err
    code, _, err = run(str(images / "circle"), "-m", str(onnx), "--threads", "2")
    assert code == 0 and err.startswith("onnxruntime on cpu, 2 threads (--threads), "), err
    monkeypatch.setattr(devices, "thread_limit", lambda: 8)
    for model in (st, onnx):
        for bad in ("9", "5000", "-1"):  # past this machine's limit, past the option's, < 0
            code, _, err = run(str(images / "circle"), "-m", str(model), "--threads", bad)
            assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
            assert "--threads" in err
