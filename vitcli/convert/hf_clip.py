"""transformers CLIP (`CLIPVisionModel`, `CLIPForImageClassification`, the vision tower of
`CLIPModel`) and SigLIP (`SiglipVisionModel`, `SiglipForImageClassification`, `SiglipModel`'s
vision tower) → timm's layout.

CLIP (Radford et al. 2021): a norm before the encoder (norm_pre), no patch bias, QuickGELU.
`CLIPVisionModel`'s features are the normalised class token; `CLIPForImageClassification`
averages the patch tokens *without* the final norm and classifies them (final_norm off).
SigLIP (Zhai et al. 2023): no class token; `SiglipVisionModel`'s features come from the
attention-pool (MAP) head; `SiglipForImageClassification` averages all tokens after the final
norm and does not use the MAP head. The text tower and projections are dropped.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vitcli.convert.hf_common import common_fields, num_labels, rename

_RENAMES = [
    (r"^embeddings\.class_embedding$", "cls_token"),
    (r"^embeddings\.position_embedding\.weight$", "pos_embed"),
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^pre_layrnorm\.", "norm_pre."),
    (r"^post_layernorm\.", "norm."),
    (r"^classifier\.", "head."),
    (r"^encoder\.layers\.(\d+)\.layer_norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
    (r"^head\.probe$", "attn_pool.latent"),
    (r"^head\.attention\.out_proj\.", "attn_pool.proj."),
    (r"^head\.layernorm\.", "attn_pool.norm."),
    (r"^head\.mlp\.(fc[12])\.", r"attn_pool.mlp.\1."),
]
_DROP = {r"^(text_model|text_projection|visual_projection|logit_scale|logit_bias)\b":
         "the text tower and the projections; only the vision encoder is kept"}


def convert(state: dict[str, Tensor], cfg: dict[str, Any], model_type: str,
            where: str) -> tuple[dict[str, Tensor], dict[str, Any], str, list[str]]:
    """Renamed weights, ViTConfig fields, the default processor class and notes."""
    notes: list[str] = []
    vision = (cfg.get("vision_config") or {}) if model_type in ("clip", "siglip") else cfg
    siglip = model_type.startswith("siglip")
    state = rename(state, ("vision_model.",), _RENAMES, _DROP, notes)
    _split_in_proj(state)
    fields = common_fields({"image_size": 224, "patch_size": 32 if not siglip else 16,
                            "hidden_act": "gelu_pytorch_tanh" if siglip else "quick_gelu",
                            **vision}, where)
    fields["layer_norm_eps"] = float(vision.get("layer_norm_eps", 1e-6 if siglip else 1e-5))
    fields["num_classes"] = classes = num_labels(state)
    if "cls_token" in state:
        state["cls_token"] = state["cls_token"].reshape(1, 1, -1)  # (D,) → (1, 1, D)
    if "pos_embed" in state:
        state["pos_embed"] = state["pos_embed"].unsqueeze(0)  # (T, D) → (1, T, D)
    if siglip:
        fields.update(class_token=False, patch_bias=True)
        has_map = any(k.startswith("attn_pool.") for k in state)
        if classes and has_map:
            state = {k: v for k, v in state.items() if not k.startswith("attn_pool.")}
            notes.append("dropped the MAP head (SiglipForImageClassification averages the "
                         "tokens instead)")
        fields["pooling"] = "map" if has_map and not classes else "mean"
        return state, fields, "SiglipImageProcessor", notes
    fields.update(pre_norm=True, patch_bias="patch_embed.proj.bias" in state)
    if classes:  # CLIPForImageClassification: mean patch token, no final norm
        state.pop("norm.weight", None), state.pop("norm.bias", None)
        fields.update(pooling="mean", final_norm=False)
        notes.append("dropped post_layernorm (CLIPForImageClassification averages the patch "
                     "tokens before it)")
    return state, fields, "CLIPImageProcessor", notes


def _split_in_proj(state: dict[str, Tensor]) -> None:
    """nn.MultiheadAttention's in_proj (3D rows: q, k, v) → the MAP head's q and kv."""
    for kind in ("weight", "bias"):
        packed = state.pop(f"head.attention.in_proj_{kind}", None)
        if packed is not None:
            d = packed.shape[0] // 3
            state[f"attn_pool.q.{kind}"] = packed[:d]  # (D, ...)
            state[f"attn_pool.kv.{kind}"] = packed[d:]  # (2D, ...)
