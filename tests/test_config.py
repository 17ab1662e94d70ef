"""ViTConfig, the preset table, parameter counts and GFLOPs."""

from __future__ import annotations

import pytest
import torch

from vitcli.errors import UsageError
from vitcli.model.config import ViTConfig, count_macs, count_params, gflops, nearest_sizes
from vitcli.model.presets import PRESETS, get_preset
from vitcli.model.vit import VisionTransformer, num_params

# Published counts at 224 px with a 1000-class head, as timm counts them.
PUBLISHED = {
    "vit-ti16": 5_717_416,
    "vit-s16": 22_050_664,
    "vit-b16": 86_567_656,
    "vit-b32": 88_224_232,
    "vit-l16": 304_326_632,
    "vit-h14": 632_045_800,
}
VIT_H14_HEADLESS = 630_764_800  # timm's figure for vit_huge_patch14_224 (num_classes=0)


def meta_model(config: ViTConfig) -> VisionTransformer:
    """The real module tree on the meta device: exact shapes, no memory, no init time."""
    with torch.device("meta"):
        return VisionTransformer(config)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_parameter_counts(name):
    config = get_preset(name).config.replace(num_classes=1000)
    assert config.image_size == 224
    assert count_params(config) == PUBLISHED[name]
    assert num_params(meta_model(config)) == PUBLISHED[name]


def test_vit_h14_headless_count_matches_timm():
    config = get_preset("vit-h14").config.replace(num_classes=0)
    assert count_params(config) == VIT_H14_HEADLESS
    assert num_params(meta_model(config)) == VIT_H14_HEADLESS


@pytest.mark.parametrize("changes", [
    {}, {"pos_embed": "sincos"}, {"patch_embed": "overlap"}, {"patch_embed": "shifted"},
    {"locality_attention": True}, {"class_token": False, "pooling": "mean"},
    {"qkv_bias": False}, {"num_classes": 0}, {"in_channels": 1},
])
def test_count_params_agrees_with_modules_for_every_option(changes):
    base = dict(image_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=7)
    config = ViTConfig(**{**base, **changes})
    assert count_params(config) == num_params(VisionTransformer(config))


def test_vit_b16_gflops_match_published_macs():
    # timm/fvcore report 17.58 GMACs for ViT-B/16 at 224 px; we count matmuls only.
    config = get_preset("vit-b16").config
    assert count_macs(config) == pytest.approx(17.58e9, rel=0.01)
    assert gflops(config) == pytest.approx(2 * count_macs(config) / 1e9)
    assert gflops(config, image_size=384) > 3 * gflops(config)  # attention grows as N²


def test_json_round_trip_keeps_every_field():
    config = ViTConfig(image_size=48, patch_size=8, pooling="mean", class_token=False,
                       pos_embed="sincos", drop_path=0.1, patch_embed="shifted",
                       locality_attention=True, num_classes=3)
    assert ViTConfig.from_json(config.to_json()) == config


def test_from_dict_ignores_keys_from_newer_versions():
    data = {**ViTConfig().to_dict(), "some_future_option": 3}
    assert ViTConfig.from_dict(data) == ViTConfig()


def test_size_not_divisible_names_nearest_valid_sizes():
    with pytest.raises(UsageError, match="nearest valid sizes: 224 or 240"):
        ViTConfig(image_size=225, patch_size=16)
    assert nearest_sizes(225, 16) == [224, 240]
    assert nearest_sizes(5, 16) == [16]


def test_patch_larger_than_the_image_says_so():
    with pytest.raises(UsageError, match="patch size 300 is larger than the 224 px input; "
                       "use a patch of at most 224 px"):
        ViTConfig(image_size=224, patch_size=300)


@pytest.mark.parametrize("changes, message", [
    ({"embed_dim": 30, "num_heads": 4}, "not divisible by num_heads"),
    ({"pooling": "max"}, "pooling must be"),
    ({"class_token": False}, "needs class_token"),
    ({"pos_embed": "rope"}, "pos_embed must be"),
    ({"patch_embed": "conv"}, "patch_embed must be"),
    ({"patch_size": 0}, "positive"),
    ({"num_heads": 0}, "num_heads must be at least 1"),
    ({"depth": 0}, "depth must be at least 1"),
    ({"in_channels": 0}, "in_channels must be at least 1"),
    ({"num_classes": -1}, "num_classes must be 0"),
    ({"mlp_ratio": 0.0}, "mlp_ratio and layer_norm_eps must be positive"),
    ({"drop_path": 1.0}, r"drop_path must be in \[0, 1\)"),
    ({"patch_drop": 1.0}, r"patch_drop must be in \[0, 1\)"),
    ({"patch_drop": -0.1}, r"patch_drop must be in \[0, 1\)"),
])
def test_impossible_configs_are_usage_errors(changes, message):
    with pytest.raises(UsageError, match=message):
        ViTConfig(**changes)


def test_replace_refuses_unknown_options():
    with pytest.raises(UsageError, match="unknown model option"):
        ViTConfig().replace(widht=3)


def test_preset_names_are_forgiving_and_unknown_ones_list_choices():
    assert get_preset("ViT-B/16").name == "vit-b16"
    assert get_preset("vit_ti16").name == "vit-ti16"
    with pytest.raises(UsageError, match="vit-b16"):
        get_preset("vit-xl")


def test_every_preset_is_valid_and_has_whole_tokens():
    for preset in PRESETS.values():
        c = preset.config
        assert c.image_size % c.patch_size == 0
        assert c.num_tokens == (c.image_size // c.patch_size) ** 2 + 1
        assert c.patch_dim == c.patch_size**2 * 3


@pytest.mark.parametrize("kind", ["linear", "overlap", "shifted"])
def test_token_input_dim_is_what_the_patch_embedding_projects(kind):
    config = ViTConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                       patch_embed=kind)
    proj = VisionTransformer(config).patch_embed.proj
    weight = proj.weight  # Linear (D, in) or Conv2d (D, C, k, k)
    assert config.token_input_dim == weight[0].numel()
    assert (config.token_input_dim == config.patch_dim) == (kind == "linear")


def test_patch_dropout_shortens_the_training_sequence_and_its_cost_not_inferences():
    """A training step with patch_drop sees K of the N patches (at least one); inference, the
    parameter count and files written before the field are unchanged."""
    from vitcli.model.config import call_macs

    base = ViTConfig(image_size=28, patch_size=4, embed_dim=64, depth=4, num_heads=2,
                     num_classes=10)
    dropping = base.replace(patch_drop=0.5)
    assert (base.train_tokens, dropping.train_tokens) == (50, 25)  # 49 patches → 24 kept
    assert base.replace(patch_drop=0.999).train_tokens == 2  # one patch, never none
    assert count_params(dropping) == count_params(base)
    assert count_macs(dropping) == count_macs(base) == count_macs(base, training=True)
    assert count_macs(dropping, training=True) < 0.6 * count_macs(dropping)
    assert call_macs(dropping, 8, training=True) == 3 * 8 * count_macs(dropping, training=True)
    old_file = {k: v for k, v in dropping.to_dict().items() if k != "patch_drop"}
    assert ViTConfig.from_dict(old_file).patch_drop == 0.0


def test_memory_estimate_counts_the_tokens_a_training_step_keeps():
    """--batch-size's memory check weighs a patch-dropout step by the tokens its blocks hold
    (attention grows with their square), not by every patch; inference by every patch."""
    from vitcli.model.config import activation_bytes

    base = ViTConfig(image_size=224, patch_size=8, embed_dim=192, depth=12, num_heads=3)
    dropping = base.replace(patch_drop=0.75)  # 784 patches → 196 kept
    full, kept = activation_bytes(base, 32), activation_bytes(dropping, 32)
    assert kept < 0.3 * full  # blocks hold a quarter of the tokens, attention a sixteenth
    assert kept > activation_bytes(base.replace(image_size=112), 32)  # the embedding holds all
    assert (activation_bytes(dropping, 32, training=False)
            == activation_bytes(base, 32, training=False))


def test_docs_vit_pico_training_step_figures_match_call_macs():
    """The docs' GMAC figures for vit-pico's bf16 choice are what call_macs gives now (the
    7×7 grid with patch dropout), not the 5×5 grid's 5.3 GMAC; the small-data benchmark's
    MNIST images are grey, so the model there has 1 channel."""
    import math
    from pathlib import Path

    from vitcli.model.config import call_macs

    pico = get_preset("vit-pico").config.replace(num_classes=10)
    grey, colour = pico.replace(in_channels=1), pico.replace(in_channels=3)
    gmac = {c: call_macs(cfg, 256, training=True) / 1e9 for c, cfg in (("grey", grey),
                                                                     ("colour", colour))}
    least = {c: math.ceil(1e9 / call_macs(cfg, 1, training=True))
             for c, cfg in (("grey", grey), ("colour", colour))}
    assert (f"{gmac['grey']:.1f}", f"{gmac['colour']:.1f}") == ("3.0", "3.3")
    assert (least["grey"], least["colour"]) == (87, 77)
    docs = Path(__file__).parent.parent / "docs"
    small = (docs / "small-data.md").read_text()
    assert "5.3-GMAC" not in small and "vit-pico's 3.0-GMAC training step" in small
    assert "3.0 GMAC at batch 256 on these grey images (3.3 in colour)" in small
    training = (docs / "training.md").read_text()
    assert "3.3 GMAC with patch dropout on 28-px colour images, 3.0 on grey" in training
    assert "below batch 77 on 28-px colour images, 87 on grey" in training
