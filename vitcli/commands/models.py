"""`vit models`: the preset table with parameter counts and cost."""

from __future__ import annotations

from typing import Annotated

import typer

from vitcli.commands._common import ranged
from vitcli.model.config import FIELD_RANGES


def models(
    classes: Annotated[int, ranged(typer.Option(
        "--classes", help="Classes in the head that the counts assume (0: no head)."),
        FIELD_RANGES["num_classes"])] = 1000,
    pretrained: Annotated[bool, typer.Option(
        "--pretrained", help="List recommended pretrained weights instead: the names "
        "`vit train --init` and `vit convert --from-hub` accept.")] = False,
) -> None:
    """List the model presets with parameters and GFLOPs at their own resolution."""
    if pretrained:
        _pretrained()
        return
    from rich import box
    from rich.table import Table

    from vitcli.commands._common import console
    from vitcli.model.config import count_params, gflops
    from vitcli.model.presets import PRESETS

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


def _pretrained() -> None:
    """The curated table of pretrained weights (vitcli/convert/catalog.py), 80 columns wide:
    what each is (figures and their sources), then where it lives and on what terms."""
    from rich import box
    from rich.table import Table

    from vitcli.commands._common import console
    from vitcli.convert.catalog import CATALOG

    def table(title: str) -> Table:
        return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                     collapse_padding=True, title_justify="left")

    what = table("recommended pretrained weights")
    what.add_column("name", no_wrap=True)
    what.add_column("family")
    what.add_column("px", justify="right", no_wrap=True)
    what.add_column("M", justify="right", no_wrap=True)  # millions of parameters
    what.add_column("ImageNet", no_wrap=True)
    what.add_column("pretrained on")
    where = table("where they live")
    where.add_column("name", no_wrap=True)
    where.add_column("Hub id", overflow="fold")
    where.add_column("licence", no_wrap=True)
    sources: dict[str, int] = {}
    short = {" linear probe": " lin.", " zero-shot": " 0-shot", " top-1": ""}
    for p in CATALOG.values():
        figure = "-"
        if p.imagenet:
            figure = p.imagenet
            for long, abbreviation in short.items():
                figure = figure.replace(long, abbreviation)
            figure += f" [{sources.setdefault(p.source, len(sources) + 1)}]"
        what.add_row(p.name, p.family, str(p.image_size), f"{p.params_m:g}", figure, p.data)
        where.add_row(p.name, p.hub_id, p.licence)
    console.print(what)
    notes = ["M: millions of parameters. ImageNet: top-1 on ImageNet-1k (fine-tuned "
             "classifier), lin.: a linear probe on frozen features, 0-shot: zero-shot; "
             "-: no published figure checked, so none is shown."]
    notes += [f"[{mark}] {source}" for source, mark in sources.items()]
    console.print("\n".join(notes), style="dim", highlight=False)
    console.print(where)
    console.print("vit train --init NAME --data PHOTOS [--freeze backbone]\n"
                  "vit convert --from-hub NAME --out model.safetensors", highlight=False)
