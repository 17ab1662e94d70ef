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
