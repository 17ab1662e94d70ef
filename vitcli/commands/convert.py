"""`vit convert SOURCE --out model.safetensors`: import timm, transformers or JAX ViT weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vitcli.commands._common import ranged
from vitcli.model.config import FIELD_RANGES


def convert(
    out: Annotated[Path, typer.Option("--out", "-o", help="The vitcli model file to write (.safetensors).",
                                      show_default=False)],
    source: Annotated[
        Path | None,
        typer.Argument(help="timm .safetensors, transformers folder, JAX .npz, or a PyTorch "
                       "pickle (with --allow-pickle).", show_default=False)] = None,
    labels: Annotated[
        str | None,
        typer.Option("--labels", help="Class names: a file (one per line, or JSON) or a,b,c.",
                     show_default=False)] = None,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle",
                           help="Read .bin/.pth/.pt/.ckpt pickles (weights only, never code).")
    ] = False,
    from_hub: Annotated[
        str | None,
        typer.Option("--from-hub", help="Download a Hugging Face Hub model: a Hub id "
                     "(transformers or timm/ repository, e.g. facebook/dinov2-small) or a "
                     "short name from `vit models --pretrained`.", show_default=False)] = None,
    heads: Annotated[
        int | None,
        ranged(typer.Option("--heads", help="Attention heads, for widths outside the ViT "
                            "table.", show_default=False), FIELD_RANGES["num_heads"])] = None,
) -> None:
    """Convert pre-trained ViT weights into a vitcli model file."""
    from vitcli.commands._common import console, err_console, fit_or_break, plural, safe
    from vitcli.convert import convert as run_convert
    from vitcli.convert import download_from_hub, parse_labels
    from vitcli.errors import UsageError

    if (source is None) == (from_hub is None):
        raise UsageError("give either SOURCE or --from-hub ID (see `vit convert --help`)")
    if from_hub:
        from vitcli.convert.catalog import hub_id_for

        named, from_hub = from_hub, hub_id_for(from_hub)  # a short name: `vit models --pretrained`
        also = f" ({safe(named)})" if named.strip() != from_hub else ""
        err_console.print(f"downloading {safe(from_hub)}{also} from the Hugging Face Hub …")
        source = download_from_hub(from_hub)
    names = parse_labels(labels) if labels else None
    path, converted = run_convert(source, out, labels=names, heads=heads,
                                  allow_pickle=allow_pickle, source_name=from_hub)
    c = converted.config
    console.print(f"[bold]{safe(converted.source)}[/] → {safe(path)}")
    shape = fit_or_break(f"  ViT {c.embed_dim} wide, {plural(c.depth, 'block')}, "
                         f"{plural(c.num_heads, 'head')},", f"{c.patch_size} px patches, "
                         f"{c.image_size} px images, {plural(c.num_classes, 'class', 'classes')}")
    console.print(shape.replace("\n", "\n  "), highlight=False)  # a broken line stays indented
    for note in converted.notes:
        console.print(f"  note: {safe(note)}")
