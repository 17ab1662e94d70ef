"""The `vit` command: a Typer app whose commands live in vitcli/commands/, one per module.

Commands are thin: parse, call a library function, render with Rich. Nothing here imports
torch; each command imports what it needs when it runs, so `vit --help` stays instant.
"""

from __future__ import annotations

import errno
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from vitcli import __version__
from vitcli.commands._common import print_error
from vitcli.errors import USAGE, VitError

# Typer vendors its own click, so `click.UsageError` would never match what Typer raises.
# Reach Typer's class through its public BadParameter (a UsageError subclass).
_UsageError: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                errno.EPERM, errno.EIO, errno.EFBIG, errno.ENAMETOOLONG,
                                errno.EMFILE, errno.ENFILE})


def _usage_line(exc: Any) -> str:
    ctx = getattr(exc, "ctx", None)
    command = f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else ""
    return f"{exc.format_message()} (see `vit{command} --help`)"


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: Any = None, line: str | None = None) -> None:
    from vitcli.commands._common import plain

    sys.stderr.write(f"warning: {plain(' '.join(str(message).split()))}\n")


class VitGroup(TyperGroup):
    """Turns user mistakes into one line on stderr and an exit code, never a traceback; its
    own options' help is tidied as each command's is (no `<bool>` after --version, --help)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from vitcli.commands._common import _tidy

        super().__init__(*args, **kwargs)
        for param in self.params:
            _tidy(param)

    def get_help_option(self, ctx: Any) -> Any:
        from vitcli.commands._common import _tidy

        option = super().get_help_option(ctx)
        if option is not None:
            _tidy(option)
        return option

    def make_context(self, *args: Any, **kwargs: Any) -> typer.Context:
        try:
            return super().make_context(*args, **kwargs)
        except _UsageError as exc:  # options of `vit` itself, e.g. `vit --bogus`
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `vit`: the help, no error
                help_text = exc.format_message()  # empty when Rich has printed it already
                if help_text:
                    typer.echo(help_text)
            else:
                print_error(_usage_line(exc))
            raise typer.Exit(USAGE) from None

    def invoke(self, ctx: typer.Context) -> Any:
        import warnings

        try:
            with warnings.catch_warnings():
                # A library's warning (Pillow's decompression-bomb warning, a font's missing
                # glyph) is one escaped `warning:` line, not a file:line dump with source.
                warnings.showwarning = _one_line_warning
                return super().invoke(ctx)
        except VitError as exc:
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            # The machine refused (disk full, read-only, quota, permissions, I/O error): the
            # user's problem to fix, said in one line. Other OSErrors are bugs: traceback.
            if exc.errno not in ENVIRONMENT_ERRNOS:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            print_error(f"{where}{exc.strerror or exc}")
            raise typer.Exit(1) from None
        except _UsageError as exc:  # a command's arguments and options
            print_error(_usage_line(exc))
            raise typer.Exit(USAGE) from None

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(self.commands)  # in the order they were added, not alphabetical


app = typer.Typer(
    name="vit",
    cls=VitGroup,
    help="Vision Transformers from the command line: see how images become tokens, train, "
    "evaluate, predict, explain and export.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vitcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True,
                           help="Show the version and exit.")] = False,
) -> None:
    """Vision Transformers from the command line."""


def _register() -> None:
    from vitcli.commands import COMMANDS
    from vitcli.commands._common import VitCommand

    for name, module_name, function_name in COMMANDS:
        import importlib

        module = importlib.import_module(f"vitcli.commands.{module_name}")
        app.command(name, cls=VitCommand)(getattr(module, function_name))


_register()


def main() -> None:
    """Console-script entry point."""
    app()
