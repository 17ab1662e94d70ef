"""What the transformers importers share: renaming into timm's layout with q, k and v fused,
the architecture fields every vision config has, and the check that the weights fit them."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from vitcli.errors import VitError
from vitcli.model.config import ViTConfig

_QKV = re.compile(r"^(?:encoder\.layers?|layers)\.(\d+)\.(?:attention|self_attn)\."
                  r"(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$")
_PART = {"query": 0, "q_proj": 0, "key": 1, "k_proj": 1, "value": 2, "v_proj": 2}
# transformers' hidden_act → ours; gelu_new/gelu_fast are the tanh approximation.
ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "quick_gelu": "quick_gelu"}


def check_shapes(state: dict[str, Tensor], config: ViTConfig, claim: str) -> None:
    """Every tensor the config's model needs, with its shape, and nothing else; or a VitError."""
    from vitcli.model.vit import VisionTransformer

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in VisionTransformer(config).state_dict().items()}
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} where {expected[k]} was expected"
             for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    problems = ([f"has no {', '.join(missing[:3])}"] if missing else []) + \
               ([f"holds {', '.join(extra[:3])} it has no place for"] if extra else []) + \
               ([f"holds {wrong[0]}"] if wrong else [])
    if problems:
        raise VitError(f"{claim} its weights do not fit: {'; '.join(problems)}")


def activation(cfg: dict[str, Any], where: str) -> str:
    """Our MLP activation for transformers' hidden_act, or a one-line refusal naming it."""
    act = cfg.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise VitError(f"{where}: MLP activation {act!r} is not supported "
                       f"({', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[act]


def rename(state: dict[str, Tensor], prefixes: tuple[str, ...], renames: list[tuple[str, str]],
           drop: dict[str, str], notes: list[str]) -> dict[str, Tensor]:
    """Strip the model prefix, drop what classification never uses, rename, fuse q/k/v."""
    out: dict[str, Tensor] = {}
    parts: dict[tuple[int, str], list[Tensor | None]] = {}
    dropped: dict[str, list[str]] = {}
    for full_name, value in state.items():
        name = full_name
        for prefix in prefixes:
            name = name.removeprefix(prefix)
        reason = next((why for pattern, why in drop.items() if re.search(pattern, name)), None)
        if reason:
            dropped.setdefault(reason, []).append(name)
            continue
        if m := _QKV.match(name):
            parts.setdefault((int(m.group(1)), m.group(3)), [None, None, None])[
                _PART[m.group(2)]] = value
            continue
        for pattern, replacement in renames:
            new, n = re.subn(pattern, replacement, name)
            if n:
                out[new] = value
                break
        else:
            out[name] = value  # unknown: check_shapes names it
    for (block, kind), (q, k, v) in sorted(parts.items()):
        if q is None or k is None or v is None:
            raise VitError(f"block {block}: query, key and value {kind} are not all present")
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([q, k, v], dim=0)  # (3D, ...)
    notes += [f"dropped {names[0]}{' …' if len(names) > 1 else ''} ({why})"
              for why, names in dropped.items()]
    return out


def common_fields(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Width, depth, heads, sizes and eps of a transformers vision config."""
    try:
        d = int(cfg["hidden_size"])
        return {"embed_dim": d, "depth": int(cfg["num_hidden_layers"]),
                "num_heads": int(cfg["num_attention_heads"]),
                "image_size": int(cfg.get("image_size", 224)),
                "patch_size": int(cfg.get("patch_size", 16)),
                "in_channels": int(cfg.get("num_channels", 3)),
                "mlp_ratio": int(cfg["intermediate_size"]) / d if "intermediate_size" in cfg
                else float(cfg.get("mlp_ratio", 4.0)),
                "layer_norm_eps": float(cfg.get("layer_norm_eps", 1e-12)),
                "qkv_bias": bool(cfg.get("qkv_bias", True)),
                "mlp_act": activation(cfg, where)}
    except (KeyError, TypeError, ValueError) as exc:
        raise VitError(f"{where}: config.json lacks a valid {exc}") from None


def num_labels(state: dict[str, Tensor], key: str = "head.weight") -> int:
    return int(state[key].shape[0]) if key in state else 0
