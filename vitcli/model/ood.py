"""The "unknown" statistics a model file carries: class means, a tied precision, a threshold.

Out-of-distribution score (Lee et al. 2018, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks"): the Mahalanobis distance of an image's
features f (the last block's class token, or its tokens pooled as the head pools them,
before the final LayerNorm: vitcli.model.outputs.logits_and_features says why) to the
nearest class mean, under one covariance shared by all classes:

    score(f) = min_k sqrt((f - mu_k)^T P (f - mu_k)),   P = Sigma^-1 = L L^T

Means come from the training images, the threshold from the validation images (a quantile
of their scores, so that e.g. 97.5 % of in-distribution images pass). An image whose score is
above the threshold is called `unknown`. docs/evaluation.md says why this score and not the
maximum softmax probability (measured there on generated data).

In the model file: tensors `ood.class_means` (K, D) and `ood.precision_cholesky` (D, D)
(L above: P = L L^T, as scikit-learn's `precisions_cholesky_`), and the metadata key
`ood`, JSON {"method", "threshold", "quantile", "feature"}. Nothing here needs torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

METHOD = "mahalanobis"
FEATURE = "pooled_tokens_before_final_norm"  # model.outputs.logits_and_features
MEANS_KEY = "ood.class_means"
CHOLESKY_KEY = "ood.precision_cholesky"
TENSOR_PREFIX = "ood."
METADATA_KEY = "ood"
DEFAULT_QUANTILE = 0.975  # share of in-distribution validation images that must pass
SHRINKAGE = 0.01  # covariance ridge, a fraction of the mean variance: N may be below D
UNKNOWN = "unknown"  # the label an image beyond the threshold gets, everywhere


@dataclass
class OodStats:
    """Class means (K, D), precision Cholesky factor L (D, D) and the score threshold."""

    class_means: np.ndarray  # float32 (K, D)
    precision_cholesky: np.ndarray  # float32 (D, D), P = L @ L.T
    threshold: float
    quantile: float = DEFAULT_QUANTILE
    method: str = METHOD

    def metadata(self) -> str:
        """The JSON text stored under the `ood` metadata key."""
        return json.dumps({"method": self.method, "threshold": self.threshold,
                           "quantile": self.quantile, "feature": FEATURE})

    def tensors(self) -> dict[str, np.ndarray]:
        return {MEANS_KEY: self.class_means, CHOLESKY_KEY: self.precision_cholesky}


def fit_gaussians(features: np.ndarray, labels: np.ndarray, num_classes: int,
                  shrinkage: float = SHRINKAGE) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means (K, D) and the Cholesky factor L (D, D) of the tied precision.

    features (N, D), labels (N,) in 0..K-1; float64 throughout. The shared covariance is the
    pooled within-class scatter / N plus `shrinkage` × its mean variance on the diagonal
    (so it is invertible when N < D or a feature is constant). A class with no image gets
    the overall mean (it can never be the nearest by a wide margin, and stays harmless).
    """
    f = np.asarray(features, np.float64)
    labels = np.asarray(labels, np.int64)
    n, d = f.shape
    if n < 2:
        raise ValueError("need at least 2 images to fit the unknown statistics")
    means = np.tile(f.mean(axis=0), (num_classes, 1))  # (K, D)
    for k in range(num_classes):
        rows = f[labels == k]
        if len(rows):
            means[k] = rows.mean(axis=0)
    centred = f - means[labels]  # (N, D)
    cov = centred.T @ centred / n  # (D, D)
    ridge = shrinkage * max(float(np.trace(cov)) / d, 1e-12)
    cov[np.diag_indices(d)] += ridge
    # Sigma = C C^T  =>  P = C^-T C^-1 = L L^T with L = C^-T, so |(f - mu) L|^2 is the
    # squared distance: one matmul per image in the graph, no inverse of a full matrix there.
    chol = np.linalg.cholesky(cov)  # C, lower
    inv_c = np.linalg.solve(chol, np.eye(d))  # C^-1, lower
    return means.astype(np.float32), inv_c.T.astype(np.float32)  # L = C^-T (upper)


def mahalanobis_numpy(features: np.ndarray, stats: OodStats) -> np.ndarray:
    """Reference score (N,) in float64: min over classes of the Mahalanobis distance."""
    z = np.asarray(features, np.float64) @ stats.precision_cholesky.astype(np.float64)
    m = stats.class_means.astype(np.float64) @ stats.precision_cholesky.astype(np.float64)
    d2 = ((z[:, None, :] - m[None]) ** 2).sum(-1)  # (N, K)
    return np.sqrt(d2.min(axis=1))


def threshold_for(scores: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> float:
    """The score that `quantile` of the in-distribution scores are at or below."""
    scores = np.asarray(scores, np.float64)
    if not len(scores):
        raise ValueError("no scores to set a threshold from")
    return float(np.quantile(scores, quantile, method="higher"))


# ------------------------------------------------------------------------ validation


def parse_ood(metadata: dict[str, str], shapes: dict[str, list[int]], *, num_classes: int,
              feature_dim: int) -> dict[str, Any] | None:
    """The checked `ood` metadata, or None when the file has none.

    `shapes` maps tensor names to their shapes as the file's header gives them, so that a
    broken file is refused before any tensor is read. Raises ValueError saying what is wrong.
    """
    has_tensors = any(name.startswith(TENSOR_PREFIX) for name in shapes)
    text = metadata.get(METADATA_KEY)
    if text is None:
        if has_tensors:
            raise ValueError("unknown-statistics tensors without their 'ood' metadata")
        return None
    info = parse_rule(text)
    want = {MEANS_KEY: [num_classes, feature_dim], CHOLESKY_KEY: [feature_dim, feature_dim]}
    for name, shape in want.items():
        if shapes.get(name) != shape:
            raise ValueError(f"tensor {name} should have shape {tuple(shape)}, "
                             f"not {tuple(shapes[name]) if name in shapes else 'missing'}")
    extra = sorted(n for n in shapes if n.startswith(TENSOR_PREFIX) and n not in want)
    if extra:
        raise ValueError(f"unexpected tensor {extra[0]}")
    return info


def parse_rule(text: str) -> dict[str, Any]:
    """Method, threshold and quantile from the `ood` metadata JSON (the ONNX file's too)."""
    try:
        info = json.loads(text)
    except ValueError:
        raise ValueError("'ood' is not JSON") from None
    if not isinstance(info, dict):
        raise ValueError("'ood' should be a JSON object")
    if info.get("method") != METHOD:
        raise ValueError(f"unknown out-of-distribution method {info.get('method')!r} "
                         f"(this vitcli knows {METHOD!r})")
    threshold = info.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"'ood' threshold must be a finite number >= 0, not {threshold!r}")
    quantile = info.get("quantile", DEFAULT_QUANTILE)
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) \
            or not 0 < quantile <= 1:
        raise ValueError(f"'ood' quantile must be in (0, 1], not {quantile!r}")
    return {"method": METHOD, "threshold": float(threshold), "quantile": float(quantile)}


def stats_from(info: dict[str, Any], tensors: dict[str, Any]) -> OodStats:
    """OodStats from checked metadata and the file's `ood.*` tensors; refuses NaN/inf."""
    means = np.asarray(tensors[MEANS_KEY], np.float32)
    chol = np.asarray(tensors[CHOLESKY_KEY], np.float32)
    if not (np.isfinite(means).all() and np.isfinite(chol).all()):
        raise ValueError("unknown-statistics tensors hold NaN or infinite values")
    return OodStats(class_means=means, precision_cholesky=chol, threshold=info["threshold"],
                    quantile=info["quantile"], method=info["method"])

