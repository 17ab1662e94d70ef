"""The run folder: where a training run keeps its arguments, metrics, weights and state.

    runs/train/<name>/
      args.json                 the options, so that `--resume` can rebuild the run
      metrics.csv               one row per epoch
      weights/best.safetensors  the best model on validation top-1 (a vitcli model file)
      weights/last.safetensors  the model at the last epoch end
      state.json                training state: step, epoch, schedule, RNG, best metric, ...;
                                at the end, the time budget kept or not and the calibration
      state-<step>.safetensors  the state's tensors: model, optimiser moments, EMA, RNG
      curves.png, confusion_matrix.png, bad_files.txt

The training state is written without pickle: tensors go to safetensors, everything else to
JSON. The tensors file has a new name each time and state.json (which names it) is replaced
atomically afterwards, so a `kill -9` at any moment leaves a complete, matching pair.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vitcli.errors import UsageError, VitError
from vitcli.files import atomic_write, atomic_write_text, claim_numbered_dir, read_json_file
from vitcli.model.checkpoint import read_header, save_tensors
from vitcli.model.validate import check_finite

if TYPE_CHECKING:
    from vitcli.training.recipe import TrainOptions
    from vitcli.training.setup import Prepared

METRIC_FIELDS = ["epoch", "step", "train_loss", "val_loss", "val_top1", "val_top5", "lr",
                 "images_per_s", "seconds"]
STATE_FILE = "state.json"
STATE_VERSION = 1


@dataclass
class TrainResult:
    """How a run ended and where its files are."""

    run_dir: Path
    stopped: str  # completed | early_stop | time_budget | interrupted
    epochs: int
    steps: int
    seconds: float
    best_top1: float | None
    best_epoch: int | None
    best_path: Path
    last_path: Path
    last_row: dict[str, Any] | None
    num_train: int
    num_val: int
    val_split: float | None = None  # validation carved from --data (`vit eval --val-split`)
    options: TrainOptions | None = None  # what the run was trained with
    probe: str = ""  # how a linear probe (--freeze backbone) ran, in one line; "" otherwise
    # --resume of a run that had ended: nothing trained, nothing read or rewritten (the data
    # was not read, so num_train and num_val are 0)
    already_ended: bool = False
    budget_note: str | None = None  # the line said when the run did not keep --time-budget
    setup_seconds: float = 0.0  # this session's set-up before `seconds` began


# ---------------------------------------------------------------------------- the folder


def new_run_dir(project: str | Path, name: str | None = None) -> Path:
    """Create a fresh run folder <project>/<name> (exp, exp2, ...) with its weights/ folder."""
    run_dir = claim_numbered_dir(project, name or "exp")
    (run_dir / "weights").mkdir()
    return run_dir


def write_json(path: Path, data: Any) -> Path:
    """Atomically write pretty JSON."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> Any:
    """A run file's JSON: a regular file, bounded in size and depth, else one VitError."""
    if not Path(path).exists():
        raise VitError(f"{path}: not found")
    return read_json_file(path)


def write_bad_files(run_dir: Path, bad_files: list[tuple[str, str]]) -> Path | None:
    """bad_files.txt: one `path<TAB>reason` line per file that could not be used."""
    if not bad_files:
        return None
    lines = "".join(f"{path}\t{reason}\n" for path, reason in bad_files)
    return atomic_write_text(run_dir / "bad_files.txt", lines)  # a name's exact bytes


# ---------------------------------------------------------------------------- metrics.csv


class MetricsLog:
    """metrics.csv, one row per epoch, rewritten atomically so it never holds half a row."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = read_metrics(self.path) if self.path.exists() else []

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append({k: row.get(k) for k in METRIC_FIELDS})
        self._write()

    def truncate(self, step: int) -> None:
        """Forget rows after `step`: on resume, rows the saved state never saw."""
        self.rows = [r for r in self.rows if int(r["step"]) <= step]
        self._write()

    def _write(self) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
                writer.writeheader()
                for row in self.rows:
                    writer.writerow({k: _fmt(row.get(k)) for k in METRIC_FIELDS})

        atomic_write(self.path, write)


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.csv rows with numbers parsed (empty cells become None)."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for key, text in raw.items():
                if text in ("", None):
                    row[key] = None
                elif key in ("epoch", "step"):
                    row[key] = int(text)
                else:
                    row[key] = float(text)
            rows.append(row)
    return rows


# --------------------------------------------------------------------- training state


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped.

    `info` is JSON (step, epoch, position in the epoch, schedule, best metric, RNG scalars,
    ...); `tensors` are the model, the optimiser moments, the EMA and the RNG states.
    """

    info: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def save_state(run_dir: Path, state: TrainState) -> Path:
    """Write the state: a fresh tensors file, then state.json pointing at it, then tidy up."""
    run_dir = Path(run_dir)
    tensor_name = f"state-{int(state.info['step'])}.safetensors"
    save_tensors(run_dir / tensor_name, state.tensors, {"format": "vitcli-train-state"})
    info = {**state.info, "version": STATE_VERSION, "tensors": tensor_name}
    path = write_json(run_dir / STATE_FILE, info)
    for old in run_dir.glob("state-*.safetensors"):  # only after state.json names the new one
        if old.name != tensor_name:
            old.unlink(missing_ok=True)
    return path


def record_in_state(run_dir: Path, facts: dict[str, Any]) -> None:
    """Add what the end of a run found (the time budget kept or not, the calibration) to
    state.json, beside the step, seconds and best metric it holds; atomically, and not at
    all when the run never saved a state. A resumed run's next save starts them afresh."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return
    info = read_json(path)
    if isinstance(info, dict):
        write_json(path, {**info, **facts})


def load_state(run_dir: Path) -> TrainState:
    """Read the state saved by `save_state`, or say clearly why the folder cannot resume."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"--resume {run_dir}: no such run folder")
    path = run_dir / STATE_FILE
    if not path.exists():
        raise VitError(f"{run_dir}: no {STATE_FILE}; the run stopped before its first save")
    info = read_json(path)
    if int(info.get("version", 0)) > STATE_VERSION:
        raise VitError(f"{path}: written by a newer vitcli; upgrade to resume it")
    if not isinstance(info, dict) or not isinstance(info.get("tensors"), str) \
            or Path(info["tensors"]).name != info["tensors"]:
        raise VitError(f"{path}: corrupt training state (no tensors file named in it)")
    tensor_path = run_dir / info["tensors"]
    read_header(tensor_path)  # a regular file, bounded header, consistent layout
    try:
        tensors = load_file(str(tensor_path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types when damaged
        raise VitError(f"{tensor_path}: unreadable training state ({exc})") from None
    check_finite(tensor_path, {k: v for k, v in tensors.items() if k.startswith("model.")})
    return TrainState(info=info, tensors=tensors)


# ------------------------------------------------------------- optimiser state, flattened


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Split `optimizer.state_dict()` into JSON and tensors named `optim.<param>.<key>`."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, slots in state_dict["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return {"param_groups": state_dict["param_groups"], "scalars": scalars}, tensors


def unflatten_optimizer(info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The inverse of `flatten_optimizer`: a dict `optimizer.load_state_dict` accepts."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, slots in info["scalars"].items():
        state.setdefault(int(idx), {}).update(slots)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g
              for g in info["param_groups"]]
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------- RNG states


def get_rng_states() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """torch (CPU and CUDA), numpy and Python RNG states as (JSON, tensors)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss_next = random.getstate()
    info = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss_next]}
    return info, tensors


def set_rng_states(info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Restore what `get_rng_states` captured."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(
        sum(k.startswith("rng.cuda.") for k in tensors))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    kind, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss,
                         cached))
    version, internal, gauss_next = info["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ------------------------------------------------------------------------------- plots


def write_plots(run_dir: Path, rows: list[dict[str, Any]], data: Prepared, *,
                device: torch.device, best_epoch: int | None, precision: str = "auto",
                data_name: str | None = None) -> None:
    """curves.png from the metrics rows; confusion_matrix.png for the best model on val.

    The best model is read back from its file, so the figure shows exactly what
    `vit eval` on the same data would.
    """
    from vitcli.evaluation.evaluate import predict_logits
    from vitcli.evaluation.metrics import compute_metrics
    from vitcli.evaluation.plots import plot_confusion, plot_curves
    from vitcli.model.checkpoint import load_model

    run_dir = Path(run_dir)
    if rows:
        on = f" on {data_name}" if data_name else ""
        plot_curves(rows, run_dir / "curves.png", title=f"run {run_dir.name}{on}",
                    num_classes=len(data.class_names))
    best = run_dir / "weights" / "best.safetensors"
    if data.val_pixels is None or not best.exists():
        return
    loaded = load_model(best, device=str(device))
    pre = loaded.preprocessing
    logits = predict_logits(loaded.model, data.val_pixels, mean=pre.mean, std=pre.std,
                            device=device, precision=precision)
    m = compute_metrics(logits, data.val_labels, data.class_names)
    plot_confusion(m.confusion, data.class_names, run_dir / "confusion_matrix.png",
                   title=f"run {run_dir.name}: best model (epoch {best_epoch}) on "
                         f"{data_name or 'its validation images'}, "
                         f"val top-1 {m.top1:.1%}")
