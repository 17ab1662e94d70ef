"""Hostile input, kind by kind (issue 15): folders, names, model files, writes, options.

Every case ends in success, or in exactly one `error:` line with a non-zero exit, no
traceback, within a time and memory bound. Most run in-process (CliRunner) for speed; the
ones that could hang or allocate run `python -m vitcli` in a child under RLIMIT_AS and a
timeout.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, TINY, make_image_folder
from PIL import Image
from typer.testing import CliRunner

from vitcli.cli import app
from vitcli.data import discovery
from vitcli.data.sources import open_source
from vitcli.errors import VitError

ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 3 * 1024**3  # address space of a child: torch alone maps ~0.7 GiB
ESC = "\x1b"


def cli(*args: str) -> tuple[int, str, str]:
    """Run `vit ARGS` in-process; a Python exception escaping the CLI fails the test."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def child(*args: str, timeout: float = 60, memory: int = MEMORY_LIMIT,
          cwd: Path | None = None) -> tuple[int, str, str]:
    """Run `python -m vitcli ARGS` in a child process limited in memory and time."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-m", "vitcli", *map(str, args)], env=env,
                          capture_output=True, timeout=timeout, preexec_fn=limit, cwd=cwd)
    return (done.returncode, done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"))


def one_error(code: int, err: str, *needles: str) -> str:
    """Assert a failure reported as exactly one `error:` line (no traceback); return it."""
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert ESC not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from vitcli.model.checkpoint import save_model
    from vitcli.model.vit import create_model

    torch.manual_seed(0)
    model = create_model(num_classes=len(CLASSES), **TINY).eval()
    return save_model(tmp_path_factory.mktemp("m") / "model.safetensors", model,
                      class_names=CLASSES)


def listing(folder: Path) -> tuple[list[str], list[str]]:
    """(class names, file paths) as train and eval see a folder."""
    source = open_source(folder)
    return source.class_names, source.splits["train"].names


def predicted(folder: Path, model: Path) -> list[str]:
    code, out, err = cli("predict", folder, "-m", model, "--json")
    assert code == 0, err
    return [json.loads(line)["image"] for line in out.splitlines()]


# ---------------------------------------------------------------- 1. one discovery rule


def test_hidden_and_notebook_copies_are_skipped_by_every_command(tmp_path, model_file):
    root = make_image_folder(tmp_path / "d", per_class=2)
    (root / "circle" / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    ckpt = root / "circle" / ".ipynb_checkpoints"
    ckpt.mkdir()
    Image.new("RGB", (8, 8)).save(ckpt / "000-checkpoint.png")
    (root / "__MACOSX").mkdir()
    Image.new("RGB", (8, 8)).save(root / "__MACOSX" / "x.png")
    names, files = listing(root)
    assert names == CLASSES and len(files) == 6
    assert sorted(predicted(root, model_file)) == sorted(files)  # same files, no duplicates


def test_a_linked_class_folder_is_a_class_everywhere(tmp_path, model_file):
    store = make_image_folder(tmp_path / "store", per_class=2, classes=["triangle"])
    root = make_image_folder(tmp_path / "d", per_class=2, classes=["circle", "square"])
    (root / "triangle").symlink_to(store / "triangle", target_is_directory=True)
    names, files = listing(root)
    assert names == CLASSES and len(files) == 6
    assert len(predicted(root, model_file)) == 6


@pytest.mark.parametrize("stray", ["metadata.csv", "metadata.jsonl", "metadata.parquet"])
def test_a_stray_metadata_file_changes_nothing(tmp_path, stray):
    root = make_image_folder(tmp_path / "d", per_class=3)
    before = listing(root)
    (root / "square" / stray).write_text("file_name,label\n000.png,zebra\n")
    (root / stray).write_text("file_name,label\n")
    source = open_source(root)
    assert (source.class_names, source.splits["train"].names) == before
    assert any(p.endswith(stray) and "not an image" in why for p, why in source.ignored)


def test_classes_are_sorted_by_bytes(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=1, classes=["b", "B", "a", "é", "Z"])
    assert listing(root)[0] == sorted(["b", "B", "a", "é", "Z"], key=str.encode)


def test_undecodable_names_are_listed_predicted_and_written(tmp_path, model_file):
    root = make_image_folder(tmp_path / "d", per_class=2)
    latin1 = os.fsdecode(os.fsencode(str(root / "circle")) + b"/caf\xe9.png")
    Image.new("RGB", (32, 32), "white").save(latin1)
    names, files = listing(root)
    assert latin1 in files
    table = tmp_path / "out.csv"
    code, out, err = cli("predict", root / "circle", "-m", model_file, "--csv", table)
    assert code == 0, err
    assert "caf\\xe9.png" in out  # shown, escaped
    raw = table.read_bytes()
    assert b"caf\xe9.png" in raw  # the exact bytes of the name, not a replacement
    rows = list(csv.reader(raw.decode("utf-8", "surrogateescape").splitlines()))
    assert latin1 in [r[0] for r in rows]
    code, out, err = cli("predict", root / "circle", "-m", model_file, "--json")
    assert code == 0 and latin1 in [json.loads(line)["image"] for line in out.splitlines()]
    from vitcli.training.runs import write_bad_files

    listed = write_bad_files(tmp_path, [(latin1, "not an image")])  # train's bad_files.txt
    assert listed is not None and b"caf\xe9.png\tnot an image" in listed.read_bytes()


def test_a_link_loop_is_listed_once_and_named(tmp_path, model_file):
    root = make_image_folder(tmp_path / "d", per_class=2)
    (root / "circle" / "again").symlink_to(root, target_is_directory=True)
    (root / "square" / "self").symlink_to(root / "square", target_is_directory=True)
    names, files = listing(root)
    assert names == CLASSES and len(files) == 6
    code, out, err = cli("predict", root, "-m", model_file, "--json")
    assert code == 0 and len(out.splitlines()) == 6
    assert "link loop" in err


def test_unreadable_and_vanishing_entries_are_named(tmp_path, model_file, monkeypatch):
    root = make_image_folder(tmp_path / "d", per_class=2)
    locked = root / "circle" / "locked"
    locked.mkdir()
    Image.new("RGB", (8, 8)).save(locked / "x.png")
    (root / "square" / "gone.png").symlink_to(root / "nowhere.png")  # a dangling link
    real_scandir = os.scandir

    def scandir(path):  # as root, chmod 000 does not lock a folder: refuse it here
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(discovery.os, "scandir", scandir)
    source = open_source(root)
    reasons = {Path(p).name: why for p, why in source.ignored}
    assert "unreadable" in reasons["locked"] and "broken link" in reasons["gone.png"]
    code, out, err = cli("predict", root, "-m", model_file, "--json")
    assert code == 1 and "locked: unreadable folder" in err  # not left out silently
    assert len([r for r in map(json.loads, out.splitlines()) if "label" in r]) == 6


def test_files_vanishing_while_listed(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "d", per_class=2)
    real = discovery._scan

    def scan_then_delete(folder, skipped):
        entries = real(folder, skipped)
        if entries and folder.endswith("square"):
            os.unlink(entries[0].path)  # deleted between the listing and its stat
        return entries

    monkeypatch.setattr(discovery, "_scan", scan_then_delete)
    source = open_source(root)
    assert len(source.splits["train"].names) == 5
    assert any("vanished" in why for _, why in source.ignored)


def test_the_listing_is_what_the_folder_holds_now(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2)
    first = open_source(root).splits["train"]
    Image.new("RGB", (8, 8)).save(root / "circle" / "new.png")
    second = open_source(root).splits["train"]
    assert len(second) == len(first) + 1 and second.fingerprint != first.fingerprint
    os.unlink(root / "circle" / "new.png")
    assert open_source(root).splits["train"].fingerprint == first.fingerprint


def test_nothing_usable_is_one_error(tmp_path):
    root = tmp_path / "d"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "notes.txt").write_text("x")
    (root / "cat" / "._a.png").write_bytes(b"x")
    with pytest.raises(VitError, match="no image files"):
        open_source(root)
    code, _, err = cli("train", "--data", root, "--epochs", "1")
    one_error(code, err, "no image files")


# ---------------------------------------------------------------- 3. terminal-safe names

HOSTILE_NAMES = ["\x1b]52;c;ZXZpbA==\x07clip", "[/]", "[bold red]x", "\x1b[2Jclear\x9b1m"]


def test_class_names_cannot_steer_the_terminal(tmp_path):
    import torch

    from vitcli.model.checkpoint import save_model
    from vitcli.model.vit import create_model

    model = create_model(num_classes=4, **TINY).eval()
    torch.manual_seed(0)
    path = save_model(tmp_path / "m.safetensors", model, class_names=HOSTILE_NAMES)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    code, out, err = cli("predict", image, "-m", path, "-k", "4")
    assert code == 0, err
    assert ESC not in out and "\x9b" not in out and "\x07" not in out
    assert "[/]" in out and "[bold red]x" in out and "\\x1b]52" in out
    code, out, _ = cli("predict", image, "-m", path, "-k", "4", "--json")
    assert {t["label"] for t in json.loads(out)["topk"]} == set(HOSTILE_NAMES)  # exact
    code, out, err = cli("info", path)
    assert code == 0 and ESC not in out and "[bold red]x" in out
    many = tmp_path / "many"
    many.mkdir()
    for i in range(10):  # over 8 images: one summary table
        Image.fromarray(np.full((32, 32, 3), i * 20, np.uint8)).save(many / f"{i}.png")
    code, out, err = cli("predict", many, "-m", path, "-k", "2")
    assert code == 0 and "10 images" in out and ESC not in out and "\x07" not in out


def test_file_names_cannot_steer_error_lines(tmp_path, model_file):
    bad = tmp_path / "a\x1b]0;owned\x07[red]b.png"
    bad.write_bytes(b"not an image")
    code, _, err = cli("predict", bad, "-m", model_file)
    assert code == 1 and ESC not in err and "\x07" not in err and "\\x1b]0;owned" in err
    code, _, err = cli("info", tmp_path / "m\x1b[2J.safetensors")
    one_error(code, err, "\\x1b[2J")


# ---------------------------------------------------------------- 2. model files checked


def raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    """A safetensors file written byte by byte, so that it can lie in any way."""
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)
    return path


def parts(path: Path) -> tuple[dict, bytes]:
    """(header with __metadata__, data section) of a safetensors file."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def with_config(model: Path, out: Path, **changes: object) -> Path:
    header, data = parts(model)
    config = json.loads(header["__metadata__"]["config"])
    config.update(changes)
    header["__metadata__"]["config"] = json.dumps(config)  # NaN/inf written as Python does
    return raw_safetensors(out, header, data)


def with_tensor(model: Path, out: Path, name: str, values: np.ndarray) -> Path:
    """The model file with tensor `name` replaced by `values` (any dtype, same shape)."""
    from safetensors.numpy import load_file, save_file

    header, _ = parts(model)
    tensors = load_file(str(model))
    tensors[name] = values
    save_file(tensors, str(out), metadata=header["__metadata__"])
    return out


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("changes, needle", [
    ({"depth": 1_000_000}, "depth"),
    ({"embed_dim": 10**9}, "embed_dim"),
    ({"image_size": 10**6}, "image_size"),
    ({"mlp_ratio": float("nan")}, "NaN"),
    ({"mlp_ratio": float("inf")}, "Infinity"),
    ({"mlp_ratio": 1e-9}, "mlp_ratio"),
    ({"layer_norm_eps": float("nan")}, "NaN"),
    ({"layer_norm_eps": -1.0}, "layer_norm_eps"),
    ({"num_heads": 0}, "num_heads"),
    ({"patch_size": 64}, "patch"),
    ({"depth": 3}, "do not match"),  # in range, but the file holds 2 blocks
    ({"embed_dim": 64, "num_heads": 2}, "do not match"),
    ({"num_classes": 4}, "class names"),
])
def test_config_values_are_refused_before_allocation(tmp_path, model_file, image, changes,
                                                     needle):
    bad = with_config(model_file, tmp_path / "bad.safetensors", **changes)
    for command in (["info", bad], ["predict", image, "-m", bad],
                    ["export", "--onnx", "-m", bad, "-o", tmp_path / "x.onnx"]):
        code, _, err = cli(*command)
        one_error(code, err, needle)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_a_huge_config_never_reaches_the_allocator(tmp_path, model_file, image):
    wide = with_config(model_file, tmp_path / "wide.safetensors", embed_dim=4096 * 4,
                       num_heads=16, depth=200)  # every number in range, 1.6 TB of weights
    code, _, err = child("predict", image, "-m", wide, timeout=60, memory=2 * 1024**3)
    one_error(code, err, "parameters")


@pytest.mark.parametrize("where", ["header", "metadata", "config"])
def test_deeply_nested_json_is_one_error(tmp_path, model_file, where):
    header, data = parts(model_file)
    deep = "[" * 50_000 + "]" * 50_000
    if where == "header":
        header["__deep__"] = "X"
        blob = json.dumps(header).replace('"X"', deep).encode()
        path = tmp_path / "deep.safetensors"
        path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)
    else:
        key = "class_names" if where == "metadata" else "config"
        header["__metadata__"][key] = deep
        path = raw_safetensors(tmp_path / "deep.safetensors", header, data)
    code, _, err = cli("info", path)
    one_error(code, err, "nested deeper")


def test_deeply_nested_config_json_and_run_state(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    raw_safetensors(folder / "model.safetensors", {}, b"")
    code, _, err = cli("convert", folder, "-o", tmp_path / "o.safetensors")
    one_error(code, err, "config.json")
    from vitcli.training.runs import load_state

    run = tmp_path / "run"
    run.mkdir()
    (run / "args.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code, _, err = cli("train", "--resume", run)
    one_error(code, err, "args.json", "nested deeper")
    (run / "state.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(VitError, match="state.json.*nested deeper"):
        load_state(run)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_by_name(tmp_path, model_file, image, value):
    from safetensors.numpy import load_file

    weight = load_file(str(model_file))["blocks.1.mlp.fc1.weight"].copy()
    weight[0, 0] = value
    bad = with_tensor(model_file, tmp_path / "nan.safetensors", "blocks.1.mlp.fc1.weight",
                      weight)
    data = make_image_folder(tmp_path / "d", per_class=1)
    for command in (["info", bad], ["predict", image, "-m", bad],
                    ["eval", "-m", bad, "--data", data, "-o", tmp_path / "ev"],
                    ["export", "--onnx", "-m", bad, "-o", tmp_path / "x.onnx"]):
        code, _, err = cli(*command)
        one_error(code, err, "blocks.1.mlp.fc1.weight")


def test_integer_weights_are_refused(tmp_path, model_file, image):
    bad = with_tensor(model_file, tmp_path / "int.safetensors", "head.bias",
                      np.array([1, 2, 3], np.int32))
    for command in (["info", bad], ["predict", image, "-m", bad]):
        code, _, err = cli(*command)
        one_error(code, err, "head.bias", "I32")


def test_header_lies_about_shapes_dtypes_and_size(tmp_path, model_file):
    header, data = parts(model_file)
    cases = {}
    h = json.loads(json.dumps(header))
    h["head.bias"]["shape"] = [300000]  # more values than its bytes
    cases["shape"] = (h, data)
    h = json.loads(json.dumps(header))
    h["head.bias"]["dtype"] = "F64"  # twice the bytes
    cases["dtype"] = (h, data)
    h = json.loads(json.dumps(header))
    h["head.bias"]["dtype"] = "Q7"
    cases["unknown dtype"] = (h, data)
    cases["trailing bytes"] = (header, data + b"\0" * 64)
    cases["truncated"] = (header, data[:-4])
    for name, (h, d) in cases.items():
        path = raw_safetensors(tmp_path / f"{name}.safetensors", h, d)
        code, _, err = cli("info", path)
        one_error(code, err)


@pytest.mark.slow
def test_a_fifo_never_hangs(tmp_path, image):
    import signal

    def hung(*_: object) -> None:
        raise TimeoutError("the command blocked on the FIFO")

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    code, _, err = child("info", fifo, timeout=30)  # one in a child, as a user runs it
    one_error(code, err, "FIFO")
    previous = signal.signal(signal.SIGALRM, hung)  # in-process: a hang becomes a failure
    try:
        for command in (["predict", image, "-m", fifo], ["eval", "-m", fifo, "--data", tmp_path],
                        ["export", "--onnx", "-m", fifo],
                        ["convert", fifo, "-o", tmp_path / "o.safetensors"]):
            signal.alarm(20)
            code, _, err = cli(*command)
            signal.alarm(0)
            one_error(code, err, "FIFO")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_model_without_classes_is_refused_for_predict_and_eval(tmp_path, image):
    from vitcli.model.checkpoint import save_model
    from vitcli.model.vit import create_model

    path = save_model(tmp_path / "features.safetensors",
                      create_model(num_classes=0, **TINY).eval(), class_names=[])
    data = make_image_folder(tmp_path / "d", per_class=1)
    for command in (["predict", image, "-m", path], ["eval", "-m", path, "--data", data]):
        code, _, err = cli(*command)
        one_error(code, err, "without a classification head")
    code, _, err = cli("info", path)
    assert code == 0, err  # a feature extractor is a fine file; it just cannot label


def test_onnx_metadata_must_name_every_output(tmp_path, model_file, image):
    import onnx

    from vitcli.deploy.export import export_onnx

    good = export_onnx(model_file, tmp_path / "m.onnx").path
    for names in (CLASSES[:2], CLASSES + ["extra"]):
        proto = onnx.load(str(good))
        for prop in proto.metadata_props:
            if prop.key == "class_names":
                prop.value = json.dumps(names)
        bad = tmp_path / f"bad{len(names)}.onnx"
        onnx.save(proto, str(bad))
        code, _, err = cli("predict", image, "-m", bad)
        one_error(code, err, "class names")
    proto = onnx.load(str(good))  # names and config agree with each other, not the graph
    for prop in proto.metadata_props:
        if prop.key == "class_names":
            prop.value = json.dumps(CLASSES[:2])
        if prop.key == "config":
            prop.value = json.dumps({**json.loads(prop.value), "num_classes": 2})
    onnx.save(proto, str(tmp_path / "lying.onnx"))
    code, _, err = cli("predict", image, "-m", tmp_path / "lying.onnx")
    one_error(code, err, "names 2 classes")


def test_an_npz_bomb_is_refused_before_inflating(tmp_path):
    import zipfile

    bomb = tmp_path / "bomb.npz"
    header = b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': " \
             b"(12500000,), }" + b" " * 53 + b"\n"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("Transformer/posembed_input/pos_embedding.npy",
                   header[:128] + bytes(50_000_000))
    assert bomb.stat().st_size < 200_000
    code, _, err = cli("convert", bomb, "-o", tmp_path / "o.safetensors")
    one_error(code, err, "zip bomb")


def test_a_shard_index_cannot_name_files_outside_its_folder(tmp_path):
    secret = tmp_path / "secret.safetensors"
    raw_safetensors(secret, {}, b"")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit",
                                                    "num_attention_heads": 2}))
    for name in ("../secret.safetensors", str(secret), "sub/../../secret.safetensors"):
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"a": name}}))
        code, _, err = cli("convert", folder, "-o", tmp_path / "o.safetensors")
        one_error(code, err, "outside its folder")


# ---------------------------------------------------------------- 4. writes lose nothing


def disk_full_for_temporary_files(monkeypatch) -> None:
    """Every write into a temporary file fails as on a full disk."""
    import errno
    import pathlib

    real_text, real_bytes = pathlib.Path.write_text, pathlib.Path.write_bytes

    def full(real):
        def write(self, *args, **kwargs):
            if self.name.endswith(".tmp"):
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
            return real(self, *args, **kwargs)
        return write

    monkeypatch.setattr(pathlib.Path, "write_text", full(real_text))
    monkeypatch.setattr(pathlib.Path, "write_bytes", full(real_bytes))


def test_eval_on_a_full_disk_keeps_the_old_results(tmp_path, model_file, monkeypatch):
    data = make_image_folder(tmp_path / "d", per_class=2)
    out = tmp_path / "ev"
    code, _, err = cli("eval", "-m", model_file, "--data", data, "-o", out)
    assert code == 0, err
    before = (out / "metrics.json").read_bytes()
    disk_full_for_temporary_files(monkeypatch)
    code, _, err = cli("eval", "-m", model_file, "--data", data, "-o", out,
                       "--json", tmp_path / "r.json")
    one_error(code, err, "No space left")
    assert (out / "metrics.json").read_bytes() == before  # the good file is still there
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_outputs_never_replace_an_input(tmp_path, model_file, image):
    import shutil

    disguised = tmp_path / "weights.onnx"  # a safetensors file with an ONNX name
    shutil.copy(model_file, disguised)
    original = disguised.read_bytes()
    for command in (["export", "--onnx", "-m", disguised],
                    ["export", "--onnx", "-m", model_file, "-o", tmp_path / "l.onnx", "--int8"],
                    ["eval", "-m", model_file, "--data", tmp_path, "--json", model_file],
                    ["predict", image, "-m", model_file, "--csv", image],
                    ["predict", image, "-m", model_file, "--csv", model_file],
                    ["patchify", image, "-o", tmp_path, "--patch", "8"]):
        if command[-1] == "--int8":  # the int8 file would land on the model
            os.link(model_file, tmp_path / "l.int8.onnx")
        if command[0] == "patchify":
            shutil.copy(image, tmp_path / "x_grid.png")
            command[1] = tmp_path / "x_grid.png"
            code, _, err = cli(*command)
            if code == 0:  # x_grid.png's outputs are x_grid_grid.png: no clash here
                continue
        code, _, err = cli(*command)
        one_error(code, err, "same file")
    assert disguised.read_bytes() == original
    assert Image.open(image).size == (32, 32)


def test_a_full_disk_while_training_or_converting_is_one_line(tmp_path, model_file,
                                                               monkeypatch):
    import errno

    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    data = make_image_folder(tmp_path / "d", per_class=2)
    code, _, err = cli("train", "--data", data, "--epochs", "1", "--project", tmp_path / "runs",
                       "--img-size", "20", "--model", "vit-pico", "--workers", "0")
    one_error(code, err, "No space left")
    timm = tmp_path / "timm.safetensors"
    from safetensors.numpy import load_file, save_file

    monkeypatch.undo()
    save_file({k: v for k, v in load_file(str(model_file)).items()}, str(timm))
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    code, _, err = cli("convert", timm, "-o", tmp_path / "o.safetensors", "--heads", "2")
    one_error(code, err, "No space left")
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_decode_cache_too_big_for_the_disk_is_one_error(tmp_path, monkeypatch):
    import errno
    import shutil
    from collections import namedtuple

    import vitcli.data.cache as cache

    data = make_image_folder(tmp_path / "d", per_class=2)
    monkeypatch.setattr(cache, "MEMORY_LIMIT", 0)  # force the memory-mapped file
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9, 1000))
    code, _, err = cli("train", "--data", data, "--epochs", "1", "--cache-dir", tmp_path / "c",
                       "--project", tmp_path / "runs")
    one_error(code, err, "free")
    monkeypatch.undo()
    monkeypatch.setattr(cache, "MEMORY_LIMIT", 0)

    def no_room(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "posix_fallocate", no_room)  # the disk fills meanwhile
    code, _, err = cli("train", "--data", data, "--epochs", "1", "--cache-dir", tmp_path / "c",
                       "--project", tmp_path / "runs")
    one_error(code, err, "No space left")
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- 5. every option in range


@pytest.mark.parametrize("args, needle", [
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**40)], "--seed"),
    (["--workers", "100000"], "--workers"),
    (["--device", "meta"], "meta"),
    (["--img-size", "20000"], "--img-size"),
    (["--mlp-ratio", "1e-9"], "--mlp-ratio"),
    (["--lr", "nan"], "--lr"),
    (["--epochs", str(10**9)], "--epochs"),
    (["--batch-size", str(10**9)], "--batch-size"),
    (["--ema-decay", "0.9"], "without --ema"),
    (["--patience", "3", "--val-split", "0"], "--patience"),
    (["--val", "elsewhere", "--val-split", "0"], "--val-split"),
    (["--init", "m.safetensors", "--freeze", "backbone", "--layer-decay", "0.75"],
     "--layer-decay"),
    (["--img-size", "600", "--patch", "6", "--model", "vit-pico"], "GiB"),  # 10,000 tokens
])
def test_train_options_out_of_range_or_contradictory(tmp_path, args, needle):
    data = make_image_folder(tmp_path / "d", per_class=2)
    code, _, err = cli("train", "--data", data, "--project", tmp_path / "runs", *args)
    one_error(code, err, needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_python_api_checks_the_same_ranges():
    from vitcli.errors import UsageError
    from vitcli.training.recipe import TrainOptions

    for bad in (dict(seed=-1), dict(threads=10**6), dict(ema_decay=0.5),
                dict(val="v", val_split=0.0), dict(freeze="backbone", init="m", layer_decay=0.5),
                dict(device="meta"), dict(mlp_ratio=1e-9)):
        with pytest.raises(UsageError):
            TrainOptions(data="d", **bad).check()


def test_patience_without_any_validation_is_an_error(tmp_path):
    data = make_image_folder(tmp_path / "d", per_class=2)  # too few for the default split
    code, _, err = cli("train", "--data", data, "--patience", "2", "--project",
                       tmp_path / "runs", "--epochs", "1")
    one_error(code, err, "--patience", "validation")


@pytest.mark.parametrize("command, needle", [
    (["export", "--onnx", "--batch", "1000000000"], "--batch"),
    (["patchify", "IMAGE", "--size", "100000", "--patch", "10000"], "--size"),
    (["patchify", "IMAGE", "--size", "8000", "--patch", "1"], "patches"),
    (["predict", "IMAGE", "--batch-size", "1000000000"], "--batch-size"),
    (["eval", "--data", "DATA", "--seed", "-5"], "--seed"),
    (["predict", "IMAGE", "--device", "meta"], "meta"),
])
def test_other_commands_check_their_ranges(tmp_path, model_file, image, command, needle):
    command = [str(image) if c == "IMAGE" else str(tmp_path) if c == "DATA" else c
               for c in command]
    if command[0] != "patchify":
        command += ["-m", str(model_file)]
    code, _, err = cli(*command)
    one_error(code, err, needle)


# ---------------------------------------------------------------- 6. say what happened


def test_resume_after_the_data_changed_says_so(tmp_path):
    from vitcli.training.recipe import TrainOptions
    from vitcli.training.trainer import resume, train

    data = make_image_folder(tmp_path / "d", per_class=3)
    said: list[str] = []

    def listen(kind, **fields):  # each session stops before its next epoch, as Ctrl-C would:
        if kind == "message":  # the run never ends, so every --resume reads the data again
            said.append(fields["text"])
        if kind == "epoch_start" and fields["epoch"] > 1:
            raise KeyboardInterrupt

    first = train(TrainOptions(data=str(data), epochs=3, img_size=20, model="vit-pico",
                               project=str(tmp_path / "runs"), batch_size=8), on_event=listen)
    assert first.stopped == "interrupted"

    resume(first.run_dir, on_event=listen)
    assert not any("data changed" in s for s in said)
    Image.new("RGB", (32, 32), "white").save(data / "circle" / "new.png")
    resume(first.run_dir, on_event=listen)
    assert any("data changed" in s for s in said)


def test_convert_blames_the_file_that_holds_a_bad_value(tmp_path):
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification

    folder = tmp_path / "hf"
    cfg = HFConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=64, image_size=16, patch_size=8, num_labels=2)
    ViTForImageClassification(cfg).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_attention_heads"] = 5  # does not divide the width 32
    (folder / "config.json").write_text(json.dumps(config))
    code, _, err = cli("convert", folder, "-o", tmp_path / "o.safetensors")
    line = one_error(code, err, "config.json")
    assert "--heads 5" not in line
    code, _, err = cli("convert", folder, "-o", tmp_path / "o.safetensors", "--heads", "3")
    one_error(code, err, "--heads 3")
    config["layer_norm_eps"] = 1e999  # inf in JSON
    config["num_attention_heads"] = 2
    (folder / "config.json").write_text(json.dumps(config).replace("Infinity", "1e999"))
    code, _, err = cli("convert", folder, "-o", tmp_path / "o.safetensors")
    one_error(code, err, "layer_norm_eps", "config.json")


def test_library_warnings_never_reach_stderr_raw(tmp_path, monkeypatch):
    import warnings

    from vitcli.data.image_set import typical_image_size
    from vitcli.evaluation.plots import plot_confusion

    data = make_image_folder(tmp_path / "d", per_class=2)
    Image.new("RGB", (40, 40)).save(data / "circle" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1100)  # 40×40 warns, 32×32 does not
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert typical_image_size(data) == 32
        plot_confusion(np.eye(3, dtype=int), ["猫", "犬", "\x1b[2J"], tmp_path / "cm.png",
                       title="模型")
    code, _, err = cli("eval", "-m", "missing.safetensors", "--data", data)
    assert "Warning" not in err

