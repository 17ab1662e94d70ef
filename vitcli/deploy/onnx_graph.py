"""The model as ONNX export sees it: the same maths, arranged for a faster graph.

Two rewrites, both on a copy of the model (the weights are the same tensors' values):

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

from vitcli.model.vit import Attention

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


def export_copy(model: nn.Module, fused_attention: bool = False) -> tuple[nn.Module, int]:
    """A copy of the model arranged for export; and how many attention blocks were fused."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = GemmLinear  # same parameters, another forward
    packed = 0
    for block in getattr(model, "blocks", []) if fused_attention else []:
        if (isinstance(block.attn, Attention) and not block.attn.locality
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
    with _attention_schema():
        program = torch.onnx.export(packed, (example,), dynamo=True, opset_version=opset,
                                    dynamic_shapes=dynamic_shapes, verbose=False,
                                    custom_translation_table=_translation(), **names)
    program.save(str(path))
