"""timm's ViT state dict: the names are already ours, the config is read off the shapes.

Every other importer (transformers, npz) renames into this layout and then comes through
`config_from_state_dict`, so shape inference and the "not supported" checks live once, here.
"""

from __future__ import annotations

import math
import re
from typing import Any

from torch import Tensor

from vitcli.errors import UsageError, VitError
from vitcli.model.config import ViTConfig

# Heads are not in any weight shape. Width → heads as in the ViT paper (Table 1) and DeiT
# (Table 1): Ti 192/3, S 384/6, B 768/12, L 1024/16, H 1280/16.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}

# timm features our VisionTransformer does not have, found by the names that betray them.
UNSUPPORTED = [
    (r"^reg_token$", "register tokens (reg_token)"),
    (r"^fc_norm\.", "a norm after average pooling (fc_norm)"),
    (r"\.ls[12]\.", "layer scale (ls1/ls2)"),
    (r"^dist_token$|^head_dist\.", "a distillation token (DeiT distilled)"),
    (r"^norm_pre\.", "a norm before the encoder (norm_pre, CLIP style)"),
    (r"^attn_pool\.", "attention pooling (MAP head)"),
    (r"\.attn\.[qk]_norm\.", "query/key norm (q_norm/k_norm)"),
    (r"^patch_embed\.backbone\.", "a CNN stem (hybrid ViT)"),
    (r"^patch_embed\.norm\.", "a norm after the patch embedding"),
    (r"\.attn\.[qv]_bias$", "separate q/v biases (BEiT style)"),
    (r"\.mlp\.norm\.|\.mlp\.fc1_[gx]\.", "a gated or normalised MLP (SwiGLU)"),
]
_BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight",
               "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
               "mlp.fc2.weight", "mlp.fc2.bias")


def check_supported(state: dict[str, Tensor], where: str) -> None:
    """Raise a VitError naming every feature in `state` that vitcli cannot represent."""
    found: dict[str, list[str]] = {}
    for name in state:
        for pattern, feature in UNSUPPORTED:
            if re.search(pattern, name):
                found.setdefault(feature, []).append(name)
    if found:
        parts = [f"{feature} ({names[0]}{', …' if len(names) > 1 else ''})"
                 for feature, names in found.items()]
        raise VitError(f"{where}: not supported by vitcli's ViT: {'; '.join(parts)}")


def heads_for(width: int, heads: int | None, where: str) -> int:
    """The head count: the override, else the paper table by width, else a clear error."""
    if heads is not None:
        if heads <= 0 or width % heads:
            raise UsageError(f"--heads {heads} does not divide the width {width}")
        return heads
    if width in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[width]
    raise UsageError(
        f"{where}: width {width} is not a standard ViT width "
        f"({', '.join(map(str, HEADS_BY_WIDTH))}), so the number of heads is unknown "
        "(weights do not store it); give it with --heads N")


def config_from_state_dict(state: dict[str, Tensor], where: str, *, heads: int | None = None,
                           **known: Any) -> tuple[ViTConfig, list[str]]:
    """Infer the ViTConfig of a timm-layout state dict; `known` fields win over inference.

    May rewrite `state` in place (a position embedding without a class-token slot gets a
    zero slot). Returns the config and notes for the user.
    """
    check_supported(state, where)
    notes: list[str] = []
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4 or proj.shape[-1] != proj.shape[-2]:
        raise VitError(f"{where}: no square patch_embed.proj.weight (D, C, P, P); "
                       "not a ViT state dict in timm's layout")
    embed_dim, in_channels, patch_size = proj.shape[0], proj.shape[1], proj.shape[-1]
    depth = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.norm1\.", k))})
    if depth == 0:
        raise VitError(f"{where}: no encoder blocks (blocks.N.norm1) found")
    class_token = "cls_token" in state
    pos = state.get("pos_embed")
    if pos is None or pos.ndim != 3:
        raise VitError(f"{where}: no learned position embedding (pos_embed) found")
    prefix = 1 if class_token else 0
    tokens = pos.shape[1]
    if class_token and _is_square(tokens) and not _is_square(tokens - 1):
        # timm's no_embed_class: the class token gets no position, i.e. a zero one.
        state["pos_embed"] = _prepend_zero(pos)
        notes.append("class token had no position embedding (no_embed_class): zero slot added")
        tokens += 1
    grid = math.isqrt(tokens - prefix)
    if grid * grid != tokens - prefix:
        raise VitError(f"{where}: position embedding of {tokens - prefix} patch tokens is not a "
                       "square grid; only square grids are supported")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise VitError(f"{where}: no blocks.0.mlp.fc1.weight")
    head = state.get("head.weight")
    fields: dict[str, Any] = {
        "image_size": grid * patch_size, "patch_size": patch_size, "in_channels": in_channels,
        "num_classes": head.shape[0] if head is not None else 0, "embed_dim": embed_dim,
        "depth": depth,
        "mlp_ratio": fc1.shape[0] / embed_dim, "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "class_token": class_token, "pooling": "cls" if class_token else "mean",
    }
    fields.update(known)
    given = heads or known.get("num_heads")
    fields["num_heads"] = heads_for(embed_dim, given, where)
    if given is None:
        notes.append(f"{fields['num_heads']} heads: weights do not store the head count; taken "
                     f"from the ViT/DeiT table for width {embed_dim} (override with --heads)")
    config = ViTConfig(**fields)
    if config.mlp_dim != fc1.shape[0]:
        raise VitError(f"{where}: MLP width {fc1.shape[0]} cannot be written as an mlp_ratio "
                       f"of width {embed_dim}")
    _check_complete(state, config, where)
    return config, notes


def _check_complete(state: dict[str, Tensor], config: ViTConfig, where: str) -> None:
    """Every weight the config needs is present, and nothing is left over unexplained."""
    expected = {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed",
                "norm.weight", "norm.bias"}
    expected |= {"cls_token"} if config.class_token else set()
    expected |= {"head.weight", "head.bias"} if config.num_classes else set()
    for i in range(config.depth):
        expected |= {f"blocks.{i}.{k}" for k in _BLOCK_KEYS}
        expected |= {f"blocks.{i}.attn.qkv.bias"} if config.qkv_bias else set()
    missing = sorted(expected - set(state))
    extra = sorted(set(state) - expected)
    if missing:
        raise VitError(f"{where}: missing weights: {', '.join(missing[:4])}"
                       f"{' …' if len(missing) > 4 else ''}")
    if extra:
        raise VitError(f"{where}: weights vitcli's ViT has no place for: {', '.join(extra[:4])}"
                       f"{' …' if len(extra) > 4 else ''}")


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _prepend_zero(pos: Tensor) -> Tensor:
    import torch

    return torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)  # (1, 1 + N, D)


def strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Drop wrapper prefixes shared by every key: DDP's `module.`, Lightning's `model.`."""
    for prefix in ("module.", "model.", "_orig_mod."):
        while state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def is_timm_layout(state: dict[str, Any]) -> bool:
    return "patch_embed.proj.weight" in state


def timm_folder_fields(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Config fields a timm Hub folder's config.json pins down (pooling)."""
    pool = cfg.get("global_pool")
    if pool in (None, "token"):
        return {"pooling": "cls"} if pool else {}
    if pool == "avg":
        return {"pooling": "mean"}
    raise VitError(f"{where}: global_pool {pool!r} is not supported (only 'token' and 'avg')")
