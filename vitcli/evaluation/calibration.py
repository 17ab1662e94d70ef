"""Confidence that means what it says: temperature scaling and the calibration metrics.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") divides the
logits by one number T > 0 fitted on validation data to minimise the negative log-likelihood;
top-1 never changes, only how sure the model says it is. The fitted T is stored only when
it makes neither the validation ECE nor the NLL worse (choose_temperature). The metrics:

- ECE, expected calibration error: images binned by confidence (the top-1 probability) into
  ECE_BINS = 15 equal-width bins on [0, 1] (Guo et al.'s choice); the support-weighted mean
  of |accuracy - mean confidence| over the bins.
- NLL: mean -log p(true class), natural log.
- Brier score: mean over images of sum_k (p_k - [k = true])^2, from 0 (perfect) to 2.

Everything is float64 numpy on (N, K) logits and (N,) labels; nothing here prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitcli.errors import plural

ECE_BINS = 15
T_MIN, T_MAX = 0.05, 20.0  # beyond these a fitted T says more about a tiny val set than the model
MIN_IMAGES = 10  # fewer validation images than this: no fit, T = 1


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean -log softmax(logits / T)[label] in float64."""
    logp = log_softmax(np.asarray(logits, np.float64) / temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [T_MIN, T_MAX] minimising the validation NLL of softmax(logits / T).

    NLL is convex in 1/T, so it is unimodal in log T: a golden-section search on log T
    finds the minimum to ~1e-6 relative in 60 evaluations, with no gradient and no learning
    rate to tune. Fewer than MIN_IMAGES images (or none) gives 1: nothing to fit on.

    With no validation image wrong the NLL has no minimum: it falls as T → 0, where every
    probability is 1.0000 (the quick start's 100 of 100 once gave T = 0.05 and ECE 0 %).
    Those images show only that accuracy is high, so T is then set where the mean top-1
    probability is (n + 1) / (n + 2), Laplace's rule of succession: 99.0 % for 100 of 100.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if len(labels) < MIN_IMAGES or logits.ndim != 2 or logits.shape[1] < 2:
        return 1.0
    if (logits.argmax(axis=1) == labels).all():
        return _temperature_for_confidence(logits, (len(labels) + 1) / (len(labels) + 2))
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(60):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    best = math.exp((lo + hi) / 2)
    # Keep 1 unless the fit is really better (a flat NLL must not move T at random).
    return best if nll(logits, labels, best) < nll(logits, labels, 1.0) - 1e-9 else 1.0


@dataclass
class TemperatureChoice:
    """The temperature to store, the one the NLL fit found, and why they differ (if they do).

    The validation figures are at T = 1 and at the fitted T, on the same images and bins.
    """

    temperature: float  # what the model file stores: the fitted T, or 1
    fitted: float  # what fit_temperature found
    images: int
    ece_at_1: float
    ece_fitted: float
    nll_at_1: float
    nll_fitted: float
    reason: str = ""  # why T = 1 was kept ("" when the fitted T is stored), for `since ...`

    @property
    def kept_fit(self) -> bool:
        return not self.reason

    def summary(self) -> str:
        """One sentence for the model file and `vit info` (under 120 characters)."""
        if self.kept_fit:
            return (f"T = {self.temperature:.3g} fitted on {plural(self.images, 'validation image')}"
                    f": ECE {_pct(self.ece_at_1, self.ece_fitted)} → "
                    f"{_pct(self.ece_fitted, self.ece_at_1)}")
        return f"T = 1 kept, since {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "fitted_temperature": self.fitted,
                "kept_fit": self.kept_fit, "validation_images": self.images,
                "ece_bins": ECE_BINS, "rule": "keep the fitted T only if it raises neither "
                "the validation ECE nor the NLL",
                "at_1": {"ece": self.ece_at_1, "nll": self.nll_at_1},
                "fitted": {"ece": self.ece_fitted, "nll": self.nll_fitted},
                "reason": self.reason or None}


def _pct(value: float, other: float) -> str:
    """A percentage with 1 decimal, 2 where 1 would make two different values look equal."""
    digits = 1 if f"{value:.1%}" != f"{other:.1%}" or value == other else 2
    return f"{value:.{digits}%}"


def choose_temperature(logits: np.ndarray, labels: np.ndarray) -> TemperatureChoice:
    """The temperature to store: the NLL-fitted T when it raises neither the validation ECE
    nor the validation NLL, else 1, with the reason in words.

    Guo et al. 2017 ("On Calibration of Modern Neural Networks", section 4.2) fit T by
    minimising the validation NLL and judge calibration by the ECE (section 2, eq. 3): how
    far confidence is from accuracy, i.e. whether the probabilities mean what they say. The
    two can disagree on a small or barely trained validation set: the NLL is ruled by a few
    confident mistakes, the 15-bin ECE by which bins a few images fall in, and a 0.01-minute
    run on few images once stored a T that took its ECE from 3.5 % to 6.3 %. A T that makes
    the measured calibration worse is not calibration, so it is not stored. The NLL check
    rarely bites (T = 1 is among the candidates the fit minimises over), except with no
    validation image wrong, where the fit aims at Laplace's (n + 1) / (n + 2) confidence:
    that T is kept when it sharpens an under-confident model, and refused when it would
    soften one that the images give no error to doubt. Both checks use the same images, so
    the reported before/after never shows calibration making things worse.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    fitted = fit_temperature(logits, labels)
    if n == 0 or logits.ndim != 2:
        return TemperatureChoice(1.0, 1.0, 0, math.nan, math.nan, math.nan, math.nan,
                                 reason="there are no validation images to fit it on")
    at_1 = probabilities(logits)
    ece_1, nll_1 = ece(at_1, labels), nll(logits, labels)
    ece_t = ece(probabilities(logits, fitted), labels)
    nll_t = nll(logits, labels, fitted)
    choice = TemperatureChoice(fitted, fitted, n, ece_1, ece_t, nll_1, nll_t)
    if n < MIN_IMAGES:
        choice.reason = (f"{plural(n, 'validation image')} {'is' if n == 1 else 'are'} too "
                         f"few to fit one ({MIN_IMAGES} needed)")
    elif fitted == 1.0:
        choice.reason = "no other T lowers the validation NLL"
    elif ece_t > ece_1:
        choice.reason = (f"the fitted T = {fitted:.3g} would raise the validation ECE from "
                         f"{_pct(ece_1, ece_t)} to {_pct(ece_t, ece_1)}")
    elif nll_t > nll_1:
        choice.reason = (f"the fitted T = {fitted:.3g} would raise the validation NLL from "
                         f"{nll_1:.4g} to {nll_t:.4g}")
    if choice.reason:
        choice.temperature = 1.0
    return choice


def _temperature_for_confidence(logits: np.ndarray, target: float) -> float:
    """The T in [T_MIN, T_MAX] at which the mean top-1 probability is `target` (bisection
    on log T: each image's top-1 probability falls as T grows)."""

    def confidence(t: float) -> float:
        return float(probabilities(logits, t).max(axis=1).mean())

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    if confidence(math.exp(lo)) <= target:
        return T_MIN
    if confidence(math.exp(hi)) >= target:
        return T_MAX
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if confidence(math.exp(mid)) > target else (lo, mid)
    return math.exp((lo + hi) / 2)


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(log_softmax(np.asarray(logits, np.float64) / temperature))


@dataclass
class Reliability:
    """Per confidence bin: lower edge, images, accuracy and mean confidence (NaN if empty)."""

    edges: np.ndarray  # (bins + 1,)
    counts: np.ndarray  # (bins,) int
    accuracy: np.ndarray  # (bins,)
    confidence: np.ndarray  # (bins,)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Bin images by top-1 probability into `bins` equal-width bins on [0, 1]."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bins are (lo, hi], the first [0, hi]: a confidence of exactly 1 lands in the last bin.
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
        confidence = np.bincount(index, weights=conf, minlength=bins) / counts
    return Reliability(edges, counts, accuracy, confidence)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error with `bins` equal-width confidence bins (0 = calibrated)."""
    r = reliability(probs, labels, bins)
    seen = r.counts > 0
    gap = np.abs(r.accuracy[seen] - r.confidence[seen])
    return float((gap * r.counts[seen]).sum() / r.counts.sum())


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over images of the squared distance between the probabilities and the one-hot."""
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def coverage_curve(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy): answer only the most confident fraction, how accurate is it?"""
    order = np.argsort(-probs.max(axis=1), kind="stable")
    correct = (probs.argmax(axis=1) == labels)[order]
    n = np.arange(1, len(correct) + 1)
    return n / len(correct), np.cumsum(correct) / n


@dataclass
class Calibration:
    """ECE, NLL and Brier of one model on one set, before and after its temperature."""

    temperature: float
    num_images: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    brier_before: float
    brier_after: float
    bins: int = ECE_BINS

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "ece_bins": self.bins,
                "ece_binning": "equal-width on the top-1 probability",
                "before": {"ece": self.ece_before, "nll": self.nll_before,
                           "brier": self.brier_before},
                "after": {"ece": self.ece_after, "nll": self.nll_after,
                          "brier": self.brier_after}}


def measure(logits: np.ndarray, labels: np.ndarray, temperature: float) -> Calibration:
    """Calibration metrics of raw `logits` at T = 1 and at `temperature`."""
    before, after = probabilities(logits), probabilities(logits, temperature)
    return Calibration(
        temperature=float(temperature), num_images=len(labels),
        ece_before=ece(before, labels), ece_after=ece(after, labels),
        nll_before=nll(logits, labels), nll_after=nll(logits, labels, temperature),
        brier_before=brier(before, labels), brier_after=brier(after, labels))
