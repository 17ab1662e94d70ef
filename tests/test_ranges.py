"""Every number option has a range, --help shows it, and the check refuses exactly what lies
outside it, in one wording (vitcli.errors.Range)."""

from __future__ import annotations

import math

import pytest
from test_help import command
from typer.testing import CliRunner

from vitcli.cli import app
from vitcli.commands import COMMANDS
from vitcli.commands._common import _allowed, _metavar
from vitcli.errors import Range, format_number
from vitcli.training.recipe import RANGES, TrainOptions

NAMES = [name for name, _, _ in COMMANDS]


def numbers(name: str) -> list:
    return [p for p in command(name).params if p.param_type_name == "option"
            and p.bare_type() in ("int", "float")]


def run(*args: str):
    return CliRunner().invoke(app, list(args), prog_name="vit")


@pytest.mark.parametrize("name", NAMES)
def test_every_number_option_shows_a_range(name: str) -> None:
    for param in numbers(name):
        allowed = _allowed(param)
        assert allowed is not None and math.isfinite(allowed.high), \
            f"`vit {name} {max(param.opts, key=len)}` has no range"
        assert "–" in _metavar(param), _metavar(param)


def test_train_help_shows_the_ranges_train_checks() -> None:
    params = {max(p.opts, key=len): p for p in numbers("train")}
    for field, allowed in RANGES.items():
        flag = "--" + field.replace("_", "-")
        if flag in params:
            assert _allowed(params[flag]) == allowed, flag
    assert _metavar(params["--epochs"]) == "N 1–10⁵"  # round limits as powers: 80 columns
    assert _metavar(params["--batch-size"]) == "N 1–2¹⁶"
    assert _metavar(params["--img-size"]) == "N 8–8,192"
    assert _metavar(params["--label-smoothing"]) == "X 0–<1"
    assert _metavar(params["--layer-decay"]) == "X >0–1"


@pytest.mark.parametrize("flag, inside, outside", [
    ("--epochs", "100000", "100001"), ("--batch-size", "65536", "65537"),
    ("--depth", "256", "257"), ("--embed-dim", "32768", "32769"), ("--heads", "1024", "1025"),
    ("--weight-decay", "10", "10.5"), ("--lr", "10", "11"), ("--label-smoothing", "0.99", "1"),
    ("--layer-decay", "1", "0"), ("--val-split", "0.99", "0.995")])
def test_train_refuses_just_outside_the_range_help_shows(flag: str, inside: str,
                                                         outside: str) -> None:
    field = flag[2:].replace("-", "_")
    kind = int if isinstance(RANGES[field].low, int) and "." not in inside else float
    RANGES[field].check(flag, kind(inside))  # the boundary itself passes
    result = run("train", flag, outside)
    assert result.exit_code == 2, result.output
    assert f"{flag} must be in {RANGES[field]}, not " in result.output, result.output


def test_whole_numbers_in_errors_are_written_in_full() -> None:
    result = run("train", "--epochs", str(10**12))
    assert "not 1,000,000,000,000" in result.output and "e+" not in result.output
    with pytest.raises(Exception, match=r"not 10,000,000\b") as caught:
        TrainOptions(data="x", embed_dim=10**7).check()
    assert "e+" not in str(caught.value)
    from vitcli.model.config import ViTConfig
    with pytest.raises(Exception, match="not 10,000,000") as caught:
        ViTConfig(embed_dim=10**7, num_heads=1)
    assert format_number(1e12) == "1,000,000,000,000" and format_number(0.25) == "0.25"


@pytest.mark.parametrize("name", NAMES)
def test_nan_and_inf_say_the_same_for_every_float_option(name: str) -> None:
    for param in numbers(name):
        if param.bare_type() != "float" or param.hidden:
            continue
        flag = max(param.opts, key=len)
        for bad in ("nan", "inf"):
            result = run(name, flag, bad)
            assert result.exit_code == 2, result.output
            assert f"{flag} must be a finite number, not {bad}" in result.output, result.output


def test_typer_ranges_are_refused_in_the_same_words() -> None:
    result = run("eval", "--batch-size", "0")
    assert "--batch-size must be in [1, 4,096], not 0" in result.output
    assert "Input should be" not in run("train", "--seed", "-1").output


def test_range_wording() -> None:
    assert str(Range(0, 1, high_open=True)) == "[0, 1)"
    assert Range(0, 1, low_open=True).problem(0) == "must be in (0, 1], not 0"
    assert Range(0, 1).problem(float("nan")) == "must be a finite number, not nan"


@pytest.mark.parametrize("args, flag", [
    (["train"], "--epochs"), (["train"], "--val-every"), (["eval", "--data", "d"], "--threads"),
    (["predict", "img.png"], "--topk"), (["export", "--onnx"], "--opset")])
def test_whole_number_options_refuse_nan_floats_and_huge_values_in_the_library_words(
        args: list[str], flag: str) -> None:
    """A whole-number option given nan, 1e9 or 17.5 got Typer's "Input should be a valid
    integer, unable to parse string" where a decimal option said what was wrong."""
    for value, said in (("nan", "must be a finite number, not nan"),
                        ("inf", "must be a finite number, not inf"),
                        ("1e9", "not 1,000,000,000"), ("17.5", "must be a whole number, not 17.5")):
        result = run(*args, flag, value)
        assert result.exit_code == 2, (flag, value, result.output)
        assert f"{flag} {said}" in result.output or (said.startswith("not")
                                                     and said in result.output), result.output
        assert "valid integer" not in result.output
