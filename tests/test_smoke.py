"""Placeholder removed once module tests land: the package imports and the CLI answers."""

from typer.testing import CliRunner

from vitcli.cli import app


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("vitcli ")
