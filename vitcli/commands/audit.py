"""`vit audit`: check a folder of labelled images before training: counts and balance, sizes and
modes, unreadable files, duplicates, leakage between splits and images under two labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vitcli.commands._common import DeviceOpt, JsonOpt, OutDirOpt, plural, safe

if TYPE_CHECKING:
    from vitcli.data.audit import AuditReport

SHOW_GROUPS = 10  # groups listed file by file in the terminal; all of them in --out
SHOW_FILES = 6  # files listed per group in the terminal
SHOW_EMPTY = 5  # empty class folders named in the terminal; all of them in --out


def audit(
    data: Annotated[str, typer.Argument(
        help="A folder of class sub-folders (optionally with train/ and val/ or test/), or a "
        "saved dataset.", show_default=False)],
    val: Annotated[str | None, typer.Option(
        "--val", help="Validation images to check against DATA (same forms as DATA).",
        show_default=False)] = None,
    json_path: JsonOpt = None,
    out: OutDirOpt = None,
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="Also group images whose class-token features (this vitcli "
        "model file's) have a cosine ≥ 0.99; shown, never failing.", show_default=False)]
    = None,
    device: DeviceOpt = "auto",
    cache_dir: Annotated[str | None, typer.Option(
        "--cache-dir", help="Where fingerprints are cached.", show_default=False)] = None,
) -> None:
    """Find duplicates, leakage and images under two labels; report counts, balance and sizes.

    Exit 0 when clean, 1 when an image (exactly or nearly) is in two splits or under two
    labels, so it can gate a pipeline; near-duplicates within a class and empty class
    folders (which `vit train` refuses) are reported only.
    --out, else a new runs/audit/<name> folder, gets report.md, audit.json and a contact
    sheet per group (groups/group-NNN.png).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    from vitcli.commands._common import console, progress_bar, safe, writing
    from vitcli.data.audit import audit as run_audit
    from vitcli.data.audit_files import write_outputs
    from vitcli.errors import UsageError
    from vitcli.files import claim_numbered_dir

    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; give a folder for the report")
    if json_path is not None and json_path.is_dir():
        raise UsageError(f"--json {json_path}: is a folder; give a file name")
    with progress_bar("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("reading images", total=None)
        report = run_audit(data, val=val, cache_dir=Path(cache_dir) if cache_dir else None,
                           progress=lambda done, total: bar.update(task, completed=done,
                                                                   total=total))
        if model is not None:
            bar.update(task, description="model features", completed=0, total=None)
            _add_model_groups(report, model, device, cache_dir,
                              lambda done, total: bar.update(task, completed=done, total=total))
    with writing(out):
        out = out or claim_numbered_dir("runs/audit", Path(data).name or "data")
        written = write_outputs(report, out)
        if json_path is not None:
            import shutil

            from vitcli.files import atomic_write

            atomic_write(json_path, lambda tmp: shutil.copyfile(written["json"], tmp))
    render(report)
    console.print(f"report in [bold]{safe(str(written['report']))}[/], "
                  + _sheets_words(len(written["sheets"]), len(report.groups), out / "groups")
                  + (f", JSON in [bold]{safe(str(json_path))}[/]" if json_path else ""),
                  highlight=False, soft_wrap=True)
    if report.failed:
        raise typer.Exit(1)


def _sheets_words(sheets: int, groups: int, folder: Path) -> str:
    """Where the contact sheets are: none is said as none, never '0 contact sheets in
    DIR/groups' of a folder that was not made; fewer sheets than groups are said too."""
    if not sheets:
        return "no duplicate groups, no contact sheets"
    of = f" (the first {sheets:,} of {groups:,} groups)" if groups > sheets else ""
    return f"{plural(sheets, 'contact sheet')} in [bold]{safe(str(folder))}[/]{of}"


def _add_model_groups(report: AuditReport, model: Path, device: str, cache_dir: str | None,
                      progress: Callable[[int, int], None]) -> None:
    """Group the readable images by the cosine of the model's features (folders only)."""
    import os

    import numpy as np

    from vitcli.data.duplicates import MODEL_COSINE
    from vitcli.errors import UsageError
    from vitcli.evaluation.features import image_features, similar_pairs

    readable = [i for i, f in enumerate(report.files) if not f.error]
    paths = [report.files[i].path for i in readable]
    if not all(os.path.isfile(p) for p in paths):
        raise UsageError("--model compares image files; DATA is a dataset, not a folder")
    feats = image_features(model, paths, device=device, progress=progress,
                           cache_dir=Path(cache_dir) if cache_dir else None)
    pairs = np.asarray(readable, np.int64)[similar_pairs(feats, MODEL_COSINE)]
    report.add_model_pairs(pairs, MODEL_COSINE)


def render(report: AuditReport) -> None:
    """The counts table, the image properties, unreadable files and the groups."""
    from rich.table import Table

    from vitcli.commands._common import console, safe, warn
    from vitcli.data.audit_files import group_title
    from vitcli.files import shown_path

    console.print(f"[bold]{safe(report.description)}[/]", highlight=False, soft_wrap=True)
    counts, ratios = report.counts(), report.imbalance()
    table = Table(title="images per class", title_justify="left")
    table.add_column("class", no_wrap=True)
    for split in report.splits:
        table.add_column(split, justify="right")
    for name in report.class_names:
        table.add_row(safe(name), *(f"{counts[s][name]:,}" for s in report.splits))
    table.add_section()
    table.add_row("imbalance (largest / smallest)", *(f"{ratios[s]:.3g}:1"
                                                      for s in report.splits), style="bold")
    console.print(table)
    s = report.summary()
    if s:
        def span(field: str, fmt: str = "") -> str:  # "32" or "28–640"
            low, high = s[field]["min"], s[field]["max"]
            return f"{low:{fmt}}" if low == high else f"{low:{fmt}}–{high:{fmt}}"

        # Short lines that break between facts, not inside one, in an 80-column terminal.
        console.print(f"sizes {span('width')} × {span('height')} px (most common "
                      f"{', '.join(s['sizes'])}); aspect ratio {span('aspect_ratio', 'g')}",
                      highlight=False)
        console.print("colour modes " + ", ".join(f"{safe(k)} {v:,}" for k, v in s["modes"].items())
                      + "; bit depths " + ", ".join(f"{k}-bit {v:,}" for k, v in s["bits"].items()),
                      highlight=False)
    empty = report.empty_classes
    for folder in empty[:SHOW_EMPTY]:  # in the words `vit train` refuses it with
        warn(safe(folder.message(report.data)), to=console, soft_wrap=False)
    if len(empty) > SHOW_EMPTY:
        console.print(f"… {plural(len(empty) - SHOW_EMPTY, 'more empty class folder')} in "
                      "the report", highlight=False)
    if empty:
        from vitcli.data.sources import empty_class_advice

        console.print(empty_class_advice(len(empty)), highlight=False)
    bad = report.unreadable
    if bad:
        console.print(f"[yellow]{plural(len(bad), 'unreadable file')}[/], first: "
                      f"{safe(shown_path(bad[0].path, report.data))}: {safe(bad[0].error)}",
                      highlight=False,
                      soft_wrap=True)
    failing = sum(g.fails for g in report.groups)
    alike = sum(g.kind == "model" for g in report.groups)
    copies = len(report.groups) - alike
    # Look-alikes by the model's features are reported, never failing: counted apart from
    # the exact and near copies, so that the counts match the groups listed below.
    copies_words = (f"{plural(copies, 'duplicate group')}, {failing:,} of them across "
                    "splits or classes (these fail the audit)" if copies
                    else "no duplicate groups")  # not '0 groups, 0 of them across …'
    console.print(copies_words + (";" if alike else ""), highlight=False)
    if alike:  # a line of its own: together they wrapped mid-phrase at 80 columns
        console.print(f"{plural(alike, 'look-alike group')} by the model's features "
                      "(reported only)", highlight=False)
    for n, group in enumerate(report.groups[:SHOW_GROUPS], 1):
        style = "red" if group.fails else "yellow"
        console.print(f"[{style}]{n}. {group_title(group)}[/]", highlight=False)
        for i in group.members[:SHOW_FILES]:
            f = report.files[i]
            console.print(f"   {safe(f.label)} · {f.split} · {safe(shown_path(f.path, report.data))}",
                          highlight=False, soft_wrap=True)
        if len(group.members) > SHOW_FILES:
            console.print(f"   … {len(group.members) - SHOW_FILES} more", highlight=False)
    if len(report.groups) > SHOW_GROUPS:
        console.print(f"… {plural(len(report.groups) - SHOW_GROUPS, 'more group')} in the report",
                      highlight=False)
    verdict = ("[red]failed[/]: leakage or images under two labels" if report.failed
               else "[green]clean[/]: no leakage, no image under two labels")
    console.print(verdict)
