"""The pretrained families' options of the ViT: every combination runs forwards and
backwards, every parameter learns, the model file keeps them, old files load unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from vitcli.errors import UsageError
from vitcli.model.checkpoint import load_model, read_header, save_model, save_tensors
from vitcli.model.config import ViTConfig, count_params
from vitcli.model.vit import VisionTransformer

BASE = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)

# One entry per family layout, plus the options one at a time (timm's names in comments).
FAMILIES = {
    "deit-distilled": {"distilled": True},
    "deit3": {"init_values": 0.1},  # layer scale
    "dinov2": {"init_values": 0.1, "pooling": "cls_mean", "layer_norm_eps": 1e-6},
    "dinov2-reg": {"init_values": 0.1, "reg_tokens": 4, "no_embed_class": True,
                   "pooling": "cls_mean"},
    "clip": {"pre_norm": True, "patch_bias": False, "mlp_act": "quick_gelu"},
    "clip-classifier": {"pre_norm": True, "patch_bias": False, "final_norm": False,
                        "pooling": "mean"},
    "siglip": {"class_token": False, "pooling": "map", "mlp_act": "gelu_tanh"},
    "siglip-classifier": {"class_token": False, "pooling": "mean", "mlp_act": "gelu_tanh"},
    "mae-fc-norm": {"pos_embed": "sincos", "pooling": "mean", "fc_norm": True},
    "qk-norm": {"qk_norm": True},
    "registers-with-slots": {"reg_tokens": 2},
    "map-with-class-token": {"pooling": "map"},
    "headless-map": {"class_token": False, "pooling": "map", "num_classes": 0},
    "headless-distilled": {"distilled": True, "num_classes": 0},
}


def _model(changes: dict) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(**{**BASE, **changes}))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_runs_backwards_and_every_parameter_learns(family):
    model = _model(FAMILIES[family]).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    width = model.config.num_classes or model.config.head_in_dim
    assert out.shape == (2, width) and torch.isfinite(out).all()
    out.square().sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{name}: zero gradient"
    assert count_params(model.config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_takes_non_square_inputs(family):
    """Position embeddings are resampled to any grid, 3 × 5 patches included."""
    model = _model(FAMILIES[family]).eval()
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(1, 3, 24, 40))
    assert tokens.shape == (1, model.config.num_prefix_tokens + 15, 32)
    assert torch.isfinite(tokens).all()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_survives_the_model_file(tmp_path, family):
    model = _model(FAMILIES[family]).eval()
    path = save_model(tmp_path / "m.safetensors", model)
    loaded = load_model(path)
    assert loaded.config == model.config
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_timm_parameter_names():
    """The names a timm checkpoint of these families holds, so it loads without renaming."""
    names = set(_model({"init_values": 0.1, "reg_tokens": 4, "no_embed_class": True,
                        "pre_norm": True, "qk_norm": True, "pooling": "map"}).state_dict())
    for name in ("reg_token", "cls_token", "norm_pre.weight", "blocks.1.ls1.gamma",
                 "blocks.1.ls2.gamma", "blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.bias",
                 "attn_pool.latent", "attn_pool.q.weight", "attn_pool.kv.weight",
                 "attn_pool.proj.weight", "attn_pool.norm.weight", "attn_pool.mlp.fc1.weight",
                 "attn_pool.mlp.fc2.bias", "norm.weight", "head.weight"):
        assert name in names, name
    pos = _model({"reg_tokens": 4, "no_embed_class": True}).pos_embed
    assert pos.shape == (1, 16, 32)  # patches only: timm's no_embed_class
    distilled = set(_model({"distilled": True}).state_dict())
    assert {"dist_token", "head_dist.weight", "head_dist.bias"} <= distilled
    fc = set(_model({"pooling": "mean", "fc_norm": True}).state_dict())
    assert "fc_norm.weight" in fc and "norm.weight" not in fc  # timm: fc_norm replaces norm
    assert "patch_embed.proj.bias" not in set(_model({"patch_bias": False}).state_dict())


def test_distilled_prediction_is_the_mean_of_both_heads():
    model = _model({"distilled": True}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)
        expected = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
        assert torch.allclose(model(x), expected)


def test_registers_are_left_out_of_the_mean_patch_token():
    model = _model({"reg_tokens": 4, "no_embed_class": True, "pooling": "cls_mean"}).eval()
    tokens = torch.randn(1, 1 + 4 + 16, 32)
    pooled = model.pool(tokens)
    assert torch.allclose(pooled, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], -1))


def test_old_model_files_load_and_predict_unchanged(tmp_path):
    """A file written before the family options (its config JSON lacks them) still loads as
    the plain ViT and gives the same logits."""
    model = _model({}).eval()
    path = save_model(tmp_path / "new.safetensors", model)
    header, metadata = read_header(path)
    config = json.loads(metadata["config"])
    new_fields = {"reg_tokens", "distilled", "no_embed_class", "patch_bias", "pre_norm",
                  "init_values", "qk_norm", "mlp_act", "final_norm", "fc_norm",
                  "pos_embed_antialias"}
    assert new_fields <= set(config)
    old = {k: v for k, v in config.items() if k not in new_fields}
    from safetensors.torch import load_file

    save_tensors(tmp_path / "old.safetensors", load_file(str(path)),
                 {**metadata, "config": json.dumps(old)})
    loaded = load_model(tmp_path / "old.safetensors")
    assert loaded.config == model.config
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


@pytest.mark.parametrize("changes, words", [
    ({"pooling": "cls_mean", "class_token": False}, "needs class_token"),
    ({"distilled": True, "pooling": "mean"}, "distillation token"),
    ({"mlp_act": "swiglu"}, "mlp_act"),
    ({"reg_tokens": -1}, "reg_tokens"),
    ({"init_values": -0.1}, "layer scale"),
    ({"pooling": "avgmax"}, "pooling"),
])
def test_impossible_family_options_are_refused(changes, words):
    with pytest.raises(UsageError, match=words):
        ViTConfig(**{**BASE, **changes})


@pytest.mark.parametrize("family", ["dinov2-reg", "siglip", "deit-distilled"])
def test_explanations_cover_the_patches_of_every_token_layout(family):
    """Attention rollout reads past the class, distillation and register tokens."""
    from vitcli.model.checkpoint import ModelFile, default_preprocessing
    from vitcli.model.explain import attention_maps

    model = _model(FAMILIES[family]).eval()
    mf = ModelFile(model=model, config=model.config, class_names=[str(i) for i in range(5)],
                   preprocessing=default_preprocessing(model.config))
    rollout, last, _ = attention_maps(mf, torch.randn(1, 3, 32, 32).numpy())
    assert rollout.shape == last.shape == (1, 4, 4)
    assert abs(rollout.sum() - 1) < 1e-5 and abs(last.sum() - 1) < 1e-5
