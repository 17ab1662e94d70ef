"""Matplotlib figures written as PNG files: training curves and confusion matrices.

Matplotlib is imported inside each function (with the Agg back end, so no display is ever
needed) to keep `import vitcli.evaluation.plots` and `vit --help` instant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitcli.files import wrap_title

# Above these class counts a confusion matrix stops being readable cell by cell, so the
# figure drops the numbers in the cells, then most of the tick labels.
CELL_TEXT_MAX_CLASSES = 20
TICK_LABEL_MAX_CLASSES = 60

LOSS_COLUMNS = ("train_loss", "val_loss")
ACCURACY_COLUMNS = ("train_top1", "val_top1", "val_top5")


def _pyplot():
    """matplotlib.pyplot on the Agg back end (files only, works on headless machines)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# Fonts with wide coverage, tried after matplotlib's default for characters it lacks (CJK
# class names); only those installed are used.
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK KR", "Noto Sans CJK TC",
                  "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
                  "Droid Sans Fallback", "AR PL UMing CN", "Arial Unicode MS", "Noto Sans")


def _font_families() -> list[str]:
    """matplotlib's default sans-serif font, then the installed fallback fonts."""
    from matplotlib import font_manager, rcParams

    installed = {f.name for f in font_manager.fontManager.ttflist}
    default = rcParams["font.sans-serif"][0] if rcParams["font.sans-serif"] else "DejaVu Sans"
    return [default, *(name for name in FALLBACK_FONTS if name in installed)]


def _covered(families: list[str]) -> set[int]:
    """Code points some font in `families` can draw."""
    from matplotlib import font_manager, ft2font

    points: set[int] = set()
    for family in families:
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=family),
                                         fallback_to_default=False)
            points |= set(ft2font.FT2Font(path).get_charmap())
        except (ValueError, RuntimeError, OSError):
            continue
    return points


def drawable_labels(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(labels, families): names with each character no installed font can draw (and control
    characters, undecodable bytes) written as \\uXXXX / \\xNN escapes, and the font
    families to draw them with. No "Glyph missing" warning then reaches stderr, and a CJK
    name is drawn in a CJK font when one is installed."""
    families = _font_families()
    points = _covered(families)

    def char(c: str) -> str:
        code = ord(c)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name
            return f"\\x{code - 0xDC00:02x}"
        if code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code <= 0xDFFF or (
                points and code not in points and not c.isspace()):
            return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
        return c

    # "$" starts matplotlib's mathtext: a class named "$x$" is shown as written.
    return ["".join(map(char, name)).replace("$", r"\$") for name in names], families


def save_figure(fig: Any, path: Path) -> None:
    """Write `fig` as a PNG atomically (a failed write keeps the old file) and close it."""
    import matplotlib.pyplot as plt

    from vitcli.files import atomic_write

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def _number(value: Any) -> float | None:
    """A finite float from a metrics.csv cell, or None for blanks and junk."""
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def per_epoch(rows: Sequence[dict[str, Any]], column: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for one column, keeping the last value logged in each epoch.

    metrics.csv may hold several rows per epoch (step logging) or blanks (no validation that
    epoch); the curve wants one point per epoch, the state at its end.
    """
    last: dict[float, float] = {}
    for row in rows:
        epoch, value = _number(row.get("epoch")), _number(row.get(column))
        if epoch is not None and value is not None:
            last[epoch] = value
    epochs = sorted(last)
    return epochs, [last[e] for e in epochs]


def plot_curves(rows: Sequence[dict[str, Any]], path: str | Path, *,
                title: str | None = None, num_classes: int | None = None) -> Path:
    """Write loss (left) and accuracy (right) per epoch from metrics.csv rows; return the path.

    Rows are dicts as csv.DictReader gives them (strings are fine) with at least `epoch` and
    any of train_loss, val_loss, train_top1, val_top1, val_top5. Top-5 is drawn only with
    more than 5 classes (`num_classes`): with 5 or fewer it is 100 % by definition.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    accuracy = tuple(c for c in ACCURACY_COLUMNS
                     if c != "val_top5" or num_classes is None or num_classes > 5)
    series = {c: per_epoch(rows, c) for c in LOSS_COLUMNS + accuracy}  # (epochs, values)
    all_epochs = sorted({e for epochs, _ in series.values() for e in epochs})
    for ax, columns, ylabel in ((ax_loss, LOSS_COLUMNS, "loss"),
                                (ax_acc, accuracy, "accuracy")):
        drawn = False
        for column in columns:
            epochs, values = series[column]
            if values:
                ax.plot(epochs, values, marker="o" if len(values) < 30 else None,
                        markersize=3, label=column.replace("_", " "))
                drawn = True
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {ylabel} logged", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 0.96 in short runs
        if all_epochs and max(all_epochs) - min(all_epochs) < 2:  # too few for the locator
            ax.set_xlim(min(all_epochs) - 0.5, max(all_epochs) + 0.5)
            ax.set_xticks(range(int(min(all_epochs)), int(max(all_epochs)) + 1))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_acc.set_ylim(bottom=0)
    if title:
        text, families = drawable_labels([title])
        fig.suptitle(wrap_title(text[0], 10), fontfamily=families)
    save_figure(fig, path)
    return path


def normalize_rows(confusion: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (row = true class, so the diagonal is recall); empty rows 0."""
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: str | Path, *,
                   normalize: bool = True, title: str | None = None) -> Path:
    """Write the confusion matrix (rows true, columns predicted) as a PNG; return the path.

    With `normalize`, colours are row fractions (so rare classes are as visible as common
    ones) and cells show counts; readable from 2 to about 100 classes: cell text is dropped
    above CELL_TEXT_MAX_CLASSES and tick labels thinned above TICK_LABEL_MAX_CLASSES.
    """
    plt = _pyplot()
    path = Path(path)
    counts = np.asarray(confusion)
    k = counts.shape[0]
    if counts.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"confusion {counts.shape} does not match {len(class_names)} classes")
    shown = normalize_rows(counts) if normalize else counts.astype(np.float64)

    side = min(max(4.0, 0.45 * k + 2.5), 30.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), constrained_layout=True)
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(shown.max(), 1),
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of the true class" if normalize else "images")

    step = 1 if k <= TICK_LABEL_MAX_CLASSES else math.ceil(k / TICK_LABEL_MAX_CLASSES)
    ticks = np.arange(0, k, step)
    fontsize = 10 if k <= 10 else 8 if k <= 30 else 6
    labels, families = drawable_labels([class_names[i] for i in ticks])
    ax.set_xticks(ticks, labels, rotation=90, fontsize=fontsize, fontfamily=families)
    ax.set_yticks(ticks, labels, fontsize=fontsize, fontfamily=families)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    heading = drawable_labels([title])[0][0] if title else (
        "confusion matrix (rows normalised)" if normalize else "confusion matrix")
    ax.set_title(wrap_title(heading, side), fontfamily=families)

    if k <= CELL_TEXT_MAX_CLASSES:
        for i in range(k):
            for j in range(k):
                if counts[i, j] == 0 and i != j:
                    continue  # empty off-diagonal cells stay blank: the eye finds errors faster
                dark = shown[i, j] > 0.5 * (1 if normalize else shown.max())
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                        fontsize=fontsize, color="white" if dark else "black")
    save_figure(fig, path)
    return path
