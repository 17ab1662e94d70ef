"""`vit patchify IMAGE`: show how an image becomes the token sequence a ViT reads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vitcli.commands._common import ModelOpt, plural

if TYPE_CHECKING:  # heavy or numpy-using imports stay out of `vit --help`
    import numpy as np
    from rich.table import Table
    from rich.text import Text

    from vitcli.model.patches import PatchifyResult

PREVIEW_CELLS = 28  # widest terminal preview, in patches (two characters each)


def patchify(
    image: Annotated[Path, typer.Argument(help="An image file (any format Pillow reads).",
                                          show_default=False)],
    patch: Annotated[int | None, typer.Option(
        "--patch", "-p", min=1, max=1024, help="Patch size in px; with --model, the "
        "model's own. [default: 16, or the --preset's]", show_default=False)] = None,
    size: Annotated[int | None, typer.Option(
        "--size", "-s", min=1, max=8192, help="Input size in px; with --model, the "
        "model's own. [default: 224, or the --preset's]", show_default=False)] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="The architecture whose width and GFLOPs are shown. "
        "[default: nearest --patch/--size]",
        show_default=False)] = None,
    model: ModelOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Where the grid and sequence pictures are written. "
        "[default: ./patchify-out]",
        show_default=False)] = None,
) -> None:
    """Draw the patch grid and the token sequence of IMAGE, and print the token figures."""
    from vitcli.commands._common import console, safe, warn
    from vitcli.model.patches import patchify_image

    out_dir = out if out is not None else Path("patchify-out")
    result = patchify_image(image, out_dir, patch_size=patch, image_size=size, preset=preset,
                            model_path=model)
    console.print(_summary(result))
    if console.color_system:  # piped output gets no blank colour blocks
        console.print(_preview(result.colours))
    # What each picture is first, then its path: at 80 columns a long path moves to the
    # next line whole, instead of splitting the phrase after it.
    console.print(f"[green]wrote[/] the patch grid, numbered by token: "
                  f"{safe(result.grid_path)}", highlight=False)
    console.print(f"[green]wrote[/] the token sequence the encoder reads: "
                  f"{safe(result.sequence_path)}", highlight=False)
    from vitcli.model.patches import grid_warning

    warning = grid_warning(result.config.image_size, result.config.patch_size)
    if warning:
        warn(safe(warning))


def _summary(result: PatchifyResult) -> Table:
    """The figures as a two-column Rich table."""
    from rich.table import Table

    c, pre = result.config, result.preprocessing
    rows, cols = result.grid
    P = c.patch_size
    table = Table(show_header=False, title=f"{result.image_path.name} → tokens",
                  title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    w, h = result.original_size
    table.add_row("original", f"{w}×{h} px")
    table.add_row("model input", f"{c.image_size}×{c.image_size}×{c.in_channels} "
                  f"({pre.describe()})")
    table.add_row("grid", f"{plural(rows, 'row')} × {plural(cols, 'column')} of {P}×{P} px "
                  "patches")
    extra = [plural(n, what) for n, what in ((int(c.class_token), "class token"),
                                             (int(c.distilled), "distillation token"),
                                             (c.reg_tokens, "register token")) if n]
    cls = " + " + " + ".join(extra) if extra else " (no class token)"
    table.add_row("patches / tokens", f"{plural(result.num_patches, 'patch', 'patches')}{cls} = "
                  f"{plural(result.num_tokens, 'token')}")
    table.add_row("patch vector", f"P·P·C = {P}·{P}·{c.in_channels} = {result.patch_dim} values")
    blocks = f"{plural(c.depth, 'block')}, {plural(c.num_heads, 'head')}"
    source = {"overlap": f"{c.token_input_dim} ({P + 2}×{P + 2} px overlapping windows) ",
              "shifted": f"{c.token_input_dim} (5 × {result.patch_dim}: the patch and 4 shifted "
                         "copies) "}.get(c.patch_embed, f"{result.patch_dim} ")
    table.add_row("embedding", f"{source}→ {c.embed_dim} (width), {blocks}")
    table.add_row("model", f"{result.source}, {result.params:,} parameters")
    table.add_row("GFLOPs / image", f"{result.gflops:.3f} (2 × multiply-accumulates)")
    return table


def _preview(colours: np.ndarray) -> Text:
    """The image at one block per patch, in its patches' mean colours (rows, cols, 3)."""
    from rich.text import Text

    step = max(1, -(-colours.shape[1] // PREVIEW_CELLS))  # ceil: fit in ~56 characters
    small = colours[::step, ::step]
    text = Text()
    for row in small:
        for r, g, b in row:
            text.append("  ", style=f"on rgb({r},{g},{b})")
        text.append("\n")
    return text
