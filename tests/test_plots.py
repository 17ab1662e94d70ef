"""Plots: the figures are written as real PNG files, for few and many classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitcli.evaluation.plots import normalize_rows, per_epoch, plot_confusion, plot_curves


def _is_png(path: Path) -> bool:
    with Image.open(path) as im:
        return im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_per_epoch_keeps_last_value_and_skips_blanks():
    rows = [
        {"epoch": "1", "step": "10", "train_loss": "2.0", "val_loss": ""},
        {"epoch": "1", "step": "20", "train_loss": "1.5", "val_loss": "1.8"},
        {"epoch": "2", "step": "30", "train_loss": "1.0", "val_loss": "nan"},
    ]
    assert per_epoch(rows, "train_loss") == ([1.0, 2.0], [1.5, 1.0])
    assert per_epoch(rows, "val_loss") == ([1.0], [1.8])
    assert per_epoch(rows, "val_top1") == ([], [])


def test_plot_curves_writes_png(tmp_path: Path):
    rows = [{"epoch": e, "step": 10 * e, "train_loss": 2.0 / e, "val_loss": 2.2 / e,
             "val_top1": 0.2 * e, "val_top5": 0.3 * e, "lr": 1e-3} for e in range(1, 5)]
    out = plot_curves(rows, tmp_path / "sub" / "curves.png")
    assert out == tmp_path / "sub" / "curves.png"
    assert _is_png(out)


def test_plot_curves_without_validation_still_writes(tmp_path: Path):
    assert _is_png(plot_curves([{"epoch": "1", "train_loss": "1.0"}], tmp_path / "c.png"))


def test_normalize_rows_empty_row_is_zero():
    got = normalize_rows(np.array([[3, 1], [0, 0]]))
    np.testing.assert_allclose(got, [[0.75, 0.25], [0.0, 0.0]])


def test_plot_confusion_few_and_many_classes(tmp_path: Path):
    small = plot_confusion(np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]]),
                           ["circle", "square", "triangle"], tmp_path / "small.png")
    assert _is_png(small)
    rng = np.random.default_rng(0)
    names = [f"class_{i}" for i in range(100)]
    big = plot_confusion(rng.integers(0, 5, (100, 100)), names, tmp_path / "big.png",
                         normalize=False, title="100 classes")
    assert _is_png(big)


@pytest.mark.parametrize("classes, drawn", [(2, False), (5, False), (6, True), (None, True)])
def test_curves_draw_top5_only_with_more_than_5_classes(tmp_path: Path, monkeypatch, classes,
                                                        drawn):
    """With 5 classes or fewer top-5 is 100 % by definition: a flat line that says nothing."""
    import matplotlib.pyplot as plt

    closed = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (closed.append(fig), real_close(fig)))
    rows = [{"epoch": str(e), "train_loss": "1", "val_loss": "1", "val_top1": "0.5",
             "val_top5": "1"} for e in (1, 2)]
    plot_curves(rows, tmp_path / "c.png", num_classes=classes)
    labels = [t.get_text() for ax in closed[0].axes if ax.get_legend()
              for t in ax.get_legend().get_texts()]
    assert ("val top5" in labels) == drawn and "val top1" in labels


@pytest.mark.parametrize("classes", [2, 5, 40])
def test_long_titles_are_wrapped_inside_the_figure(tmp_path: Path, monkeypatch, classes):
    """A title built from long run, model and data names (the training run's confusion
    matrix) is broken into lines, every one of them inside the figure: none is cut off."""
    import vitcli.evaluation.plots as plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    title = ("run exp12: best model (epoch 147) on a-rather-long-dataset-name/validation, "
             "val top-1 97.3% of 12,345 images with a few more words to be sure")
    names = [f"class {i}" for i in range(classes)]
    plot_confusion(np.eye(classes, dtype=int) * 3, names, tmp_path / "c.png", title=title)
    plot_curves([{"epoch": "1", "train_loss": "1.0"}], tmp_path / "v.png", title=title)
    for fig in figures:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        width = fig.bbox.width
        texts = [t for ax in fig.axes for t in (ax.title,)] + ([fig._suptitle]
                                                               if fig._suptitle else [])
        shown = [t for t in texts if t.get_text()]
        assert shown
        if fig.bbox.width < 1000:  # 10 in at 100 dpi: too narrow for the title on one line
            assert "\n" in shown[0].get_text()
        for t in shown:
            box = t.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= width, (t.get_text(), box, width)


def test_curves_of_a_one_epoch_run_have_whole_epoch_ticks(tmp_path: Path, monkeypatch):
    """A 1-epoch run once drew x ticks 0.96, 0.98, 1.00, ...: epochs are whole numbers."""
    import vitcli.evaluation.plots as plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    plot_curves([{"epoch": "1", "train_loss": "1.0", "val_loss": "0.9", "val_top1": "0.5"}],
                tmp_path / "c.png", num_classes=3)
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
