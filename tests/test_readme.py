"""README.md stays a user's page that is true: short, and every `vit` line in it parses.

A command line in the README that names a subcommand or option that does not exist is a lie
the first reader meets; these tests parse each one with the real `vit` command (click's own
parser, so option names and arities are checked; files need not exist). The quick start must
be exactly what scripts/quickstart.sh runs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from vitcli.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_CHARS = 15_000


def code_blocks(text: str) -> list[str]:
    """The bodies of the ``` fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)


def command_lines(block: str) -> list[str]:
    """Logical lines of a shell block: backslash continuations joined."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def vit_argv(line: str) -> list[str] | None:
    """The arguments after `vit` (or `-m vitcli`) of one shell line, or None if it is no vit call.

    Comments, pipes and redirections end the command; `vit a | vit b` is two commands, of which
    the first is returned (tests call this once per segment).
    """
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    for stop in ("|", ">", ">>", "&&", ";"):
        if stop in words:
            words = words[: words.index(stop)]
    if words[:1] == ["vit"]:
        return words[1:]
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "vitcli":
            return words[i + 2:]
    return None


def readme_vit_commands() -> list[list[str]]:
    commands = []
    for block in code_blocks(README.read_text(encoding="utf-8")):
        for line in command_lines(block):
            for segment in re.split(r"\s(?:\||&&|;)\s", line):
                argv = vit_argv(segment)
                if argv is not None:
                    commands.append(argv)
    return commands


def parse(argv: list[str]) -> None:
    """Parse a `vit` command line with the real command's parser; raises on an unknown
    subcommand or option, or a missing option value."""
    group = typer.main.get_command(app)
    name, *rest = argv
    command = group.get_command(group.make_context("vit", [name], resilient_parsing=True), name)
    assert command is not None, f"`vit {name}` is not a command"
    parser = command.make_parser(typer.Context(command, info_name=name))
    parser.parse_args(list(rest))


def test_readme_is_short() -> None:
    size = len(README.read_text(encoding="utf-8"))
    assert size < MAX_CHARS, f"README.md is {size} characters; keep it under {MAX_CHARS}"


def test_readme_has_vit_commands_for_every_command() -> None:
    named = {argv[0] for argv in readme_vit_commands() if argv}
    from vitcli.commands import COMMANDS

    missing = {name for name, _, _ in COMMANDS} - named
    assert not missing, f"README shows no example of: {sorted(missing)}"


@pytest.mark.parametrize("argv", readme_vit_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(argv: list[str]) -> None:
    parse(argv)


def test_parse_catches_a_wrong_option() -> None:
    """The check above can fail: an option that does not exist is refused."""
    with pytest.raises(Exception, match="no_such_option|No such option"):
        parse(["train", "--data", "x", "--no-such-option"])
    with pytest.raises(AssertionError):
        parse(["trian", "--data", "x"])


def quickstart_commands() -> list[str]:
    """The vit commands scripts/quickstart.sh runs, with its shell variables filled in."""
    script = (ROOT / "scripts" / "quickstart.sh").read_text(encoding="utf-8")
    variables: dict[str, str] = {}
    commands = []
    for line in command_lines(script):
        if line.startswith("#"):
            continue
        assignment = re.fullmatch(r"(\w+)=(\S+)", line)
        if assignment:
            value = assignment.group(2).strip('"')
            for name, known in variables.items():
                value = value.replace(f"${name}", known)
            variables[assignment.group(1)] = value
            continue
        if line.startswith("vit "):
            for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
                line = line.replace(f'"${name}', f'"{value}').replace(f"${name}", value)
            commands.append(" ".join(shlex.split(line)))
    return commands


def test_quick_start_is_what_the_script_runs() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quick start"):]
    section = section[: section.index("\n## ", 1)]
    blocks = code_blocks(section)
    assert blocks, "the quick start has no code block"
    shown = [" ".join(shlex.split(line)) for line in command_lines(blocks[0])]
    expected = quickstart_commands()
    assert len(expected) >= 5
    assert shown == expected
