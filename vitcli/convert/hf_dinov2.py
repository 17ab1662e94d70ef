"""transformers DINOv2 (`Dinov2Model`, `Dinov2ForImageClassification`) and DINOv2 with
registers (`Dinov2WithRegistersModel`, `...ForImageClassification`) → timm's layout.

DINOv2 (Oquab et al. 2023) is the ViT with layer scale; its classifier reads the class token
concatenated with the mean patch token (registers left out): pooling 'cls_mean'. A bare
backbone keeps that pooling, so `vit train --init` puts the new head where DINOv2's linear
evaluation puts it. With registers (Darcet et al. 2024) the class token has a position and
the registers none: the class token's position is added into the class token once (exact:
both are constants), and the position embedding then covers the patches only
(no_embed_class, as timm stores these models).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vitcli.convert.hf_common import common_fields, num_labels, rename
from vitcli.errors import VitError

_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.register_tokens$", "reg_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
    (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
]
_DROP = {r"^embeddings\.mask_token$": "used only for masked-image pre-training"}


def convert(state: dict[str, Tensor], cfg: dict[str, Any], model_type: str,
            where: str) -> tuple[dict[str, Tensor], dict[str, Any], str, list[str]]:
    """Renamed weights, ViTConfig fields, the default processor class and notes."""
    if cfg.get("use_swiglu_ffn"):
        raise VitError(f"{where}: the SwiGLU MLP of DINOv2-g (use_swiglu_ffn) is not supported")
    notes: list[str] = []
    prefix = "dinov2_with_registers." if model_type == "dinov2_with_registers" else "dinov2."
    state = rename(state, (prefix,), _RENAMES, _DROP, notes)
    fields = common_fields(cfg, where)
    fields["mlp_ratio"] = float(cfg.get("mlp_ratio", 4.0))  # DINOv2 has no intermediate_size
    fields["layer_norm_eps"] = float(cfg.get("layer_norm_eps", 1e-6))
    fields["init_values"] = float(cfg.get("layerscale_value", 1.0)) or 1.0
    fields["num_classes"] = num_labels(state)
    fields["pooling"] = "cls_mean"
    fields["pos_embed_antialias"] = False  # interpolate_pos_encoding: bicubic, no antialias
    registers = int(cfg.get("num_register_tokens", 0)) if model_type.endswith("registers") else 0
    if registers:
        fields.update(reg_tokens=registers, no_embed_class=True)
        pos, cls = state.get("pos_embed"), state.get("cls_token")
        if pos is not None and cls is not None and pos.ndim == 3 and cls.shape == pos[:, :1].shape:
            state["cls_token"] = cls + pos[:, :1]  # (1, 1, D): its position folded in
            state["pos_embed"] = pos[:, 1:]  # (1, N, D): patches only
    if not fields["num_classes"]:
        notes.append("no classifier: features are the class token + mean patch token "
                     "(2·D), as DINOv2's linear evaluation reads them")
    return state, fields, "BitImageProcessor", notes
