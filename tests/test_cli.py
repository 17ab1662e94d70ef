"""The `vit` command line: --version, --help, models, info, patchify and error handling.

Other commands' CLI tests live beside their modules' tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vitcli import __version__
from vitcli.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    """Failed with `code`, said so in exactly one stderr line, and printed no traceback."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"vitcli {__version__}"


def test_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("patchify", "train", "eval", "predict", "export", "models", "info"):
        assert command in result.stdout


def test_help_does_not_import_torch():
    code = ("import sys\nfrom vitcli.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=60)
    assert "patchify" in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "NO-TORCH"


def test_models_lists_presets_with_published_counts():
    result = run("models")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "vit-b16" in text and "86,567,656" in text
    assert "vit-nano" in text and "2 × multiply-accumulates" in text
    assert "632,045,800" in text and "630,764,800" in text  # ViT-H/14 with and without head


def test_models_without_a_head_gives_timms_vit_h14_count():
    result = run("models", "--classes", 0)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.strip().startswith("vit-h14"))
    assert "630,764,800" in row
    assert_one_line_error(run("models", "--classes", -1), 2, "--classes")


@pytest.mark.parametrize("command", ["patchify", "train", "eval", "predict", "export",
                                     "convert", "models", "info"])
def test_every_command_has_help(command):
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    assert f"vit {command}" in result.stdout and "--help" in result.stdout


@pytest.mark.parametrize("command", ["patchify", "train", "eval", "predict", "export",
                                     "convert", "models", "info"])
def test_every_option_help_is_shown_whole(command):
    """Rich help reads "[word: ...]" as a markup tag and drops it, and at 80 columns cuts a
    word wider than the help column with "…" (a long default path): both lose help text."""
    import re

    import typer

    params = typer.main.get_command(app).commands[command].params
    narrow = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    cut = [line for line in narrow.stdout.splitlines() if re.search(r"…\s*│\s*$", line)]
    assert not cut, "\n".join(cut)  # "…" at the right edge of the help column
    wide = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"})  # no wrapping
    shown = wide.stdout.replace("│", " ")
    shown = " ".join(shown.split())
    for param in params:
        if getattr(param, "help", None):
            assert " ".join(param.help.split()) in shown, f"{param.name}: {param.help!r}"


def test_bare_vit_shows_the_help_without_an_error_line():
    result = run()
    assert result.exit_code == 2
    assert "patchify" in result.stdout and "error" not in result.stderr


def test_info_shows_the_model_file(tiny_model_file):
    result = run("info", tiny_model_file)
    assert result.exit_code == 0, result.output
    assert "circle" in result.stdout and "4×4 patches" in result.stdout
    assert "in training" not in result.stdout  # no patch dropout: one sequence length


def test_info_says_how_many_tokens_a_training_step_sees_with_patch_dropout(tmp_path):
    from vitcli.model.checkpoint import save_model
    from vitcli.model.vit import create_model

    path = save_model(tmp_path / "m.safetensors",
                      create_model(num_classes=2, image_size=28, patch_size=4, embed_dim=16,
                                   depth=1, num_heads=2, patch_drop=0.5),
                      class_names=["a", "b"])
    result = run("info", path)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "7×7 patches + 1 class token = 50; 25 in training (patch dropout 0.5)" in text


@pytest.mark.parametrize(("validation", "words"), [
    ('{"source": "split"}', "its data's own validation split (val/ or test/)"),
    ('{"source": "val"}', "a separate folder (--val)"),
    ('{"source": "val_split", "fraction": 0.1, "seed": 3}',
     "10% held out of the training images (stratified, --val-split 0.1 --seed 3)"),
    ('{"source": "none"}', "none (the best model is the last epoch's)")])
def test_info_says_the_training_metadata_in_words(tmp_path, tiny_model, validation, words):
    """`vit info` printed `validation {"source": "split"}` and `val_top1 1.000000`: every
    field reads as words, and no raw JSON reaches the table (--json keeps the values)."""
    from vitcli.model.checkpoint import save_model

    path = save_model(tmp_path / "m.safetensors", tiny_model, class_names=["a", "b", "c"],
                      extra={"epoch": "23", "val_top1": "0.987500", "validation": validation,
                             "notes": '{"by": "a script", "tags": ["x", "y"]}'})
    result = runner.invoke(app, ["info", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.replace("│", " ").split())
    assert f"validation images {words}" in text
    assert "validation top-1 98.75%" in text and "saved at epoch 23" in text
    assert "notes by a script, tags x, y" in text
    assert not any(c in result.stdout for c in '{}"'), result.stdout
    # a fixed order, whatever order the file's header holds them in
    rows = [line for line in result.stdout.splitlines() if "│" in line]
    order = [i for label in ("saved at epoch", "validation top-1", "validation images", "notes")
             for i, row in enumerate(rows) if f"│ {label}" in row]
    assert order == sorted(order) and len(order) == 4, rows
    raw = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)
    assert raw["extra"]["validation"] == json.loads(validation)  # an object, not its text


def test_info_json_gives_numbers_booleans_and_objects_typed(tmp_path, tiny_model):
    """`vit info --json` gave "epoch": "23" and "validation": "{\"source\": ...}": the
    stored text of safetensors' str → str metadata. Each value is typed as JSON has it;
    names and versions, and text that is not JSON, stay text."""
    from vitcli.model.checkpoint import save_model

    extra = {"epoch": "23", "val_top1": "0.987500", "validation": '{"source": "split"}',
             "flag": "true", "nothing": "", "source": "timm:vit_tiny", "notes": "not json",
             "vitcli_version": "2", "huge": "1e999", "quoted": '"x"'}
    path = save_model(tmp_path / "m.safetensors", tiny_model, class_names=["a", "b", "c"],
                      extra=extra, temperature=1.5)
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    raw = json.loads(result.stdout)
    assert raw["format_version"] == 1 and raw["vitcli_version"] == "2"
    assert raw["extra"] == {"epoch": 23, "val_top1": 0.9875, "validation": {"source": "split"},
                            "flag": True, "nothing": None, "source": "timm:vit_tiny",
                            "notes": "not json", "huge": "1e999", "quoted": '"x"',
                            "temperature": 1.5}
    assert isinstance(raw["parameters"], int) and isinstance(raw["config"]["depth"], int)
    table = runner.invoke(app, ["info", str(path)], env={"COLUMNS": "200"})
    text = " ".join(table.stdout.replace("│", " ").split())  # people's view unchanged
    assert "saved at epoch 23" in text and "validation top-1 98.75%" in text
    assert "huge 1e999" in text and "flag true" in text


def test_patchify_writes_both_pictures_and_prints_counts(tmp_path, image_file):
    out = tmp_path / "out"
    result = run("patchify", image_file, "--patch", 8, "--size", 32, "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["photo_grid.png", "photo_sequence.png"]
    text = " ".join(result.stdout.split())
    assert "40×30 px" in text
    assert "4 rows × 4 columns" in text
    assert "16 patches + 1 class token = 17 tokens" in text
    assert "P·P·C = 8·8·3 = 192 values" in text


def test_patchify_says_what_it_wrote_in_phrases_whole_at_80_columns(tmp_path, image_file):
    """'wrote /long/out/photo_sequence.png  (the sequence the encoder reads)' wrapped
    inside the phrase at 80 columns: the phrase comes first, the path after it."""
    out = tmp_path / "a-rather-long-folder-name-for-the-pictures" / "of-the-patchify-run"
    result = runner.invoke(app, ["patchify", str(image_file), "--patch", "8", "--size", "32",
                                 "--out", str(out)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    assert max(len(line) for line in lines) <= 80
    for phrase, name in (("wrote the patch grid, numbered by token:", "photo_grid.png"),
                         ("wrote the token sequence the encoder reads:", "photo_sequence.png")):
        at = lines.index(phrase)  # whole, and the path (too long to join it) right after
        assert "".join(lines[at + 1:at + 3]).startswith(str(out / name)), lines[at:]


def test_fit_or_break_breaks_between_the_parts_only():
    from vitcli.commands._common import fit_or_break

    assert fit_or_break("cpu, precision fp32", "(asked for)", width=80) == \
        "cpu, precision fp32 (asked for)"
    long = "(auto: 0.0068 GMAC a batch of 1,024 images; AVX512-BF16 pays from 1 GMAC)"
    assert fit_or_break("cpu, 96 images/s, precision fp32", long, width=80) == \
        f"cpu, 96 images/s, precision fp32\n{long}"
    # more parts: each that does not fit goes on, and starts, a line of its own
    threads = "cpu, 1 thread (1 of 2 cores free, load 1.3),"
    assert fit_or_break(threads, "96 images/s, precision fp32", long, width=80) == \
        f"{threads} 96 images/s, precision fp32\n{long}"
    assert fit_or_break(threads, "96 images/s, precision fp32", "(asked for)", width=40) == \
        f"{threads}\n96 images/s, precision fp32 (asked for)"


def test_warn_prints_one_warning_line_broken_between_its_parts_at_the_terminal_width():
    from io import StringIO

    from vitcli.commands._common import SafeConsole, warn

    def said(first: str, second: str = "", width: int = 80, **kw) -> str:
        out = SafeConsole(file=StringIO(), width=width, color_system=None)
        warn(first, second, to=out, **kw)
        return out.file.getvalue()

    assert said("skipped 2 files", "(first: a.txt)") == "warning: skipped 2 files (first: a.txt)\n"
    # the parts break between them where `warning: ` and both do not fit: 9 + 15 + 1 + 14 = 39
    assert said("skipped 2 files", "(first: a.txt)", width=38) == \
        "warning: skipped 2 files\n(first: a.txt)\n"
    assert said("skipped 2 files", "(first: a.txt)", width=39).count("\n") == 1
    assert said("one part only") == "warning: one part only\n"
    long = "a phrase " * 10  # 90 characters: the terminal wraps it (soft), or Rich at words
    assert said(long.strip(), width=40).count("\n") == 1
    assert said(long.strip(), width=40, soft_wrap=False).count("\n") == 3


def test_every_command_says_its_warnings_through_one_helper():
    """`vit eval` and `vit export` each built their `warning:` line and its fit_or_break
    width themselves; every command now says a warning through _common.warn."""
    commands = Path(__file__).resolve().parents[1] / "vitcli" / "commands"
    own = [f"{path.name}:{n}" for path in sorted(commands.glob("*.py")) if path.name != "_common.py"
           for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
           if "warning:[/]" in line or 'len("warning: ")' in line]
    assert not own, own


def test_patchify_shows_what_shifted_patch_tokens_project(tmp_path, image_file):
    result = run("patchify", image_file, "--preset", "vit-pico", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "P·P·C = 4·4·3 = 48 values" in text and "240 (5 × 48" in text


def test_patchify_with_a_model_uses_its_sizes(tmp_path, image_file, tiny_model_file):
    result = run("patchify", image_file, "--model", tiny_model_file, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "17 tokens" in result.stdout and "32×32×3" in result.stdout


def test_patchify_size_not_divisible_names_nearest_sizes(tmp_path, image_file):
    result = run("patchify", image_file, "--size", 225, "--out", tmp_path / "out")
    assert_one_line_error(result, 2, "224 or 240")
    assert not (tmp_path / "out").exists()


def test_patchify_patch_larger_than_the_image_says_so(tmp_path, image_file):
    result = run("patchify", image_file, "--patch", 300, "--out", tmp_path / "out")
    assert_one_line_error(result, 2, "is larger than the 224 px input; use a patch of at most "
                                     "224 px")
    assert "divisible" not in result.output and "nearest valid" not in result.output


def test_patchify_missing_image_fails_with_one_line(tmp_path):
    missing = tmp_path / "nope.jpg"
    assert_one_line_error(run("patchify", missing, "--out", tmp_path), 1, str(missing))


def test_patchify_unreadable_image_fails_with_one_line(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    assert_one_line_error(run("patchify", bad, "--out", tmp_path / "o"), 1, str(bad))


def test_patchify_unwritable_picture_fails_with_one_line(tmp_path, image_file):
    (tmp_path / "photo_grid.png").mkdir()  # a folder where the picture should go
    assert_one_line_error(run("patchify", image_file, "--out", tmp_path), 1,
                          str(tmp_path / "photo_grid.png"), "cannot write")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files


def test_info_refuses_a_pickle_checkpoint_with_one_line(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x04\x95 pickled")
    assert_one_line_error(run("info", path), 1, str(path), "vit convert")


def _truncated_model(path: Path, good: Path) -> None:
    path.write_bytes(good.read_bytes()[:3000])


def _foreign_safetensors(path: Path, good: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(path), metadata={"written_by": "another tool"})


@pytest.mark.parametrize("name, make, message", [
    ("broken.safetensors", _truncated_model, "truncated"),
    ("zero.safetensors", lambda path, good: path.write_bytes(b""), "empty file"),
    ("notes.safetensors", lambda path, good: path.write_text("some notes\n"),
     "not a safetensors model file"),
    ("other.safetensors", _foreign_safetensors, "not a vitcli model file"),
    ("model.onnx", lambda path, good: path.write_bytes(b"\x08\x07onnx"), "ONNX file"),
])
def test_info_refuses_files_that_are_not_model_files_with_one_line(
        tmp_path, tiny_model_file, name, make, message):
    path = tmp_path / name
    make(path, tiny_model_file)
    assert_one_line_error(run("info", path), 1, str(path), message)


def test_unknown_option_is_a_usage_error_with_one_line():
    # Needs vitcli/cli.py to catch typer's vendored click exceptions (typer >= 0.29 ships
    # its own copy of click as typer._click, so `except click.UsageError` never matches).
    assert_one_line_error(run("models", "--nope"), 2, "--nope")


def test_bad_option_value_is_a_usage_error_with_one_line(image_file):
    assert_one_line_error(run("patchify", image_file, "--patch", "abc"), 2, "--patch")


@pytest.mark.slow
def test_real_process_error_is_one_stderr_line(tmp_path):
    """The installed entry point, not just the runner: exit code and stderr of a process."""
    done = subprocess.run([sys.executable, "-m", "vitcli", "patchify", str(tmp_path / "x.png")],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1],
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "x.png: no such file" in done.stderr


def test_patchify_terminal_preview_is_one_block_per_patch_in_its_mean_colour():
    import numpy as np

    from vitcli.commands.patchify import PREVIEW_CELLS, _preview

    colours = np.arange(3 * 4 * 3, dtype=np.uint8).reshape(3, 4, 3)  # 3 rows × 4 columns
    text = _preview(colours)
    assert text.plain.splitlines() == ["  " * 4] * 3
    styles = [str(span.style) for span in text.spans]
    assert styles[0] == "on rgb(0,1,2)" and styles[5] == "on rgb(15,16,17)"  # row 1, col 1
    wide = _preview(np.zeros((64, 64, 3), np.uint8))  # a 64×64 grid is thinned to fit
    assert len(wide.plain.splitlines()[0]) <= 2 * PREVIEW_CELLS


def test_one_failing_input_is_one_error_line(tiny_model_file, tmp_path):
    """`vit predict nothere.png` printed the file's error and then '1 of 1 input(s) could
    not be predicted': the README promises one line."""
    result = run("predict", str(tmp_path / "nothere.png"), "--model", str(tiny_model_file))
    assert result.exit_code == 1
    assert result.output.count("error:") == 1 and "no such file" in result.output


def test_export_of_an_onnx_file_says_what_export_reads(tmp_path):
    """`vit export -m model.onnx` (default --out = the same name) said '--out ... is the same
    file as --model'; it is an ONNX file already, and export reads a .safetensors file."""
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not really")
    result = run("export", "--onnx", "-m", str(onnx_file))
    assert result.exit_code != 0 and result.output.count("error:") == 1
    assert "is an ONNX file" in result.output and "same file" not in result.output
    help_text = run("export", "--help").output
    assert "17 or newer" not in help_text and "17–1,000" in help_text


def test_speeds_read_without_rounding_a_slow_model_to_zero():
    """`vit eval` printed '0 images/s' for a model slower than an image every two seconds,
    and train's progress '0 img/s'."""
    from vitcli.commands._common import per_second

    assert [per_second(r) for r in (1836.4, 12.6, 3.14, 1.0, 0.42, 0.004)] == \
        ["1,836", "13", "3.1", "1", "0.42", "<0.01"]
