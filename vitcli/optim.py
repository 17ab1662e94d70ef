"""The optimiser side of training: AdamW parameter groups, the warm-up + cosine schedule, EMA.

Kept apart from the loop so that each piece can be tested on its own and resumed exactly:
the schedule is a pure function of the step, and the EMA is plain tensors.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitcli.errors import UsageError

# ------------------------------------------------------------------------ parameter groups


def layer_id(name: str, depth: int) -> int:
    """Which layer a parameter belongs to, for layer-wise lr decay (BEiT / MAE convention).

    0 = everything before the blocks (patch embedding, class token, position embedding),
    i + 1 = block i, depth + 1 = the final norm and the head.
    """
    if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: nn.Module, *, weight_decay: float,
                 layer_decay: float | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups: no decay on norms, biases and `model.no_weight_decay()` names.

    Weight decay pulls weights towards zero; for a LayerNorm gain, a bias, the class token or
    a position embedding that is harm, not regularisation (the ViT/DeiT recipes exclude them).
    With `layer_decay`, block i trains at lr · decay^(depth + 1 - (i + 1)): layers near the
    input, which hold the most general features when fine-tuning, move least. Each group
    carries an `lr_scale` that the schedule multiplies in.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise UsageError(f"--layer-decay must be in (0, 1], not {layer_decay}")
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    depth = len(getattr(model, "blocks", []))
    groups: dict[tuple[bool, int], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen (e.g. --freeze backbone): the optimiser never sees it
        no_decay = param.ndim <= 1 or name in skip or name.endswith(".bias")
        lid = layer_id(name, depth) if layer_decay is not None else 0
        key = (no_decay, lid)
        if key not in groups:
            scale = layer_decay ** (depth + 1 - lid) if layer_decay is not None else 1.0
            groups[key] = {"params": [], "names": [], "weight_decay": 0.0 if no_decay
                           else weight_decay, "lr_scale": scale}
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float,
                    layer_decay: float | None = None,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the `names` lists stay out of the optimiser's state."""
    groups = param_groups(model, weight_decay=weight_decay, layer_decay=layer_decay)
    if not groups:
        raise UsageError("nothing to train: every parameter is frozen")
    for group in groups:
        group.pop("names")
        group["lr"] = lr * group["lr_scale"]
    # foreach: one fused kernel launch per group instead of one per tensor.
    return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


# ------------------------------------------------------------------------------ schedule


@dataclass
class WarmupCosine:
    """Linear warm-up from 0 to the peak lr, then a cosine down to `min_ratio` of the peak.

    A pure function of the step, so resuming needs only (peak, warm-up, total), and a
    time budget can set `total_steps` once it has measured the speed.
    """

    peak_lr: float
    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.01

    def factor(self, step: int) -> float:
        """The lr multiplier for the update that step `step` (0-based) applies."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def lr(self, step: int) -> float:
        return self.peak_lr * self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for `step` (times its layer-decay scale); return the peak-group lr."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def to_dict(self) -> dict[str, Any]:
        return {"peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "min_ratio": self.min_ratio}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WarmupCosine:
        return cls(**data)


def warmup_steps_for(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Warm-up length in steps, never more than a quarter of the run (short runs still decay)."""
    return min(round(warmup_epochs * steps_per_epoch), total_steps // 4)


# -------------------------------------------------------------------------------- EMA


class ModelEma:
    """An exponential moving average of the weights, updated after every optimiser step.

    The decay ramps up as (1 + t) / (10 + t) so that short runs are not dominated by the
    random initialisation; it never exceeds `decay`.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)  # ema ← d·ema + (1-d)·p
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.module.state_dict())

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        self.module.load_state_dict(tensors)
        self.updates = updates
