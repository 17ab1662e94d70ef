"""The two calibration figures `vit eval` writes: the reliability diagram and accuracy
against coverage, each before and after the model's temperature.

A reliability diagram (DeGroot & Fienberg 1983; Guo et al. 2017) plots, per confidence bin,
the accuracy against the mean confidence: a calibrated model lies on the diagonal. The
accuracy-coverage curve answers "if I only accept the most confident X % of answers, how
accurate are they?", which is what a threshold on the probability buys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vitcli.evaluation.calibration import ECE_BINS, coverage_curve, ece, reliability
from vitcli.evaluation.plots import _pyplot
from vitcli.files import model_label, wrap_title


def plot_reliability(before: np.ndarray, after: np.ndarray | None, labels: np.ndarray,
                     path: str | Path, *, title: str, temperature: float = 1.0,
                     bins: int = ECE_BINS) -> Path:
    """Accuracy per confidence bin (bars) against the diagonal, with the images per bin.

    `before` and `after` are (N, K) probabilities without and with the temperature; `after`
    None draws one panel. Bin counts are printed above each bar and drawn as a histogram
    under it, so an empty or nearly empty bin is seen as such.
    """
    plt = _pyplot()
    panels = [("T = 1 (uncalibrated)", before)]
    if after is not None:
        panels.append((f"T = {temperature:.3g} (calibrated)", after))
    fig, axes = plt.subplots(2, len(panels), figsize=(5.2 * len(panels), 6.4),
                             gridspec_kw={"height_ratios": [3, 1]}, squeeze=False,
                             constrained_layout=True)
    for col, (name, probs) in enumerate(panels):
        r = reliability(probs, labels, bins)
        ax, ax_n = axes[0, col], axes[1, col]
        width = 1.0 / bins
        centres = r.edges[:-1] + width / 2
        seen = r.counts > 0
        ax.bar(centres[seen], r.accuracy[seen], width=width * 0.9, color="tab:blue",
               edgecolor="navy", label="accuracy in bin")
        # The gap from accuracy to the bin's mean confidence, whichever is higher: hatched,
        # unfilled, so that it reads the same above (over-) and below (under-confident).
        low = np.minimum(r.accuracy[seen], r.confidence[seen])
        ax.bar(centres[seen], np.abs(r.confidence[seen] - r.accuracy[seen]), bottom=low,
               width=width * 0.9, fill=False, hatch="///", edgecolor="tab:red", lw=0.8,
               label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}\nECE {ece(probs, labels, bins):.2%} ({bins} equal-width bins)",
                     fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
        ax_n.bar(centres, r.counts, width=width * 0.9, color="gray")
        for x, n in zip(centres[seen], r.counts[seen]):
            ax_n.text(x, n, f"{n}", ha="center", va="bottom", fontsize=7)
        ax_n.set_xlim(0, 1)
        ax_n.set_ylim(0, max(r.counts.max(), 1) * 1.3)
        ax_n.set_xlabel("confidence (top-1 probability)")
        ax_n.set_ylabel("images")
    fig.suptitle(wrap_title(title, 5.2 * len(panels), 11), fontsize=11)
    return _save(fig, plt, path)


def plot_coverage(before: np.ndarray, labels: np.ndarray, path: str | Path, *, title: str,
                  temperature: float = 1.0) -> Path:
    """Accuracy of the most confident fraction of images, against that fraction."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.4), constrained_layout=True)
    cov, acc = coverage_curve(before, labels)
    # A temperature changes no ranking, so one curve holds for the calibrated model too.
    same = f" (the same at T = {temperature:.3g})" if temperature != 1.0 else ""
    ax.plot(cov, acc, color="tab:blue", lw=2, label=f"most confident first{same}")
    ax.axhline(acc[-1], color="gray", lw=1, ls=":", label=f"all images: {acc[-1]:.1%}")
    ax.set_xlim(0, 1)
    ax.set_ylim(max(0.0, min(acc.min(), acc[-1]) - 0.05), 1.01)
    ax.set_xlabel("coverage (share of images answered, most confident first)")
    ax.set_ylabel("accuracy of the answered images")
    ax.set_title(wrap_title(title, 5.2, 11), fontsize=11)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, plt, path)


def write_calibration_plots(report: Any, out: Path) -> dict[str, Path]:
    """reliability.png and coverage.png for an evaluate.EvalReport; return them by name."""
    from vitcli.evaluation.calibration import probabilities

    t = report.calibration.temperature if report.calibration else 1.0
    before = probabilities(report.raw_logits)
    after = probabilities(report.raw_logits, t) if t != 1.0 else None
    where = report.description or f"{report.data}: {len(report.labels):,} images"
    name = model_label(report.model_path)  # `exp3/best.safetensors`: which run
    return {
        "reliability": plot_reliability(
            before, after, report.labels, out / "reliability.png", temperature=t,
            title=f"reliability of {name}\non {where}"),
        "coverage": plot_coverage(
            before, report.labels, out / "coverage.png", temperature=t,
            title=f"accuracy against coverage: {name}\non {where}"),
    }


def _save(fig, plt, path: str | Path) -> Path:  # noqa: ANN001 (matplotlib objects)
    from vitcli.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return path
