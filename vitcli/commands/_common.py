"""Shared option aliases and Rich consoles, defined once for every command."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape as _escape_markup
from rich.segment import Segment
from typer.core import TyperCommand

from vitcli.devices import BF16_MIN_MACS, THREADS, gmac
from vitcli.errors import Range, format_number
from vitcli.errors import format_score as format_score  # re-exported: scores print so
from vitcli.errors import plural as plural  # re-exported: the commands count with it
from vitcli.errors import score_decimals as score_decimals  # re-exported, with format_score
from vitcli.files import model_label as model_label  # re-exported: commands name models so

# What must never reach a terminal raw from a name: C0 controls (ESC starts every escape
# sequence: OSC 52 clipboard writes, clear-screen, title changes), DEL, C1 controls (0x9b is
# a one-byte CSI, 0x9d a one-byte OSC), bidirectional overrides (text shown reversed), and
# lone surrogates (undecodable bytes of a file name; a UTF-8 terminal cannot even encode them).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_UNSAFE_KEEP_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f"
                                  "\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte os.fsdecode could not decode: show the byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(text: object) -> str:
    """`text` with every control character, bidi override and undecodable byte shown as an
    escape (\\x1b, \\u202e, \\xe9), so that it can go to a terminal as it is."""
    return _UNSAFE.sub(_visible, str(text))


def safe(text: object) -> str:
    """Untrusted text (a class name, a file name, a message quoting one) made safe to put in
    Rich markup: control characters escaped as in `plain`, and `[...]` shown, not applied.

    JSON and CSV output keep the exact names; only what reaches a terminal goes through this.
    """
    return _escape_markup(plain(text))


class SafeConsole(Console):
    """A Rich console that escapes control characters in everything it prints.

    The backstop below every call site: whatever text reaches a segment (a table cell, a
    progress bar's description, a status line) is printed with its control characters
    escaped; Rich's own styles and cursor movements are separate segments and pass.
    """

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return super()._render_buffer(
            Segment(_UNSAFE_KEEP_NEWLINE.sub(_visible, text), style, control)
            if control is None and text else Segment(text, style, control)
            for text, style, control in buffer)


console = SafeConsole()  # results
err_console = SafeConsole(stderr=True)  # progress, warnings


def fit_or_break(*parts: str, width: int | None = None) -> str:
    """The parts joined by spaces where they fit `width` (the terminal's), each one that
    would pass it on a line of its own: a long line broken at its natural places instead of
    inside a phrase ("cpu, 1 thread (…)," / "57 images/s, precision fp32" / "(auto: …)").

    The parts are printable text (escaped, without markup): their length is what the
    terminal shows.
    """
    from rich.cells import cell_len

    width = width or console.width
    lines = [parts[0]]
    for part in parts[1:]:
        joined = f"{lines[-1]} {part}"
        if cell_len(joined) <= width:
            lines[-1] = joined
        else:
            lines.append(part)
    return "\n".join(lines)


def warn(first: str, second: str = "", *, to: Console | None = None,
         soft_wrap: bool = True) -> None:
    """Print one `warning:` line on `to` (stderr unless said): `first second`, with `second`
    on the next line where `warning: first second` does not fit the terminal (fit_or_break).

    Both parts are printable text (escaped, without markup). With soft_wrap a line longer
    than the terminal is left for the terminal to wrap (a path stays whole for copying);
    without, Rich wraps it at words. Every command says its warnings through here.
    """
    to = to or err_console
    text = fit_or_break(first, second, width=to.width - len("warning: ")) if second else first
    to.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=soft_wrap)


ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", "-m", help="A vitcli model file (.safetensors).", show_default=False),
]
# what `--precision auto` weighs, named in each command's help (vitcli.devices: no torch)
BF16_MIN_GMAC = gmac(BF16_MIN_MACS)
DeviceOpt = Annotated[
    str, typer.Option("--device", help="The device to run on: cpu, cuda, cuda:N (a GPU) or mps.")
]
PrecisionOpt = Annotated[
    str, typer.Option("--precision", help="auto, fp32 or bf16 (bf16 autocast, fp32 weights). "
                      "auto: bf16 on a CUDA GPU, and on a CPU with bf16 matrix units (AMX, "
                      f"AVX512-BF16) from {BF16_MIN_GMAC} GMAC a batch (an image's "
                      "multiply-accumulates × the batch); fp32 below.")
]
OutDirOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Folder to write results into.",
                              show_default=False)
]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Also write the results as JSON to this file.",
                              show_default=False)
]


def ranged(option: Any, allowed: Range) -> Any:
    """`option` (a typer.Option) taking the numbers in `allowed`: the help shows the range
    as the option's value type and a value outside it is refused before the command runs,
    in the wording the library's own checks use (Range.problem). For ranges with an open
    end, and ranges a library module defines (vitcli.training.recipe.RANGES), where Typer's
    min= and max= would be a second copy of them."""
    option.allowed = allowed
    return option


# `vit train --threads` says the same, and measures its guess during training
ThreadsOpt = Annotated[
    int, ranged(typer.Option("--threads", help="CPU threads for the maths; 0 = from the "
                             "cores free (usable cores less the load average)."), THREADS)
]


def _allowed(param: Any) -> Range | None:
    """The range an option takes: given with `ranged`, else Typer's min= and max=."""
    descriptor = getattr(param, "type_descriptor", None)
    allowed = getattr(getattr(descriptor, "parameter_info", None), "allowed", None)
    if allowed is not None:
        return allowed
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is None and high is None:
        return None
    return Range(-math.inf if low is None else low, math.inf if high is None else high)


def _metavar(param: Any) -> str:
    """A short value name for the help's type column: N, X, PATH or TEXT, with its range
    (N 1–100,000; X 0–<1 where 1 itself is refused, X >0–1 where 0 is)."""
    desc = param.type_descriptor
    if desc.is_choice:
        return "|".join(str(c) for c in desc.choices or ())
    bare = param.bare_type()
    name = "PATH" if desc.is_path else {"int": "N", "float": "X"}.get(bare, "TEXT")
    allowed = _allowed(param)
    if allowed is None:
        return name
    if allowed.high == math.inf:
        return f"{name}{'>' if allowed.low_open else '≥'}{_bound(allowed.low)}"
    return (f"{name} {'>' if allowed.low_open else ''}{_bound(allowed.low)}–"
            f"{'<' if allowed.high_open else ''}{_bound(allowed.high)}")


class _BadNumber(typer.BadParameter):
    """A number option's value refused: "--epochs must be in [1, 100,000], not 0", as
    TrainOptions.check and the model config word it, not Typer's "Invalid value for
    '--epochs': Input should be less than or equal to 100000"."""

    def format_message(self) -> str:
        return self.message


_ANY_NUMBER = Range(-math.inf, math.inf)  # what every number option takes at least: finite


def _check_numbers(param: Any) -> None:
    """Refuse a number option's value outside its range, and nan or inf for every one, in
    the library's wording (Range.problem), before Typer converts it: the one check of a
    value given on the command line, and the same message whichever option it is."""
    kind = {"int": int, "float": float}.get(param.bare_type())
    if kind is None:
        return
    allowed = _allowed(param) or _ANY_NUMBER
    flag = max(param.opts, key=len)
    convert = param.process_value

    def process_value(ctx: Any, value: Any) -> Any:
        try:
            number = kind(value) if isinstance(value, str) else value
        except ValueError:  # not a number at all: Typer says so
            number = None
            if kind is int and isinstance(value, str):  # nan, inf, 1e9, 2.5: a float
                try:
                    number = float(value)
                except ValueError:
                    pass
                if number is not None and math.isfinite(number) \
                        and not allowed.problem(number):
                    raise _BadNumber(f"{flag} must be a whole number, not {value}", ctx=ctx,
                                     param=param) from None
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            problem = allowed.problem(number)
            if problem:
                raise _BadNumber(f"{flag} {problem}", ctx=ctx, param=param)
        return convert(ctx, value)

    param.process_value = process_value


_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def per_second(rate: float) -> str:
    """A speed as a reader wants it: whole numbers with thousands separators from 10 up
    (1,836), two significant figures below (3.1, 0.42), so that a slow model on big images
    reads 0.42 images/s rather than 0."""
    if rate >= 10:
        return f"{rate:,.0f}"
    return f"{rate:.2g}" if rate >= 0.01 else "<0.01"


def _bound(value: float) -> str:
    """A range bound as a reader writes it: whole numbers in full with thousands separators
    (4,096, never 4.096e+03), fractions as short decimals (0.5); a limit of a binary type
    as a power of two (2³²−1 for a seed, 2¹⁶ for a batch) and a round limit from 100,000 up
    as a power of ten (10⁹): exact, and short enough to leave the help its width at 80
    columns."""
    if float(value).is_integer():
        n = int(value)
        if n >= 2**31 - 1 and (n + 1) & n == 0:  # 2^k - 1: a type's limit
            return f"2{str((n + 1).bit_length() - 1).translate(_SUPERSCRIPT)}−1"
        if n >= 2**15 and n & (n - 1) == 0:  # 2^k: a binary limit (a batch of 65,536)
            return f"2{str(n.bit_length() - 1).translate(_SUPERSCRIPT)}"
        if n >= 10**5 and str(n).rstrip("0") == "1":  # 10^k: a round limit, as short
            return f"10{str(len(str(n)) - 1).translate(_SUPERSCRIPT)}"
    return format_number(value)


def _one_line_paragraphs(text: str | None) -> str | None:
    """Help text whose paragraphs are single lines, so that Rich wraps them at the terminal's
    width instead of keeping the source's line breaks (a short line, then a wrapped one)."""
    if not text:
        return text
    import inspect

    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


class VitCommand(TyperCommand):
    """Typer's command with help that reads cleanly at 80 columns: plain flags show no
    `<bool>`, arguments read IMAGE / INPUTS... (no `{image}` or `<list[str]>`), value types are
    one short word with their range (N≥1) instead of `<int range> [x>=1]`, and the docstring's
    paragraphs are re-wrapped to the terminal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = _one_line_paragraphs(self.help)
        for param in self.params:
            _tidy(param)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """Help texts are plain text, never Rich markup: "[adamw; tiny: muon]" must show, so
        they are escaped for the length of the rendering only.

        The default and the `[required]` Typer shows go at the end of the help text, in its
        words ("[default: 256]", "[required]"), for the same length: Typer sets them beside
        the text as further columns, which drop to a line of their own whenever the text
        wraps. The `*` before a required parameter's name stays."""
        params = [p for p in self.get_params(ctx)
                  if getattr(p, "help", None) or getattr(p, "required", False)]
        saved = (self.help, [(p.help, p.show_default) for p in params])
        try:
            self.help = _escape_markup(self.help or "")
            for p in params:
                p.help = _escape_markup(_with_default(p, ctx))
                if p.required:  # styled as Typer styles it; the text is escaped markup
                    p.help = f"{p.help} [dim red]\\[required][/]".lstrip()
                p.show_default = False
            with _no_required_column():
                return super().format_help(ctx, formatter)
        finally:
            self.help = saved[0]
            for p, (text, show) in zip(params, saved[1]):
                p.help, p.show_default = text, show

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            _tidy(option)
        return option

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(param.metavar if param.required else f"[{param.metavar}]")
        return pieces


@contextmanager
def _no_required_column() -> Iterator[None]:
    """Typer's help without the `[required]` it adds after a parameter's help text (as a
    column of its own, which lands alone on a line when the text wraps): VitCommand puts it
    at the end of the text instead."""
    from typer import rich_utils

    original = rich_utils._get_parameter_help

    def help_without_required(**kwargs: Any) -> Any:
        columns = original(**kwargs)
        columns.renderables = [r for r in columns.renderables
                               if getattr(r, "plain", None) != rich_utils.REQUIRED_LONG_STRING]
        return columns

    rich_utils._get_parameter_help = help_without_required
    try:
        yield
    finally:
        rich_utils._get_parameter_help = original


def _with_default(param: Any, ctx: Any) -> str:
    """`param.help` ending in the default Typer would show beside it ("[default: 256]"),
    worked out as Typer works it out (typer.rich_utils._get_parameter_help)."""
    text = param.help
    if not hasattr(param, "_extract_default_help_str"):
        return text
    default = param._extract_default_help_str(ctx=ctx)
    named = isinstance(param.show_default, str)
    if not named and (default is None or not (param.show_default or ctx.show_default)):
        return text
    shown = param._get_default_string(ctx=ctx, show_default_is_str=named,
                                      default_value=default)
    return f"{text} [default: {shown}]" if shown else text


def _tidy(param: Any) -> None:
    if getattr(param, "help", None):
        param.help = _one_line_paragraphs(param.help)
    if param.param_type_name == "argument":
        param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
        param.display_type_rich = lambda ctx: None  # the name says it; no <list[str]>
        param._get_number_range_help_str = lambda: None
    elif getattr(param, "is_flag", False) or getattr(param, "count", False):
        param.metavar = ""
    else:
        param.metavar = _metavar(param)
        param._get_number_range_help_str = lambda: None  # in the metavar
        _check_numbers(param)


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
    text = plain(" ".join(str(message).split()))
    sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()
