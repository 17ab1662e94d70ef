"""The ViT's smaller parts that the families differ in: position embeddings, MLP activations,
layer scale and the attention-pool (MAP) head.

Parameter names are timm's (`timm/layers/mlp.py`, `layer_scale.py`, `attention_pool.py`,
`pos_embed.py`) so that timm checkpoints load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitcli.errors import UsageError
from vitcli.model.config import kept_patches

# -------------------------------------------------------------------- position embeddings


def sincos_pos_embed(embed_dim: int, grid: tuple[int, int], num_prefix: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE style): (1, prefix + rows·cols, D).

    Half the channels encode the row, half the column; each half is sin/cos at D/4
    frequencies. Prefix tokens (class token) get zeros.
    """
    if embed_dim % 4:
        raise UsageError(f"sincos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    rows, cols = grid
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4))
    ys, xs = torch.meshgrid(torch.arange(rows, dtype=torch.float64),
                            torch.arange(cols, dtype=torch.float64), indexing="ij")

    def encode(pos: Tensor) -> Tensor:
        angles = pos.reshape(-1, 1) * omega  # (rows·cols, D/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (rows·cols, D/2)

    emb = torch.cat([encode(ys), encode(xs)], dim=1)  # (rows·cols, D)
    emb = torch.cat([torch.zeros(num_prefix, embed_dim, dtype=torch.float64), emb])
    return emb.float().unsqueeze(0)  # (1, prefix + rows·cols, D)


def resample_pos_embed(pos_embed: Tensor, new_grid: tuple[int, int],
                       old_grid: tuple[int, int], num_prefix: int,
                       antialias: bool = True) -> Tensor:
    """Resize a learned position embedding to another patch grid, square or not.

    Bicubic interpolation over the grid in float32, with antialiasing as timm's
    `resample_abs_pos_embed` (transformers' DINOv2 `interpolate_pos_encoding` has none:
    `antialias=False`; it only matters when shrinking); the `num_prefix` slots in front
    (class, distillation, register tokens) are kept as they are.
    """
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid_tokens = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    D = pos_embed.shape[-1]
    dtype = grid_tokens.dtype
    grid_tokens = grid_tokens.reshape(1, old_grid[0], old_grid[1], D).permute(0, 3, 1, 2)
    # (1, D, rows, cols) → interpolate → back to a token sequence
    grid_tokens = F.interpolate(grid_tokens.float(), size=tuple(new_grid), mode="bicubic",
                                align_corners=False, antialias=antialias)
    grid_tokens = grid_tokens.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)
    return torch.cat([prefix, grid_tokens.to(dtype)], dim=1)  # (1, prefix + rows·cols, D)


# ---------------------------------------------------------------------------- patch dropout


class PatchDropout(nn.Module):
    """Drop a random `rate` of the patch tokens of each image while training (PatchDropout,
    Liu et al. 2022; FLIP, Li et al. 2023; timm's `patch_drop_rate`).

    (B, prefix + N, D) → (B, prefix + K, D), K = max(1, round(N · (1 − rate))): the prefix
    tokens (class, distillation, registers) stay in front, each image keeps its own random
    K patches (in their original order), each with its position embedding already added.
    Attention then costs K² instead of N², so a fine grid of small patches trains at the
    cost of a coarse one; at inference every patch is kept (identity).
    """

    def __init__(self, rate: float, num_prefix: int) -> None:
        super().__init__()
        self.rate, self.num_prefix = rate, num_prefix

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        B, T, D = x.shape
        n = T - self.num_prefix
        k = kept_patches(n, self.rate)
        keep = torch.rand(B, n, device=x.device).argsort(dim=1)[:, :k].sort(dim=1).values
        patches = x[:, self.num_prefix:].gather(1, keep.unsqueeze(-1).expand(B, k, D))  # (B, K, D)
        return torch.cat([x[:, :self.num_prefix], patches], dim=1)  # (B, prefix + K, D)


# ------------------------------------------------------------------------------------ MLP


class QuickGELU(nn.Module):
    """x · sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    """The MLP activation: exact GELU (ViT, DeiT, DINOv2), tanh GELU (SigLIP), QuickGELU (CLIP)."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    raise UsageError(f"MLP activation {name!r} is not supported (gelu, gelu_tanh, quick_gelu)")


class Mlp(nn.Module):
    """The position-wise feed-forward network: Linear → activation → Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, act: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation(act)
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class LayerScale(nn.Module):
    """A learned per-channel scale on a residual branch (CaiT; DeiT III, DINOv2): x · γ."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


# ------------------------------------------------------------------- attention-pool head


class AttentionPoolLatent(nn.Module):
    """Multihead attention pooling (MAP; Zhai et al. 2022, used by SigLIP).

    One learned latent query attends over all the tokens; an MLP with a residual follows:
    y = attn(latent, x, x); y = y + MLP(LN(y)). Gives (B, D). timm's `AttentionPoolLatent`
    (names latent, q, kv, proj, norm, mlp), equal to transformers'
    `SiglipMultiheadAttentionPoolingHead`.
    """

    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float, qkv_bias: bool = True,
                 eps: float = 1e-6, act: str = "gelu") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        nh, hd = self.num_heads, self.head_dim
        q = self.q(self.latent).reshape(1, 1, nh, hd).transpose(1, 2)  # (1, nh, 1, hd)
        kv = self.kv(x).reshape(B, N, 2, nh, hd).permute(2, 0, 3, 1, 4)  # (2, B, nh, N, hd)
        k, v = kv.unbind(0)
        y = F.scaled_dot_product_attention(q.expand(B, -1, -1, -1), k, v)  # (B, nh, 1, hd)
        y = self.proj(y.transpose(1, 2).reshape(B, 1, C))  # (B, 1, D)
        y = y + self.mlp(self.norm(y))
        return y[:, 0]  # (B, D)
