"""Class balance: how imbalanced a labelled set is, and the two remedies `vit train` offers.

- `class_weights`: loss weights by the *effective number of samples* (Cui et al. 2019,
  "Class-Balanced Loss Based on Effective Number of Samples", CVPR), E_n = (1 − β^n) / (1 − β)
  with β = 0.999. Chosen over plain inverse frequency because it is inverse frequency where
  that is right and milder where it over-corrects: for a class of up to about 100 images E_n
  is within 5 % of n (β^n ≈ 1 − n(1 − β)), so the small classes get 1/n; beyond
  about a thousand images E_n levels off at 1/(1 − β) = 1000, so a 50,000-against-5,000
  split (both classes already well covered) is not weighted 10 to 1.
- `balanced_order`: the rows of one epoch drawn with replacement so that every class is
  equally likely (the image within a class uniform), for `--sampler balanced`.

Nothing here depends on torch: the trainer turns the weights into a tensor.
"""

from __future__ import annotations

import numpy as np

EFFECTIVE_NUMBER_BETA = 0.999


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 (K,): images per class."""
    return np.bincount(np.asarray(labels, np.int64), minlength=num_classes)


def imbalance_ratio(counts: np.ndarray) -> float:
    """Images of the largest class / images of the smallest (inf when a class is empty)."""
    counts = np.asarray(counts)
    if counts.size == 0 or counts.max() == 0:
        return 1.0
    return float("inf") if counts.min() == 0 else float(counts.max() / counts.min())


def class_weights(counts: np.ndarray, beta: float = EFFECTIVE_NUMBER_BETA) -> np.ndarray:
    """float64 (K,) loss weights ∝ 1 / effective number of samples, mean 1 over the images.

    Normalised so that Σ_k n_k w_k = Σ_k n_k: the average weight of a training image is 1,
    so the loss keeps its scale and the learning rate its meaning. A class with no images
    gets weight 0 (it contributes nothing to the loss either way).
    """
    counts = np.asarray(counts, np.float64)
    effective = (1.0 - np.power(beta, counts)) / (1.0 - beta)  # (K,)
    weights = np.divide(1.0, effective, out=np.zeros_like(counts), where=counts > 0)
    return weights * counts.sum() / max(float((weights * counts).sum()), 1e-12)


def balanced_order(labels: np.ndarray, rng: np.random.Generator,
                   size: int | None = None) -> np.ndarray:
    """int64 (size,): row indices drawn with replacement, every class equally likely.

    Each row's probability is 1 / (K · n_its_class); `size` defaults to the number of rows,
    so an epoch keeps its length. Every rank draws the same order from the same seed, and
    the trainer shards it as it shards a shuffle (vitcli/training/distributed.py `shard`).
    """
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels)
    present = np.count_nonzero(counts)
    p = 1.0 / (present * counts[labels])  # (N,)
    return rng.choice(len(labels), size=len(labels) if size is None else size, replace=True,
                      p=p / p.sum())
