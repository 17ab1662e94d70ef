"""Every command's --help reads cleanly at 80 columns.

What a newcomer met before: `<bool>` after plain flags, `{image}` and `<list[str]>` in usage
lines, a docstring's line breaks kept and then re-wrapped (a short line, then a long one),
the same phrase in six options, and options whose default was nowhere.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
import typer.main
from typer.testing import CliRunner

from vitcli.cli import app
from vitcli.commands import COMMANDS

WIDTH = 80
NAMES = [name for name, _, _ in COMMANDS]
# Options that take a value but have no default to show: an input or an output the user names
# (absent = not read / not written), or one whose help says what happens without it.
NO_DEFAULT_NEEDED = {"--data", "--val", "--init", "--resume", "--json", "--csv", "--explain",
                     "--model", "--out", "--labels", "--from-hub", "--cache-dir", "--name",
                     "--heads", "--preset",
                     "--freeze", "--split", "--lr"}


def render(name: str) -> str:
    """`vit NAME --help`; the top-level `vit --help` for name ""."""
    result = CliRunner().invoke(app, [name, "--help"] if name else ["--help"], prog_name="vit",
                                env={"COLUMNS": str(WIDTH), "TERMINAL_WIDTH": str(WIDTH)},
                                terminal_width=WIDTH)
    assert result.exit_code == 0, result.output
    return result.output


def command(name: str):
    group = typer.main.get_command(app)
    return group.get_command(group.make_context("vit", [name], resilient_parsing=True), name)


@pytest.mark.parametrize("name", ["", *NAMES])
def test_help_fits_80_columns_without_type_noise(name: str) -> None:
    text = render(name)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    usage = next(line for line in lines if "Usage:" in line)
    assert not re.search(r"[{}<>]", usage), usage
    for noise in ("<bool>", "<list", "<int range>", "<float range>", "[x>="):
        assert noise not in text, f"`vit {name} --help` shows {noise}"
    # a number in float notation (a range's 4.29497e+09): integers print in full
    assert not re.search(r"\de\+\d", text), f"`vit {name} --help` shows a number as 1e+09"


@pytest.mark.parametrize("name", NAMES)
def test_help_paragraphs_wrap_at_the_terminal_not_at_the_source(name: str) -> None:
    text = render(name)
    description = text.split("╭")[0]
    paragraphs = [p.splitlines() for p in re.split(r"\n\s*\n", description) if p.strip()]
    for lines in paragraphs:
        if any("Usage:" in line for line in lines):
            continue
        for line in lines[:-1]:  # every line but a paragraph's last fills most of the width
            assert len(line.rstrip()) >= WIDTH * 0.6, f"broken wrap in `vit {name} --help`: " \
                                                     f"{line.strip()!r}"
    for line in text.splitlines():  # a cell wrapped before its last character: " │ .  │"
        cell = line.strip("│ ")
        assert cell not in (".", ",", ";", ")"), f"a lone {cell!r} in `vit {name} --help`"


@pytest.mark.parametrize("name", NAMES)
def test_no_phrase_repeated_across_options(name: str) -> None:
    shingles: Counter[str] = Counter()
    for param in command(name).params:
        words = re.findall(r"[\w≤≥.]+", (param.help or "").lower())
        shingles.update({" ".join(words[i:i + 5]) for i in range(len(words) - 4)})
    repeated = [s for s, n in shingles.items() if n > 2]
    assert not repeated, f"`vit {name} --help` repeats: {repeated}"


@pytest.mark.parametrize("name", NAMES)
def test_options_say_their_default(name: str) -> None:
    text = " ".join(render(name).replace("│", " ").split())
    for param in command(name).params:
        if param.param_type_name != "option" or getattr(param, "is_flag", False):
            continue
        flag = max(param.opts, key=len)
        if flag in NO_DEFAULT_NEEDED or param.hidden:
            continue
        help_text = " ".join((param.help or "").split())
        shown = param.show_default and param.default is not None
        assert shown or "[" in help_text or "default" in help_text.lower(), \
            f"`vit {name} {flag}` does not say its default"
    if name in ("train", "eval"):
        assert re.search(r"--val-split .{0,200}?(\[0\.1|default)", text), text


@pytest.mark.parametrize("name", NAMES)
def test_defaults_in_one_style(name: str) -> None:
    """Defaults read as Typer shows them, "[default: x]": never "(default: x)", "Default: x",
    "; default: x" or a bare "[x]" beside them."""
    text = " ".join(render(name).replace("│", " ").split())
    for param in command(name).params:
        help_text = " ".join((param.help or "").split())
        flag = max(param.opts, key=len)
        assert not re.search(r"(?<!\[)default:", help_text, re.IGNORECASE), \
            f"`vit {name} {flag}` states its default in another style: {help_text!r}"
        bare = [b for b in re.findall(r"\[([^\]]*)\]", help_text)
                if not b.startswith("default: ")]
        assert not bare, f"`vit {name} {flag}` has a default in bare brackets: {bare}"
    assert not re.search(r"\(default:|Default:", text), f"`vit {name} --help`: {text}"


def default_only_lines(text: str) -> list[str]:
    """The help lines whose only content is (part of) a `[default: …]` or a `[required]`: an
    option's help column read row by row, each row's text placed in the option's whole help
    text."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        inner = line.strip()
        if not (inner.startswith("│") and inner.endswith("│")):
            blocks.append([])  # a panel's edge or the description: the next row starts anew
            continue
        inner = inner[1:-1].rstrip()
        if not inner.strip():
            continue
        if len(inner) - len(inner.lstrip()) <= 3 or not blocks or not blocks[-1]:
            # an option's first row: flag, value type, then its help after a wide gap
            blocks.append([re.split(r"\s{2,}", inner.strip())[-1]])
        else:
            blocks[-1].append(inner.strip())
    alone = []
    for rows in blocks:
        joined = " ".join(rows)
        defaults = [m.span() for m in re.finditer(r"\[default: [^\]]*\]|\[required\]",
                                                  joined)]
        at = 0
        for row in rows:
            start = joined.index(row, at)
            at = start + len(row)
            if any(a <= start and at <= b for a, b in defaults):
                alone.append(row)
    return alone


def test_default_fragments_are_found() -> None:
    panel = ("╭─ Options ──╮\n"
             "│ --batch  N  Images per forward pass.   │\n"
             "│             [default: 256]             │\n"
             "│ --seed   N  Seed. [default: 0]         │\n"
             "│ --size   N  Input size in px. [default:│\n"
             "│             the preset's]              │\n"
             "╰────────────╯\n"
             "╭─ Arguments ──╮\n"
             "│ *  DATA  A folder of class sub-folders,  │\n"
             "│          or a saved dataset.             │\n"
             "│          [required]                      │\n"
             "│ *  OUT   A folder. [required]            │\n"
             "╰────────────╯\n")
    assert default_only_lines(panel) == ["[default: 256]", "the preset's]", "[required]"]


@pytest.mark.parametrize("name", ["", *NAMES])
def test_no_line_holds_only_a_default(name: str) -> None:
    """At 80 columns `[default: 256]` and `[required]` once sat alone on a line under their
    option's or argument's help (and long defaults wrapped into lines of their own): they end
    a line of help text."""
    alone = default_only_lines(render(name))
    assert not alone, f"`vit {name} --help` has lines holding only a default or " \
                      f"[required]: {alone}"


@pytest.mark.parametrize("name", NAMES)
def test_required_parameters_still_say_so(name: str) -> None:
    """`[required]` moved into the help text, not dropped: once per required parameter, and
    the `*` before its name stays."""
    text = render(name)
    required = [p for p in command(name).params if p.required]
    assert text.count("[required]") == len(required), text
    assert text.count("│ *") == len(required), text


def test_val_split_needs_at_least_10_images_per_class() -> None:
    text = " ".join(render("train").replace("│", " ").split())
    assert "every class has at least 10 images" in text


def test_workers_is_a_hidden_alias_of_threads() -> None:
    text = render("train")
    assert "--threads" in text and "--workers" not in text
    assert "CPU threads for the maths" in " ".join(text.replace("│", " ").split())
    params = {p.name: p for p in command("train").params}
    assert params["workers"].hidden


@pytest.mark.parametrize("name", ["train", "eval", "predict", "export"])
def test_precision_help_states_the_rule_auto_follows(name: str) -> None:
    """`--precision auto` weighs a call's work (devices.BF16_MIN_MACS); the help of all four
    commands still said "models wide enough that it pays" / "for wide models" after the
    width rule was dropped."""
    from vitcli.devices import BF16_MIN_MACS, gmac

    param = next(p for p in command(name).params if "--precision" in p.opts)
    text = " ".join((param.help or "").split())
    assert f"from {gmac(BF16_MIN_MACS)} GMAC" in text, text
    assert "wide" not in text, text
