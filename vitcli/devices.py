"""Pick the device a user asked for, or the best one available, the precision to run at,
and the CPU threads to run on.

torch is imported inside the functions that need it: the precision names are checked by
commands that must not import torch (`vit predict` with an .onnx model).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from vitcli.errors import Range, UsageError, check_choice, plural


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` → CUDA if present, then Apple MPS, else CPU; explicit names are checked."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):  # meta, xla, ...: nothing runs there
        raise UsageError(f"--device {name}: not a device vitcli runs on; use auto, cpu, "
                         "cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UsageError(f"--device {name}: this machine has {plural(count, 'CUDA GPU')}, "
                         f"cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not (
            getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: Apple MPS is not available on this machine")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for an already resolved `precision`, or `auto`'s device default.

    `auto` here keeps the old device rule (bf16 on CUDA, full precision elsewhere) for
    callers that know no model size; `choose_precision` is the per-model decision.
    """
    import torch

    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


# ---------------------------------------------------------------------------- precision

PRECISIONS = ("auto", "fp32", "bf16")
# On a CPU with bf16 matrix units, `auto` runs bf16 once one call of the model does at least
# this many multiply-accumulates (model.config.call_macs: the images of a batch, ×3 for a
# training step). Below it, casting to bf16 and starting the matrix units cost more than they save,
# whatever the width. 2 cores of a Xeon with AMX, 2026-12-01, bf16 speed ÷ fp32
# (docs/precision.md): inference 0.58-0.97× below 1 G (vit-pico, -nano, -micro at batch
# 1-128), 1.07-2.4× above it (ViT-Ti/16 at batch 1, 1.25 G: 1.5×); training vit-pico at
# 0.66 G 0.86×, at 2.6 G 1.19×, vit-nano at 5.6 G 1.46×. Measured on AMX only: CPUs with
# AVX512-BF16 alone follow the same rule unmeasured.
BF16_MIN_MACS = 10**9


@dataclass(frozen=True)
class Precision:
    """The precision a command runs at, and why (printed and recorded in run folders).

    fp32 master weights and optimiser state either way: `bf16` means bf16 autocast around
    the forward pass (matmuls and attention in bf16, norms and the loss in fp32).
    """

    name: str  # "fp32" | "bf16"
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for plain fp32."""
        import torch

        return torch.bfloat16 if self.name == "bf16" else None

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


@functools.lru_cache(maxsize=1)
def cpu_bf16_units() -> str | None:
    """This CPU's bf16 matrix units ("AMX-BF16", "AVX512-BF16"), or None when it has none.

    Read from /proc/cpuinfo's flags (Linux); elsewhere from what torch's CPU dispatch
    reports ("AMX" capability or an AMX tile check), which misses only AVX512-BF16.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return bf16_units_from_flags(line.partition(":")[2].split())
    except OSError:
        pass
    import torch

    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    amx = getattr(getattr(torch._C, "_cpu", None), "_is_amx_tile_supported", None)
    return "AMX-BF16" if "AMX" in capability or (amx is not None and amx()) else None


def bf16_units_from_flags(flags: list[str] | set[str]) -> str | None:
    """The bf16 matrix units named by /proc/cpuinfo flags: AMX first, then AVX512-BF16."""
    if "amx_bf16" in flags:
        return "AMX-BF16"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def check_precision(name: str) -> str:
    """`name` lower-cased if it is one of PRECISIONS, else a one-line UsageError."""
    return check_choice("--precision", name, PRECISIONS)


def choose_precision(requested: str, device: torch.device, *, macs: int,
                     call: str = "batch", bf16_units: str | None = "probe") -> Precision:
    """The precision to run a model at on `device`, for calls of `macs` multiply-accumulates
    each (`call` names one in the reason: "batch", batch_of(12), "training step").

    `fp32` and `bf16` are taken as asked (bf16 needs CUDA with bf16 support, or a CPU;
    MPS is refused). `auto`: bf16 on a bf16-capable CUDA GPU; on a CPU, bf16 when it has
    bf16 matrix units (AMX or AVX512-BF16) and a call does at least BF16_MIN_MACS
    multiply-accumulates (`macs`: model.config.call_macs); fp32 otherwise. `bf16_units`
    overrides the CPU probe (tests; "probe" = read this CPU).
    """
    import torch

    requested = check_precision(requested)
    units = cpu_bf16_units() if bf16_units == "probe" else bf16_units
    if requested == "fp32":
        return Precision("fp32", "asked for")
    if requested == "bf16":
        if device.type == "mps":
            raise UsageError("--precision bf16: not supported on Apple MPS; use fp32")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError("--precision bf16: this GPU has no bf16 support; use fp32")
        if device.type == "cpu" and units is None:
            return Precision("bf16", "asked for; this CPU has no bf16 units, so it is slow")
        return Precision("bf16", "asked for")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "auto: CUDA GPU with bf16")
        return Precision("fp32", "auto: this GPU has no bf16")
    if device.type != "cpu":
        return Precision("fp32", f"auto: {device.type}")
    if units is None:
        return Precision("fp32", "auto: this CPU has no bf16 matrix units")
    work = f"{gmac(macs)} GMAC a {call}"
    if macs < BF16_MIN_MACS:  # short enough for one line at 80 columns beside its batch
        return Precision("fp32", f"auto: {work}; {units} pays from {gmac(BF16_MIN_MACS)} GMAC")
    return Precision("bf16", f"auto: {units}, {work}")


def choose_for_batch(requested: str, device: torch.device, image_macs: int,
                     images: int) -> Precision:
    """choose_precision for inference on batches of `images` images, each `image_macs`
    multiply-accumulates (model.config.count_macs): the batch's work weighed and the batch
    named in the reason. What eval, predict and export's bf16 row decide with."""
    return choose_precision(requested, device, macs=image_macs * images,
                            call=batch_of(images))


def batch_of(images: int) -> str:
    """The `call` of choose_precision for inference: "batch of 12 images", so that the reason
    names the batch it weighed ("auto: 0.17 GMAC a batch of 1 image; AMX-BF16 pays from
    1 GMAC")."""
    return f"batch of {plural(images, 'image')}"


def gmac(macs: int) -> str:
    """Multiply-accumulates in billions, two significant figures below 10: 0.0068, 1.3, 18;
    never in exponent notation (a toy model's 0.00005, which `:.2g` wrote 5e-05)."""
    billions = macs / 1e9
    if billions >= 10:
        return f"{billions:,.0f}"
    if billions <= 0:
        return "0"
    text = f"{billions:.{max(1 - math.floor(math.log10(billions)), 0)}f}"  # 2 figures
    return text.rstrip("0").rstrip(".") if "." in text else text


def _matrix_tensors(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str]]:
    """(layer, "weight" | "bias") for every Linear and Conv weight and bias of `module`: the
    tensors bf16 autocast casts at every call, which bf16_weights and bf16_copy store in bf16."""
    import torch

    return [(layer, name) for layer in module.modules()
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d))
            for name in ("weight", "bias") if getattr(layer, name) is not None]


def bf16_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` for inference under bf16 autocast, as `bf16_weights` leaves it,
    that leaves `module` in fp32 (`vit predict --explain` reads it).

    Only the Linear and Conv weights and biases are new, made in bf16 straight from
    `module`'s (a deep copy first held a second fp32 model at once: ViT-B/16's memory rose
    327 MB at the peak, 154 MB this way); the other tensors (norms, tokens, position
    embeddings) are shared with `module`, which inference never writes.
    """
    import copy

    import torch

    memo: dict[int, object] = {}
    for layer, name in _matrix_tensors(module):
        tensor = getattr(layer, name)
        if id(tensor) not in memo:
            memo[id(tensor)] = torch.nn.Parameter(tensor.detach().to(torch.bfloat16),
                                                  requires_grad=tensor.requires_grad)
    for tensor in (*module.parameters(), *module.buffers()):
        memo.setdefault(id(tensor), tensor)
    return copy.deepcopy(module, memo)


def bf16_weights(module: torch.nn.Module) -> torch.nn.Module:
    """Store `module`'s Linear and Conv weights and biases in bf16, in place, for inference
    under bf16 autocast.

    Autocast rounds those tensors to bf16 at every call; stored in bf16 they are the same
    numbers (the outputs agree bit for bit), without the per-call cast, which is most of a
    small batch's cost (ViT-Ti/16 at batch 1 on 2 AMX cores: 1.21× fp32 → 1.34×). Norms,
    tokens and position embeddings stay fp32, as autocast keeps them. Run it on a model
    used under bf16 autocast only: without autocast its layers would meet fp32 inputs.
    """
    import torch

    for layer, name in _matrix_tensors(module):
        tensor = getattr(layer, name)
        tensor.data = tensor.data.to(torch.bfloat16)
    return module


# ------------------------------------------------------------------------------ threads
# torch and onnxruntime start one thread per core. When other processes use those cores,
# the threads wait for each other at every operation: on 2 shared cores with one busy, an
# export timed PyTorch fp32 at 1,408 ms a call on 2 threads and 42 ms on 1, and `vit eval`
# ran at 11 images/s instead of 57. So every command guesses the count from the cores
# actually free; `vit train` then measures candidates (vitcli.training.threads), and
# inference keeps the guess (it has no steps to measure before its work is done).


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), or None where the system has none."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """A first guess at the cores free for this process: usable cores less the load, ≥ 1."""
    cores = usable_cores() if cores is None else cores
    load = load_average() if load is None else load
    if load is None:
        return cores
    return max(1, min(cores, round(cores - load)))


# What --threads takes on every command (0 = chosen from the free cores); a machine's own
# limit (thread_limit) is checked beside it.
THREADS = Range(0, 4096)


def thread_limit() -> int:
    """The most --threads any command takes: 4 threads a CPU (at least 4). Beyond that a
    count is a typo, and torch would start thousands of threads that only wait."""
    return max((os.cpu_count() or 1) * 4, 4)


def check_threads(threads: int) -> int:
    """`threads` if it is 0 (automatic) to thread_limit(), else a one-line UsageError worded
    as `vit train`'s other ranges are (training.recipe.TrainOptions._check_ranges)."""
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise UsageError(f"--threads must be a number, not {threads!r}")
    high = thread_limit()
    if threads < 0:
        raise UsageError(f"--threads must be 0 or more, not {threads:,}")
    if threads > high:  # within --help's 0-4,096, beyond what this machine can use
        raise UsageError(f"--threads {threads:,} is more than this machine's "
                         f"{plural(os.cpu_count() or 1, 'CPU')} can use: at most {high:,} "
                         "(4 a CPU)")
    return threads


@dataclass(frozen=True)
class Threads:
    """The CPU threads torch and onnxruntime run on, and why (printed and recorded)."""

    count: int
    reason: str  # "--threads", or "1 of 2 cores free, load 1.3"

    def __str__(self) -> str:
        return f"{plural(self.count, 'thread')} ({self.reason})"


def choose_threads(requested: int = 0, cores: int | None = None) -> Threads:
    """The threads to run on: `requested` (--threads N) as asked, else the cores free of
    the `cores` this process may use (usable_cores) less the load average."""
    if check_threads(requested):
        return Threads(requested, "--threads")
    cores = usable_cores() if cores is None else cores
    load = load_average()
    guess = free_cores(cores, load)
    return Threads(guess, f"{guess} of {plural(cores, 'core')} free"
                          + (f", load {load:.1f}" if load is not None else ""))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to `count` for the block and put back after it, so that a
    library call leaves the process as it found it (0: left as they are)."""
    import torch

    previous = torch.get_num_threads()
    if count and count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
