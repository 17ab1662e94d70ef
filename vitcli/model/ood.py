"""The "unknown" statistics a model file carries: class means, a tied precision, a threshold.

Out-of-distribution score (Lee et al. 2018, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks"): the Mahalanobis distance of an image's
features f to the nearest class mean, under one covariance shared by all classes:

    score(f) = min_k sqrt((f - mu_k)^T P (f - mu_k)),   P = Sigma^-1 = L L^T

f is the pooled tokens of several blocks side by side, before any LayerNorm
(vitcli.model.outputs.logits_and_features says which and why): Lee et al.'s feature ensemble
across layers, as one Gaussian over all of them, so that what two blocks both say counts once
and no weights need fitting (there are no out-of-distribution images to fit them on). The
last block alone, the rule files carried before, misses much that the early blocks still
see: a photo's texture and shading, which a last block trained only to tell shapes apart has
dropped (docs/evaluation.md: 67 % -> 84 % of photo crops caught, and more of every other
kind, with as many in-distribution images passing).

Means come from the training images, the threshold from the validation images (a quantile
of their scores, so that e.g. 97.5 % of in-distribution images pass). An image whose score is
above the threshold is called `unknown`.

In the model file: tensors `ood.class_means` (K, F) and `ood.precision_cholesky` (F, F)
(L above: P = L L^T, as scikit-learn's `precisions_cholesky_`), F = n·D for n blocks of
D-dimensional features, and the metadata key `ood`, JSON {"method": "mahalanobis_blocks",
"threshold", "quantile", "feature", "blocks": [block indices]}. Files of the earlier rule
(method "mahalanobis": the last block's features only, F = D) load and score as before.
Nothing here needs torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitcli.errors import format_score

METHOD = "mahalanobis_blocks"  # what vit train fits now
FEATURE = "pooled_tokens_of_blocks_before_norm"  # model.outputs.logits_and_features
LAST_BLOCK_METHOD = "mahalanobis"  # files written before: the last block's features only
LAST_BLOCK_FEATURE = "pooled_tokens_before_final_norm"
MAX_BLOCKS = 4  # blocks whose features the score reads, evenly spaced, first and last kept
MEANS_KEY = "ood.class_means"
CHOLESKY_KEY = "ood.precision_cholesky"
TENSOR_PREFIX = "ood."
METADATA_KEY = "ood"
DEFAULT_QUANTILE = 0.975  # share of in-distribution validation images that must pass
SHRINKAGE = 0.01  # covariance ridge, a fraction of the mean variance: N may be below D
UNKNOWN = "unknown"  # the label an image beyond the threshold gets, everywhere


def score_blocks(depth: int, most: int = MAX_BLOCKS) -> tuple[int, ...]:
    """The blocks the score reads: all of them up to `most`, else `most` evenly spaced
    from the first to the last (so 12 blocks give 0, 4, 7, 11).

    The cap bounds the file and the fit: the factor L has (n·D)² values, 38 MB in float32
    for ViT-B's 4 × 768. Measured at depths 2 and 4 (docs/evaluation.md), every block there.
    """
    if depth < 1:
        raise ValueError("the model has no blocks")
    n = min(depth, most)
    if n == 1:
        return (depth - 1,)
    return tuple(sorted({round(i * (depth - 1) / (n - 1)) for i in range(n)}))


@dataclass
class OodStats:
    """Class means (K, F), precision Cholesky factor L (F, F), the threshold, and the blocks
    whose features (F = n·D) the score reads (None: the earlier rule, the last block's, F = D)."""

    class_means: np.ndarray  # float32 (K, F)
    precision_cholesky: np.ndarray  # float32 (F, F), P = L @ L.T
    threshold: float
    quantile: float = DEFAULT_QUANTILE
    blocks: tuple[int, ...] | None = None
    validation_images: int | None = None  # how many set the threshold (None: not recorded)

    @property
    def method(self) -> str:
        return LAST_BLOCK_METHOD if self.blocks is None else METHOD

    def metadata(self) -> str:
        """The JSON text stored under the `ood` metadata key."""
        rule = {"method": self.method, "threshold": self.threshold, "quantile": self.quantile}
        if self.validation_images:
            rule["validation_images"] = self.validation_images
        if self.blocks is None:
            return json.dumps({**rule, "feature": LAST_BLOCK_FEATURE})
        return json.dumps({**rule, "feature": FEATURE, "blocks": list(self.blocks)})

    def tensors(self) -> dict[str, np.ndarray]:
        return {MEANS_KEY: self.class_means, CHOLESKY_KEY: self.precision_cholesky}


def fit_gaussians(features: np.ndarray, labels: np.ndarray, num_classes: int,
                  shrinkage: float = SHRINKAGE, num_blocks: int = 1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means (K, F) and the Cholesky factor L (F, F) of the tied precision.

    features (N, F), labels (N,) in 0..K-1; float64 throughout. The shared covariance is the
    pooled within-class scatter / N plus, on the diagonal, `shrinkage` × the mean variance of
    each of `num_blocks` equal column groups (each block's features in their own scale:
    later blocks' tokens are larger, and one ridge for all would drown an early block's
    directions). It keeps the covariance invertible when N < F or a feature is constant.
    A class with no image gets the overall mean (it can never be the nearest by a wide
    margin).
    """
    f = np.asarray(features, np.float64)
    labels = np.asarray(labels, np.int64)
    n, d = f.shape
    if n < 2:
        raise ValueError("need at least 2 images to fit the unknown statistics")
    if num_blocks < 1 or d % num_blocks:
        raise ValueError(f"{d} feature columns do not split into {num_blocks} blocks")
    means = np.tile(f.mean(axis=0), (num_classes, 1))  # (K, F)
    for k in range(num_classes):
        rows = f[labels == k]
        if len(rows):
            means[k] = rows.mean(axis=0)
    centred = f - means[labels]  # (N, F)
    cov = centred.T @ centred / n  # (F, F)
    variances = np.diag(cov).reshape(num_blocks, d // num_blocks)  # (n, D)
    ridge = shrinkage * np.maximum(variances.mean(axis=1), 1e-12)  # (n,): one a block
    cov[np.diag_indices(d)] += np.repeat(ridge, d // num_blocks)
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


def threshold_rank(n: int, quantile: float) -> int:
    """Which of n sorted validation scores `threshold_for` takes (1-based): ceil(q·(n + 1)),
    at most n, at least 1 (1e-9: q·(n + 1) a whole number)."""
    return max(min(math.ceil(quantile * (n + 1) - 1e-9), n), 1)


def pass_probability(n: int | None, quantile: float) -> float:
    """What `threshold_for` promises a new in-distribution image: rank / (n + 1) ≥ quantile,
    or n / (n + 1) with fewer than 39 images (at 97.5 %); the quantile when n is unknown."""
    if not n:
        return quantile
    return threshold_rank(n, quantile) / (n + 1)


def threshold_for(scores: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> float:
    """The ceil(quantile·(n + 1))-th smallest of n in-distribution scores (the largest, when
    that rank is beyond n).

    A new in-distribution image scores at or below it with probability rank / (n + 1) >=
    `quantile`, whatever the score's distribution, as long as it and the n images are drawn
    alike (split conformal prediction: Vovk et al. 2005; Angelopoulos & Bates 2021, "A
    Gentle Introduction to Conformal Prediction"). With fewer than 1 / (1 - quantile) - 1
    images (39 at 97.5 %) no rank is high enough and the largest gives n / (n + 1).
    numpy's "higher" quantile, used before, took rank 98 of 100: 97.0 % for a 97.5 % promise.
    """
    scores = np.sort(np.asarray(scores, np.float64))
    n = len(scores)
    if not n:
        raise ValueError("no scores to set a threshold from")
    return float(scores[threshold_rank(n, quantile) - 1])


# ------------------------------------------------------------------------ validation


def parse_ood(metadata: dict[str, str], shapes: dict[str, list[int]], *, num_classes: int,
              feature_dim: int, depth: int | None = None) -> dict[str, Any] | None:
    """The checked `ood` metadata, or None when the file has none.

    `shapes` maps tensor names to their shapes as the file's header gives them, so that a
    broken file is refused before any tensor is read; `feature_dim` is one block's feature
    size D (the head's input size), `depth` the model's number of blocks. Raises ValueError
    saying what is wrong.
    """
    has_tensors = any(name.startswith(TENSOR_PREFIX) for name in shapes)
    text = metadata.get(METADATA_KEY)
    if text is None:
        if has_tensors:
            raise ValueError("unknown-statistics tensors without their 'ood' metadata")
        return None
    info = parse_rule(text)
    blocks = info["blocks"]
    if blocks is None:
        want = {MEANS_KEY: [num_classes, feature_dim], CHOLESKY_KEY: [feature_dim, feature_dim]}
    else:
        if depth is not None and blocks[-1] >= depth:
            raise ValueError(f"'ood' blocks {blocks} name a block beyond the model's {depth}")
        f = len(blocks) * feature_dim
        want = {MEANS_KEY: [num_classes, f], CHOLESKY_KEY: [f, f]}
    for name, shape in want.items():
        if shapes.get(name) != shape:
            raise ValueError(f"tensor {name} should have shape {tuple(shape)}, "
                             f"not {tuple(shapes[name]) if name in shapes else 'missing'}")
    extra = sorted(n for n in shapes if n.startswith(TENSOR_PREFIX) and n not in want)
    if extra:
        raise ValueError(f"unexpected tensor {extra[0]}")
    return info


class NewerMethodError(ValueError):
    """An `ood` method this vitcli does not know: most likely written by a newer vitcli."""


def parse_rule(text: str) -> dict[str, Any]:
    """Method, threshold, quantile and blocks (None for the last-block rule) from the `ood`
    metadata JSON (the ONNX file's too)."""
    try:
        info = json.loads(text)
    except ValueError:
        raise ValueError("'ood' is not JSON") from None
    if not isinstance(info, dict):
        raise ValueError("'ood' should be a JSON object")
    method = info.get("method")
    if method not in (METHOD, LAST_BLOCK_METHOD):
        raise NewerMethodError(f"out-of-distribution method {method!r} is not one this vitcli "
                               f"knows ({METHOD!r}, {LAST_BLOCK_METHOD!r}); a newer vitcli may "
                               "have written it (upgrade vitcli)")
    threshold = info.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"'ood' threshold must be a finite number >= 0, not {threshold!r}")
    quantile = info.get("quantile", DEFAULT_QUANTILE)
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) \
            or not 0 < quantile <= 1:
        raise ValueError(f"'ood' quantile must be in (0, 1], not {quantile!r}")
    blocks = None
    if method == METHOD:
        blocks = info.get("blocks")
        if not (isinstance(blocks, list) and 0 < len(blocks) <= 64
                and all(type(b) is int and b >= 0 for b in blocks)
                and blocks == sorted(set(blocks))):
            raise ValueError(f"'ood' blocks must be increasing block indices, not {blocks!r}")
        blocks = tuple(blocks)
    n = info.get("validation_images")
    if n is not None and (type(n) is not int or n < 1):
        raise ValueError(f"'ood' validation_images must be a whole number >= 1, not {n!r}")
    return {"method": method, "threshold": float(threshold), "quantile": float(quantile),
            "blocks": blocks, "validation_images": n}


def describe_promise(n: int | None, quantile: float) -> str:
    """'(a new image like the 100 validation images passes with probability ≥ 98.0%)'."""
    like = f"the {n:,} validation images" if n else "the validation images"
    return (f"(a new image like {like} passes with probability "
            f"≥ {pass_probability(n, quantile):.1%})")


def describe_rule(rule: dict[str, Any]) -> str:
    """A parsed rule (parse_rule) in words, for `vit info`."""
    blocks = rule["blocks"]
    where = ("the last block's features" if blocks is None else
             f"the features of block{'s' if len(blocks) > 1 else ''} "
             f"{', '.join(str(b + 1) for b in blocks)}")
    return (f"Mahalanobis distance on {where}; unknown beyond {format_score(rule['threshold'])} "
            + describe_promise(rule["validation_images"], rule["quantile"]))


def stats_from(info: dict[str, Any], tensors: dict[str, Any]) -> OodStats:
    """OodStats from checked metadata and the file's `ood.*` tensors; refuses NaN/inf."""
    means = np.asarray(tensors[MEANS_KEY], np.float32)
    chol = np.asarray(tensors[CHOLESKY_KEY], np.float32)
    if not (np.isfinite(means).all() and np.isfinite(chol).all()):
        raise ValueError("unknown-statistics tensors hold NaN or infinite values")
    return OodStats(class_means=means, precision_cholesky=chol, threshold=info["threshold"],
                    quantile=info["quantile"], blocks=info["blocks"],
                    validation_images=info["validation_images"])
