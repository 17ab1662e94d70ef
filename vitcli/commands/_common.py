"""Shared option aliases and Rich consoles, defined once for every command."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()  # results
err_console = Console(stderr=True)  # progress, warnings

ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", "-m", help="A vitcli model file (.safetensors).", show_default=False),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")
]
OutDirOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Folder to write results into.",
                              show_default=False)
]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Also write the results as JSON to this file.",
                              show_default=False)
]


def not_built_yet(command: str, issue: str) -> None:
    """Say plainly that a command does not exist yet, and exit non-zero."""
    from vitcli.errors import VitError

    raise VitError(f"`vit {command}` is not built yet in this version ({issue})")


def progress_bar(*columns: Any) -> Any:
    """A transient Rich progress bar on stderr, switched off when stderr is not a terminal
    (a bar redrawn into a log file or a pipe is only noise there)."""
    from rich.progress import Progress

    return Progress(*columns, console=err_console, transient=True,
                    disable=not err_console.is_terminal)


@contextmanager
def writing(target: Path | str | None) -> Iterator[None]:
    """Turn a failed write (no such folder, a file in the way, no permission, disk full) into
    one error line naming the place, instead of an OSError traceback."""
    from vitcli.errors import VitError

    try:
        yield
    except OSError as exc:
        raise VitError(f"{exc.filename or target}: cannot write ({exc.strerror or exc})") \
            from None


def print_error(message: str) -> None:
    """One line on stderr: the whole user-facing error report."""
    text = " ".join(str(message).split())
    sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()
