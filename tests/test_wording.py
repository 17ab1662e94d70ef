"""Words users read: counts agree with their number, never a hedged 'thread(s)'."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from vitcli.errors import plural

PACKAGE = Path(__file__).resolve().parents[1] / "vitcli"
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
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}"
             for path in sorted(PACKAGE.rglob("*.py"))
             for line, text in _strings(ast.parse(path.read_text(encoding="utf-8")))
             if HEDGED.search(text)]
    assert not found, "hedged plurals:\n" + "\n".join(found)


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
