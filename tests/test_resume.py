"""`vit train --resume`: what it reads from a run folder (vitcli/training/resume.py), in which
order it checks, how it shows the run's paths, and how every line of `vit train` reads at 80
columns. Choice options take any case, one rule for every command.

Every run is test_train's 2-block, 32-px ViT on 30 generated grey images, a few steps long.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from test_train import bar_folder, ctrl_c_after_epoch_1, options
from typer.testing import CliRunner

from vitcli.cli import app
from vitcli.errors import UsageError
from vitcli.training.recipe import TrainOptions, choice_fields
from vitcli.training.runs import load_state
from vitcli.training.trainer import resume, train


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def stopped_run(tmp_path: Path, monkeypatch) -> Path:
    """A bf16 run stopped after its first epoch, started from tmp_path with relative paths
    (as `vit train --data bars` is typed); the test runs in tmp_path."""
    monkeypatch.chdir(tmp_path)
    bar_folder(tmp_path / "bars", per_class=10)
    opts = options(tmp_path, Path("bars"), epochs=2, precision="bf16", project="runs",
                   cache_dir="cache", name="intr")
    result = train(opts, on_event=ctrl_c_after_epoch_1)
    assert result.stopped == "interrupted"
    return Path("runs/intr")


def invoke(*args: str, columns: int = 300):
    return CliRunner().invoke(app, ["train", *args], env={"COLUMNS": str(columns)})


def files_of(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------- the recorded precision


@pytest.mark.parametrize("damaged", ["bf17", "BF16", None, ""])
def test_a_damaged_recorded_precision_is_refused_and_nothing_rewritten(stopped_run, damaged):
    """resolved.precision "bf17" once resumed a bf16 run in fp32, saying 'run saved before
    --precision', and overwrote state.json's "bf16" with "fp32"."""
    edit_json(stopped_run / "args.json",
              lambda a: a["resolved"].__setitem__("precision", damaged))
    before = files_of(stopped_run)
    result = invoke("--resume", str(stopped_run))
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.count("\n") == 1 and result.output.startswith(
        f"error: {stopped_run / 'args.json'}: corrupt"), result.output
    assert "precision" in result.output and "before --precision" not in result.output
    assert files_of(stopped_run) == before  # nothing overwritten
    # a missing key beside the run's other precision records is damage too
    edit_json(stopped_run / "args.json", lambda a: a["resolved"].pop("precision"))
    result = invoke("--resume", str(stopped_run))
    assert result.exit_code != 0 and "no recorded precision" in result.output, result.output


@pytest.mark.parametrize("state_says", ["bf17", "fp32", None])
def test_state_json_must_agree_with_the_recorded_precision(stopped_run, state_says):
    """state.json repeats the precision beside its tensors; garbage or a different value
    there was ignored. Now the two must agree, or resume names state.json."""
    edit_json(stopped_run / "state.json", lambda s: s.__setitem__("precision", state_says))
    before = files_of(stopped_run)
    result = invoke("--resume", str(stopped_run))
    assert result.exit_code != 0 and result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"error: {stopped_run / 'state.json'}: corrupt training "
                                    "state") and "precision" in result.output
    assert "args.json records bf16" in result.output
    assert files_of(stopped_run) == before


def test_bad_run_options_are_said_in_words_not_as_a_python_repr(stopped_run):
    """A bad options.precision was refused as `corrupt run options (UsageError("--precision
    must be ..."))`; every damaged value resume reads is now plain words, and a recorded
    choice that is null is damage, not a cue to let the recipe choose again."""
    cases = [
        (lambda a: a["options"].__setitem__("precision", "bf17"),
         "corrupt run options: --precision must be one of auto, fp32, bf16, not 'bf17'"),
        (lambda a: a["options"].__setitem__("optimizer", None), "optimizer is null"),
        (lambda a: a["options"].__setitem__("schedule", None), "schedule is null"),
        (lambda a: a["options"].__setitem__("batch_size", None), "batch_size is null"),
        (lambda a: a["options"].__setitem__("epochs", "ten"), "--epochs must be a number"),
        (lambda a: a["resolved"].pop("config"), "corrupt run settings: no 'config' entry"),
        (lambda a: a.pop("resolved"), "corrupt run settings: no resolved object"),
        (lambda a: a["resolved"].__setitem__("precision_reason", 5),
         "precision_reason is 5, not text"),
        (lambda a: a["resolved"].__setitem__("data_fingerprint", 7),
         "resolved.data_fingerprint is 7, not text"),
    ]
    good = (stopped_run / "args.json").read_text()
    for change, words in cases:
        (stopped_run / "args.json").write_text(good)
        edit_json(stopped_run / "args.json", change)
        result = invoke("--resume", str(stopped_run))
        assert result.exit_code != 0 and result.output.count("\n") == 1, result.output
        assert words in result.output, result.output
        assert not re.search(r"\w+Error\(", result.output), result.output


@pytest.mark.parametrize("key, value, words", [
    ("batch_size", None, "no 'batch_size' entry"),  # None: the key removed
    ("seconds", "abc", "seconds is 'abc', not a number of 0 or more"),
    ("step", -3, "step is -3, not a whole number of 0 or more"),
    ("best_top1", "high", "best_top1 is 'high', not a number"),
    ("budget_fitted", "yes", "budget_fitted is 'yes', not true or false"),
    ("schedule", [], "schedule is [], not an object"),
    ("last_val_epoch", "two", "last_val_epoch is 'two', not a whole number of 0 or more"),
])
def test_damaged_state_counters_are_one_line_before_anything_runs(stopped_run, key, value,
                                                                  words):
    """A missing counter was a KeyError traceback; "seconds": "abc" failed mid-run."""
    edit_json(stopped_run / "state.json",
              lambda s: s.pop(key) if value is None else s.__setitem__(key, value))
    before = files_of(stopped_run)
    result = invoke("--resume", str(stopped_run))
    assert result.exit_code != 0 and result.output.count("\n") == 1, result.output
    assert f"state.json: corrupt training state: {words}" in result.output, result.output
    assert files_of(stopped_run) == before


def test_a_run_from_before_the_precision_option_still_resumes(stopped_run, monkeypatch):
    """No precision anywhere in the folder (args.json options and resolved, state.json):
    the run trained as vitcli did then, fp32 on a CPU, and says so."""
    def legacy(a):
        del a["options"]["precision"], a["resolved"]["precision"]
        del a["resolved"]["precision_reason"]

    edit_json(stopped_run / "args.json", legacy)
    edit_json(stopped_run / "state.json", lambda s: s.pop("precision"))
    events = []
    again = resume(stopped_run, on_event=lambda kind, **f: events.append((kind, f)))
    assert again.stopped == "completed"
    start = next(f for kind, f in events if kind == "start")
    assert start["precision"] == "fp32 (run saved before --precision: as it trained then)"


def test_resume_says_how_the_kept_precision_was_chosen(stopped_run):
    from vitcli.training.resume import kept_reason

    assert kept_reason("auto: AMX-BF16, 1.3 GMAC a batch") == \
        "kept from the run, where auto chose it: AMX-BF16, 1.3 GMAC a batch"
    assert kept_reason("asked for; this CPU has no bf16 units, so it is slow") == \
        "kept from the run, which asked for it"
    events = []
    resume(stopped_run, on_event=lambda kind, **f: events.append((kind, f)))
    start = next(f for kind, f in events if kind == "start")
    assert start["precision"] == "bf16 (kept from the run, which asked for it)"
    assert load_state(stopped_run).info["precision"] == "bf16"


# ------------------------------------------------------------------- order of checks


def test_resume_checks_the_folder_then_the_values_then_the_changes(stopped_run):
    missing = invoke("--resume", "runs/nonexist", "--precision", "bf16")
    assert missing.exit_code == 2 and "runs/nonexist: no such folder" in missing.output
    invalid = invoke("--resume", str(stopped_run), "--precision", "fp16")
    assert invalid.exit_code == 2 and invalid.output.count("\n") == 1
    assert "--precision must be one of auto, fp32, bf16, not 'fp16'" in invalid.output
    assert "cannot change" not in invalid.output
    changed = invoke("--resume", str(stopped_run), "--precision", "fp32")
    assert changed.exit_code == 2 and "--precision fp32 (the run's: bf16) cannot change" \
        in " ".join(changed.output.split()), changed.output
    # the run's own values in another case are the run's own values
    optimizer = json.loads((stopped_run / "args.json").read_text())["options"]["optimizer"]
    same = invoke("--resume", str(stopped_run), "--precision", "BF16", "--optimizer",
                  optimizer.title(), "--data", "./bars/", "--threads", "1")
    assert same.exit_code == 0, same.output
    assert "resumed at step 3" in same.output


# ---------------------------------------------------------------- paths as typed


def test_resume_shows_the_runs_paths_relative_to_here(stopped_run, tmp_path):
    """args.json keeps absolute paths (a run resumes from anywhere); what resume prints
    shows them as the user typed them when they lie under the current folder."""
    recorded = json.loads((stopped_run / "args.json").read_text())["options"]
    assert recorded["data"] == str(tmp_path / "bars")  # recorded absolute
    result = invoke("--resume", str(stopped_run), "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "data folder bars/:" in result.output
    assert str(tmp_path) not in result.output
    ended = invoke("--resume", str(stopped_run))
    assert "vit train --data bars --init runs/intr/weights/best.safetensors" in ended.output
    refused = invoke("--resume", str(stopped_run), "--data", "other")
    assert "--data other (the run's: bars) cannot change" in " ".join(refused.output.split())
    # from elsewhere, the absolute path is the only true name
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(stopped_run, elsewhere / "copy")
    import os

    os.chdir(elsewhere)
    refused = invoke("--resume", "copy", "--data", "other")
    assert f"(the run's: {tmp_path / 'bars'})" in " ".join(refused.output.split())


# --------------------------------------------------------------------- choice options


FREE_TEXT = {"data", "model", "device", "val", "name", "project", "init", "cache_dir"}


def test_every_choice_option_takes_any_case_and_keeps_the_lower_case_name():
    """--precision BF16 and --device CPU were accepted while --optimizer AdamW and --augment
    NONE were refused, and args.json kept "BF16". One rule now: any case, stored lower."""
    import dataclasses

    from vitcli.data.augment import AUGMENT_LEVELS
    from vitcli.devices import PRECISIONS

    fields = choice_fields()
    assert fields["augment"] == AUGMENT_LEVELS and fields["precision"] == PRECISIONS
    # every text option of vit train is a choice in the table or free text
    texts = {f.name for f in dataclasses.fields(TrainOptions) if "str" in str(f.type)}
    assert texts - set(fields) == FREE_TEXT, texts - set(fields)
    for name, values in fields.items():
        for value in values:
            for typed in (value.upper(), value.title(), value):
                opts = TrainOptions(data="x", **{name: typed})
                assert getattr(opts, name) == value, (name, typed)
        with pytest.raises(UsageError, match=f"--{name.replace('_', '-')} (must be|accepts)"):
            TrainOptions(data="x", **{name: "Nonsense"}).check()
    assert TrainOptions(data="x", device="CUDA:1").device == "cuda:1"
    assert TrainOptions(data="x", model="ViT-Ti16").model == "vit-ti16"


def test_vit_train_stores_choices_in_lower_case(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bar_folder(tmp_path / "bars", per_class=4)
    result = invoke("--data", "bars", "--patch", "8", "--depth", "1", "--embed-dim", "16",
                    "--heads", "1", "--epochs", "1", "--batch-size", "12", "--threads", "1",
                    "--precision", "FP32", "--optimizer", "AdamW", "--augment", "NONE",
                    "--device", "CPU", "--schedule", "Cosine", "--sampler", "Random",
                    "--class-weights", "None", "--pos-embed", "SinCos", "--project", "runs")
    assert result.exit_code == 0, result.output
    args = json.loads(next(Path("runs").glob("*/args.json")).read_text())
    chosen = {k: args["options"][k] for k in ("precision", "optimizer", "augment", "device",
                                              "schedule", "sampler", "class_weights",
                                              "pos_embed")}
    assert chosen == {"precision": "fp32", "optimizer": "adamw", "augment": "none",
                      "device": "cpu", "schedule": "cosine", "sampler": "random",
                      "class_weights": "none", "pos_embed": "sincos"}


def test_other_commands_take_their_choices_in_any_case(tiny_model_file, image_folder):
    runner = CliRunner()
    image = next(image_folder.rglob("*.png"))
    predicted = runner.invoke(app, ["predict", str(image), "--model", str(tiny_model_file),
                                    "--precision", "FP32", "--device", "CPU",
                                    "--unknown", "OFF", "--json"])
    assert predicted.exit_code == 0, predicted.output
    evaluated = runner.invoke(app, ["eval", "--model", str(tiny_model_file), "--data",
                                    str(image_folder), "--precision", "Auto", "--device",
                                    "Cpu", "--out", str(image_folder.parent / "ev")])
    assert evaluated.exit_code == 0, evaluated.output
    refused = runner.invoke(app, ["predict", str(image), "--model", str(tiny_model_file),
                                  "--unknown", "maybe"])
    assert refused.exit_code == 2 and "--unknown must be on or off, not 'maybe'" \
        in refused.output


# ------------------------------------------------------------------ 80 columns


def test_every_line_of_vit_train_reads_at_80_columns(stopped_run, monkeypatch):
    """The start lines (up to ~214 characters), the calibrated line and the "already ended"
    message were single lines that an 80-column terminal broke mid-word ("AMX-" / "BF16",
    "unkn" / "own"). They wrap at words now; a command to copy stands on its own line."""
    import vitcli.devices

    monkeypatch.setattr(vitcli.devices, "cpu_bf16_units", lambda: "AMX-BF16")
    runs = []
    for args in (("--data", "bars", "--patch", "8", "--depth", "2", "--embed-dim", "32",
                  "--heads", "2", "--epochs", "1", "--batch-size", "12", "--threads", "1",
                  "--project", "runs", "--name", "long-run-name-for-the-wrapping-test",
                  "--cache-dir", "cache"),
                 ("--resume", str(stopped_run), "--threads", "1"),
                 ("--resume", str(stopped_run))):
        result = invoke(*args, columns=80)
        assert result.exit_code == 0, result.output
        runs.append(result.output)
    for output in runs:
        for line in output.splitlines():
            assert len(line) <= 80, f"{len(line)} columns: {line!r}"
    text = " ".join(" ".join(runs).split())  # lines joined at their breaks
    for sentence in ("precision fp32 (auto: ",
                     "GMAC a training step; AMX-BF16 pays from 1 GMAC)",
                     "precision bf16 (kept from the run, which asked for it)",
                     "unknown beyond score",
                     "already ended at step 6 (epoch 2): nothing to resume. To train further, "
                     "start a new run from its weights:",
                     "re-measure the best model on its validation images:"):
        assert sentence in text, sentence
    assert "\n  vit train --data bars --init runs/intr/weights/best.safetensors\n" in runs[2]
