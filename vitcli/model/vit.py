"""The Vision Transformer, in the order of the method (Dosovitskiy et al. 2021).

image → patch embedding → [class token] + position embedding → L pre-norm encoder blocks
(multi-head self-attention, MLP, each with a residual) → final norm → head on the class token.

Parameter names follow timm's VisionTransformer so that timm weights load without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitcli.errors import UsageError
from vitcli.model.config import ViTConfig

# ----------------------------------------------------------------------------- patches → tokens


class PatchEmbed(nn.Module):
    """Split the image into P×P patches and project each to D dimensions.

    A P×P convolution with stride P is exactly a linear map applied to every flattened
    P·P·C patch vector (tests/test_model.py proves it); the convolution is just faster.
    """

    def __init__(self, *, patch_size: int, in_channels: int, embed_dim: int,
                 kind: str = "linear") -> None:
        super().__init__()
        self.patch_size = patch_size
        self.kind = kind
        if kind == "shifted":
            # Shifted patch tokenisation (Lee et al. 2021): the image and four copies shifted
            # by half a patch diagonally, so each token also sees its neighbours' pixels.
            patch_dim = 5 * in_channels * patch_size * patch_size
            self.norm = nn.LayerNorm(patch_dim, eps=1e-6)
            self.proj = nn.Linear(patch_dim, embed_dim)
        else:
            # "overlap": a kernel one pixel wider on every side than the stride.
            pad = 1 if kind == "overlap" else 0
            self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size + 2 * pad,
                                  stride=patch_size, padding=pad)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Return the patch tokens (B, N, D) and the patch grid (rows, columns)."""
        B, C, H, W = x.shape
        P = self.patch_size
        if H % P or W % P:
            raise UsageError(f"image size {H}x{W} is not divisible by patch size {P}")
        grid = (H // P, W // P)
        if self.kind == "shifted":
            h = P // 2
            shifts = [(h, h), (-h, h), (h, -h), (-h, -h)]
            x = torch.cat([x] + [_shift(x, dy, dx) for dy, dx in shifts], dim=1)  # (B, 5C, H, W)
            x = patchify(x, P)  # (B, N, P·P·5C)
            return self.proj(self.norm(x)), grid
        x = self.proj(x)  # (B, D, H/P, W/P)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), row-major patch order
        return x, grid


def _shift(x: Tensor, dy: int, dx: int) -> Tensor:
    """Translate an image batch by (dy, dx) pixels, filling with zeros."""
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    x = F.pad(x, pad)
    H, W = x.shape[-2:]
    return x[..., pad[3]:H - pad[2], pad[1]:W - pad[0]]


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Flatten images into patch vectors: b c (h p1) (w p2) -> b (h w) (p1 p2 c)."""
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P)  # (B, C, h, p1, w, p2)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p1, p2, C)
    return x.reshape(B, (H // P) * (W // P), P * P * C)  # (B, N, P·P·C)


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
                       old_grid: tuple[int, int], num_prefix: int) -> Tensor:
    """Resize a learned position embedding to another patch grid.

    Bicubic interpolation over the grid; the class-token slot is kept as it is.
    """
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid_tokens = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    D = pos_embed.shape[-1]
    dtype = grid_tokens.dtype
    grid_tokens = grid_tokens.reshape(1, old_grid[0], old_grid[1], D).permute(0, 3, 1, 2)
    # (1, D, rows, cols) → interpolate → back to a token sequence
    grid_tokens = F.interpolate(grid_tokens.float(), size=tuple(new_grid), mode="bicubic",
                                align_corners=False, antialias=True)
    grid_tokens = grid_tokens.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)
    return torch.cat([prefix, grid_tokens.to(dtype)], dim=1)  # (1, prefix + rows·cols, D)


# -------------------------------------------------------------------------- encoder block

# Up to this many tokens, attention on the CPU is two einsums and a softmax rather than
# `scaled_dot_product_attention`: at 17 tokens the fused CPU kernel's forward and backward
# take twice as long (9.2 against 4.5 ms a block at batch 256, 2 threads; at vit-pico's 26,
# 1.6 times: 25.6 against 16.2 ms, that hour on a slower machine); from about
# 50 tokens on, the two are level or the fused kernel is ahead (65 tokens, width 192: 24
# against 30 ms), and it never forms the (N × N) weights.
EXPLICIT_ATTENTION_MAX_TOKENS = 32


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    The normal path is `scaled_dot_product_attention` (fused kernels). The attention weights
    are formed explicitly only when asked for (explanations) or for short sequences on the
    CPU, where the fused CPU kernel is about twice as slow as two small matrix products
    (EXPLICIT_ATTENTION_MAX_TOKENS).
    """

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = True,
                 attn_dropout: float = 0.0, proj_dropout: float = 0.0,
                 locality: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)
        self.locality = locality
        if locality:
            # Locality self-attention (Lee et al. 2021): a learned temperature, starting at
            # the usual 1/sqrt(d), and no token attending to itself.
            self.logit_scale = nn.Parameter(torch.tensor(math.log(self.head_dim**-0.5)))

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, nh, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, nh, N, hd)
        mask = None
        if self.locality:
            q = q * (self.logit_scale.exp() / self.head_dim**-0.5)
            mask = ~torch.eye(N, dtype=torch.bool, device=x.device)  # True = may attend
        dropout = self.attn_dropout if self.training else 0.0
        if return_attention or (x.device.type == "cpu" and N <= EXPLICIT_ATTENTION_MAX_TOKENS):
            # einsum, not `@`: the backward of a 4-D `@` copies every (B·nh) slice on the CPU.
            logits = torch.einsum("bhnd,bhmd->bhnm", q * self.head_dim**-0.5, k)  # (B, nh, N, N)
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            attn = logits.softmax(dim=-1)
            x = torch.einsum("bhnm,bhmd->bhnd", F.dropout(attn, dropout, self.training),
                             v)  # (B, nh, N, hd)
        else:
            attn = None
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=dropout)  # (B, nh, N, hd)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, D): heads concatenated
        return self.proj_drop(self.proj(x)), attn if return_attention else None


class Mlp(nn.Module):
    """The position-wise feed-forward network: Linear → GELU → Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer encoder block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = Attention(dim, num_heads=config.num_heads, qkv_bias=config.qkv_bias,
                              attn_dropout=config.attn_dropout, proj_dropout=config.dropout,
                              locality=config.locality_attention)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, config.mlp_dim, dropout=config.dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        y, attn = self.attn(self.norm1(x), return_attention)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, attn


# ------------------------------------------------------------------------------ the model


class VisionTransformer(nn.Module):
    """ViT classifier. `forward_features` gives normalised tokens, `forward_head` logits."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        D = config.embed_dim
        self.num_prefix_tokens = config.num_prefix_tokens
        self.grid = (config.grid_size, config.grid_size)

        # 1. patches → tokens
        self.patch_embed = PatchEmbed(patch_size=config.patch_size,
                                      in_channels=config.in_channels, embed_dim=D,
                                      kind=config.patch_embed)
        # 2. class token and position embedding
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if config.class_token else None
        if config.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, D))
        else:
            self.register_buffer(
                "pos_embed", sincos_pos_embed(D, self.grid, self.num_prefix_tokens))
        self.pos_drop = nn.Dropout(config.dropout)
        # 3. encoder blocks, drop-path rising linearly with depth
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(Block(config, rate) for rate in rates)
        # 4. final norm and the classification head
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.head_drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(D, config.num_classes) if config.num_classes else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """timm's default init: truncated normal (std .02) for linears and position embedding."""
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that weight decay must not shrink (besides norms and biases)."""
        return {"cls_token", "pos_embed"}

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """The position embedding for a patch grid, resampled if the grid is not native."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        if self.config.pos_embed == "sincos":
            return sincos_pos_embed(self.config.embed_dim, grid, self.num_prefix_tokens).to(
                self.pos_embed)
        return resample_pos_embed(self.pos_embed, grid, self.grid, self.num_prefix_tokens)

    def embed(self, x: Tensor) -> Tensor:
        """Image (B, C, H, W) → token sequence (B, prefix + N, D) ready for the encoder."""
        x, grid = self.patch_embed(x)  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, D)
        return self.pos_drop(x + self.position_embedding(grid))

    def forward_features(self, x: Tensor) -> Tensor:
        """Normalised output tokens (B, prefix + N, D)."""
        x = self.embed(x)
        for block in self.blocks:
            x, _ = block(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool the tokens (class token or mean of patch tokens) and classify."""
        if self.config.pooling == "cls":
            x = x[:, 0]  # (B, D)
        else:
            x = x[:, self.num_prefix_tokens:].mean(dim=1)  # (B, D)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits and every block's attention weights, each (B, heads, T, T)."""
        x = self.embed(x)
        maps = []
        for block in self.blocks:
            x, attn = block(x, return_attention=True)
            maps.append(attn)
        return self.forward_head(self.norm(x)), maps

    def set_image_size(self, image_size: int) -> None:
        """Make `image_size` the native size: resample the stored position embedding once."""
        config = self.config.replace(image_size=image_size)
        grid = (config.grid_size, config.grid_size)
        with torch.no_grad():
            new = self.position_embedding(grid).detach().clone()
        if isinstance(self.pos_embed, nn.Parameter):
            self.pos_embed = nn.Parameter(new)
        else:
            self.pos_embed = new
        self.grid, self.config = grid, config


def create_model(name: str | None = None, **overrides: object) -> VisionTransformer:
    """A fresh, randomly initialised ViT from a preset name and/or config fields.

    >>> create_model("vit-b16", num_classes=10)
    """
    from vitcli.model.config import get_preset

    base = get_preset(name).config if name else ViTConfig()
    return VisionTransformer(base.replace(**overrides))


def num_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
