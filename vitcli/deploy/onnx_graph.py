"""The model as ONNX export sees it: the same maths, arranged for a faster graph.

Three rewrites, all on a copy of the model (the weights are the same tensors' values):

- Every linear layer runs on the flattened tokens as one `addmm`, which exports as one
  `Gemm` with the bias inside. `nn.Linear` on (B, N, D) exports as MatMul plus a separate
  bias Add, a second pass over every activation: on onnxruntime's CPU back end that Add
  was most of what made the fp32 graph slower than PyTorch at batch 32.
- For `vit export --int8` only, each standard attention block's qkv projection and attention
  core become one custom torch op that the exporter writes as onnxruntime's
  `com.microsoft.Attention`. Dynamic quantization turns that node into `QAttention` (int8
  qkv weights and the attention core in one kernel), which the standard ONNX attention graph
  (Reshape, Transpose, MatMul, Softmax) never becomes. That graph runs on onnxruntime only,
  so the fp32 `model.onnx` keeps standard ONNX. Blocks with locality self-attention keep
  their ordinary graph.
- When the head reads the class (and distillation) token only, the last block runs for
  those tokens only (`HeadTokensBlock`): their attention over all the keys, then their MLP.
  Nothing after the last attention mixes tokens, so the outputs are the same while about
  one block's work in twelve goes (timm and transformers compute it for every token).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitcli.model.vit import Attention, Block

CONTRIB_DOMAIN = "com.microsoft"


@torch.library.custom_op("vitcli::packed_attention", mutates_args=())
def packed_attention(x: Tensor, weight: Tensor, bias: Tensor, num_heads: int) -> Tensor:
    """What com.microsoft.Attention computes: x (B, N, D) · weight (D, 3D) + bias → MSA."""
    B, N, D = x.shape
    qkv = (x @ weight + bias).reshape(B, N, 3, num_heads, D // num_heads)  # (B, N, 3, nh, hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, nh, N, hd)
    y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hd)
    return y.transpose(1, 2).reshape(B, N, D)  # (B, N, D): heads concatenated


@packed_attention.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor, num_heads: int) -> Tensor:
    return torch.empty_like(x)


class GemmLinear(nn.Linear):
    """`nn.Linear` on the flattened tokens: exports as one Gemm with its bias inside."""

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return F.linear(x, self.weight)
        y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight.t())  # (B·N, out)
        return y.reshape(*x.shape[:-1], self.out_features)  # (B, N, out)


class PackedAttention(nn.Module):
    """Export-time stand-in for `Attention`: the same maths as one op, then the projection."""

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        D = attn.proj.in_features
        bias = attn.qkv.bias if attn.qkv.bias is not None else torch.zeros(3 * D)
        # com.microsoft.Attention wants the qkv weight as (D, 3D): q, k, v blocks side by side
        self.register_buffer("weight", attn.qkv.weight.detach().t().contiguous())  # (D, 3D)
        self.register_buffer("bias", bias.detach().clone())  # (3D,)
        self.num_heads = attn.num_heads
        self.proj = attn.proj

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, None]:
        y = torch.ops.vitcli.packed_attention(x, self.weight, self.bias, self.num_heads)
        return self.proj(y), None


class HeadTokensBlock(nn.Module):
    """Export-time stand-in for the last `Block` when the head reads its first tokens only.

    x (B, T, D) → (B, keep, D): the first `keep` tokens (class, distillation) after the
    block, the same values `Block` gives them. Their queries attend over all T keys; the
    other T - keep tokens' attention and MLP, which nothing reads, are not computed.
    """

    def __init__(self, block: Block, keep: int) -> None:
        super().__init__()
        attn = block.attn
        D = attn.proj.in_features
        self.keep, self.num_heads, self.head_dim = keep, attn.num_heads, attn.head_dim
        self.norm1, self.ls1, self.norm2, self.mlp, self.ls2 = (
            block.norm1, block.ls1, block.norm2, block.mlp, block.ls2)
        self.q_norm, self.k_norm, self.proj = attn.q_norm, attn.k_norm, attn.proj
        self.logit_scale = attn.logit_scale if attn.locality else None
        # the fused qkv weight (3D, D) split into a query part and a key/value part, as two
        # linears: int8 quantization finds each weight as an initializer
        weight, bias = attn.qkv.weight.detach(), attn.qkv.bias
        self.q = _linear(weight[:D], None if bias is None else bias.detach()[:D])
        self.kv = _linear(weight[D:], None if bias is None else bias.detach()[D:])

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, None]:
        B, T, D = x.shape
        nh, hd, keep = self.num_heads, self.head_dim, self.keep
        h = self.norm1(x)  # (B, T, D)
        q = self.q(h[:, :keep]).reshape(B, keep, nh, hd).transpose(1, 2)  # (B, nh, keep, hd)
        kv = self.kv(h).reshape(B, T, 2, nh, hd)  # (B, T, 2, nh, hd)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 × (B, nh, T, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        mask = None
        if self.logit_scale is not None:  # locality self-attention, as Attention.forward
            q = q * (self.logit_scale.exp() / hd**-0.5)
            mask = ~torch.eye(keep, T, dtype=torch.bool, device=x.device)  # not itself
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, keep, hd)
        y = y.transpose(1, 2).reshape(B, keep, D)  # (B, keep, D): heads concatenated
        x = x[:, :keep] + self.ls1(self.proj(y))  # (B, keep, D)
        return x + self.ls2(self.mlp(self.norm2(x))), None


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def head_tokens(model: nn.Module) -> int | None:
    """How many leading tokens everything after the last block reads, or None if all.

    The class token alone for class-token pooling, and the distillation token beside it
    (vitcli.model.vit.forward_head; the unknown score's features in vitcli.model.outputs
    are the same tokens). Mean and attention pooling read every token.
    """
    config = getattr(model, "config", None)
    if config is None or not getattr(model, "blocks", None) or config.pooling != "cls":
        return None
    if not config.class_token:
        return None
    return 2 if config.distilled else 1


def export_copy(model: nn.Module, fused_attention: bool = False) -> tuple[nn.Module, int]:
    """A copy of the model arranged for export; and how many attention blocks were fused."""
    model = copy.deepcopy(model).eval()
    keep = head_tokens(model)
    if keep is not None and type(model.blocks[-1]) is Block:
        model.blocks[-1] = HeadTokensBlock(model.blocks[-1], keep)
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = GemmLinear  # same parameters, another forward
    packed = 0
    for block in getattr(model, "blocks", []) if fused_attention else []:
        if (isinstance(block, Block) and isinstance(block.attn, Attention)
                and not block.attn.locality
                and not block.attn.qk_norm):  # the fused op has no place for q/k norms
            block.attn = PackedAttention(block.attn)
            packed += 1
    return model, packed


@contextmanager
def _attention_schema() -> Iterator[None]:
    """Declare com.microsoft.Attention to onnx for the length of one export.

    onnxscript builds nodes from a schema, and onnxruntime's contrib schemas live in its C++
    only. This one declares just the part used here (input, weights, bias → output;
    num_heads), so it is removed afterwards: a later onnx.checker run in the same process
    must not judge real onnxruntime graphs against it.
    """
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has("Attention", CONTRIB_DOMAIN):  # someone declared it already: use theirs
        yield
        return
    param = OpSchema.FormalParameter
    onnx.defs.register_schema(OpSchema(
        "Attention", CONTRIB_DOMAIN, 1,
        inputs=[param("input", "T"), param("weights", "T"), param("bias", "T")],
        outputs=[param("output", "T")],
        type_constraints=[("T", ["tensor(float)"], "float32 only")],
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "heads")]))
    try:
        yield
    finally:
        onnx.defs.deregister_schema("Attention", 1, CONTRIB_DOMAIN)


def _translation() -> dict[Callable[..., Tensor], Callable[..., Any]]:
    """torch op → onnxscript function emitting com.microsoft.Attention."""
    import onnxscript

    contrib = onnxscript.values.Opset(CONTRIB_DOMAIN, 1)

    def attention(x, weight, bias, num_heads: int):  # noqa: ANN001 (onnxscript tensors)
        return contrib.Attention(x, weight, bias, num_heads=num_heads)

    return {torch.ops.vitcli.packed_attention.default: attention}


def export_packed(model: nn.Module, path: Path, opset: int, example: Tensor,
                  dynamic_shapes: tuple | None, names: dict,
                  wrap: Callable[[nn.Module], nn.Module] | None = None) -> None:
    """Write the onnxruntime-only graph (dynamo exporter; it alone takes translations).

    `wrap` puts the rearranged copy inside the module that is exported (the temperature
    and unknown score of vitcli.model.outputs).
    """
    packed, _ = export_copy(model, fused_attention=True)
    packed = wrap(packed) if wrap is not None else packed
    # before the schema goes in: importing onnxscript builds onnx.reference's operator table,
    # which refuses two operators named Attention (ONNX's own and this one)
    translation = _translation()
    with _attention_schema():
        program = torch.onnx.export(packed, (example,), dynamo=True, opset_version=opset,
                                    dynamic_shapes=dynamic_shapes, verbose=False,
                                    custom_translation_table=translation, **names)
    program.save(str(path))
