"""Classification metrics on (N, K) logits and (N,) integer labels: top-1/top-k, loss,
per-class precision/recall/F1, the confusion matrix, the most confused pairs.

Plain numpy, shared by `vit eval` (vitcli.evaluation.evaluate) and the validation in
`vit train`, so both report the same figures for the same logits; nothing here prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitcli.errors import VitError

MAX_TOP_K = 5
MOST_CONFUSED_PAIRS = 10


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, so both back ends round the same way."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class ClassMetrics:
    """Precision, recall and F1 of one class; support = images whose true class it is."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Metrics:
    """Everything measured on one labelled set. Accuracies are fractions (0-1)."""

    top1: float
    top5: float  # top-k accuracy with k = top_k = min(5, number of classes)
    top_k: int
    loss: float  # mean cross-entropy (natural log), no label smoothing
    num_images: int
    class_names: list[str]
    per_class: list[ClassMetrics]
    macro: ClassMetrics  # unweighted mean over classes seen in labels or predictions
    weighted: ClassMetrics  # mean weighted by support
    confusion: np.ndarray  # (K, K) int64, [true, predicted]
    most_confused: list[tuple[str, str, int]]  # (true, predicted, count), most first
    misclassified: list[tuple[str, str, str, float]]  # (path, true, predicted, confidence)
    # Mean recall over the classes present in the labels: top-1 as if every class had as
    # many images (Brodersen et al. 2010); equals top-1 when the classes are balanced.
    balanced_accuracy: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (plain floats, ints, lists)."""
        def cls(m: ClassMetrics) -> dict[str, Any]:
            return {"name": m.name, "precision": m.precision, "recall": m.recall, "f1": m.f1,
                    "support": m.support}

        return {
            "num_images": self.num_images,
            "top1": self.top1,
            "balanced_accuracy": self.balanced_accuracy,
            "top5": self.top5,
            "top_k": self.top_k,
            "loss": self.loss,
            "class_names": list(self.class_names),
            "per_class": [cls(m) for m in self.per_class],
            "macro_avg": {k: v for k, v in cls(self.macro).items() if k != "name"},
            "weighted_avg": {k: v for k, v in cls(self.weighted).items() if k != "name"},
            "confusion": self.confusion.tolist(),
            "most_confused": [{"true": t, "predicted": p, "count": c}
                              for t, p, c in self.most_confused],
            "misclassified": [{"path": path, "true": t, "predicted": p, "confidence": conf}
                              for path, t, p, conf in self.misclassified],
        }


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (a class never predicted has precision 0, not NaN)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log softmax(logits)[label], computed in float64 via log-sum-exp."""
    z = logits.astype(np.float64)
    top = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]  # (N,)
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the k highest logits.

    The rank of the true class is the number of classes scored strictly higher, so ties
    count in its favour (deterministic, unlike the order torch.topk leaves ties in).
    """
    true_scores = logits[np.arange(len(labels)), labels][:, None]
    return float(np.mean((logits > true_scores).sum(axis=1) < k))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def compute_metrics(logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                    paths: Sequence[str] | None = None) -> Metrics:
    """All metrics for (N, K) logits against (N,) true class indices into `class_names`.

    Top-k uses k = min(5, K). Precision of a class never predicted and recall of a class
    absent from the labels are 0 (not NaN); macro averages run over the classes that occur
    in the labels or the predictions (so a model class missing from the data does not drag
    them down), weighted averages over support. Misclassified images come most confident
    first; `paths` names them (else their index).
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    names = list(class_names)
    n, k = logits.shape if logits.ndim == 2 else (len(labels), len(names))
    if k != len(names):
        raise ValueError(f"logits have {k} classes but {len(names)} class names were given")
    if len(labels) != n:
        raise ValueError(f"{n} rows of logits but {len(labels)} labels")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must be in 0..{k - 1}")
    if paths is not None and len(paths) != n:
        raise ValueError(f"{n} images but {len(paths)} paths")
    if n == 0:
        raise VitError("no images to evaluate")

    predictions = logits.argmax(axis=1)
    top_k = min(MAX_TOP_K, k)

    confusion = confusion_matrix(labels, predictions, k)
    true_pos = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)  # images per true class
    predicted = confusion.sum(axis=0)  # images per predicted class
    precision = _safe_div(true_pos, predicted)
    recall = _safe_div(true_pos, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    per_class = [ClassMetrics(names[i], float(precision[i]), float(recall[i]), float(f1[i]),
                              int(support[i])) for i in range(k)]

    seen = (support > 0) | (predicted > 0)
    macro = ClassMetrics("macro avg", *(float(v[seen].mean()) for v in (precision, recall, f1)),
                         int(support.sum()))
    weights = support / support.sum()
    weighted = ClassMetrics("weighted avg", *(float((v * weights).sum())
                                              for v in (precision, recall, f1)),
                            int(support.sum()))

    off = confusion.copy()
    np.fill_diagonal(off, 0)
    pairs = [(int(off[i, j]), i, j) for i, j in zip(*np.nonzero(off), strict=True)]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    most_confused = [(names[i], names[j], c) for c, i, j in pairs[:MOST_CONFUSED_PAIRS]]

    confidence = softmax(logits).max(axis=1)
    wrong = np.nonzero(predictions != labels)[0]
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    misclassified = [(str(paths[i]) if paths is not None else str(i), names[labels[i]],
                      names[predictions[i]], float(confidence[i])) for i in wrong]

    return Metrics(
        top1=float(np.mean(predictions == labels)), top5=top_k_accuracy(logits, labels, top_k),
        top_k=top_k, loss=cross_entropy(logits, labels), num_images=n, class_names=names,
        per_class=per_class, macro=macro, weighted=weighted, confusion=confusion,
        most_confused=most_confused, misclassified=misclassified,
        balanced_accuracy=float(recall[support > 0].mean()))
