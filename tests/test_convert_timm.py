"""timm state dicts and big_vision .npz files of the pretrained families, against their source.

timm cannot be installed here, so each test builds the family's transformers model with small
random weights, maps its weights into timm's names (or big_vision's .npz layout) with its own
code written from timm's vision_transformer.py / deit.py and big_vision's models/vit.py (not
vitcli's), saves them with a timm-style config.json, converts with `vit convert`, and checks
on generated non-square images that vitcli gives the transformers model's features or
probabilities within 1e-4, under the preprocessing the timm cfg specifies, computed here with
PIL and numpy by timm's eval rules (transforms_imagenet_eval: resize to
floor(size / crop_pct), the shorter side (torchvision: long side truncated) or both sides
('squash'), centre crop at round((h - size) / 2), x / 255, (x - mean) / std).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from vitcli.cli import app
from vitcli.errors import VitError

runner = CliRunner()
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             image_size=28, patch_size=7)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INTERP = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


# ---------------------------------------------------------------- timm's eval transform, here


def timm_eval(image: Image.Image, cfg: dict) -> np.ndarray:
    """timm's transforms_imagenet_eval for a pretrained_cfg: (C, H, W) float32."""
    size = cfg["input_size"][-1]
    scale = math.floor(size / cfg["crop_pct"])
    interp = INTERP[cfg["interpolation"]]
    w, h = image.size
    if cfg.get("crop_mode") == "squash":
        image = image.resize((scale, scale), interp)
    else:  # torchvision Resize(int): the shorter side to `scale`, the longer truncated
        new = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
        if new != (w, h):
            image = image.resize(new, interp)
    w, h = image.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(cfg["mean"], np.float32)) / np.asarray(cfg["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def photos(folder: Path) -> list[Path]:
    """Generated non-square photos: smooth colour fields with shapes, 61×43 and 37×70 px."""
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate([(61, 43), (37, 70), (50, 50)]):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(xx / (5 + 3 * c) + c + i) * np.cos(yy / 7.0)
                         for c in range(3)], -1)
        image = Image.fromarray(((base + 1) * 110 + rng.integers(0, 30, (h, w, 3)))
                                .clip(0, 255).astype(np.uint8))
        ImageDraw.Draw(image).ellipse((w // 4, h // 5, w // 2, h // 2), fill=(240, 30, 60))
        paths.append(folder / f"photo{i}.png")
        image.save(paths[-1])
    return paths


def timm_folder(folder: Path, state: dict[str, torch.Tensor], architecture: str,
                pretrained_cfg: dict, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    (folder / "config.json").write_text(json.dumps({
        "architecture": architecture, "num_classes": num_classes,
        "model_args": {"num_heads": SMALL["num_attention_heads"]},  # widths outside the table
        "pretrained_cfg": {**pretrained_cfg, "num_classes": num_classes}, **extra}))
    return folder


def convert(folder: Path, tmp_path: Path):
    from vitcli.model.checkpoint import load_model

    out = tmp_path / "converted.safetensors"
    result = runner.invoke(app, ["convert", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return load_model(out), out


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Random values everywhere (norms and tokens included), so no mapping error hides."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.2 if p.ndim > 1 else 0.5)
                    + (1.0 if p.ndim == 1 and p.shape[0] == SMALL["hidden_size"] else 0.0))
    return model.eval()


# ------------------------------------------------- transformers → timm names (from timm's code)


def _qkv(prefix: str, sd: dict, names=("q_proj", "k_proj", "v_proj")) -> dict[str, torch.Tensor]:
    """timm's fused qkv: query, key and value weights stacked in that order (3D, D)."""
    return {"attn.qkv.weight": torch.cat([sd[f"{prefix}{n}.weight"] for n in names]),
            "attn.qkv.bias": torch.cat([sd[f"{prefix}{n}.bias"] for n in names])}


def dinov2_to_timm(sd: dict, depth: int, registers: bool) -> dict[str, torch.Tensor]:
    """timm's _convert_dinov2 applied to transformers' Dinov2(WithRegisters)Model names."""
    e = "embeddings."
    out = {"patch_embed.proj.weight": sd[e + "patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd[e + "patch_embeddings.projection.bias"],
           "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
    pos, cls = sd[e + "position_embeddings"], sd[e + "cls_token"]
    if registers:  # timm: no_embed_class; the class token's position folded into it
        out.update(reg_token=sd[e + "register_tokens"], cls_token=cls + pos[:, :1],
                   pos_embed=pos[:, 1:])
    else:
        out.update(cls_token=cls, pos_embed=pos)
    for i in range(depth):
        p, b = f"encoder.layer.{i}.", f"blocks.{i}."
        block = {"norm1.weight": sd[p + "norm1.weight"], "norm1.bias": sd[p + "norm1.bias"],
                 **_qkv(p + "attention.", sd),
                 "attn.proj.weight": sd[p + "attention.o_proj.weight"],
                 "attn.proj.bias": sd[p + "attention.o_proj.bias"],
                 "ls1.gamma": sd[p + "layer_scale1.lambda1"],
                 "norm2.weight": sd[p + "norm2.weight"], "norm2.bias": sd[p + "norm2.bias"],
                 "mlp.fc1.weight": sd[p + "mlp.fc1.weight"], "mlp.fc1.bias": sd[p + "mlp.fc1.bias"],
                 "mlp.fc2.weight": sd[p + "mlp.fc2.weight"], "mlp.fc2.bias": sd[p + "mlp.fc2.bias"],
                 "ls2.gamma": sd[p + "layer_scale2.lambda1"]}
        out.update({b + k: v for k, v in block.items()})
    return out


def clip_siglip_blocks(sd: dict, depth: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(depth):
        p, b = f"encoder.layers.{i}.", f"blocks.{i}."
        block = {"norm1.weight": sd[p + "layer_norm1.weight"],
                 "norm1.bias": sd[p + "layer_norm1.bias"], **_qkv(p + "self_attn.", sd),
                 "attn.proj.weight": sd[p + "self_attn.out_proj.weight"],
                 "attn.proj.bias": sd[p + "self_attn.out_proj.bias"],
                 "norm2.weight": sd[p + "layer_norm2.weight"],
                 "norm2.bias": sd[p + "layer_norm2.bias"],
                 **{f"mlp.{n}.{t}": sd[f"{p}mlp.{n}.{t}"] for n in ("fc1", "fc2")
                    for t in ("weight", "bias")}}
        out.update({b + k: v for k, v in block.items()})
    return out


def clip_to_timm(sd: dict, depth: int) -> dict[str, torch.Tensor]:
    """timm's _convert_openai_clip, on transformers' CLIPVisionModel names."""
    sd = {k.removeprefix("vision_model."): v for k, v in sd.items()}
    e = "embeddings."
    return {"cls_token": sd[e + "class_embedding"].reshape(1, 1, -1),
            "pos_embed": sd[e + "position_embedding.weight"].unsqueeze(0),
            "patch_embed.proj.weight": sd[e + "patch_embedding.weight"],  # no bias (pre_norm)
            "norm_pre.weight": sd["pre_layrnorm.weight"], "norm_pre.bias": sd["pre_layrnorm.bias"],
            "norm.weight": sd["post_layernorm.weight"], "norm.bias": sd["post_layernorm.bias"],
            **clip_siglip_blocks(sd, depth)}


def siglip_to_timm(sd: dict, depth: int) -> dict[str, torch.Tensor]:
    """transformers' SiglipVisionModel in timm's vit_*_siglip_* names (MAP head = attn_pool)."""
    sd = {k.removeprefix("vision_model."): v for k, v in sd.items()}
    e, h = "embeddings.", "head."
    D = sd[e + "patch_embedding.bias"].shape[0]
    in_w, in_b = sd[h + "attention.in_proj_weight"], sd[h + "attention.in_proj_bias"]
    return {"patch_embed.proj.weight": sd[e + "patch_embedding.weight"],
            "patch_embed.proj.bias": sd[e + "patch_embedding.bias"],
            "pos_embed": sd[e + "position_embedding.weight"].unsqueeze(0),
            "norm.weight": sd["post_layernorm.weight"], "norm.bias": sd["post_layernorm.bias"],
            "attn_pool.latent": sd[h + "probe"],
            "attn_pool.q.weight": in_w[:D], "attn_pool.q.bias": in_b[:D],
            "attn_pool.kv.weight": in_w[D:], "attn_pool.kv.bias": in_b[D:],
            "attn_pool.proj.weight": sd[h + "attention.out_proj.weight"],
            "attn_pool.proj.bias": sd[h + "attention.out_proj.bias"],
            "attn_pool.norm.weight": sd[h + "layernorm.weight"],
            "attn_pool.norm.bias": sd[h + "layernorm.bias"],
            **{f"attn_pool.mlp.{n}.{t}": sd[f"{h}mlp.{n}.{t}"] for n in ("fc1", "fc2")
               for t in ("weight", "bias")},
            **clip_siglip_blocks(sd, depth)}


def deit_to_timm(sd: dict, depth: int) -> dict[str, torch.Tensor]:
    """transformers' DeiTForImageClassificationWithTeacher in timm's deit_*_distilled_* names."""
    e = "deit.embeddings."
    out = {"cls_token": sd[e + "cls_token"], "dist_token": sd[e + "distillation_token"],
           "pos_embed": sd[e + "position_embeddings"],
           "patch_embed.proj.weight": sd[e + "patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd[e + "patch_embeddings.projection.bias"],
           "norm.weight": sd["deit.layernorm.weight"], "norm.bias": sd["deit.layernorm.bias"],
           "head.weight": sd["cls_classifier.weight"], "head.bias": sd["cls_classifier.bias"],
           "head_dist.weight": sd["distillation_classifier.weight"],
           "head_dist.bias": sd["distillation_classifier.bias"]}
    for i in range(depth):
        p, b = f"deit.layers.{i}.", f"blocks.{i}."
        block = {"norm1.weight": sd[p + "layernorm_before.weight"],
                 "norm1.bias": sd[p + "layernorm_before.bias"], **_qkv(p + "attention.", sd),
                 "attn.proj.weight": sd[p + "attention.o_proj.weight"],
                 "attn.proj.bias": sd[p + "attention.o_proj.bias"],
                 "norm2.weight": sd[p + "layernorm_after.weight"],
                 "norm2.bias": sd[p + "layernorm_after.bias"],
                 **{f"mlp.{n}.{t}": sd[f"{p}mlp.{n}.{t}"] for n in ("fc1", "fc2")
                    for t in ("weight", "bias")}}
        out.update({b + k: v for k, v in block.items()})
    return out


# ------------------------------------------------------------------------------- the families

CFG = {"input_size": [3, 28, 28], "crop_pct": 0.875, "crop_mode": "center",
       "interpolation": "bicubic", "mean": list(MEAN), "std": list(STD)}


def _onnx_output(model_path: Path, x: torch.Tensor) -> torch.Tensor:
    """The exported .onnx file's output (logits, or features without a head) for `x`."""
    from vitcli.deploy.backends import open_backend
    from vitcli.deploy.export import export_onnx

    onnx_path = model_path.with_suffix(".onnx")
    if not onnx_path.exists():
        export_onnx(model_path, onnx_path)
    return torch.from_numpy(open_backend(onnx_path).logits(x.numpy()))


def _features_match(loaded, hf_pooled, hf_tokens, cfg: dict, paths: list[Path],
                    tokens_of=None, model_path: Path | None = None) -> None:
    """vitcli's preprocessing equals timm's rule; its tokens and pooled features equal the
    transformers model's on every photo (1e-4), and so does the exported ONNX file's output
    (`model_path`): the source's features without a head, the PyTorch logits with one."""
    model = loaded.model.eval()
    for path in paths:
        image = Image.open(path).convert("RGB")
        ours = loaded.preprocessing(image)
        ref = timm_eval(image, cfg)
        np.testing.assert_allclose(ours, ref, atol=1e-6, err_msg=f"preprocessing, {path.name}")
        x = torch.from_numpy(ref)[None]
        with torch.no_grad():
            tokens = model.forward_features(x)
            pooled = model.forward_head(tokens, pre_logits=True)
            torch.testing.assert_close(pooled, hf_pooled(x), atol=1e-4, rtol=1e-4)
            if hf_tokens is not None:
                torch.testing.assert_close(tokens, hf_tokens(x), atol=1e-4, rtol=1e-4)
            if model_path is not None:
                want = hf_pooled(x) if loaded.config.num_classes == 0 else model(x)
                torch.testing.assert_close(_onnx_output(model_path, x), want, atol=1e-4,
                                           rtol=1e-4)


@pytest.mark.parametrize("registers", [False, True])
def test_timm_dinov2_features_equal_transformers(tmp_path, registers):
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    config_cls, model_cls = ((Dinov2WithRegistersConfig, Dinov2WithRegistersModel) if registers
                             else (Dinov2Config, Dinov2Model))
    hf = perturb(model_cls(config_cls(**SMALL)))
    state = dinov2_to_timm(hf.state_dict(), 2, registers)
    arch = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    folder = timm_folder(tmp_path / "dinov2", state, arch, CFG, global_pool="token")
    loaded, out = convert(folder, tmp_path)
    c = loaded.config
    assert (c.init_values > 0, c.reg_tokens, c.no_embed_class) == (True, 4 * registers,
                                                                   registers)
    _features_match(loaded, lambda x: hf(pixel_values=x).pooler_output,
                    lambda x: hf(pixel_values=x).last_hidden_state, CFG,
                    photos(tmp_path / "photos"), model_path=out)


def test_timm_clip_quickgelu_probabilities_equal_transformers(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    hf = perturb(CLIPVisionModel(CLIPVisionConfig(**SMALL)))  # quick_gelu, eps 1e-5: OpenAI's
    state = clip_to_timm(hf.state_dict(), 2)
    torch.manual_seed(2)  # a small head: probabilities far from 0 and 1, so errors show
    state["head.weight"], state["head.bias"] = torch.randn(3, 32) * 0.05, torch.randn(3) * 0.1
    cfg = {**CFG, "interpolation": "bicubic", "crop_pct": 0.9,
           "mean": [0.4815, 0.4578, 0.4082], "std": [0.2686, 0.2613, 0.2758]}
    folder = timm_folder(tmp_path / "clip", state, "vit_base_patch16_clip_quickgelu_224", cfg,
                         global_pool="token", label_names=["a", "b", "c"])
    loaded, out = convert(folder, tmp_path)
    c = loaded.config
    assert (c.pre_norm, c.patch_bias, c.mlp_act, c.layer_norm_eps) == (True, False,
                                                                       "quick_gelu", 1e-5)
    paths = photos(tmp_path / "photos")
    _features_match(loaded, lambda x: hf(pixel_values=x).pooler_output, None, cfg, paths,
                    model_path=out)
    # vit predict's probabilities: the softmax of the head on CLIP's pooled output.
    result = runner.invoke(app, ["predict", *map(str, paths), "--model", str(out), "--topk", "3",
                                 "--json"])
    assert result.exit_code == 0, result.output
    rows = {Path(r["image"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    for path in paths:
        row = rows[path.name]
        x = torch.from_numpy(timm_eval(Image.open(path).convert("RGB"), cfg))[None]
        with torch.no_grad():
            probs = torch.softmax(hf(pixel_values=x).pooler_output @ state["head.weight"].T
                                  + state["head.bias"], -1)[0]
        assert 0.05 < float(probs.min()) and float(probs.max()) < 0.9  # not saturated
        got = {p["label"]: p["probability"] for p in row["topk"]}
        for i, name in enumerate("abc"):
            assert got[name] == pytest.approx(float(probs[i]), abs=1e-4)


def test_timm_siglip_map_head_features_equal_transformers(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    hf = perturb(SiglipVisionModel(SiglipVisionConfig(**SMALL)))  # gelu_pytorch_tanh
    state = siglip_to_timm(hf.state_dict(), 2)
    cfg = {**CFG, "crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bicubic",
           "mean": [0.5] * 3, "std": [0.5] * 3}
    # A SigLIP 2 tower name: timm builds those with act_layer='gelu_tanh', as transformers does.
    folder = timm_folder(tmp_path / "siglip", state, "vit_so400m_patch16_siglip_256", cfg,
                         global_pool="map")
    loaded, out = convert(folder, tmp_path)
    c = loaded.config
    assert (c.pooling, c.class_token, c.mlp_act) == ("map", False, "gelu_tanh")
    _features_match(loaded, lambda x: hf(pixel_values=x).pooler_output,
                    lambda x: hf(pixel_values=x).last_hidden_state, cfg,
                    photos(tmp_path / "photos"), model_path=out)


def test_timm_deit_distilled_logits_equal_transformers(tmp_path):
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    hf = perturb(DeiTForImageClassificationWithTeacher(DeiTConfig(
        **SMALL, num_labels=4, layer_norm_eps=1e-6)))  # timm's DeiT: LayerNorm eps 1e-6
    state = deit_to_timm(hf.state_dict(), 2)
    cfg = {**CFG, "crop_pct": 0.875, "interpolation": "bicubic"}
    folder = timm_folder(tmp_path / "deit", state, "deit_small_distilled_patch16_224", cfg)
    loaded, out = convert(folder, tmp_path)
    assert loaded.config.distilled
    for path in photos(tmp_path / "photos"):
        image = Image.open(path).convert("RGB")
        np.testing.assert_allclose(loaded.preprocessing(image), timm_eval(image, cfg), atol=1e-6)
        x = torch.from_numpy(timm_eval(image, cfg))[None]
        with torch.no_grad():  # DeiT at inference: the mean of the class and distillation heads
            torch.testing.assert_close(loaded.model(x), hf(pixel_values=x).logits,
                                       atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(_onnx_output(out, x), hf(pixel_values=x).logits,
                                       atol=1e-4, rtol=1e-4)


def test_timm_deit3_layer_scale_no_embed_class(tmp_path):
    """DeiT III: layer scale and no position for the class token (timm's deit3_* args). Built
    from a DINOv2 model's weights with the class position folded in, plus a head on its
    pooled output."""
    from transformers import Dinov2Config, Dinov2Model

    hf = perturb(Dinov2Model(Dinov2Config(**SMALL)))
    state = dinov2_to_timm(hf.state_dict(), 2, registers=False)
    state["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]
    state["pos_embed"] = state["pos_embed"][:, 1:]
    torch.manual_seed(3)
    state["head.weight"], state["head.bias"] = torch.randn(5, 32), torch.randn(5)
    cfg = {**CFG, "crop_pct": 1.0}
    folder = timm_folder(tmp_path / "deit3", state, "deit3_small_patch16_224", cfg)
    loaded, out = convert(folder, tmp_path)
    assert loaded.config.no_embed_class and loaded.config.init_values > 0
    for path in photos(tmp_path / "photos"):
        x = torch.from_numpy(timm_eval(Image.open(path).convert("RGB"), cfg))[None]
        with torch.no_grad():
            expected = hf(pixel_values=x).pooler_output @ state["head.weight"].T \
                + state["head.bias"]
            torch.testing.assert_close(loaded.model(x), expected, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(_onnx_output(out, x), expected, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------- big_vision .npz (SigLIP MAP)


def siglip_to_big_vision(sd: dict, depth: int, heads: int) -> dict[str, np.ndarray]:
    """transformers' SiglipVisionModel in big_vision's two-tower .npz layout (models/vit.py:
    embedding, pos_embedding, Transformer/encoderblock_i/{LayerNorm_0,
    MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0}, Transformer/encoder_norm,
    MAPHead_0), under params/img/, beside a text tower and the temperature and bias."""
    sd = {k.removeprefix("vision_model."): v.detach().numpy() for k, v in sd.items()}
    D = sd["embeddings.patch_embedding.bias"].shape[0]
    hd = D // heads

    def attention(prefix: str, q, k, v, qb, kb, vb, out_w, out_b) -> dict[str, np.ndarray]:
        """Flax MultiHeadDotProductAttention: kernels (D, nh, hd), out (nh, hd, D)."""
        w = {}
        for name, weight, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            w[f"{prefix}{name}/kernel"] = weight.T.reshape(D, heads, hd)
            w[f"{prefix}{name}/bias"] = bias.reshape(heads, hd)
        w[f"{prefix}out/kernel"] = out_w.T.reshape(heads, hd, D)
        w[f"{prefix}out/bias"] = out_b
        return w

    w = {"embedding/kernel": sd["embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["embeddings.patch_embedding.bias"],
         "pos_embedding": sd["embeddings.position_embedding.weight"][None],
         "Transformer/encoder_norm/scale": sd["post_layernorm.weight"],
         "Transformer/encoder_norm/bias": sd["post_layernorm.bias"]}
    for i in range(depth):
        p, b = f"Transformer/encoderblock_{i}/", f"encoder.layers.{i}."
        a = b + "self_attn."
        w.update(attention(p + "MultiHeadDotProductAttention_0/",
                           *(sd[f"{a}{n}_proj.weight"] for n in "qkv"),
                           *(sd[f"{a}{n}_proj.bias"] for n in "qkv"),
                           sd[a + "out_proj.weight"], sd[a + "out_proj.bias"]))
        for ln, name in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
            w[f"{p}{ln}/scale"], w[f"{p}{ln}/bias"] = sd[b + name + ".weight"], sd[b + name + ".bias"]
        for j in (0, 1):
            w[f"{p}MlpBlock_0/Dense_{j}/kernel"] = sd[f"{b}mlp.fc{j + 1}.weight"].T
            w[f"{p}MlpBlock_0/Dense_{j}/bias"] = sd[f"{b}mlp.fc{j + 1}.bias"]
    h = "head."
    in_w, in_b = sd[h + "attention.in_proj_weight"], sd[h + "attention.in_proj_bias"]
    w["MAPHead_0/probe"] = sd[h + "probe"]
    w.update(attention("MAPHead_0/MultiHeadDotProductAttention_0/", in_w[:D], in_w[D:2 * D],
                       in_w[2 * D:], in_b[:D], in_b[D:2 * D], in_b[2 * D:],
                       sd[h + "attention.out_proj.weight"], sd[h + "attention.out_proj.bias"]))
    w["MAPHead_0/LayerNorm_0/scale"] = sd[h + "layernorm.weight"]
    w["MAPHead_0/LayerNorm_0/bias"] = sd[h + "layernorm.bias"]
    for j in (0, 1):
        w[f"MAPHead_0/MlpBlock_0/Dense_{j}/kernel"] = sd[f"{h}mlp.fc{j + 1}.weight"].T
        w[f"MAPHead_0/MlpBlock_0/Dense_{j}/bias"] = sd[f"{h}mlp.fc{j + 1}.bias"]
    arrays = {f"params/img/{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in w.items()}
    arrays["params/txt/Embed_0/embedding"] = np.zeros((10, D), np.float32)
    arrays["params/t"], arrays["params/b"] = np.ones(1, np.float32), np.zeros(1, np.float32)
    return arrays


def test_big_vision_siglip_npz_map_head_features_equal_transformers(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from vitcli.model.checkpoint import load_model

    hf = perturb(SiglipVisionModel(SiglipVisionConfig(**SMALL)))
    arrays = siglip_to_big_vision(hf.state_dict(), 2, SMALL["num_attention_heads"])
    npz = tmp_path / "siglip.npz"
    np.savez(npz, **arrays)
    out = tmp_path / "siglip.safetensors"
    result = runner.invoke(app, ["convert", str(npz), "--out", str(out), "--heads", "2"])
    assert result.exit_code == 0, result.output
    assert "image tower (img/) kept, b, t, txt dropped" in " ".join(result.output.split())
    loaded = load_model(out)
    c = loaded.config
    assert (c.pooling, c.class_token, c.mlp_act, c.layer_norm_eps) == ("map", False,
                                                                       "gelu_tanh", 1e-6)
    x = torch.rand(3, 3, 28, 28) * 2 - 1  # big_vision's value range
    with torch.no_grad():
        tokens = loaded.model.forward_features(x)
        torch.testing.assert_close(tokens, hf(pixel_values=x).last_hidden_state, atol=1e-4,
                                   rtol=1e-4)
        torch.testing.assert_close(loaded.model.forward_head(tokens, pre_logits=True),
                                   hf(pixel_values=x).pooler_output, atol=1e-4, rtol=1e-4)
        # The ONNX file: the pooled features without a head, the PyTorch logits with one.
        want = (hf(pixel_values=x).pooler_output if loaded.config.num_classes == 0
                else loaded.model(x))
        torch.testing.assert_close(_onnx_output(out, x), want, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------- refusals


def _dinov2_state() -> dict[str, torch.Tensor]:
    from transformers import Dinov2Config, Dinov2Model

    return dinov2_to_timm(Dinov2Model(Dinov2Config(**SMALL)).state_dict(), 2, False)


@pytest.mark.parametrize("architecture, change, named", [
    # config.json says DINOv2 (layer scale) but the weights have none: refused, not half-loaded
    ("vit_small_patch14_dinov2", lambda s: {k: v for k, v in s.items() if ".ls" not in k},
     "missing weights for a ViT with layer scale as config.json: vit_small_patch14_dinov2"),
    # says registers, holds none
    ("vit_small_patch14_reg4_dinov2", lambda s: s, "vit_small_patch14_reg4_dinov2"),
    # says SigLIP (MAP head, no class token), holds a DINOv2
    ("vit_base_patch16_siglip_224", lambda s: s, "vit_base_patch16_siglip_224"),
    # says distilled DeiT, holds no distillation token
    ("deit_small_distilled_patch16_224", lambda s: s, "distillation token"),
])
def test_a_file_claiming_another_family_is_refused_in_one_line(tmp_path, architecture, change,
                                                                named):
    folder = timm_folder(tmp_path / "x", change(_dinov2_state()), architecture, CFG)
    out = tmp_path / "o.safetensors"
    result = runner.invoke(app, ["convert", str(folder), "--out", str(out)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize("extra, named", [
    ({"blocks.0.attn.relative_position_bias_table": torch.zeros(10, 2)},
     "relative position bias"),
    ({"blocks.0.mlp.fc1_g.weight": torch.zeros(64, 32)}, "SwiGLU"),
    ({"rope.freqs": torch.zeros(4)}, "rotary position embeddings"),
])
def test_unsupported_features_are_refused_by_name(tmp_path, extra, named):
    folder = timm_folder(tmp_path / "x", {**_dinov2_state(), **extra}, "vit_small_patch14_dinov2",
                         CFG)
    with pytest.raises(VitError, match=named):
        from vitcli.convert import load_source

        load_source(folder)


@pytest.mark.parametrize("architecture, named", [
    ("eva02_small_patch14_224", "rotary"), ("beit_base_patch16_224", "relative position"),
    ("convnext_tiny", "not a timm ViT"),
])
def test_unsupported_architectures_are_refused_by_name(tmp_path, architecture, named):
    from vitcli.convert import load_source

    folder = timm_folder(tmp_path / "x", _dinov2_state(), architecture, CFG)
    with pytest.raises(VitError, match=named):
        load_source(folder)
