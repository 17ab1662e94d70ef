"""`vit eval`: measure a model file on labelled images and show where it goes wrong."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vitcli.commands._common import (
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    OutDirOpt,
    PrecisionOpt,
    ThreadsOpt,
    plural,
    ranged,
)
from vitcli.data import VAL_SPLIT

if TYPE_CHECKING:
    from rich.table import Table

    from vitcli.evaluation.evaluate import EvalReport
    from vitcli.evaluation.metrics import Metrics

CONFUSION_MAX_CLASSES = 12  # a wider Rich matrix no longer fits a terminal
PER_CLASS_MAX_ROWS = 40


def evaluate(
    model: ModelOpt = None,
    data: Annotated[str | None, typer.Option(
        "--data", "-d", help="Labelled images: a folder of class sub-folders, a folder with "
        "train/ and val/ or test/, a saved dataset, or a Hub dataset name.",
        show_default=False)] = None,
    json_path: JsonOpt = None,
    out: OutDirOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, max=4096,
                                            help="Images per forward pass.")] = 256,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    threads: ThreadsOpt = 0,
    split: Annotated[str | None, typer.Option(
        "--split", help="Which split to evaluate; without it the data's validation or "
        "test split, else all of it.", show_default=False)] = None,
    val_split: Annotated[float | None, ranged(typer.Option(
        "--val-split", help="Evaluate the fraction that `vit train --val-split` (0.1 by "
        "default) held out of this data, carved again with the same --seed.",
        show_default=False), VAL_SPLIT)] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="The training run's --seed, with "
                                      "--val-split.")] = 0,
    show: Annotated[int, typer.Option("--show", min=0, max=100_000,
                                      help="Misclassified files to list in the terminal.")] = 20,
) -> None:
    """Top-1/top-5, loss, per-class precision/recall/F1, confusion matrix and the mistakes.

    Preprocessing and class names come from the model file. Results go to --out, else to a new
    runs/eval/<model>-on-<data> folder: metrics.json, per_class.csv, misclassified.csv,
    confusion_matrix.png, reliability.png and coverage.png. Probabilities use the model
    file's temperature; ECE, NLL and Brier are shown before and after it, and the share of
    images called unknown when the file has that rule.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    from vitcli.commands._common import console, progress_bar, warn, writing
    from vitcli.commands._common import safe as escape
    from vitcli.errors import UsageError
    from vitcli.evaluation.evaluate import evaluate as run_eval
    from vitcli.evaluation.evaluate import new_eval_dir, write_json, write_outputs

    if model is None:
        raise UsageError("--model is required (a .safetensors model file)")
    if data is None:
        raise UsageError("--data is required (a folder of class sub-folders or a dataset)")
    # Checked before the images are read: a minutes-long evaluation must not end in a crash.
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; give a folder for the results")
    if json_path is not None and json_path.is_dir():
        raise UsageError(f"--json {json_path}: is a folder; give a file name, e.g. "
                         f"{json_path / 'results.json'}")
    from vitcli.evaluation.evaluate import OUTPUT_FILES
    from vitcli.files import refuse_overwrite

    inputs = {"--model": model, "--data": data if Path(data).is_file() else None}
    if json_path is not None:
        refuse_overwrite(json_path, "--json", inputs)
    if out is not None:
        for name in OUTPUT_FILES:
            refuse_overwrite(out / name, "--out", inputs)

    with progress_bar("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("reading images", total=None)

        def update(stage: str, done: int, total: int) -> None:
            description = "reading images" if stage == "reading" else "evaluating"
            bar.update(task, description=description, completed=done, total=total)

        report = run_eval(model, data, batch_size=batch_size, device=device, split=split,
                          precision=precision, threads=threads,
                          val_split=val_split, seed=seed, progress=update)

    with writing(out):
        out = out or new_eval_dir(model, data=data)
        written = write_outputs(report, out)
        if json_path is not None:
            write_json(report, json_path)

    if report.bad_files:
        from vitcli.data.discovery import skipped_note

        # counted by kind, in the words of every command: a notes.txt is a file that is not
        # an image, not an "unreadable image"
        count, first = skipped_note(report.bad_files, data)
        where = f"{first}; all listed in {written['bad_files']}"
        warn(escape(count), escape(where))
    for warning in report.warnings:
        warn(escape(warning))
    render(report, show=show)
    console.print(f"results in [bold]{escape(str(out))}[/]"
                  + (f", JSON in [bold]{escape(str(json_path))}[/]" if json_path else ""),
                  highlight=False)


def render(report: EvalReport, *, show: int = 20) -> None:
    """Print the summary, per-class, confusion, most-confused and misclassified tables."""
    from vitcli.commands._common import console, fit_or_break, per_second
    from vitcli.commands._common import safe as escape
    from vitcli.devices import Threads

    m = report.metrics
    data = report.description or f"{report.data}: {plural(m.num_images, 'image')}"
    # What was evaluated, then how it ran: the CPU threads and the precision's reason (up to
    # ~75 characters) move to lines of their own where the terminal is too narrow for them.
    console.print(f"[bold]{escape(report.model_path)}[/] on {escape(data)}; "
                  f"{plural(len(m.class_names), 'class', 'classes')}", highlight=False)
    where = report.device
    if report.threads and report.device == "cpu":  # a GPU's speed does not hang on them
        where += f", {Threads(report.threads, report.threads_reason)}"
    rate = per_second(m.num_images / max(report.seconds, 1e-9))
    parts = [f"{where},", f"{rate} images/s, precision {report.precision}"]
    if report.precision_reason:
        parts.append(f"({report.precision_reason})")
    console.print(fit_or_break(*(escape(p) for p in parts)), highlight=False)
    console.print(_summary_table(report))
    console.print(_per_class_table(m))
    table, notes = _confusion_table(m)
    console.print(table)
    for note in notes:  # under the table, at the terminal's width (a caption wraps at the
        console.print(note, highlight=False)  # table's, mid-phrase for a 3-class matrix)
    if m.most_confused:
        console.print(_most_confused_table(m))
    console.print(_misclassified_table(m, show, report.data) if m.misclassified
                  else "[green]no misclassified images[/]")


def _summary_table(report: EvalReport) -> Table:
    from rich.table import Table

    from vitcli.commands._common import format_score
    from vitcli.commands._common import safe as escape

    m = report.metrics
    table = Table(title="summary", title_justify="left", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(justify="right")
    table.add_row("top-1 accuracy", f"{m.top1:.2%}")
    table.add_row("balanced accuracy (mean per-class recall)", f"{m.balanced_accuracy:.2%}")
    if len(m.class_names) > 5:  # with 5 classes or fewer top-5 is always 100 %: not shown
        table.add_row("top-5 accuracy", f"{m.top5:.2%}")
    table.add_row("loss (cross-entropy)", f"{m.loss:.4f}")
    for avg, label in ((m.macro, "macro"), (m.weighted, "weighted")):
        table.add_row(f"{label} precision / recall / F1",
                      f"{avg.precision:.3f} / {avg.recall:.3f} / {avg.f1:.3f}")
    c = report.calibration
    if c is not None:
        table.add_row("temperature (the rows below: T = 1 → T)",
                      "1 (none stored)" if c.temperature == 1.0 else f"{c.temperature:.3g}")
        table.add_row(f"ECE ({c.bins} equal-width bins)", f"{c.ece_before:.2%} → {c.ece_after:.2%}")
        table.add_row("NLL", f"{c.nll_before:.4f} → {c.nll_after:.4f}")
        table.add_row("Brier score", f"{c.brier_before:.4f} → {c.brier_after:.4f}")
    if report.unknown_share is not None:
        table.add_row(f"called unknown (score > {format_score(report.unknown_threshold)})",
                      f"{report.unknown_share:.2%}")
    if report.absent_classes:
        shown = ", ".join(report.absent_classes[:5])
        more = f" +{len(report.absent_classes) - 5}" if len(report.absent_classes) > 5 else ""
        table.add_row("model classes not in the data", escape(shown + more))
    return table


def _per_class_table(m: Metrics) -> Table:
    from rich.table import Table

    from vitcli.commands._common import safe as escape

    rows = m.per_class
    caption = None
    if len(rows) > PER_CLASS_MAX_ROWS:
        # With many classes the useful rows are the weak ones; the CSV holds them all.
        rows = sorted((c for c in rows if c.support), key=lambda c: c.f1)[:PER_CLASS_MAX_ROWS]
        caption = (f"the {len(rows)} classes with the lowest F1 of {len(m.per_class)}; "
                   "all in per_class.csv")
    table = Table(title="per class", title_justify="left", caption=caption,
                  caption_justify="left")
    table.add_column("class", no_wrap=True)
    for col in ("precision", "recall", "F1", "support"):
        table.add_column(col, justify="right")
    # A class with no image here has no recall or F1, and no precision unless predicted:
    # shown as "—", not as a 0.000 that reads like a failure.
    predicted = dict(zip(m.class_names, m.confusion.sum(axis=0)))
    for c in rows:
        none = "—" if not c.support else None
        table.add_row(escape(c.name),
                      "—" if not c.support and not predicted.get(c.name) else f"{c.precision:.3f}",
                      none or f"{c.recall:.3f}", none or f"{c.f1:.3f}", f"{c.support:,}")
    table.add_section()
    for c in (m.macro, m.weighted):
        table.add_row(escape(c.name), f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}",
                      f"{c.support:,}", style="bold")
    return table


def _confusion_table(m: Metrics) -> tuple[Table, list[str]]:
    """The confusion matrix (true rows, predicted columns) and the lines that explain it."""
    import numpy as np
    from rich.table import Table

    from vitcli.commands._common import safe as escape

    k = len(m.class_names)
    support = m.confusion.sum(axis=1)
    if k <= CONFUSION_MAX_CLASSES:
        keep = np.arange(k)
        notes = ["rows: true class, columns: predicted; also in confusion_matrix.png"]
    else:
        keep = np.sort(np.argsort(-support, kind="stable")[:CONFUSION_MAX_CLASSES])
        notes = [f"the {len(keep)} most frequent of {k} classes (rows: true, columns: "
                 "predicted)", "the full matrix is in confusion_matrix.png"]
    # Long names would squeeze the count columns to "…": number the columns instead.
    numbered = any(len(m.class_names[j]) > 8 for j in keep)
    if numbered:
        notes.append("columns numbered as the rows")
    table = Table(title="confusion matrix", title_justify="left")
    table.add_column("true \\ predicted", no_wrap=True)
    for n, j in enumerate(keep, 1):
        table.add_column(str(n) if numbered else escape(m.class_names[j]), justify="right")
    for n, i in enumerate(keep, 1):
        cells = []
        for j in keep:
            count = int(m.confusion[i, j])
            text = f"{count:,}" if count else "·"
            cells.append(f"[green]{text}[/]" if i == j and count else
                         f"[red]{text}[/]" if count else f"[dim]{text}[/]")
        label = escape(m.class_names[i])
        table.add_row(f"{n}. {label}" if numbered else label, *cells)
    return table, notes


def _most_confused_table(m: Metrics) -> Table:
    from rich.table import Table

    from vitcli.commands._common import safe as escape

    support = {c.name: c.support for c in m.per_class}
    table = Table(title="most confused", title_justify="left")
    table.add_column("true", no_wrap=True)
    table.add_column("predicted as", no_wrap=True)
    table.add_column("images", justify="right")
    table.add_column("of the true class", justify="right")
    for true, pred, count in m.most_confused:
        table.add_row(escape(true), escape(pred), f"{count:,}", f"{count / support[true]:.1%}")
    return table


def _misclassified_table(m: Metrics, show: int, data: str) -> Table:
    from rich.table import Table

    from vitcli.commands._common import safe as escape
    from vitcli.files import shown_path

    rows = m.misclassified[:show]
    more = len(m.misclassified) - len(rows)
    caption = ("most confident first" + (f"; {more:,} more" if more else "")
               + "; all in misclassified.csv")
    table = Table(title=f"misclassified ({len(m.misclassified):,})", title_justify="left",
                  caption=caption, caption_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("true", no_wrap=True)
    table.add_column("predicted", no_wrap=True)
    table.add_column("confidence", justify="right")
    for path, true, pred, conf in rows:  # relative to --data: the folder the user named
        table.add_row(escape(shown_path(path, data)), escape(true), escape(pred), f"{conf:.1%}")
    return table
