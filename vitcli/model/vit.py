"""The Vision Transformer, in the order of the method (Dosovitskiy et al. 2021).

image → patch embedding → [class, distillation, register tokens] + position embedding →
[norm_pre] → L pre-norm encoder blocks (multi-head self-attention, MLP, each with a residual
and an optional layer scale) → final norm → pooling (class token, mean of the patch tokens,
attention pool, or class token + mean) → [fc_norm] → head.

The options (config.py) cover the pretrained families: DeiT (distillation token), DeiT III
and DINOv2 (layer scale), DINOv2 with registers, CLIP (norm_pre, QuickGELU, no patch bias),
SigLIP (no class token, attention pool, tanh GELU), MAE (fixed sin-cos, fc_norm).

Parameter names follow timm's VisionTransformer so that timm weights load without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitcli.errors import UsageError
from vitcli.model.config import ViTConfig
from vitcli.model.layers import (
    AttentionPoolLatent,
    LayerScale,
    Mlp,
    PatchDropout,
    resample_pos_embed,
    sincos_pos_embed,
)

# ----------------------------------------------------------------------------- patches → tokens


class PatchEmbed(nn.Module):
    """Split the image into P×P patches and project each to D dimensions.

    A P×P convolution with stride P is exactly a linear map applied to every flattened
    P·P·C patch vector (tests/test_model.py proves it); the convolution is just faster.
    """

    def __init__(self, *, patch_size: int, in_channels: int, embed_dim: int,
                 kind: str = "linear", bias: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.kind = kind
        if kind == "shifted":
            # Shifted patch tokenisation (Lee et al. 2021): the image and four copies shifted
            # by half a patch diagonally, so each token also sees its neighbours' pixels.
            patch_dim = 5 * in_channels * patch_size * patch_size
            self.norm = nn.LayerNorm(patch_dim, eps=1e-6)
            self.proj = nn.Linear(patch_dim, embed_dim, bias=bias)
        else:
            # "overlap": a kernel one pixel wider on every side than the stride.
            pad = 1 if kind == "overlap" else 0
            self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size + 2 * pad,
                                  stride=patch_size, padding=pad, bias=bias)

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


# -------------------------------------------------------------------------- encoder block

# Up to this many tokens, attention on the CPU is two einsums and a softmax rather than
# `scaled_dot_product_attention`: at 17 tokens the fused CPU kernel's forward and backward
# take twice as long (9.2 against 4.5 ms a block at batch 256, 2 threads; at vit-pico's 26,
# 1.6 times: 25.6 against 16.2 ms, that hour on a slower machine); from about
# 50 tokens on, the two are level or the fused kernel is ahead (65 tokens, width 192: 24
# against 30 ms), and it never forms the (N × N) weights.
EXPLICIT_ATTENTION_MAX_TOKENS = 32
# Training in bf16 on the CPU, the fused kernel's backward is slow at any length: ViT-Ti/16's
# 197 tokens (batch 32, 3 heads, 2 threads of a Xeon with AMX) took 36 ms a block forward and
# backward against 13 ms for the explicit form, whose matrix products run on the bf16 units
# (fp32: 25 against 27 ms, and inference in bf16 3.4 against 4.4 ms, so those keep the fused
# kernel). The explicit form keeps the (B, nh, N, N) weights for the backward pass: up to
# this many elements a block (ViT-B/16 at batch 64: 30 M, 60 MB in bf16).
EXPLICIT_ATTENTION_MAX_WEIGHTS = 64 * 2**20


def explicit_attention_pays(x: Tensor, batch: int, heads: int, tokens: int) -> bool:
    """Whether two matrix products and a softmax beat the fused attention kernel here."""
    if x.device.type != "cpu":
        return False
    if tokens <= EXPLICIT_ATTENTION_MAX_TOKENS:
        return True
    bf16 = x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                         and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    return (bf16 and torch.is_grad_enabled()
            and batch * heads * tokens * tokens <= EXPLICIT_ATTENTION_MAX_WEIGHTS)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    The normal path is `scaled_dot_product_attention` (fused kernels). The attention weights
    are formed explicitly only when asked for (explanations) or for short sequences on the
    CPU, where the fused CPU kernel is about twice as slow as two small matrix products
    (EXPLICIT_ATTENTION_MAX_TOKENS).
    """

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool = True,
                 attn_dropout: float = 0.0, proj_dropout: float = 0.0,
                 locality: bool = False, qk_norm: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        # q/k norm (Dehghani et al. 2023, ViT-22B): a LayerNorm over each head's query and key.
        self.qk_norm = qk_norm
        self.q_norm = nn.LayerNorm(self.head_dim, eps=eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=eps) if qk_norm else nn.Identity()
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
        q, k = self.q_norm(q), self.k_norm(k)
        mask = None
        if self.locality:
            q = q * (self.logit_scale.exp() / self.head_dim**-0.5)
            mask = ~torch.eye(N, dtype=torch.bool, device=x.device)  # True = may attend
        dropout = self.attn_dropout if self.training else 0.0
        if return_attention or explicit_attention_pays(x, B, self.num_heads, N):
            # einsum, not `@`: the backward of a 4-D `@` copies every (B·nh) slice on the CPU.
            logits = torch.einsum("bhnd,bhmd->bhnm", q * self.head_dim**-0.5, k)  # (B, nh, N, N)
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            if logits.dtype == torch.bfloat16 and N <= EXPLICIT_ATTENTION_MAX_TOKENS:
                # The CPU's bf16 softmax is slow on rows this short (26 tokens, 4 heads, batch
                # 256: 5.1 ms forward, 2.2 backward, against 0.9 and 0.24 in fp32), so it
                # runs in fp32 and rounds once, as bf16 would.
                attn = logits.softmax(dim=-1, dtype=torch.float32).to(logits.dtype)
            else:
                attn = logits.softmax(dim=-1)
            x = torch.einsum("bhnm,bhmd->bhnd", F.dropout(attn, dropout, self.training),
                             v)  # (B, nh, N, hd)
        else:
            attn = None
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=dropout)  # (B, nh, N, hd)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, D): heads concatenated
        return self.proj_drop(self.proj(x)), attn if return_attention else None


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
    """Pre-norm transformer encoder block: x + γ₁·MSA(LN(x)), then x + γ₂·MLP(LN(x)).

    γ is the layer scale (ls1, ls2), present only when config.init_values > 0.
    """

    def __init__(self, config: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = Attention(dim, num_heads=config.num_heads, qkv_bias=config.qkv_bias,
                              attn_dropout=config.attn_dropout, proj_dropout=config.dropout,
                              locality=config.locality_attention, qk_norm=config.qk_norm,
                              eps=config.layer_norm_eps)
        self.ls1 = LayerScale(dim, config.init_values) if config.init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, config.mlp_dim, dropout=config.dropout, act=config.mlp_act)
        self.ls2 = LayerScale(dim, config.init_values) if config.init_values else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        y, attn = self.attn(self.norm1(x), return_attention)
        x = x + self.drop_path(self.ls1(y))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
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
                                      kind=config.patch_embed, bias=config.patch_bias)
        # 2. prefix tokens (class, distillation, registers) and position embedding
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if config.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if config.distilled else None
        self.reg_token = (nn.Parameter(torch.zeros(1, config.reg_tokens, D))
                          if config.reg_tokens else None)
        pos_tokens = config.num_patches + config.pos_prefix_tokens
        if config.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, pos_tokens, D))
        else:
            self.register_buffer(
                "pos_embed", sincos_pos_embed(D, self.grid, config.pos_prefix_tokens))
        self.pos_drop = nn.Dropout(config.dropout)
        self.patch_drop = PatchDropout(config.patch_drop, config.num_prefix_tokens)
        self.norm_pre = (nn.LayerNorm(D, eps=config.layer_norm_eps) if config.pre_norm
                         else nn.Identity())
        # 3. encoder blocks, drop-path rising linearly with depth
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(Block(config, rate) for rate in rates)
        # 4. final norm (or fc_norm after pooling, as timm), pooling and the head(s)
        eps = config.layer_norm_eps
        self.norm = (nn.LayerNorm(D, eps=eps) if config.final_norm and not config.fc_norm
                     else nn.Identity())
        self.attn_pool = AttentionPoolLatent(
            D, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
            eps=eps, act=config.mlp_act) if config.pooling == "map" else None
        self.fc_norm = nn.LayerNorm(D, eps=eps) if config.fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(config.dropout)
        n, width = config.num_classes, config.head_in_dim
        self.head = nn.Linear(width, n) if n else nn.Identity()
        if config.distilled:
            self.head_dist = nn.Linear(width, n) if n else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """timm's default init: truncated normal (std .02) for linears and position embedding."""
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        if self.attn_pool is not None:
            nn.init.trunc_normal_(self.attn_pool.latent, std=self.config.embed_dim**-0.5)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that weight decay must not shrink (besides norms and biases)."""
        return {"cls_token", "pos_embed", "dist_token", "reg_token"}

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """The position embedding for a patch grid, resampled if the grid is not native."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        prefix = self.config.pos_prefix_tokens
        if self.config.pos_embed == "sincos":
            return sincos_pos_embed(self.config.embed_dim, grid, prefix).to(self.pos_embed)
        return resample_pos_embed(self.pos_embed, grid, self.grid, prefix,
                                  self.config.pos_embed_antialias)

    def embed(self, x: Tensor) -> Tensor:
        """Image (B, C, H, W) → token sequence (B, prefix + N, D) ready for the encoder.

        Prefix tokens go in front in timm's order: class, distillation, registers. With
        no_embed_class they get no position (timm; DINOv2's registers). In training, patch
        dropout (config.patch_drop) then keeps K of the N patch tokens.
        """
        x, grid = self.patch_embed(x)  # (B, N, D)
        B = x.shape[0]
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.dist_token, self.reg_token)
                  if t is not None]
        pos = self.position_embedding(grid)
        if self.config.no_embed_class:
            x = torch.cat(prefix + [x + pos], dim=1)  # (B, prefix + N, D)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos  # (B, prefix + N, D)
        return self.norm_pre(self.patch_drop(self.pos_drop(x)))  # (B, prefix + K, D) training

    def forward_features(self, x: Tensor) -> Tensor:
        """Normalised output tokens (B, prefix + N, D)."""
        x = self.embed(x)
        for block in self.blocks:
            x, _ = block(x)
        return self.norm(x)

    def pool(self, x: Tensor) -> Tensor:
        """Tokens (B, T, D) → the vector the head reads: (B, D), or (B, 2·D) for 'cls_mean'."""
        pooling = self.config.pooling
        if pooling == "cls":
            return x[:, 0]  # (B, D)
        if pooling == "map":
            return self.attn_pool(x)  # (B, D)
        patches = x[:, self.num_prefix_tokens:].mean(dim=1)  # (B, D): registers excluded
        if pooling == "cls_mean":
            return torch.cat([x[:, 0], patches], dim=-1)  # (B, 2·D)
        return patches

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool the tokens and classify; with a distillation token, the mean of both heads
        (DeiT at inference, Touvron et al. 2021)."""
        if self.dist_token is not None:
            x, x_dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])  # (B, D) each
            if pre_logits:
                return (x + x_dist) / 2
            return (self.head(x) + self.head_dist(x_dist)) / 2
        x = self.head_drop(self.fc_norm(self.pool(x)))
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
    from vitcli.model.presets import get_preset

    base = get_preset(name).config if name else ViTConfig()
    return VisionTransformer(base.replace(**overrides))


def num_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
