"""Pick the device a user asked for, or the best one available."""

from __future__ import annotations

import torch

from vitcli.errors import UsageError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` → CUDA if present, then Apple MPS, else CPU; explicit names are checked."""
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
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UsageError(f"--device {name}: this machine has {count} CUDA GPU(s), "
                         f"cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not (
            getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: Apple MPS is not available on this machine")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA (fast, no loss scaling needed); full precision elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
