"""Words users read: counts agree with their number, never a hedged 'thread(s)'."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from vitcli.errors import plural

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vitcli"
# Every Python file whose strings a user reads: the package, and the scripts people run
# (benchmarks printed "2 thread(s)" after the package had stopped saying it).
USER_FACING = [PACKAGE, ROOT / "benchmarks", ROOT / "examples"]
HEDGED = re.compile(r"[A-Za-z]\((?:s|es)\)")  # image(s), core(s), match(es)


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string literal (f-string parts too) with its line, docstrings left out."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_no_hedged_plural_in_any_message():
    """'1 CPU thread(s) (1 of 2 core(s) free)', 'heat maps for 2 image(s)': every count a user
    reads says '1 thread', '2 cores', '2 images' (vitcli.errors.plural)."""
    found = [f"{path.relative_to(ROOT)}:{line}: {text!r}"
             for folder in USER_FACING for path in sorted(folder.rglob("*.py"))
             for line, text in _strings(ast.parse(path.read_text(encoding="utf-8")))
             if HEDGED.search(text)]
    assert not found, "hedged plurals:\n" + "\n".join(found)


def test_the_check_reads_the_benchmarks():
    scripts = {path.name for folder in USER_FACING for path in folder.rglob("*.py")}
    assert {"inference.py", "small_data.py", "make_shapes.py", "cli.py"} <= scripts


def test_the_check_finds_a_hedged_plural():
    tree = ast.parse('def f(n):\n    """Docs may say step(s)."""\n    return f"{n} file(s) skipped"\n')
    assert [text for _, text in _strings(tree) if HEDGED.search(text)] == [" file(s) skipped"]


def test_plural_agrees_with_the_count():
    assert plural(1, "core") == "1 core" and plural(2, "core") == "2 cores"
    assert plural(0, "image") == "0 images" and plural(1_500, "image") == "1,500 images"
    assert plural(1, "class", "classes") == "1 class" and plural(2, "class", "classes") == "2 classes"


def test_the_thread_reason_counts_its_cores():
    from vitcli.training.threads import ThreadTuner

    one = ThreadTuner(set_threads=lambda n: None, cores=1)
    two = ThreadTuner(set_threads=lambda n: None, cores=2)
    assert "of 1 core free" in one.reason and "of 2 cores free" in two.reason
    assert "(s)" not in one.reason + two.reason


def test_copies_line_agrees_with_one_copy():
    from vitcli.data.duplicates import ByteConflicts

    one = ByteConflicts(leaked=[("val/a.png", "train/a.png")], two_labels=[])
    line = one.line("data") or ""
    assert "1 validation image is byte-identical" in line and "(s)" not in line
    two = ByteConflicts(leaked=[("val/a.png", "train/a.png"), ("val/b.png", "train/b.png")],
                        two_labels=[])
    assert "2 validation images are byte-identical" in (two.line("data") or "")


def test_counts_of_images_agree_with_one_image():
    """'1 images at batch 256 are 1 step an epoch', 'the default for 1 images': every count
    of images a user reads goes through plural too."""
    from vitcli.training.recipe import TrainOptions, epochs_for

    _, why = epochs_for(TrainOptions(data="x"), 1, 256)
    assert why.startswith("1 image at batch 256 is 1 step an epoch"), why
    _, why = epochs_for(TrainOptions(data="x"), 500, 256)
    assert why.startswith("500 images at batch 256 are 2 steps an epoch"), why


# --------------------------------------------------------------- the unknown threshold


def test_scores_print_with_two_decimals_or_enough_to_compare():
    """One way to print an unknown score or threshold (vitcli.errors.format_score): 2
    decimals, more only where 2 would make a score above the threshold look equal to it."""
    from vitcli.errors import format_score, score_decimals

    assert format_score(15.05) == "15.05" and format_score(3) == "3.00"
    assert format_score(150.0512) == "150.05"
    assert score_decimals(15.05, [15.06, 3.0, 15.05]) == 2  # 15.05 is not beyond 15.05
    d = score_decimals(15.049, [15.051])
    assert d == 3 and float(format_score(15.051, d)) > float(format_score(15.049, d))


def _eval_report(threshold: float):
    import numpy as np

    from vitcli.evaluation.evaluate import EvalReport
    from vitcli.evaluation.metrics import compute_metrics

    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    metrics = compute_metrics(logits, np.array([0, 1, 1]), ["a", "b"])
    return EvalReport(metrics=metrics, model_path="m.safetensors", data="d", split=None,
                      description="d", device="cpu", preprocessing={}, seconds=1.0,
                      unknown_share=1 / 3, unknown_threshold=threshold)


def test_eval_states_the_threshold_it_compares_with(capsys):
    """eval said "called unknown (score > 15.1)" for a threshold of 15.05: an image scoring
    15.06 is unknown, which 15.1 misstates. It prints the threshold as predict does."""
    from vitcli.commands._common import console
    from vitcli.commands.evaluate import _summary_table

    console.print(_summary_table(_eval_report(15.05)))
    out = capsys.readouterr().out
    assert "called unknown (score > 15.05)" in out, out


def test_predict_prints_the_threshold_as_eval_does(capsys, monkeypatch):
    """predict's score line and table heading: the same digits as eval, and enough of them
    that a score just above the threshold does not read as equal to it."""
    from vitcli.commands._common import console
    from vitcli.commands.predict import MANY, _show
    from vitcli.deploy.predict import Prediction

    monkeypatch.setattr(console, "_width", 160)  # the heading on one line (the private
    # field: setting the width property would pin the restored width for later tests)

    def result(i: int, score: float) -> Prediction:
        return Prediction(Path(f"images/{i}.png"), labels=["a", "b"],
                          probabilities=[0.9, 0.1], score=score, threshold=15.049,
                          unknown=score > 15.049)

    _show([result(0, 15.051)], many=False)
    assert "score 15.051 > threshold 15.049" in capsys.readouterr().out
    _show([result(i, 15.06 + i) for i in range(MANY + 1)], many=True)
    out = capsys.readouterr().out
    assert "(> 15.05: unknown)" in out and " 15.06" in out, out
    _show([result(0, 15.051)] + [result(i, 9.0) for i in range(1, MANY + 1)], many=True)
    out = capsys.readouterr().out
    assert "(> 15.049: unknown)" in out and " 15.051" in out and " 9.000" in out, out


def test_every_score_and_threshold_goes_through_format_score():
    """train/eval/info printed the threshold as 15.1 and predict as 15.05: no f-string
    formats an unknown score or threshold itself (`{threshold:.3g}`); format_score does."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE.parent).as_posix()
        if name == "vitcli/errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FormattedValue) and node.format_spec is not None:
                source = ast.unparse(node.value)
                if "threshold" in source or "score" in source.lower():
                    found.append(f"{name}:{node.lineno}: {{{source}:...}}")
    assert not found, "scores formatted by hand:\n" + "\n".join(found)
