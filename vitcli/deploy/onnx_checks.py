"""How `vit export` proves an ONNX file right: parity with PyTorch, real data, latency.

Random inputs go through the model's own normalisation, so the comparison sees realistic
value ranges. fp32 must match PyTorch within rtol/atol at batch 1 and 8 and give the same top-1
on every real image (apart from numerical ties); int8 is measured, not required to match.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitcli.deploy.backends import TorchBackend, open_onnx
from vitcli.errors import VitError, plural

if TYPE_CHECKING:
    from vitcli.model.checkpoint import ModelFile

RTOL, ATOL = 1e-3, 1e-4  # fp32 parity, on logits
SCORE_RTOL, SCORE_ATOL = 1e-4, 1e-3  # on the unknown score (a distance, typically 5-500)
PARITY_BATCHES = (1, 8)
TIE_MARGIN = 1e-3  # top-2 logits closer than this are a tie; either answer is right


@dataclass
class Parity:
    """onnxruntime vs PyTorch on one batch of inputs."""

    batch: int
    max_abs_diff: float
    ok: bool


@dataclass
class DataCheck:
    """Both back ends on real labelled images: agreement of top-1 and each one's accuracy."""

    images: int
    description: str
    torch_accuracy: float
    onnx_accuracy: float
    agreement: float  # fp32 ONNX top-1 == PyTorch top-1
    ties: int  # disagreements on numerical ties (top-2 logits within TIE_MARGIN)
    int8_accuracy: float | None = None
    int8_agreement: float | None = None  # int8 top-1 == fp32 ONNX top-1
    bf16_accuracy: float | None = None  # PyTorch bf16 autocast, when the latency lists it
    bf16_agreement: float | None = None  # PyTorch bf16 top-1 == PyTorch fp32 top-1
    unknown_fp32: int | None = None  # images fp32 ONNX calls unknown (models with the rule)
    unknown_int8: int | None = None  # images int8 calls unknown, at the same threshold
    int8_unknown_agreement: float | None = None  # the same unknown answer from both
    # (path, reason) of each file in --data left out: not an image, unreadable, ... (the
    # reasons vitcli.data.discovery.skipped_words counts, as every command words them)
    bad_files: list[tuple[str, str]] = field(default_factory=list)


def random_inputs(mf: ModelFile, batch: int, seed: int) -> np.ndarray:
    """Random images pushed through the model's own normalisation: realistic input ranges."""
    pre = mf.preprocessing
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (batch, pre.image_size, pre.image_size, pre.channels),
                          dtype=np.uint8)  # (B, S, S, C)
    return pre.normalize(pixels)  # (B, C, S, S)


def torch_logits(mf: ModelFile, batch: np.ndarray, chunk: int = 32,
                 bf16: bool = False) -> np.ndarray:
    """PyTorch logits / T for a float32 batch (B, C, H, W), as the ONNX graph gives them.

    `bf16` runs the model under CPU bf16 autocast; parity checks always compare against fp32.
    """
    return torch_outputs(mf, batch, chunk, bf16)[0]


def torch_backend(mf: ModelFile, bf16: bool = False) -> TorchBackend:
    """`vit predict`'s PyTorch back end (backends.TorchBackend) for a loaded model file, on
    the CPU in fp32 (its default) or bf16 autocast: export checks and times the model the
    way predict runs it, one path for both."""
    import torch

    from vitcli.devices import Precision

    precision = Precision("bf16", "asked for") if bf16 else None
    return TorchBackend(path=mf.path or Path("model"), model_file=mf,
                        device=torch.device("cpu"), precision=precision)


def torch_outputs(mf: ModelFile, batch: np.ndarray, chunk: int = 32,
                  bf16: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """PyTorch logits / T (B, K) and unknown scores (B,) or None, in chunks to bound memory."""
    backend = torch_backend(mf, bf16)
    parts = [backend.outputs(batch[i:i + chunk]) for i in range(0, len(batch), chunk)]
    logits = np.concatenate([p[0] for p in parts])
    scores = [p[1] for p in parts if p[1] is not None]
    return logits, (np.concatenate(scores) if scores else None)


def verify_parity(mf: ModelFile, path: Path, fixed: int | None,
                  threads: int = 0) -> list[Parity]:
    """Compare onnxruntime (on `threads` intra-op threads) and PyTorch logits at batch 1
    and 8; raise if they differ.

    A fixed-batch graph is also checked at its own size N; at 1 and 8 it runs the way
    `vit predict` runs it (chunks of N, the last one padded), so that path is verified too.
    """
    backend = open_onnx(path, threads=threads)
    checks = []
    sizes = sorted({*PARITY_BATCHES, *((fixed,) if fixed else ())})
    for i, n in enumerate(sizes):
        x = random_inputs(mf, n, seed=i)
        ref, got = torch_logits(mf, x), backend.logits(x)
        diff = float(np.abs(ref - got).max())
        ok = got.shape == ref.shape and bool(np.allclose(got, ref, rtol=RTOL, atol=ATOL))
        ref_score, got_score = (torch_outputs(mf, x)[1], backend.outputs(x)[1]) \
            if mf.ood is not None else (None, None)
        if (ref_score is None) != (got_score is None):
            raise VitError("the ONNX graph's unknown-score output does not match the model "
                           "file's; nothing was written")
        if ref_score is not None and not np.allclose(got_score, ref_score, rtol=SCORE_RTOL,
                                                     atol=SCORE_ATOL):
            delta = float(np.abs(got_score - ref_score).max())
            raise VitError(f"ONNX unknown score differs from PyTorch at batch {n} (max |Δ| "
                           f"{delta:.2e}); nothing was written")
        checks.append(Parity(batch=n, max_abs_diff=diff, ok=ok))
        if not ok:
            raise VitError(f"ONNX output differs from PyTorch at batch {n} (max |Δlogit| "
                           f"{diff:.2e} > rtol {RTOL:g}, atol {ATOL:g}); nothing was written")
    return checks


# ------------------------------------------------------------------------- real data


@dataclass
class Labelled:
    """Preprocessed labelled images, with labels in the model's class order."""

    inputs: np.ndarray  # float32 (N, C, S, S)
    labels: np.ndarray  # int64 (N,)
    description: str
    bad_files: list[tuple[str, str]]  # (path, reason) of each file left out


def load_labelled(data: str | Path, mf: ModelFile, say: Callable[[str], None]) -> Labelled:
    """Read --data with the model's preprocessing, mapping its classes onto the model's."""
    from vitcli.data.image_set import load_eval_data
    from vitcli.evaluation.evaluate import map_labels

    say(f"reading {data}")
    images, bad = load_eval_data(data, preprocessing=mf.preprocessing)
    labels = map_labels(images.class_names, mf.class_names, images.labels, data=f"--data {data}")
    inputs = mf.preprocessing.normalize(images.pixels)  # (N, C, S, S)
    return Labelled(inputs=inputs, labels=labels, description=images.description,
                    bad_files=list(bad))


def compare_on_data(mf: ModelFile, path: Path, data: Labelled, threads: int = 0,
                    bf16: bool = False) -> DataCheck:
    """Top-1 of PyTorch and fp32 onnxruntime (on `threads` intra-op threads) on real images;
    raise on a real disagreement. `bf16`: PyTorch bf16 autocast's accuracy and agreement
    with fp32 too (measured, not required to match), for the row the latency table lists."""
    ref = torch_logits(mf, data.inputs)
    got = open_onnx(path, threads=threads).logits(data.inputs)
    differ = ref.argmax(1) != got.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.zeros((len(ref), 2))
    tie = (top2[:, 1] - top2[:, 0]) < TIE_MARGIN  # (N,)
    real = int((differ & ~tie).sum())
    if real:
        raise VitError(f"ONNX and PyTorch disagree on {real:,} of {plural(len(ref), 'image')} in --data "
                       "(fp32 must agree on every image); nothing was written")
    check = DataCheck(images=len(ref), description=data.description,
                      torch_accuracy=float((ref.argmax(1) == data.labels).mean()),
                      onnx_accuracy=float((got.argmax(1) == data.labels).mean()),
                      agreement=float((~differ).mean()), ties=int(differ.sum()),
                      bad_files=data.bad_files)
    if bf16:
        top1 = torch_logits(mf, data.inputs, bf16=True).argmax(1)
        check.bf16_accuracy = float((top1 == data.labels).mean())
        check.bf16_agreement = float((top1 == ref.argmax(1)).mean())
    return check


REFERENCE = "pytorch"  # PyTorch fp32 eager: what every speed-up in the table is over


@dataclass
class Latency:
    """Batch-1 latency of each back end, timed as `vit predict` runs it (median ms)."""

    ms: dict[str, float]  # "pytorch", "pytorch bf16", "onnx fp32", "onnx int8" → median ms
    runs: dict[str, int]  # timed runs behind each median (after a warm-up)
    threads: int  # PyTorch's and onnxruntime's intra-op threads, the same for both
    threads_reason: str = ""  # why that many (devices.choose_threads), "" when not chosen
    bf16: str | None = None  # why the bf16 row is listed ("asked for", auto's choice) or
    # left out (auto runs this model in fp32 here, and why)
    bf16_listed: bool = False
    batch: int = 1  # images a call: 1, or a fixed-batch graph's N (every back end the same)

    def speedup(self, name: str) -> float:
        """PyTorch fp32 eager's latency over `name`'s: above 1 is faster than the reference."""
        return self.ms[REFERENCE] / self.ms[name]


def measure_latency(mf: ModelFile, fp32_path: Path, int8_path: Path | None, fixed: int | None,
                    runs: int = 20, bf16: bool = False, bf16_why: str | None = None,
                    threads: int | None = None, threads_reason: str = "") -> Latency:
    """Median batch-1 latency (batch N for a graph fixed at N) of PyTorch fp32 eager (the
    reference), PyTorch bf16 autocast when `bf16`, fp32 ONNX and (if written) int8 ONNX,
    each on `threads` intra-op threads (default: PyTorch's own count, given to onnxruntime
    too; `threads_reason` says why: devices.choose_threads). On every core of a machine
    whose other work held one, the table once said PyTorch fp32 took 1,408 ms a call (42 ms
    on the free core) and made ONNX look 25.61× faster.

    PyTorch runs through `vit predict`'s back end (backends.TorchBackend, `torch_backend`):
    the reference is what a user of predict gets in fp32, not a second way to run the model.
    """
    import torch

    from vitcli.devices import torch_threads

    count = threads or torch.get_num_threads()
    with torch_threads(count):
        x = random_inputs(mf, fixed or 1, seed=1)
        runners: dict[str, Callable[[], object]] = {}
        fp32_torch = torch_backend(mf)
        runners[REFERENCE] = lambda: fp32_torch.logits(x)
        if bf16:
            bf16_torch = torch_backend(mf, bf16=True)
            runners["pytorch bf16"] = lambda: bf16_torch.logits(x)
        fp32 = open_onnx(fp32_path, threads=count)
        runners["onnx fp32"] = lambda: fp32.logits(x)
        if int8_path:
            int8 = open_onnx(int8_path, threads=count)
            runners["onnx int8"] = lambda: int8.logits(x)
        timed = {name: time_runs(run, runs) for name, run in runners.items()}
    return Latency(ms={name: 1000 * float(np.median(t)) for name, t in timed.items()},
                   runs={name: len(t) for name, t in timed.items()}, threads=count,
                   threads_reason=threads_reason,
                   bf16=bf16_why, bf16_listed=bf16, batch=len(x))


WARMUP_MAX = 10  # calls at most before median_seconds starts timing


def median_seconds(run: Callable[[], object], runs: int, warmup: int = 2,
                   budget_s: float = 2.0) -> float:
    """Median wall time of `run()` over `time_runs`' timed calls."""
    return float(np.median(time_runs(run, runs, warmup, budget_s)))


def time_runs(run: Callable[[], object], runs: int, warmup: int = 2,
              budget_s: float = 2.0) -> list[float]:
    """Wall times (s) of up to `runs` calls of `run()` after a warm-up (first calls allocate
    and plan).

    The warm-up lasts at least `warmup` calls and goes on (up to WARMUP_MAX) while a call
    still runs more than twice as fast as the one before: bf16 autocast on the CPU builds
    its kernels over the first few calls (an export once listed 360 ms for 3.5). Stops early
    once `budget_s` is spent (at least 3 timed runs), so a slow model or a busy machine
    cannot make export crawl.
    """
    before = math.inf
    for done in range(1, WARMUP_MAX + 1):
        start = time.perf_counter()
        run()
        took = time.perf_counter() - start
        if done >= warmup and took > before / 2:
            break
        before = took
    times: list[float] = []
    while len(times) < runs and (len(times) < 3 or sum(times) < budget_s):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times
