"""The one exception type for mistakes a user can make.

Library code raises :class:`VitError` with a message that names the problem and the file;
the CLI turns it into one line on stderr and an exit code. Anything else is a bug and keeps
its traceback. Here too, at the bottom of the layers, the few wordings every layer shares:
counts (`plural`), durations (`format_duration`) and unknown scores (`format_score`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

USAGE = 2  # the command line itself is wrong (bad option value, impossible size)
FAILURE = 1  # the command ran and failed (missing file, corrupt model, ...)


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """'1 step', '2 steps', '1,024 steps'; `nouns` for a plural that is not noun + s
    (plural(1, "class", "classes")). Every count a user reads goes through this: never a
    hedged 'step(s)'. Here, at the bottom of the layers, so that every module can use it."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


def format_duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 07 min': seconds for short runs, never '0.0 min'."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def canonical_choice(value: object, choices: Iterable[str]) -> object:
    """`value` as the choice it names, whatever its case ("AdamW" → "adamw", "BF16" →
    "bf16"); anything that names no choice comes back unchanged, for the check to refuse as
    it was typed. The one rule for every option with a fixed set of values: case does not
    matter and the lower-case name is what is stored (as Ultralytics, timm and torch take
    "AdamW" or "CPU")."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in choices:
            return key
    return value


def check_choice(flag: str, value: object, choices: Iterable[str]) -> str:
    """The canonical name of `value` among `choices` (case ignored), or a UsageError
    "--flag must be one of a, b, c, not 'x'" ("must be a or b" for two) naming the value as
    it was given."""
    choices = tuple(choices)
    key = canonical_choice(value, choices)
    if not isinstance(key, str) or key not in choices:
        if len(choices) == 1:
            raise UsageError(f"{flag} accepts only {choices[0]!r}, not {value!r}")
        if len(choices) == 2:
            raise UsageError(f"{flag} must be {choices[0]} or {choices[1]}, not {value!r}")
        raise UsageError(f"{flag} must be one of {', '.join(choices)}, not {value!r}")
    return key


def format_number(value: float) -> str:
    """A number as a person reads it in an error or a range: whole numbers in full with
    thousands separators (1,000,000,000,000, never 1e+12), fractions as short decimals
    (0.5, 1e-12); nan and inf as Python writes them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:g}"


@dataclass(frozen=True)
class Range:
    """The values a number option accepts: [low, high], either end open where the value
    must stay off it ([0, 1) for label smoothing, (0, 1] for layer decay).

    One object serves the check (`problem`, `check`) and the help's value column
    (vitcli.commands._common reads it), so that what --help shows is what is refused.
    """

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __str__(self) -> str:
        """The range as the errors write it: [0, 1), (0, 1], [1, 100,000]."""
        return (f"{'(' if self.low_open else '['}{format_number(self.low)}, "
                f"{format_number(self.high)}{')' if self.high_open else ']'}")

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def problem(self, value: float) -> str | None:
        """What is wrong with `value`, worded to follow its flag ("must be in [0, 1), not
        1.5", "must be a finite number, not nan"), or None when it is in the range."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, not {value}"
        if value not in self:
            return f"must be in {self}, not {format_number(value)}"
        return None

    def check(self, flag: str, value: float | None) -> None:
        """Raise a UsageError "FLAG must be in [low, high], not VALUE" unless `value` is in
        the range; None (an option not given) passes."""
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{flag} must be a number, not {value!r}")
        problem = self.problem(value)
        if problem:
            raise UsageError(f"{flag} {problem}")


SCORE_DECIMALS = 2  # unknown scores and their threshold, everywhere a person reads them


def score_decimals(threshold: float, scores: Iterable[float] = ()) -> int:
    """The decimals to show an unknown threshold and the scores beside it with: 2, or more
    where 2 would round a score above the threshold down to it (15.051 > 15.049 is not
    "15.05 > 15.05"); at most 8, finer than a float32 score's last digit."""
    decimals = SCORE_DECIMALS
    above = [s for s in scores if s > threshold]
    while decimals < 8 and any(
            float(f"{s:.{decimals}f}") <= float(f"{threshold:.{decimals}f}") for s in above):
        decimals += 1
    return decimals


def format_score(value: float, decimals: int = SCORE_DECIMALS) -> str:
    """An unknown score or threshold (a Mahalanobis distance) as every command prints it:
    fixed decimals, 2 unless `score_decimals` asks for more ('15.05', never 15.1 in one
    command and 15.05 in another). Where a score is shown beside the threshold, format both
    with `score_decimals(threshold, scores)`. JSON and CSV keep the exact numbers."""
    return f"{value:.{decimals}f}"


class VitError(Exception):
    """A user-facing error: one readable line, no traceback."""

    def __init__(self, message: str, *, exit_code: int = FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(VitError):
    """A user-facing error about the command line itself (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=USAGE)
