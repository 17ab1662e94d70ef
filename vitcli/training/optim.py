"""The optimiser side of training: AdamW parameter groups (Muon for the blocks' matrices when
asked), the warm-up + cosine schedule, EMA.

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
from vitcli.training.recipe import check_optimizer, has_muon

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
                    layer_decay: float | None = None, kind: str = "adamw",
                    betas: tuple[float, float] = (0.9, 0.999)) -> Any:
    """AdamW over `param_groups`, or Muon for the blocks' matrices and AdamW for the rest.

    The `names` lists stay out of the optimiser's state.
    """
    check_optimizer(kind)
    groups = param_groups(model, weight_decay=weight_decay, layer_decay=layer_decay)
    if not groups:
        raise UsageError("nothing to train: every parameter is frozen")
    muon_groups: list[dict[str, Any]] = []
    if kind == "muon":
        if not has_muon():
            raise UsageError(f"--optimizer muon needs torch 2.9 or newer (this is "
                             f"{torch.__version__}); use --optimizer adamw")
        groups, muon_groups = split_muon(groups)
    for group in groups + muon_groups:
        group.pop("names")
        group["lr"] = lr * group["lr_scale"]
    # foreach: one fused kernel launch per group instead of one per tensor.
    adamw = torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)
    if not muon_groups:
        return adamw
    # match_rms_adamw scales each matrix's update to AdamW's size, so one lr serves both.
    muon = torch.optim.Muon(muon_groups, lr=lr, weight_decay=weight_decay,
                            adjust_lr_fn="match_rms_adamw")
    return Combined([adamw, muon])


def split_muon(groups: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Move the encoder blocks' weight matrices out of the AdamW groups into Muon groups.

    Muon orthogonalises a matrix's update, which suits the hidden layers' linear maps; the
    patch embedding, the head, norms, biases and tokens stay with AdamW (Jordan et al. 2024).
    Each Muon group keeps its source group's lr scale (layer-wise decay).
    """
    adamw, muon = [], []
    for group in groups:
        take = [p.ndim == 2 and name.startswith("blocks.")
                for name, p in zip(group["names"], group["params"])]
        for to_muon, out in ((False, adamw), (True, muon)):
            params = [p for p, t in zip(group["params"], take) if t == to_muon]
            names = [n for n, t in zip(group["names"], take) if t == to_muon]
            if params:
                out.append({**group, "params": params, "names": names})
    return adamw, muon


class Combined:
    """Several optimisers stepped as one, over disjoint parameters.

    Looks like one `torch.optim.Optimizer` to the loop: one list of param groups (which the
    schedule sets), one step, and one state dict whose parameter indices run on across the
    parts, so `flatten_optimizer` saves it like any other.
    """

    def __init__(self, parts: list[torch.optim.Optimizer]) -> None:
        self.parts = parts

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for part in self.parts for g in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for part in self.parts:
            sd = part.state_dict()
            state.update({offset + int(i): v for i, v in sd["state"].items()})
            groups += [{**g, "params": [offset + i for i in g["params"]]}
                       for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in part.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        offset = 0
        for part in self.parts:
            mine = groups[:len(part.param_groups)]
            groups = groups[len(part.param_groups):]
            count = sum(len(g["params"]) for g in part.param_groups)
            part.load_state_dict({
                "state": {int(i) - offset: v for i, v in state_dict["state"].items()
                          if offset <= int(i) < offset + count},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]}
                                 for g in mine]})
            offset += count


# ------------------------------------------------------------------------------ schedule


@dataclass
class WarmupDecay:
    """Linear warm-up from 0 to the peak lr, then a cosine or a straight line down to
    `min_ratio` of the peak.

    A pure function of the step, so resuming needs only (peak, warm-up, total, shape), and a
    time budget can set `total_steps` once it has measured the speed.
    """

    peak_lr: float
    warmup_steps: int
    total_steps: int
    min_ratio: float = 0.01
    shape: str = "cosine"  # or "linear"; runs saved before the choice existed are cosine

    def factor(self, step: int) -> float:
        """The lr multiplier for the update that step `step` (0-based) applies."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        down = 1 - progress if self.shape == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return self.min_ratio + (1 - self.min_ratio) * down

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
                "total_steps": self.total_steps, "min_ratio": self.min_ratio, "shape": self.shape}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WarmupDecay:
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
