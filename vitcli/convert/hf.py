"""Hugging Face `transformers` ViT (`ViTModel` / `ViTForImageClassification`) → timm layout.

transformers keeps query, key and value as three Linear layers; ours (and timm's) is one fused
qkv Linear whose output rows are [q; k; v], so the three weights are concatenated in that
order. Both the on-disk names (`encoder.layer.N.attention.attention.query`) and the in-memory
names of transformers 5 (`layers.N.attention.q_proj`) are understood.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from vitcli.errors import VitError
from vitcli.model.preprocess import Preprocessing

# (pattern on the name without the leading "vit.", replacement in timm's layout)
_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layers\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
]
_QKV = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.attention\.(?:attention\.)?"
                  r"(query|key|value|q_proj|k_proj|v_proj)\.(weight|bias)$")
_PART = {"query": 0, "q_proj": 0, "key": 1, "k_proj": 1, "value": 2, "v_proj": 2}
# Resample codes of PIL, as transformers' image processors store them.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def is_hf_layout(state: dict[str, Any]) -> bool:
    return any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state)


def hf_to_timm(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename a transformers ViT state dict into timm's layout; notes on what was dropped."""
    out: dict[str, Tensor] = {}
    parts: dict[tuple[int, str], list[Tensor | None]] = {}
    notes: list[str] = []
    for full_name, value in state.items():
        name = full_name.removeprefix("vit.")
        if name == "embeddings.mask_token":
            notes.append("dropped mask_token (used only for masked-image pre-training)")
            continue
        if name.startswith("pooler."):
            notes.append(f"dropped {name} (ViTModel's pooler; classification does not use it)")
            continue
        if m := _QKV.match(name):
            parts.setdefault((int(m.group(1)), m.group(3)), [None, None, None])[
                _PART[m.group(2)]] = value
            continue
        for pattern, replacement in _RENAMES:
            new, n = re.subn(pattern, replacement, name)
            if n:
                out[new] = value
                break
        else:
            out[name] = value  # unknown: config inference names it in its error
    for (block, kind), (q, k, v) in parts.items():
        if q is None or k is None or v is None:
            raise VitError(f"block {block}: query, key and value {kind} are not all present")
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([q, k, v], dim=0)  # (3D, ...)
    return out, notes


def config_fields(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """ViTConfig fields from a transformers config.json (heads and eps, not in the shapes)."""
    model_type = cfg.get("model_type", "vit")
    if model_type != "vit":
        raise VitError(f"{where}: model_type {model_type!r} is not a plain ViT "
                       "(supported: 'vit'; DeiT, BEiT, DINOv2 … are not)")
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise VitError(f"{where}: activation {act!r} is not supported (only exact 'gelu')")
    try:
        return {"num_heads": int(cfg["num_attention_heads"]),
                "layer_norm_eps": float(cfg.get("layer_norm_eps", 1e-12))}
    except (KeyError, TypeError, ValueError):
        raise VitError(f"{where}: config.json has no valid num_attention_heads") from None


def class_names(cfg: dict[str, Any], num_classes: int) -> list[str] | None:
    """Labels from id2label in output order; None when absent or only LABEL_i defaults."""
    id2label = cfg.get("id2label") or {}
    try:
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        return None
    if len(names) != num_classes or all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        return None
    return names


def preprocessing(processor: dict[str, Any] | None, image_size: int, channels: int,
                  notes: list[str], where: str = "preprocessor_config.json") -> Preprocessing:
    """Preprocessing from preprocessor_config.json, else ViTImageProcessor's defaults."""
    try:
        return _preprocessing(processor or {}, image_size, channels, processor is None, notes)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise VitError(f"{where}: unexpected values ({exc})") from None


def _side(size: Any) -> int | None:
    """The (square) side a transformers size field resizes to: legacy int, or a dict."""
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        return int(size)  # legacy feature extractors: an int meant a square (height = width)
    if isinstance(size, dict):
        side = size.get("height") or size.get("shortest_edge")
        return int(side) if side else None
    return None


def _channels(values: Any, channels: int) -> list[float]:
    values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    return values if len(values) == channels else values[:1] * channels


def _preprocessing(p: dict[str, Any], image_size: int, channels: int, absent: bool,
                   notes: list[str]) -> Preprocessing:
    mean = _channels(p.get("image_mean", 0.5), channels)
    std = _channels(p.get("image_std", 0.5), channels)
    if p.get("do_normalize") is False:
        mean, std = [0.0] * channels, [1.0] * channels
    resample = p.get("resample", 2)  # ViTImageProcessor's default: bilinear
    interpolation = _RESAMPLE.get(resample, "bicubic") if isinstance(resample, int) else "bicubic"
    crop = 1.0
    resized, cropped = _side(p.get("size")), _side(p.get("crop_size"))
    if p.get("crop_pct"):
        crop = float(p["crop_pct"])
    elif p.get("do_center_crop") and resized and cropped and cropped < resized:
        crop = cropped / resized  # e.g. DeiT: resize to 256, crop 224
    if absent:
        notes.append("no preprocessor_config.json: ViTImageProcessor defaults (mean/std 0.5)")
    elif resized and not (isinstance(p.get("size"), dict) and "shortest_edge" in p["size"]):
        notes.append("transformers squashes images to a square; vitcli resizes the shorter "
                     "side and centre-crops (same result on square images)")
    return Preprocessing(image_size=image_size, mean=tuple(mean), std=tuple(std),
                         interpolation=interpolation, crop_fraction=min(crop, 1.0),
                         color_mode="L" if channels == 1 else "RGB")
