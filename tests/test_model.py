"""The ViT itself: shapes, gradients, patch embedding, position embeddings, timm names."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY

from vitcli.errors import UsageError
from vitcli.model.config import ViTConfig
from vitcli.model.presets import PRESETS
from vitcli.model.vit import (
    VisionTransformer,
    create_model,
    patchify,
    resample_pos_embed,
    sincos_pos_embed,
)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_at_toy_size(name):
    """The preset's patch size and layout, shrunk to 2 × 2 patches, 1 block, width 32."""
    patch = PRESETS[name].config.patch_size
    model = create_model(name, image_size=2 * patch, embed_dim=32, depth=1, num_heads=2,
                         num_classes=5).eval()
    x = torch.randn(2, 3, 2 * patch, 2 * patch)
    with torch.no_grad():
        tokens = model.forward_features(x)
        logits = model.forward_head(tokens)
    assert tokens.shape == (2, 4 + 1, 32) and tokens.dtype == torch.float32
    assert logits.shape == (2, 5) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


OPTIONS = [
    {},
    {"pooling": "mean"},
    {"pooling": "mean", "class_token": False},
    {"pos_embed": "sincos"},
    {"patch_embed": "overlap"},
    {"patch_embed": "shifted"},
    {"locality_attention": True},
    {"drop_path": 0.2, "dropout": 0.1, "attn_dropout": 0.1},
    {"qkv_bias": False},
]


@pytest.mark.parametrize("changes", OPTIONS, ids=lambda c: ",".join(c) or "default")
def test_every_parameter_gets_a_gradient_and_nothing_is_nan(changes):
    model = create_model(num_classes=3, **{**TINY, **changes}).train()
    logits = model(torch.randn(4, 3, 32, 32))
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_patch_embedding_is_a_linear_map_of_flattened_patches(tiny_model):
    """Conv with stride P == (P·P·C patch vectors) @ Wᵀ + b, with W the reshaped kernel."""
    x = torch.randn(2, 3, 32, 32)
    conv = tiny_model.patch_embed.proj
    D, C, P, _ = conv.weight.shape
    weight = conv.weight.permute(0, 2, 3, 1).reshape(D, P * P * C)  # (D, p1 p2 c)
    expected = patchify(x, P) @ weight.T + conv.bias  # (B, N, D)
    with torch.no_grad():
        tokens, grid = tiny_model.patch_embed(x)
    assert grid == (4, 4)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)


def test_patchify_order_is_row_major_and_channel_last():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)  # C=2, 4×4 px
    patches = patchify(x, 2)  # (1, 4, 2·2·2)
    assert patches.shape == (1, 4, 8)
    # Patch 1 is the top-right 2×2 block; each pixel lists its channels together.
    top_right = [x[0, c, i, j].item() for i in (0, 1) for j in (2, 3) for c in (0, 1)]
    assert patches[0, 1].tolist() == top_right


def test_sincos_values_follow_the_formula():
    D = 8
    emb = sincos_pos_embed(D, (2, 3), num_prefix=1)
    assert emb.shape == (1, 1 + 6, D)
    assert torch.equal(emb[0, 0], torch.zeros(D))  # class token
    row, col = 1, 2
    token = emb[0, 1 + row * 3 + col]
    omega = [1 / 10000 ** (k / (D / 4)) for k in range(D // 4)]
    expected = ([math.sin(row * w) for w in omega] + [math.cos(row * w) for w in omega]
                + [math.sin(col * w) for w in omega] + [math.cos(col * w) for w in omega])
    torch.testing.assert_close(token, torch.tensor(expected))
    with pytest.raises(UsageError, match="divisible by 4"):
        sincos_pos_embed(6, (2, 2), 1)


def test_resample_is_identity_at_the_same_grid_and_keeps_the_class_token():
    pos = torch.randn(1, 1 + 16, 8)
    assert torch.equal(resample_pos_embed(pos, (4, 4), (4, 4), 1), pos)
    bigger = resample_pos_embed(pos, (6, 5), (4, 4), 1)
    assert bigger.shape == (1, 1 + 30, 8)
    assert torch.equal(bigger[:, 0], pos[:, 0])
    # A constant embedding stays constant: interpolation adds nothing of its own.
    flat = torch.cat([pos[:, :1], torch.full((1, 16, 8), 0.3)], dim=1)
    torch.testing.assert_close(resample_pos_embed(flat, (7, 7), (4, 4), 1)[:, 1:],
                               torch.full((1, 49, 8), 0.3))


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_running_at_another_resolution(pos_embed):
    model = create_model(num_classes=3, **{**TINY, "pos_embed": pos_embed}).eval()
    x = torch.randn(2, 3, 48, 48)  # 6×6 patches instead of 4×4
    with torch.no_grad():
        on_the_fly = model(x)
        model.set_image_size(48)
        native = model(x)
    assert on_the_fly.shape == (2, 3) and torch.isfinite(on_the_fly).all()
    torch.testing.assert_close(on_the_fly, native)
    assert model.config.image_size == 48 and model.pos_embed.shape[1] == 1 + 36


def test_image_not_divisible_by_patch_is_a_usage_error(tiny_model):
    with pytest.raises(UsageError, match="not divisible by patch size 8"):
        tiny_model(torch.randn(1, 3, 30, 32))


def test_state_dict_names_are_timms():
    model = create_model(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                         num_classes=3)
    expected = [  # timm VisionTransformer(depth=1).state_dict(), in order
        "cls_token", "pos_embed",
        "patch_embed.proj.weight", "patch_embed.proj.bias",
        "blocks.0.norm1.weight", "blocks.0.norm1.bias",
        "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias",
        "blocks.0.norm2.weight", "blocks.0.norm2.bias",
        "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias",
        "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias",
        "norm.weight", "norm.bias",
        "head.weight", "head.bias",
    ]
    assert list(model.state_dict()) == expected
    assert model.state_dict()["blocks.0.attn.qkv.weight"].shape == (96, 32)  # fused q, k, v


@pytest.mark.parametrize("changes", [{}, {"locality_attention": True}], ids=["plain", "lsa"])
def test_forward_with_attention_matches_forward(changes):
    model = create_model(num_classes=3, **{**TINY, **changes}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        logits2, maps = model.forward_with_attention(x)
    torch.testing.assert_close(logits2, logits, atol=1e-5, rtol=1e-4)
    assert len(maps) == TINY["depth"]
    for attn in maps:
        assert attn.shape == (2, TINY["num_heads"], 17, 17)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, TINY["num_heads"], 17))
    if changes:
        assert torch.all(maps[0].diagonal(dim1=-2, dim2=-1) == 0)  # no token attends to itself


def test_create_model_applies_overrides_and_rejects_unknown_ones():
    model = create_model("vit-nano", num_classes=4, depth=1)
    assert isinstance(model, VisionTransformer)
    assert model.config.embed_dim == 128 and model.config.num_classes == 4
    assert len(model.blocks) == 1
    with pytest.raises(UsageError, match="unknown model option"):
        create_model("vit-nano", layers=3)


def test_headless_model_returns_pooled_features():
    model = VisionTransformer(ViTConfig(**TINY, num_classes=0)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, TINY["embed_dim"])


def count_attention_calls(monkeypatch) -> dict[str, int]:
    """Count calls to scaled_dot_product_attention and Tensor.softmax from here on."""
    import vitcli.model.vit as model_module

    calls = {"sdpa": 0, "softmax": 0}
    sdpa, softmax = torch.nn.functional.scaled_dot_product_attention, torch.Tensor.softmax

    def counting_sdpa(*args, **kwargs):
        calls["sdpa"] += 1
        return sdpa(*args, **kwargs)

    def counting_softmax(self, *args, **kwargs):
        calls["softmax"] += 1
        return softmax(self, *args, **kwargs)

    monkeypatch.setattr(model_module.F, "scaled_dot_product_attention", counting_sdpa)
    monkeypatch.setattr(torch.Tensor, "softmax", counting_softmax)
    return calls


def test_long_sequences_use_fused_attention_and_build_no_weight_maps(monkeypatch):
    """Attention weights cost nothing unless asked for: past EXPLICIT_ATTENTION_MAX_TOKENS the
    forward and training step go through scaled_dot_product_attention once per block and never
    form the (T×T) softmax."""
    from vitcli.model.vit import EXPLICIT_ATTENTION_MAX_TOKENS

    calls = count_attention_calls(monkeypatch)
    model = create_model(num_classes=3, **{**TINY, "patch_size": 4})  # 64 patches + class
    assert model.config.num_tokens > EXPLICIT_ATTENTION_MAX_TOKENS
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 32, 32))
    assert calls == {"sdpa": 2 * TINY["depth"], "softmax": 0}
    with torch.no_grad():
        model.forward_with_attention(torch.randn(1, 3, 32, 32))
    assert calls == {"sdpa": 2 * TINY["depth"], "softmax": TINY["depth"]}


@pytest.mark.parametrize("locality", [False, True])
def test_short_sequences_on_cpu_use_explicit_attention_with_the_same_result(monkeypatch, locality):
    """Up to EXPLICIT_ATTENTION_MAX_TOKENS tokens the CPU forms the weights (faster there);
    outputs and gradients equal the fused kernel's."""
    import vitcli.model.vit as model_module

    torch.manual_seed(0)
    model = create_model(num_classes=3, **TINY, locality_attention=locality)  # 17 tokens
    assert model.config.num_tokens <= model_module.EXPLICIT_ATTENTION_MAX_TOKENS
    x = torch.randn(4, 3, 32, 32)

    def logits_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(x)
        (out * torch.arange(3.0)).sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    calls = count_attention_calls(monkeypatch)
    explicit = logits_and_grads()
    assert calls == {"sdpa": 0, "softmax": TINY["depth"]}
    monkeypatch.setattr(model_module, "EXPLICIT_ATTENTION_MAX_TOKENS", 0)
    fused = logits_and_grads()
    assert calls == {"sdpa": TINY["depth"], "softmax": TINY["depth"]}
    torch.testing.assert_close(explicit[0], fused[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(explicit[1], fused[1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_training_on_cpu_uses_explicit_attention_with_the_same_gradients(monkeypatch):
    """Training under bf16 autocast on the CPU forms the weights at any length (the fused
    kernel's bf16 backward is ~3x slower there); fp32 training and bf16 inference keep the
    fused kernel, and so does a batch whose weights would exceed the memory cap."""
    import vitcli.model.vit as model_module

    torch.manual_seed(0)
    model = create_model(num_classes=3, **{**TINY, "patch_size": 4})  # 65 tokens
    assert model.config.num_tokens > model_module.EXPLICIT_ATTENTION_MAX_TOKENS
    x = torch.randn(2, 3, 32, 32)
    calls = count_attention_calls(monkeypatch)

    def bf16_step() -> list[torch.Tensor]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    explicit = bf16_step()
    assert calls == {"sdpa": 0, "softmax": TINY["depth"]}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)  # inference: fused
    model(x).sum().backward()  # fp32 training: fused (batch 2, 2 heads, 65 tokens)
    assert calls == {"sdpa": 2 * TINY["depth"], "softmax": TINY["depth"]}
    monkeypatch.setattr(model_module, "EXPLICIT_ATTENTION_MAX_WEIGHTS", 2 * 2 * 65 * 65 - 1)
    fused = bf16_step()  # over the cap
    assert calls == {"sdpa": 3 * TINY["depth"], "softmax": TINY["depth"]}
    for a, b in zip(explicit, fused):  # both in bf16: equal to bf16's precision
        torch.testing.assert_close(a, b, atol=2e-2, rtol=5e-2)


def test_bf16_short_sequences_softmax_in_fp32_rounded_once(monkeypatch):
    """Under bf16 autocast the short-sequence path takes the softmax in fp32 (the CPU's bf16
    kernel is slow on short rows) and rounds it to bf16 once: the weights stay bf16 rows that
    sum to one, and outputs and gradients match the fused kernel's to bf16 precision."""
    import vitcli.model.vit as model_module

    torch.manual_seed(0)
    model = create_model(num_classes=3, **TINY)  # 17 tokens
    x = torch.randn(4, 3, 32, 32)

    def bf16_step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        (out.float() * torch.arange(3.0)).sum().backward()
        return out.detach().float(), [p.grad.clone() for p in model.parameters()]

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, maps = model.forward_with_attention(x)
    assert all(m.dtype == torch.bfloat16 for m in maps)
    for m in maps:
        torch.testing.assert_close(m.float().sum(-1), torch.ones(m.shape[:-1]), atol=2e-2, rtol=0)
    explicit = bf16_step()
    monkeypatch.setattr(model_module, "EXPLICIT_ATTENTION_MAX_TOKENS", 0)
    monkeypatch.setattr(model_module, "EXPLICIT_ATTENTION_MAX_WEIGHTS", 0)
    fused = bf16_step()
    torch.testing.assert_close(explicit[0], fused[0], atol=2e-2, rtol=5e-2)
    for a, b in zip(explicit[1], fused[1]):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=5e-2)


def test_patch_dropout_keeps_a_random_ordered_subset_of_each_images_patches_in_training():
    """Patch dropout (config.patch_drop) leaves the class token in front and K of the N
    patch tokens of each image, a different K for different images, each token exactly as
    the full sequence has it (position included) and in grid order; none at inference."""
    torch.manual_seed(0)
    model = create_model(num_classes=3, **{**TINY, "patch_size": 4}, patch_drop=0.5)
    x = torch.randn(6, 3, 32, 32)
    model.eval()
    full = model.embed(x)  # (6, 1 + 64, D): inference keeps every patch
    assert full.shape[1] == 1 + 64
    model.train()
    kept = model.embed(x)  # (6, 1 + 32, D)
    assert kept.shape == (6, 1 + 32, full.shape[2]) and model.config.train_tokens == 1 + 32
    torch.testing.assert_close(kept[:, 0], full[:, 0])  # the class token
    chosen = []
    for b in range(6):
        # each kept token is one of the full sequence's patch tokens, in increasing order
        match = (kept[b, 1:, None, :] - full[b, None, 1:, :]).abs().amax(-1) < 1e-6  # (32, 64)
        assert (match.sum(1) == 1).all()
        where = match.float().argmax(1)
        assert (where.diff() > 0).all()
        chosen.append(tuple(where.tolist()))
    assert len(set(chosen)) > 1
    logits = model(x)
    logits.sum().backward()  # the dropped tokens' rows get no gradient, the rest train
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0


def test_patch_dropout_changes_nothing_at_inference_or_at_rate_zero():
    torch.manual_seed(0)
    plain = create_model(num_classes=3, **TINY).eval()
    dropping = create_model(num_classes=3, **TINY, patch_drop=0.75).eval()
    dropping.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dropping(x), plain(x))
    plain.train()
    torch.manual_seed(1)
    a = plain.embed(x)
    assert a.shape[1] == plain.config.num_tokens  # rate 0: the whole sequence in training
