"""Hugging Face `transformers` vision transformers → vitcli, by the folder's `model_type`.

    vit, deit, vit_mae               this module (the ViT layout: encoder.layer.N.attention…)
    dinov2, dinov2_with_registers    hf_dinov2.py
    clip, clip_vision_model, siglip, siglip_vision_model    hf_clip.py

Every family is renamed into timm's layout (ours); query, key and value, three Linear layers
in transformers, become one fused qkv whose rows are [q; k; v]. The architecture comes from
config.json, and then every tensor's name and shape is checked against the model that config
builds: a folder whose weights are another family's is refused whole, never half-loaded.
Both the on-disk names (`encoder.layer.N.attention.attention.query`) and transformers 5's
in-memory names (`layers.N.attention.q_proj`) of the ViT layout are understood.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

import vitcli.convert.hf_clip as hf_clip
import vitcli.convert.hf_dinov2 as hf_dinov2
import vitcli.convert.hf_processor as hf_processor
from vitcli.convert.hf_common import check_shapes, common_fields, num_labels, rename
from vitcli.errors import UsageError, VitError
from vitcli.model.config import ViTConfig
from vitcli.model.preprocess import Preprocessing

# (pattern on the name without the model prefix, replacement in timm's layout)
_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.distillation_token$", "dist_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^layernorm\.", "norm."),
    (r"^(?:classifier|cls_classifier)\.", "head."),
    (r"^distillation_classifier\.", "head_dist."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layers\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
]
FAMILIES = {"vit": "ViT", "deit": "DeiT", "vit_mae": "ViT-MAE", "dinov2": "DINOv2",
            "dinov2_with_registers": "DINOv2 with registers", "clip": "CLIP",
            "clip_vision_model": "CLIP vision", "siglip": "SigLIP",
            "siglip_vision_model": "SigLIP vision"}


@dataclass
class Imported:
    """One transformers checkpoint in vitcli's terms."""

    state: dict[str, Tensor]
    config: ViTConfig
    family: str
    class_names: list[str] | None
    preprocessing: Preprocessing
    notes: list[str] = field(default_factory=list)


def is_hf_layout(state: dict[str, Any]) -> bool:
    return any(k.endswith(("embeddings.patch_embeddings.projection.weight",
                           "embeddings.patch_embedding.weight")) for k in state)


def import_folder(state: dict[str, Tensor], cfg: dict[str, Any],
                  processor: dict[str, Any] | None, where: str,
                  heads: int | None = None) -> Imported:
    """Convert a transformers checkpoint (weights, config.json, preprocessor_config.json)."""
    model_type = cfg.get("model_type", "vit")
    if model_type not in FAMILIES:
        raise VitError(f"{where}: model_type {model_type!r} is not supported; vit convert reads "
                       f"the transformers families {', '.join(FAMILIES)}")
    family = FAMILIES[model_type]
    if model_type.startswith(("clip", "siglip")):
        state, fields, default_processor, notes = hf_clip.convert(state, cfg, model_type, where)
    elif model_type.startswith("dinov2"):
        state, fields, default_processor, notes = hf_dinov2.convert(state, cfg, model_type,
                                                                    where)
    else:
        state, fields, default_processor, notes = _convert_vit(state, cfg, model_type, where)
    if heads is not None:  # --heads wins over config.json; a bad value is blamed on it
        width = fields.get("embed_dim")
        if heads <= 0 or (isinstance(width, int) and width % heads):
            raise UsageError(f"--heads {heads} does not divide the width {width}")
        fields["num_heads"] = heads
    try:
        config = ViTConfig(**fields)
    except (VitError, TypeError, ValueError) as exc:
        raise VitError(f"{where}: config.json does not describe a model vitcli can build "
                       f"({exc})") from None
    check_shapes(state, config, f"{where}: claims to be {family} ({model_type}) but")
    # The size the processor hands over: where the source interpolates its position
    # embedding (DINOv2 always does), resample it once here, as the source would each time.
    size = (hf_processor.output_size(processor, default_processor) if processor is not None
            else None) or config.image_size
    if size != config.image_size and size % config.patch_size == 0:
        state, config = _resize(state, config, size)
        notes.append(f"position embedding resampled to the processor's {size} px "
                     f"({size // config.patch_size}×{size // config.patch_size} patches, "
                     "bicubic, as transformers does on the fly)")
    processor_notes: list[str] = []
    pre = hf_processor.preprocessing(processor, config.image_size, config.in_channels,
                                     processor_notes, where.rsplit("/", 1)[0] +
                                     "/preprocessor_config.json", default_processor)
    return Imported(state, config, family, class_names(cfg, config.num_classes), pre,
                    notes + processor_notes)


def _resize(state: dict[str, Tensor], config: ViTConfig,
            size: int) -> tuple[dict[str, Tensor], ViTConfig]:
    from vitcli.model.layers import resample_pos_embed

    new = config.replace(image_size=size)
    pos = resample_pos_embed(state["pos_embed"], (new.grid_size,) * 2, (config.grid_size,) * 2,
                             config.pos_prefix_tokens, config.pos_embed_antialias)
    return {**state, "pos_embed": pos}, new


def hf_to_timm(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """A transformers ViT state dict in timm's layout; notes on what was dropped."""
    notes: list[str] = []
    return rename(state, ("vit.",), _RENAMES, _VIT_DROP, notes), notes


# ------------------------------------------------------------------- ViT, DeiT, ViT-MAE

_VIT_DROP = {r"^embeddings\.mask_token$": "used only for masked-image pre-training",
             r"^pooler\.": "the pooler (dense + tanh); classification does not use it",
             r"^decoder\.": "the MAE decoder; only the encoder is kept"}


def _convert_vit(state: dict[str, Tensor], cfg: dict[str, Any], model_type: str,
                 where: str) -> tuple[dict[str, Tensor], dict[str, Any], str, list[str]]:
    notes: list[str] = []
    prefix = {"vit": ("vit.",), "deit": ("deit.",), "vit_mae": ("vit.",)}[model_type]
    state = rename(state, prefix, _RENAMES, _VIT_DROP, notes)
    fields = common_fields(cfg, where)
    fields["num_classes"] = num_labels(state)
    processor = "ViTImageProcessor"
    if model_type == "deit":
        processor = "DeiTImageProcessor"
        if "head_dist.weight" in state or not fields["num_classes"]:
            fields["distilled"] = True  # with teacher: logits = mean of both heads
        else:
            # DeiTForImageClassification reads the class token only: the distillation token
            # is then one more token with a position, i.e. a register token.
            state["reg_token"] = state.pop("dist_token")
            fields["reg_tokens"] = 1
            notes.append("head on the class token only: the distillation token is kept as a "
                         "register token")
    if model_type == "vit_mae":
        fields["layer_norm_eps"] = float(cfg.get("layer_norm_eps", 1e-12))
        notes.append("MAE encoder without masking; features: the normalised class token")
    return state, fields, processor, notes


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
    """A ViT folder's preprocessing (kept for callers of the old name)."""
    return hf_processor.preprocessing(processor, image_size, channels, notes, where)
