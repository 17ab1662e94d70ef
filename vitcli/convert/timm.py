"""timm's ViT state dict: the names are already ours, the config is read off the shapes.

Every other importer (transformers, npz) renames into this layout and then comes through
`config_from_state_dict`, so shape inference and the "not supported" checks live once, here.
"""

from __future__ import annotations

import math
import re
from typing import Any

from torch import Tensor

from vitcli.errors import UsageError, VitError, plural
from vitcli.model.config import ViTConfig
from vitcli.model.preprocess import Preprocessing

# Heads are not in any weight shape. Width → heads as in the ViT paper (Table 1) and DeiT
# (Table 1): Ti 192/3, S 384/6, B 768/12, L 1024/16, H 1280/16.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}

# timm features our VisionTransformer does not have, found by the names that betray them.
UNSUPPORTED = [
    (r"relative_position_bias_table|relative_position_index|\.rel_pos",
     "relative position bias (BEiT)"),
    (r"(^|\.)rope\.|freqs_(cos|sin)", "rotary position embeddings (EVA, RoPE ViTs)"),
    (r"\.mlp\.fc1_[gx]\.|\.mlp\.w12\.|\.mlp\.w3\.", "a gated MLP (SwiGLU)"),
    (r"\.mlp\.norm\.", "a norm inside the MLP (scale_mlp_norm)"),
    (r"^patch_embed\.backbone\.", "a CNN stem (hybrid ViT)"),
    (r"^patch_embed\.norm\.", "a norm after the patch embedding"),
    (r"\.attn\.[qv]_bias$", "separate q/v biases (BEiT style)"),
    (r"\.attn\.norm\.", "a norm after attention (scale_attn_norm)"),
    (r"^head\.(fc|norm)\.|^head\.\d+\.", "a multi-layer classification head"),
]
# Architecture names that announce a feature the weights may not show by name.
UNSUPPORTED_ARCHITECTURES = [
    (r"^eva|_rope|rope_", "rotary position embeddings (EVA, RoPE ViTs)"),
    (r"^beit", "relative position bias (BEiT)"),
    (r"swiglu", "a gated MLP (SwiGLU)"),
    (r"^vit_.*_(resnet|r\d+|hybrid)|^vit_.*_s16_|^vitamin", "a CNN stem (hybrid ViT)"),
]
_BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight",
               "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
               "mlp.fc2.weight", "mlp.fc2.bias")
CLIP_EPS = 1e-5  # timm's CLIP towers: LayerNorm(eps=1e-5) (vision_transformer.py, *_clip_*)


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


def heads_for(width: int, heads: int | None, where: str, source: str = "--heads") -> int:
    """The head count: the override, else the paper table by width, else a clear error.

    `source` names where `heads` came from (the option, or a config file), so that a bad
    value is blamed on the place that holds it.
    """
    if heads is not None:
        if isinstance(heads, bool) or not isinstance(heads, int) or heads <= 0 \
                or width % heads:
            message = f"{source} {heads!r} does not divide the width {width}"
            raise (UsageError(message) if source == "--heads" else VitError(message))
        return heads
    if width in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[width]
    raise UsageError(
        f"{where}: width {width} is not a standard ViT width "
        f"({', '.join(map(str, HEADS_BY_WIDTH))}), so the number of heads is unknown "
        "(weights do not store it); give it with --heads N")


def fields_from_state(state: dict[str, Tensor], where: str) -> tuple[dict[str, Any], list[str]]:
    """The config fields a timm-layout state dict shows by its names and shapes.

    Names: cls_token, dist_token (+ head_dist), reg_token (1, R, D), blocks.N.ls1.gamma
    (layer scale), norm_pre (CLIP), fc_norm, attn_pool (MAP head), attn.q_norm; no
    patch_embed.proj.bias (CLIP); no norm (a head straight on the tokens). Shapes: width,
    channels and patch from the patch kernel, depth, MLP ratio, the grid from the position
    embedding, and whether it has slots for the prefix tokens (no_embed_class when not).
    """
    notes: list[str] = []
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4 or proj.shape[-1] != proj.shape[-2]:
        raise VitError(f"{where}: no square patch_embed.proj.weight (D, C, P, P); "
                       "not a ViT state dict in timm's layout")
    embed_dim, in_channels, patch_size = proj.shape[0], proj.shape[1], proj.shape[-1]
    depth = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.norm1\.", k))})
    if depth == 0:
        raise VitError(f"{where}: no encoder blocks (blocks.N.norm1) found")
    class_token, distilled = "cls_token" in state, "dist_token" in state
    reg = state.get("reg_token")
    reg_tokens = int(reg.shape[1]) if reg is not None and reg.ndim == 3 else 0
    prefix = int(class_token) + int(distilled) + reg_tokens
    pos = state.get("pos_embed")
    if pos is None or pos.ndim != 3:
        raise VitError(f"{where}: no learned position embedding (pos_embed) found")
    tokens = pos.shape[1]
    no_embed_class = False
    if not _is_square(tokens - prefix):
        if prefix and _is_square(tokens):
            # timm's no_embed_class: the prefix tokens get no position (DeiT III, DINOv2 with
            # registers, as timm converts it).
            no_embed_class = True
            notes.append("the class/register tokens have no position embedding "
                         "(no_embed_class)")
        else:
            raise VitError(f"{where}: position embedding of {tokens} tokens is not a square "
                           f"grid after {plural(prefix, 'prefix token')}; only square grids are "
                           "supported")
    grid = math.isqrt(tokens - (0 if no_embed_class else prefix))
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise VitError(f"{where}: no blocks.0.mlp.fc1.weight")
    head = state.get("head.weight")
    fc_norm = "fc_norm.weight" in state
    fields: dict[str, Any] = {
        "image_size": grid * patch_size, "patch_size": patch_size, "in_channels": in_channels,
        "num_classes": head.shape[0] if head is not None else 0, "embed_dim": embed_dim,
        "depth": depth, "mlp_ratio": fc1.shape[0] / embed_dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state, "class_token": class_token,
        "distilled": distilled, "reg_tokens": reg_tokens, "no_embed_class": no_embed_class,
        "patch_bias": "patch_embed.proj.bias" in state, "pre_norm": "norm_pre.weight" in state,
        "init_values": 1e-5 if "blocks.0.ls1.gamma" in state else 0.0,  # γ itself is loaded
        "qk_norm": "blocks.0.attn.q_norm.weight" in state, "fc_norm": fc_norm,
        "final_norm": fc_norm or "norm.weight" in state,
    }
    if "attn_pool.latent" in state:
        fields["pooling"] = "map"
    elif head is not None and head.ndim == 2 and head.shape[1] == 2 * embed_dim:
        fields["pooling"] = "cls_mean"  # DINOv2's classifier: class token + mean patch token
    else:
        fields["pooling"] = "cls" if class_token else "mean"
    return fields, notes


def config_from_state_dict(state: dict[str, Tensor], where: str, *, heads: int | None = None,
                           claim: str | None = None,
                           **known: Any) -> tuple[ViTConfig, list[str]]:
    """Infer the ViTConfig of a timm-layout state dict; `known` fields win over inference.

    Then every weight is checked against the model that config builds (names and shapes), so
    a file is loaded whole or refused in one line, never half-loaded. `claim` names what the
    source's config says the weights are (e.g. "config.json: vit_small_patch14_dinov2"), for
    that line.
    """
    check_supported(state, where)
    fields, notes = fields_from_state(state, where)
    embed_dim = fields["embed_dim"]
    fields.update(known)
    given = heads if heads is not None else known.get("num_heads")
    source = ("--heads" if heads is not None
              else f"num_heads (from the config.json beside {where})")
    fields["num_heads"] = heads_for(embed_dim, given, where, source)
    if given is None:
        notes.append(f"{fields['num_heads']} heads: weights do not store the head count; taken "
                     f"from the ViT/DeiT table for width {embed_dim} (override with --heads)")
    try:
        config = ViTConfig(**fields)
    except UsageError as exc:
        said = f" ({claim})" if claim else ""
        raise VitError(f"{where}: these weights{said} describe an impossible ViT ({exc})") \
            from None
    fc1 = state["blocks.0.mlp.fc1.weight"]
    if config.mlp_dim != fc1.shape[0]:
        raise VitError(f"{where}: MLP width {fc1.shape[0]} cannot be written as an mlp_ratio "
                       f"of width {embed_dim}")
    check_fits(state, config, where, claim)
    return config, notes


def describe(config: ViTConfig) -> str:
    """The family features of a config, in words: 'ViT with layer scale, 4 registers'."""
    parts = [name for name, on in (
        ("layer scale", config.init_values > 0),
        (f"{config.reg_tokens} registers", config.reg_tokens),
        ("a distillation token", config.distilled), ("norm_pre", config.pre_norm),
        ("a MAP head", config.pooling == "map"), ("fc_norm", config.fc_norm),
        ("q/k norm", config.qk_norm), ("no class token", not config.class_token),
        ("no patch bias", not config.patch_bias)) if on]
    return "a plain ViT" if not parts else "a ViT with " + ", ".join(parts)


def check_fits(state: dict[str, Tensor], config: ViTConfig, where: str,
               claim: str | None = None) -> None:
    """Every weight the config's model has is in `state` with its shape, and nothing else is:
    the model is built on the meta device (no memory), so this costs nothing."""
    import torch

    from vitcli.model.vit import VisionTransformer

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in VisionTransformer(config).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state)
                   if tuple(state[k].shape) != expected[k])
    what = describe(config) + (f" as {claim} says" if claim else "")
    if missing:
        raise VitError(f"{where}: missing weights for {what}: {', '.join(missing[:4])}"
                       f"{' …' if len(missing) > 4 else ''}")
    if extra:
        raise VitError(f"{where}: weights vitcli's ViT has no place for: {', '.join(extra[:4])}"
                       f"{' …' if len(extra) > 4 else ''}")
    if wrong:
        k = wrong[0]
        raise VitError(f"{where}: {k} has shape {tuple(state[k].shape)}, {what} needs "
                       f"{expected[k]}{f' ({len(wrong)} such weights)' if len(wrong) > 1 else ''}")


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Drop wrapper prefixes shared by every key: DDP's `module.`, Lightning's `model.`."""
    for prefix in ("module.", "model.", "_orig_mod."):
        while state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def is_timm_layout(state: dict[str, Any]) -> bool:
    return "patch_embed.proj.weight" in state


# timm ViTs whose MLP uses the tanh approximation of GELU (act_layer='gelu_tanh'): every one
# registered in timm/models/vision_transformer.py at commit aa4b5850 (the SigLIP 2 towers);
# the first SigLIP towers (vit_base_patch16_siglip_224, ...) use the exact GELU.
GELU_TANH_ARCHITECTURES = frozenset(
    f"vit_{size}_siglip{gap}_{res}" for gap in ("", "_gap") for size, res in (
        ("base_patch32", 256), ("large_patch16", 512), ("so400m_patch16", 256),
        ("so400m_patch16", 384), ("so400m_patch16", 512), ("giantopt_patch16", 256),
        ("giantopt_patch16", 384)))
_POOLS = {"token": "cls", "avg": "mean", "map": "map"}
# model_args keys of a timm config.json that change nothing vitcli computes from the weights.
_IGNORED_ARGS = {"img_size", "num_classes", "dynamic_img_size", "dynamic_img_pad",
                 "drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate",
                 "drop_path_rate", "patch_drop_rate", "weight_init", "fix_init"}
_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}


def timm_folder_fields(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Config fields a timm Hub folder's config.json pins down, from its architecture name,
    global_pool and model_args, as timm's vision_transformer.py / deit.py define them.

    Structural claims (layer scale, registers, distillation, CLIP's norm_pre, SigLIP's MAP
    head) are returned too: the weights are then checked against them, so a file that names
    one family and holds another's shapes is refused rather than half-loaded. What the weights
    cannot show is taken from here only: LayerNorm eps (1e-5 in timm's CLIP towers) and the
    MLP activation (quick_gelu, gelu_tanh).
    """
    arch = str(cfg.get("architecture") or "")
    for pattern, feature in UNSUPPORTED_ARCHITECTURES:
        if re.search(pattern, arch):
            raise VitError(f"{where}: {arch} has {feature}, which vitcli's ViT does not support")
    if arch and not arch.startswith(("vit_", "deit_", "deit3_")):
        raise VitError(f"{where}: config.json names {arch!r}, not a timm ViT (vit_*, deit_*, "
                       "deit3_*)")
    fields: dict[str, Any] = {}
    if "_clip_" in arch:  # timm: pre_norm=True (so no patch bias), LayerNorm eps 1e-5
        fields.update(pre_norm=True, patch_bias=False, layer_norm_eps=CLIP_EPS)
    if "quickgelu" in arch:
        fields["mlp_act"] = "quick_gelu"
    if arch in GELU_TANH_ARCHITECTURES:
        fields["mlp_act"] = "gelu_tanh"
    if "dinov2" in arch or arch.startswith("deit3_"):
        fields["init_values"] = 1e-5  # layer scale; γ itself comes from the weights
    if arch.startswith("deit3_"):
        fields["no_embed_class"] = True
    if (m := re.search(r"_reg(\d+)", arch)):
        fields["reg_tokens"] = int(m.group(1))
    if arch.startswith("deit_") and "distilled" in arch:
        fields["distilled"] = True
    if "siglip" in arch:
        fields.update(class_token=False, pooling="mean" if "_gap" in arch else "map")
    args = dict(cfg.get("model_args") or {})
    pool = args.pop("global_pool", cfg.get("global_pool"))
    if pool:
        if pool not in _POOLS:
            raise VitError(f"{where}: global_pool {pool!r} is not supported (only "
                           f"{', '.join(map(repr, _POOLS))})")
        fields["pooling"] = _POOLS[pool]
    for key, value in args.items():
        if key in _IGNORED_ARGS:
            continue
        if key == "act_layer" and value in _ACTIVATIONS:
            fields["mlp_act"] = _ACTIVATIONS[value]
        elif key in ("class_token", "no_embed_class", "pre_norm", "qk_norm", "fc_norm") \
                and isinstance(value, bool):
            fields[key] = value
        elif key in ("reg_tokens", "num_heads") and isinstance(value, int):
            fields[key] = value
        elif key == "init_values" and isinstance(value, (int, float)):
            fields[key] = float(value or 0.0)
        else:
            raise VitError(f"{where}: config.json model_args {key}={value!r} is not supported "
                           "by vitcli's ViT")
    return fields


DEFAULT_CROP_PCT = 0.875  # timm.data.constants; a pretrained_cfg without crop_pct gets it


def timm_preprocessing(pcfg: dict[str, Any], config: ViTConfig, where: str,
                       notes: list[str]) -> Preprocessing:
    """timm's eval transform for a pretrained_cfg, as vitcli's Preprocessing.

    timm (data/transforms_factory.py, transforms_imagenet_eval): scale = floor(size /
    crop_pct); crop_mode 'center' resizes the shorter side to it (torchvision: the longer side
    truncated), 'squash' both sides; then the centre crop at round((h - size) / 2), x / 255,
    (x - mean) / std; interpolation from the cfg. 'border' (pad to a square) is refused.
    """
    from vitcli.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, Preprocessing

    if not pcfg:
        notes.append("no timm pretrained_cfg: timm's defaults (ImageNet mean/std, bicubic, "
                     "crop_pct 0.875)")
    size = config.image_size
    input_size = pcfg.get("input_size")
    if input_size:
        if len(input_size) != 3 or input_size[1] != input_size[2]:
            raise VitError(f"{where}: pretrained_cfg input_size {input_size} is not square; "
                           "vitcli's models take square inputs")
        size = int(input_size[-1])
        if size != config.image_size:
            notes.append(f"pretrained_cfg input_size {size} px, position embedding for "
                         f"{config.image_size} px: resampled for the {size}-px grid at run time")
    crop_pct = float(pcfg.get("crop_pct") or DEFAULT_CROP_PCT)
    mode = pcfg.get("crop_mode") or "center"
    if mode not in ("center", "squash"):
        raise VitError(f"{where}: pretrained_cfg crop_mode {mode!r} is not supported (only "
                       "'center' and 'squash')")
    interpolation = pcfg.get("interpolation") or "bicubic"
    if interpolation not in INTERPOLATIONS:
        raise VitError(f"{where}: pretrained_cfg interpolation {interpolation!r} is not "
                       f"supported ({', '.join(INTERPOLATIONS)})")
    c = config.in_channels
    mean, std = tuple(pcfg.get("mean") or IMAGENET_MEAN), tuple(pcfg.get("std") or IMAGENET_STD)
    return Preprocessing(
        image_size=size, mean=mean[:c], std=std[:c], interpolation=interpolation,
        crop_fraction=min(crop_pct, 1.0), color_mode="L" if c == 1 else "RGB",
        resize_mode="squash" if mode == "squash" else "shorter",
        resize_size=max(size, math.floor(size / crop_pct)), convention="torchvision")
