"""Fit and measure the `unknown` rule and the temperature on decoded images.

`fit_trust` is what the end of `vit train` runs on the best model: the temperature from the
validation logits, the class means and tied covariance of the score's features (the pooled
tokens of up to 4 blocks) from the training features, and the threshold from the validation
scores (vitcli.model.ood). `outputs_on` gives the raw logits and unknown scores `vit eval`
measures. Both go through `predict_logits`, so the images are normalised exactly as in
training and `vit predict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from vitcli.evaluation.calibration import (
    Calibration,
    TemperatureChoice,
    choose_temperature,
    measure,
)
from vitcli.evaluation.evaluate import predict_logits
from vitcli.model.ood import (
    DEFAULT_QUANTILE,
    OodStats,
    fit_gaussians,
    score_blocks,
    threshold_for,
)
from vitcli.model.outputs import LogitsAndScore, logits_and_features

MAX_FIT_IMAGES = 10_000  # training images the class means are fitted on (a seeded sample)


class _FeaturesAndLogits(nn.Module):
    """(B, F + K): the unknown score's features, then the raw logits, as one tensor."""

    def __init__(self, model: nn.Module, blocks: tuple[int, ...] | None) -> None:
        super().__init__()
        self.model, self.blocks = model, blocks

    def forward(self, x: Tensor) -> Tensor:
        logits, f = logits_and_features(self.model, x, self.blocks)  # (B, K), (B, n·D)
        return torch.cat([f, logits], dim=1)


@dataclass
class Trust:
    """What `fit_trust` found: the temperature and the unknown statistics (None if unfit)."""

    temperature: float
    ood: OodStats | None
    val_images: int
    calibration: Calibration | None = None  # on the validation images, before and after T
    choice: TemperatureChoice | None = None  # the fitted T, and why it was stored or not


def features_and_logits(model: nn.Module, pixels: np.ndarray, *, mean: Sequence[float],
                        std: Sequence[float], device: str | torch.device = "cpu",
                        batch_size: int = 256, blocks: tuple[int, ...] | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The unknown score's features (N, n·D) of `blocks` (N, D: the last block's, for None)
    and raw logits (N, K) for uint8 pixels (N, S, S, C)."""
    d = model.config.head_in_dim * (len(blocks) if blocks is not None else 1)
    both = predict_logits(_FeaturesAndLogits(model, blocks), pixels, mean=mean, std=std,
                          batch_size=batch_size, device=device)
    return both[:, :d], both[:, d:]


def outputs_on(model: nn.Module, stats: OodStats | None, pixels: np.ndarray, *,
               mean: Sequence[float], std: Sequence[float], device: str | torch.device = "cpu",
               batch_size: int = 256, progress=None) -> tuple[np.ndarray, np.ndarray | None]:  # noqa: ANN001
    """Raw logits (N, K) and unknown scores (N,) (None without statistics)."""
    if stats is None:
        return predict_logits(model, pixels, mean=mean, std=std, batch_size=batch_size,
                              device=device, progress=progress), None
    # The score is float32 on the features; autocast would round them to bf16 first.
    both = predict_logits(LogitsAndScore(model, stats).to(device), pixels, mean=mean,
                          std=std, batch_size=batch_size, device=device, progress=progress)
    return both[:, :-1], both[:, -1]


def fit_trust(model: nn.Module, *, train_pixels: np.ndarray, train_labels: np.ndarray,
              val_pixels: np.ndarray | None, val_labels: np.ndarray | None,
              mean: Sequence[float], std: Sequence[float], num_classes: int,
              device: str | torch.device = "cpu", quantile: float = DEFAULT_QUANTILE,
              seed: int = 0) -> Trust:
    """Temperature and unknown statistics for `model`, or T = 1 and None without validation.

    The class means and covariance (of the features of score_blocks' blocks) come from (at
    most MAX_FIT_IMAGES of) the training images, unaugmented; the temperature and threshold
    from the validation images, which the means never saw, so that the threshold passes
    `quantile` of new in-distribution images rather than of memorised ones
    (vitcli.model.ood.threshold_for). The fitted T is kept only where it makes the validation
    calibration no worse (vitcli.evaluation.calibration.choose_temperature).
    """
    if val_pixels is None or val_labels is None or len(val_labels) == 0:
        return Trust(temperature=1.0, ood=None, val_images=0)
    rows = np.arange(len(train_labels))
    if len(rows) > MAX_FIT_IMAGES:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_FIT_IMAGES, replace=False))
    kw = dict(mean=mean, std=std, device=device)
    blocks = score_blocks(len(model.blocks))
    train_features, _ = features_and_logits(model, train_pixels[rows], blocks=blocks, **kw)
    means, chol = fit_gaussians(train_features, train_labels[rows], num_classes,
                                num_blocks=len(blocks))
    stats = OodStats(class_means=means, precision_cholesky=chol, threshold=0.0,
                     quantile=quantile, blocks=blocks)
    val_logits, val_scores = outputs_on(model, stats, val_pixels, **kw)
    stats.threshold = threshold_for(val_scores, quantile)
    stats.validation_images = len(val_scores)
    choice = choose_temperature(val_logits, val_labels)
    return Trust(temperature=choice.temperature, ood=stats, val_images=len(val_labels),
                 calibration=measure(val_logits, val_labels, choice.temperature),
                 choice=choice)
