"""`vit train` (not built yet)."""

from __future__ import annotations

import typer

from vitcli.commands._common import not_built_yet


def train(ctx: typer.Context) -> None:
    """Not built yet."""
    not_built_yet("train", "planned")
