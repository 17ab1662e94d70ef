"""Measure a model on labelled images: logits over the data, then `vit eval`'s report.

`predict_logits` (here) and `compute_metrics` (vitcli.evaluation.metrics) are shared with
the validation in `vit train`, so `vit eval` on the same data gives the same figures as
training reported. Nothing here prints.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitcli.errors import VitError, plural
from vitcli.evaluation.calibration import Calibration
from vitcli.evaluation.metrics import Metrics, compute_metrics, cross_entropy
from vitcli.files import atomic_write_text

if TYPE_CHECKING:
    import torch

Progress = Callable[[int, int], None]  # (images done, images in all)
StageProgress = Callable[[str, int, int], None]  # ("reading" or "evaluating", done, all)


# ------------------------------------------------------------------------------- logits


def check_finite_outputs(model_path: str | Path, logits: np.ndarray) -> None:
    """Refuse NaN/inf logits: finite weights can still overflow (values near 1e38), and
    argmax over NaN would report a made-up accuracy or label."""
    if not np.isfinite(logits).all():
        raise VitError(f"{model_path}: the model gives NaN or infinite outputs on these images "
                       "(its weights overflow); the file is broken")


def predict_logits(model: torch.nn.Module, pixels: np.ndarray, *, mean: Sequence[float],
                   std: Sequence[float], batch_size: int = 256,
                   device: str | torch.device = "cpu", precision: str = "fp32",
                   progress: Progress | None = None) -> np.ndarray:
    """Float32 logits (N, K) for uint8 pixels (N, S, S, C) that are already resized/cropped.

    Normalisation is done on the device with the same float32 arithmetic, in the same order,
    as Preprocessing.normalize (x/255, then (x - mean) / std, HWC → CHW), so the figures
    equal those of `vit predict`. The model runs in eval mode without gradients and is put
    back in the mode it was in (the trainer calls this between epochs). `precision` is a
    resolved "fp32" or "bf16" (autocast), or "auto" for the device's default (bf16 on CUDA).
    """
    import torch

    from vitcli.devices import autocast_dtype

    if pixels.ndim != 4:
        raise ValueError(f"pixels must be (N, S, S, C), got shape {pixels.shape}")
    device = torch.device(device)
    dtype = autocast_dtype(device, precision)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    was_training = model.training
    model.eval()
    n = len(pixels)
    out: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(pixels[start:start + batch_size]))
                x = batch.to(device).float() / 255.0  # (B, S, S, C)
                x = ((x - mean_t) / std_t).permute(0, 3, 1, 2).contiguous()  # (B, C, S, S)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    logits = model(x)
                out.append(logits.float().cpu().numpy())
                if progress is not None:
                    progress(min(start + batch_size, n), n)
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------- vit eval


@dataclass
class EvalReport:
    """The result of `evaluate`: metrics plus where they came from."""

    metrics: Metrics
    model_path: str
    data: str
    split: str | None
    description: str  # which data and split, as the data loader says it
    device: str
    preprocessing: dict[str, Any]
    seconds: float
    bad_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    precision: str = "fp32"  # what the model ran at: "fp32" or "bf16" (autocast)
    precision_reason: str = ""
    threads: int = 0  # torch's CPU threads (devices.choose_threads); 0: not recorded
    threads_reason: str = ""
    absent_classes: list[str] = field(default_factory=list)  # model classes not in the data
    warnings: list[str] = field(default_factory=list)  # e.g. scoring the model's training images
    calibration: Calibration | None = None  # ECE/NLL/Brier at T = 1 and the file's T
    unknown_share: float | None = None  # images beyond the unknown threshold (None: no rule)
    unknown_threshold: float | None = None
    raw_logits: np.ndarray | None = field(default=None, repr=False)  # (N, K), before T
    labels: np.ndarray | None = field(default=None, repr=False)  # (N,) in the model's order

    def to_dict(self) -> dict[str, Any]:
        """Everything as a JSON-able dict (the --json file)."""
        return {
            "model": self.model_path,
            "data": self.data,
            "split": self.split,
            "description": self.description,
            "device": self.device,
            # "compute_precision": the arithmetic the model ran in (fp32, or bf16 autocast);
            # "precision" below (per_class, macro_avg, weighted_avg) is the metric
            "compute_precision": self.precision,
            "compute_precision_reason": self.precision_reason or None,
            "threads": self.threads or None,  # CPU threads (the speed depends on them)
            "threads_reason": self.threads_reason or None,
            "preprocessing": self.preprocessing,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.metrics.num_images / max(self.seconds, 1e-9), 1),
            "bad_files": [{"path": p, "reason": r} for p, r in self.bad_files],
            "absent_classes": list(self.absent_classes),
            "warnings": list(self.warnings),
            **self.metrics.to_dict(),
            "calibration": self.calibration.to_dict() if self.calibration else None,
            "unknown": None if self.unknown_share is None else {
                "share": self.unknown_share, "threshold": self.unknown_threshold},
        }


def map_labels(data_names: Sequence[str], model_names: Sequence[str], labels: np.ndarray, *,
               data: str = "the data") -> np.ndarray:
    """Data labels re-indexed into the model's class order; unknown data classes are an error."""
    index = {name: i for i, name in enumerate(model_names)}
    unknown = [name for name in data_names if name not in index]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5
                                          else "")
        known = ", ".join(list(model_names)[:10]) + (", …" if len(model_names) > 10 else "")
        raise VitError(f"{data}: class{'es' if len(unknown) > 1 else ''} {shown} not known to "
                       f"the model (it knows {known})")
    lookup = np.array([index[name] for name in data_names], dtype=np.int64)
    return lookup[np.asarray(labels, dtype=np.int64)]


def evaluate(model_path: str | Path, data: str | Path, *, batch_size: int = 256,
             device: str = "auto", split: str | None = None, val_split: float | None = None,
             seed: int = 0, cache_dir: str | Path | None = None, precision: str = "auto",
             threads: int = 0, progress: StageProgress | None = None) -> EvalReport:
    """Load a model file and labelled images, run the model, and measure it.

    Preprocessing comes from the model file; the data's class names are matched to the
    model's by name, so a data folder may lack some of the model's classes but may not
    hold classes the model does not know. Unreadable images are skipped and listed in
    `bad_files`. `progress` hears about decoding ("reading") then inference ("evaluating").
    `precision` auto | fp32 | bf16: vitcli.devices.choose_precision decides `auto` (bf16
    autocast where this device's bf16 units pay for a batch of this model). `threads`:
    torch's CPU threads while the model runs, 0 = from the cores free
    (vitcli.devices.choose_threads; a busy core's thread holds the others up).
    """
    def stage(name: str) -> Progress | None:
        if progress is None:
            return None
        return lambda done, total: progress(name, done, total)

    from vitcli.data.image_set import load_eval_data
    from vitcli.devices import (
        bf16_weights,
        check_precision,
        choose_for_batch,
        choose_threads,
        resolve_device,
        torch_threads,
    )
    from vitcli.model.checkpoint import load_model
    from vitcli.model.config import count_macs
    from vitcli.model.validate import check_usable_head

    if batch_size < 1:
        from vitcli.errors import UsageError

        raise UsageError(f"--batch-size must be at least 1, not {batch_size}")
    check_precision(precision)
    cpu = choose_threads(threads)  # --threads out of range: refused before any file is read
    target = resolve_device(device)
    model_file = load_model(model_path, device=str(target))  # checks the file before building
    check_usable_head(model_path, model_file.config, model_file.class_names)
    # refuses what this device cannot run before any image is read; `auto` is weighed
    # again below if there are fewer images than a batch
    image_macs = count_macs(model_file.config)
    chosen = choose_for_batch(precision, target, image_macs, batch_size)
    pre = model_file.preprocessing
    images, bad_files = load_eval_data(str(data), preprocessing=pre, split=split,
                                       val_split=val_split, seed=seed,
                                       cache_dir=Path(cache_dir) if cache_dir else None,
                                       progress=stage("reading"))
    if len(images.labels) == 0:
        raise VitError(f"{data}: no readable images to evaluate")
    labels = map_labels(images.class_names, model_file.class_names, images.labels,
                        data=str(data))
    from vitcli.evaluation.calibration import measure
    from vitcli.model.outputs import LogitsAndScore

    if len(labels) < batch_size:
        chosen = choose_for_batch(precision, target, image_macs, len(labels))
    if chosen.name == "bf16":  # the same numbers as autocast's own cast, once (bf16_weights)
        bf16_weights(model_file.model)
    start = time.perf_counter()
    ood = model_file.ood
    # With the unknown rule: one pass for logits and scores (the score itself in float32)
    net = model_file.model if ood is None else LogitsAndScore(model_file.model, ood).to(target)
    with torch_threads(cpu.count):
        raw = predict_logits(net, images.pixels, mean=pre.mean, std=pre.std,
                             batch_size=batch_size, device=target, precision=chosen.name,
                             progress=stage("evaluating"))
    raw, scores = (raw, None) if ood is None else (raw[:, :-1], raw[:, -1])
    seconds = time.perf_counter() - start
    check_finite_outputs(model_path, raw)
    # Confidences are the probabilities `vit predict` gives (logits / T); the loss stays at
    # T = 1, the figure training's validation reported (the calibration rows show it after T).
    metrics = compute_metrics(raw / np.float32(model_file.temperature), labels,
                              model_file.class_names, [str(p) for p in images.paths])
    metrics.loss = cross_entropy(raw, labels)
    present = set(images.class_names)
    warnings = []
    if val_split is not None:
        warning = val_split_warning(model_file, model_path, val_split, seed)
        if warning:
            warnings.append(warning)
    return EvalReport(
        metrics=metrics, model_path=str(model_path), data=str(data), split=split,
        description=images.description, device=str(target), preprocessing=pre.to_dict(),
        seconds=seconds, precision=chosen.name, precision_reason=chosen.reason,
        threads=cpu.count, threads_reason=cpu.reason,
        bad_files=[(str(p), str(r)) for p, r in bad_files],
        absent_classes=[n for n in model_file.class_names if n not in present],
        warnings=warnings,
        calibration=measure(raw, labels, model_file.temperature),
        unknown_share=None if scores is None else float(np.mean(scores > ood.threshold)),
        unknown_threshold=None if ood is None else ood.threshold, raw_logits=raw,
        labels=labels)


def training_validation(model_file: Any, model_path: str | Path) -> dict[str, Any] | None:
    """How the model's training run chose its validation images, or None if unknown.

    {"source": "split"} (the data's own val/ or test/ folder), {"source": "val"} (--val PATH)
    or {"source": "val_split", "fraction": f, "seed": s}: from the model file's metadata
    (`vit train` writes it), else from the run folder's args.json beside weights/.
    """
    text = model_file.metadata.get("validation")
    if text:
        try:
            found = json.loads(text)
            return found if isinstance(found, dict) else None
        except ValueError:
            return None
    args = Path(model_path).resolve().parent.parent / "args.json"
    if Path(model_path).resolve().parent.name != "weights" or not args.is_file():
        return None
    try:
        options = json.loads(args.read_text(encoding="utf-8")).get("options", {})
    except (OSError, ValueError, AttributeError):
        return None
    if options.get("val"):
        return {"source": "val"}
    if options.get("val_split"):
        return {"source": "val_split", "fraction": options["val_split"],
                "seed": options.get("seed", 0)}
    return None


def val_split_warning(model_file: Any, model_path: str | Path, val_split: float,
                      seed: int) -> str | None:
    """A warning when `--val-split/--seed` would not pick the images the model validated on:
    then most of what is scored are its own training images, and the figures flatter it."""
    how = training_validation(model_file, model_path)
    if how is None or val_split == 0:
        return None
    if how.get("source") in ("split", "val"):
        where = ("its data's own validation folder" if how["source"] == "split"
                 else "a separate --val folder")
        return (f"this model validated on {where}, so --val-split {val_split:g} carves its "
                "score out of images it trained on: the figures are inflated. Evaluate its "
                "validation images instead (--data on that folder, without --val-split)")
    if how.get("source") == "val_split" and (
            abs(float(how.get("fraction", -1)) - val_split) > 1e-9
            or int(how.get("seed", -1)) != seed):
        return (f"this model validated on --val-split {float(how['fraction']):g} --seed "
                f"{how['seed']}; --val-split {val_split:g} --seed {seed} picks other images, "
                "most of them images it trained on: the figures are inflated")
    return None


# ------------------------------------------------------------------------------- files


def new_eval_dir(model_path: str | Path, root: str | Path = "runs/eval",
                 data: str | Path | None = None) -> Path:
    """Create and return a fresh folder runs/eval/<model>-on-<data>, then -2, -3, ...

    <model> is the training run's name when the model sits in <run>/weights/ (as `vit train`
    writes it), else the model file's stem; <data> the data folder's name (`shapes-val` for
    a split folder). Claimed with mkdir so two evaluations started at once never share one.
    """
    from vitcli.files import claim_numbered_dir, data_label

    model_path = Path(model_path)
    parent = model_path.resolve().parent
    in_run = parent.name == "weights" and parent.parent.name
    base = parent.parent.name if in_run else model_path.stem
    if data is not None:
        base += "-on-" + data_label(data).replace("/", "-")
    base = re.sub(r"[^\w.+-]+", "_", base).strip("._") or "eval"  # a folder name, whatever
    return claim_numbered_dir(root, base[:120], sep="-")


def write_outputs(report: EvalReport, out: str | Path) -> dict[str, Path]:
    """Write metrics.json, per_class.csv, misclassified.csv, confusion_matrix.png (and
    bad_files.txt when images were skipped) into `out`; return them by name."""
    from vitcli.evaluation.plots import plot_confusion

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = report.metrics
    written = {"metrics": write_json(report, out / "metrics.json")}

    written["per_class"] = _write_csv(
        out / "per_class.csv", ["class", "precision", "recall", "f1", "support"],
        [[c.name, f"{c.precision:.6f}", f"{c.recall:.6f}", f"{c.f1:.6f}", c.support]
         for c in [*m.per_class, m.macro, m.weighted]])
    written["misclassified"] = _write_csv(
        out / "misclassified.csv", ["path", "true", "predicted", "confidence"],
        [[path, true, pred, f"{conf:.6f}"] for path, true, pred, conf in m.misclassified])

    from vitcli.files import data_label, model_label

    written["confusion"] = plot_confusion(
        m.confusion, m.class_names, out / "confusion_matrix.png",
        title=f"{model_label(report.model_path)} on {data_label(report.data)}"
              f"{'' if report.split is None else f' ({report.split})'}: top-1 {m.top1:.1%} "
              f"of {plural(m.num_images, 'image')}")
    if report.raw_logits is not None and report.labels is not None:
        from vitcli.evaluation.calibration_plots import write_calibration_plots

        written.update(write_calibration_plots(report, out))
    if report.bad_files:
        written["bad_files"] = atomic_write_text(
            out / "bad_files.txt", "".join(f"{p}\t{r}\n" for p, r in report.bad_files))
    return written


OUTPUT_FILES = ("metrics.json", "per_class.csv", "misclassified.csv", "confusion_matrix.png",
                "bad_files.txt")


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    """A CSV table written atomically; names keep their exact bytes (surrogateescape)."""
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def write_json(report: EvalReport, path: str | Path) -> Path:
    """Write the whole report as indented JSON; return the path."""
    return atomic_write_text(path, json.dumps(report.to_dict(), indent=2) + "\n")
