"""Pick the device a user asked for, or the best one available, and the precision to run at.

torch is imported inside the functions that need it: the precision names are checked by
commands that must not import torch (`vit predict` with an .onnx model).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from vitcli.errors import UsageError, check_choice, plural


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
# On a CPU with bf16 matrix units, auto runs bf16 from this width up: there it was measured to
# pay and to keep fp32's accuracy (docs/precision.md; ViT-Ti/16, width 192, on 2 cores of a
# Xeon with AMX: training 1.77x, evaluation 2.45x). Narrower models stay fp32, the arithmetic
# the small-data figures were measured in; `vit train` itself ran vit-pico (80) 1.2x and
# vit-nano (128) 1.6x faster in bf16 on 2026-12-01, so this threshold is due for review.
BF16_MIN_EMBED_DIM = 192


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


def choose_precision(requested: str, device: torch.device, *, embed_dim: int,
                     bf16_units: str | None = "probe") -> Precision:
    """The precision to run a model of width `embed_dim` at on `device`.

    `fp32` and `bf16` are taken as asked (bf16 needs CUDA with bf16 support, or a CPU;
    MPS is refused). `auto`: bf16 on a bf16-capable CUDA GPU; on a CPU, bf16 when it has
    bf16 matrix units (AMX or AVX512-BF16) and the model is at least BF16_MIN_EMBED_DIM wide;
    fp32 otherwise. `bf16_units` overrides the CPU probe (tests; "probe" = read this CPU).
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
    if embed_dim < BF16_MIN_EMBED_DIM:
        return Precision("fp32", f"auto: bf16 from width {BF16_MIN_EMBED_DIM} up on {units}, "
                                 f"and this model is {embed_dim} wide")
    return Precision("bf16", f"auto: {units} at width {embed_dim}")
