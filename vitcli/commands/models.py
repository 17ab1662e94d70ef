"""`vit models`: the preset table with parameter counts and cost."""

from __future__ import annotations

from typing import Annotated

import typer


def models(
    classes: Annotated[int, typer.Option(
        "--classes", min=0, help="Head size used for the counts (0: no head).")] = 1000,
) -> None:
    """List the model presets with parameters and GFLOPs at their own resolution."""
    from rich import box
    from rich.table import Table

    from vitcli.commands._common import console
    from vitcli.model.config import PRESETS, count_params, gflops

    table = Table(title="vitcli model presets", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1), collapse_padding=True)
    table.add_column("name", no_wrap=True)
    for col in ("size", "patch", "tokens", "width", "depth", "heads", "params", "GFLOPs"):
        table.add_column(col, justify="right", no_wrap=True)
    for preset in PRESETS.values():
        c = preset.config.replace(num_classes=classes)
        table.add_row(
            preset.name, str(c.image_size), str(c.patch_size), str(c.num_tokens),
            str(c.embed_dim), str(c.depth), str(c.num_heads), f"{count_params(c):,}",
            f"{gflops(c):.2f}",
        )
    console.print(table)
    # Notes as lines of their own: a table caption would wrap at the table's width.
    head = f"a {classes}-class head" if classes else "no classification head"
    console.print(
        f"params: with {head} (--classes)\n"
        "GFLOPs: per image at the preset's size, 2 × multiply-accumulates\n"
        "Ti/S: DeiT Table 1; B/L/H: ViT paper Table 1; pico/nano/micro/mini: small images\n"
        "ViT-H/14 is 630,764,800 in timm's list: its count without the head (--classes 0)",
        style="dim", highlight=False)
