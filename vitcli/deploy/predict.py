"""Classify images with a vitcli model file, on PyTorch or onnxruntime.

No torch at import time: with an .onnx model the whole path (inputs → preprocessing →
onnxruntime → top-k) runs without it. See vitcli/deploy/backends.py for the two runtimes.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitcli.data.discovery import (
    UNREADABLE,
    VANISHED,
    Skipped,
    display,
    is_hidden,
    sort_key,
    walk_images,
)
from vitcli.deploy.backends import Backend
from vitcli.errors import UsageError, VitError
from vitcli.evaluation.evaluate import check_finite_outputs
from vitcli.evaluation.metrics import softmax
from vitcli.images import is_image_path
from vitcli.model.ood import UNKNOWN

TRAIN_RUNS = Path("runs/train")
BEST_WEIGHTS = "weights/best.safetensors"
GLOB_CHARS = frozenset("*?[")


@dataclass
class Prediction:
    """One image's result: the top-k labels with probabilities, or why it failed."""

    path: Path
    labels: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    error: str | None = None
    score: float | None = None  # the unknown score, when the rule is on (vitcli.model.ood)
    threshold: float | None = None  # scores above it are unknown
    unknown: bool = False  # beyond the threshold: the label is "unknown", labels[0] the nearest
    compute_precision: str | None = None  # fp32, bf16 or int8 (Backend.compute_precision)

    @property
    def label(self) -> str:
        """What the model answers: the top class, or `unknown`."""
        return UNKNOWN if self.unknown else self.labels[0]

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready record: image, top-1 label and probability, then the top-k list."""
        if self.error is not None:
            return {"image": str(self.path), "error": self.error}
        record: dict[str, Any] = {
            "image": str(self.path),
            "label": self.label,
            "probability": self.probabilities[0],  # of the top class (the nearest if unknown)
        }
        if self.score is not None:
            record.update(unknown=self.unknown, nearest=self.labels[0], score=self.score,
                          threshold=self.threshold)
        record["topk"] = [{"label": label, "index": index, "probability": p}
                          for label, index, p in zip(self.labels, self.indices,
                                                     self.probabilities)]
        if self.compute_precision is not None:  # what the probabilities were computed in
            record["compute_precision"] = self.compute_precision
        return record


# ------------------------------------------------------------------------------- inputs


def find_latest_model(runs: Path = TRAIN_RUNS) -> Path:
    """The newest runs/train/*/weights/best.safetensors (by modification time)."""
    candidates = [p for p in runs.glob(f"*/{BEST_WEIGHTS}") if p.is_file()]
    if not candidates:
        raise VitError(f"no model given and none found in {runs}/*/{BEST_WEIGHTS}; "
                       "train one first (`vit train`) or pass --model FILE")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def collect_images(inputs: Iterable[str | Path], skipped: list[Skipped] | None = None,
                   ) -> tuple[list[Path], list[Prediction]]:
    """Expand files, folders (recursively) and globs into image paths, in the order given.

    Folders are listed by vitcli.data.discovery, the rule train and eval use (links followed
    once, hidden and `__` entries skipped, files in byte order). Quoted globs
    (`"photos/*.jpg"`) are expanded here, since the shell did not. Inputs that match nothing,
    and folders that cannot be read or vanish while listed, come back as failed Predictions
    so they are reported by name; other left-out entries (non-images, link loops) are
    appended to `skipped` when given.
    """
    found: list[Path] = []
    missing: list[Prediction] = []
    seen: set[Path] = set()
    seen_dirs: set[tuple[int, int]] = set()
    notes: list[Skipped] = [] if skipped is None else skipped

    def add(path: Path) -> None:
        if path not in seen:
            seen.add(path)
            found.append(path)

    def add_folder(folder: Path) -> int:
        files, left_out = walk_images(folder, seen=seen_dirs)
        for s in left_out:
            if s.reason.startswith((UNREADABLE, VANISHED)):
                missing.append(Prediction(Path(s.path), error=f"{display(s.path)}: {s.reason}"))
            else:
                notes.append(s)
        for f in files:
            add(Path(f.path))
        return len(files)

    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            if not add_folder(path) and not any(m.path == path for m in missing):
                missing.append(Prediction(path, error=f"{display(path)}: folder holds no "
                                                      "images"))
        elif path.exists() or not GLOB_CHARS & set(text):
            add(path)  # a missing plain file is reported when it fails to open
        else:
            matches = sorted(glob.glob(text, recursive=True), key=sort_key)
            before = len(found)
            for match in matches:
                p = Path(match)
                if is_hidden(p.name):
                    continue
                if p.is_dir():  # a pattern may match folders too ("photos/c*/")
                    add_folder(p)
                elif is_image_path(p):
                    add(p)
            if len(found) == before:
                missing.append(Prediction(path, error=f"{display(text)}: no images match "
                                                      "this pattern"))
    return found, missing


# ------------------------------------------------------------------------------ running


def require_classifier(backend: Backend) -> None:
    """Refuse a model without a classification head: its outputs are features, not classes."""
    from vitcli.model.validate import check_usable_head

    check_usable_head(backend.path, backend.config, backend.class_names)


def top_k(probs: np.ndarray, names: list[str], k: int) -> list[tuple[list[int], list[float]]]:
    """For each row of probabilities, the k best class indices and their probabilities."""
    k = max(1, min(k, probs.shape[-1]))
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]  # (B, k)
    return [(row.tolist(), probs[i, row].tolist()) for i, row in enumerate(order)]


def load_batch(backend: Backend, paths: list[Path]) -> tuple[np.ndarray, list[Path],
                                                               list[Prediction]]:
    """Preprocess a batch of images; unreadable ones become failed Predictions."""
    pre = backend.preprocessing
    arrays, good, failed = [], [], []
    for path in paths:
        try:
            arrays.append(pre.load(path))  # (C, H, W)
            good.append(path)
        except VitError as exc:
            failed.append(Prediction(path, error=str(exc)))
    shape = (0, pre.channels, pre.image_size, pre.image_size)
    batch = np.stack(arrays) if arrays else np.zeros(shape, np.float32)  # (B, C, H, W)
    return batch, good, failed


def unknown_rule(backend: Backend, unknown: bool | None) -> float | None:
    """The threshold to apply: the file's when `unknown` is None or True, none when False."""
    threshold = backend.ood_threshold
    if unknown and threshold is None:
        raise UsageError(f"--unknown on: {backend.path} has no unknown rule (it is fitted at "
                         "the end of `vit train` when there are validation images)")
    return threshold if unknown is not False else None


def predict_paths(backend: Backend, paths: list[Path], *, topk: int = 5,
                  batch_size: int = 32,
                  on_batch: Callable[[int], None] | None = None,
                  unknown: bool | None = None) -> Iterator[Prediction]:
    """Predictions for `paths` in batches, in order; failed images are yielded as errors.

    `on_batch(n)` is called after each batch with the number of images it covered, so a
    caller can drive a progress bar. `unknown`: None applies the file's unknown rule when it
    has one, False never, True requires it.
    """
    names = backend.class_names
    threshold = unknown_rule(backend, unknown)
    # `auto` weighs the batches asked for, not the readable images of the first one: a
    # first batch of mostly unreadable files would have kept every later batch in fp32
    if paths:
        backend.decide(min(batch_size, len(paths)))
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        batch, good, failed = load_batch(backend, chunk)
        results: dict[Path, Prediction] = {p.path: p for p in failed}
        if len(good):
            logits, scores = backend.outputs(batch)  # (B, classes), (B,) or None
            check_finite_outputs(backend.path, logits)
            probs = softmax(logits)  # (B, classes)
            for row, (path, (idx, p)) in enumerate(zip(good, top_k(probs, names, topk))):
                labels = [names[i] if i < len(names) else str(i) for i in idx]
                result = Prediction(path, labels=labels, probabilities=p, indices=idx,
                                    compute_precision=backend.compute_precision)
                if threshold is not None and scores is not None:
                    result.score, result.threshold = float(scores[row]), threshold
                    result.unknown = result.score > threshold
                results[path] = result
        yield from (results[p] for p in chunk)
        if on_batch:
            on_batch(len(chunk))


def predict(model: str | Path, inputs: Iterable[str | Path], *, topk: int = 5,
            device: str = "auto", batch_size: int = 32, precision: str = "auto",
            threads: int = 0, unknown: bool | None = None) -> list[Prediction]:
    """Classify images (files, folders, globs) with a .safetensors or .onnx model file.

    `precision` for PyTorch: auto (the default: bf16 where a batch's work pays for it,
    vitcli.devices.choose_for_batch), fp32 (the probabilities of the exported ONNX file)
    or bf16. `threads`: CPU threads, 0 = from the cores free. Images beyond the file's
    unknown threshold get the label `unknown` (see Prediction); `unknown=False` turns that
    off.
    """
    from vitcli.deploy.backends import open_backend

    backend = open_backend(model, device=device, precision=precision, threads=threads)
    require_classifier(backend)
    paths, missing = collect_images(inputs)
    return missing + list(predict_paths(backend, paths, topk=topk, batch_size=batch_size,
                                        unknown=unknown))
