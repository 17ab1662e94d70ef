"""`vit convert`: timm, transformers, npz and pickle sources give the same logits as the source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from tests.conftest import CLASSES, TINY
from vitcli.checkpoint import load_model, read_header
from vitcli.cli import app
from vitcli.convert import convert, download_from_hub, load_source, parse_labels
from vitcli.convert.hf import hf_to_timm
from vitcli.convert.npz import to_npz
from vitcli.errors import VitError
from vitcli.model import VisionTransformer, create_model

runner = CliRunner()


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Random values everywhere (norms and biases too), so every weight's mapping matters."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _hf_model(num_labels: int = 3):
    from transformers import ViTConfig as HFConfig
    from transformers import ViTForImageClassification

    cfg = HFConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, image_size=32, patch_size=8, num_labels=num_labels,
                   id2label={i: n for i, n in enumerate(CLASSES)},
                   label2id={n: i for i, n in enumerate(CLASSES)})
    return _perturb(ViTForImageClassification(cfg))


@pytest.fixture
def hf_folder(tmp_path: Path):
    """A transformers ViT saved with save_pretrained, plus a preprocessor config."""
    model = _hf_model()
    folder = tmp_path / "hf-vit"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_normalize": True,
        "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.4], "resample": 3,
        "size": {"height": 32, "width": 32}}))
    return folder, model


def _run(*args: str):
    return runner.invoke(app, ["convert", *map(str, args)])


# ---------------------------------------------------------------------- transformers


def test_transformers_folder_same_logits(tmp_path, hf_folder):
    folder, hf_model = hf_folder
    out = tmp_path / "converted.safetensors"
    result = _run(folder, "--out", out)
    assert result.exit_code == 0, result.output
    loaded = load_model(out)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = hf_model(pixel_values=x).logits
    torch.testing.assert_close(loaded.model(x), expected, atol=1e-4, rtol=1e-4)
    assert loaded.class_names == CLASSES
    assert loaded.config.layer_norm_eps == pytest.approx(1e-12)
    assert loaded.preprocessing.mean == pytest.approx((0.5, 0.4, 0.3))
    assert loaded.preprocessing.interpolation == "bicubic"
    assert "transformers ViT" in loaded.metadata["source"]


def test_peer_parity_same_weights_same_outputs():
    """minGPT-style: transformers' in-memory weights in our model give its very outputs."""
    hf_model = _hf_model()
    state, _ = hf_to_timm(dict(hf_model.state_dict()))
    model = VisionTransformer(create_model(num_classes=3, **TINY).config.replace(
        layer_norm_eps=1e-12)).eval()
    model.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = hf_model.vit(pixel_values=x).last_hidden_state  # (B, 1 + N, D), normalised
        torch.testing.assert_close(model.forward_features(x), tokens, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model(x), hf_model(pixel_values=x).logits,
                                   atol=1e-4, rtol=1e-4)


def test_transformers_weights_without_config_are_refused(tmp_path, hf_folder):
    folder, _ = hf_folder
    lone = tmp_path / "lone" / "weights.safetensors"
    lone.parent.mkdir()
    lone.write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(VitError, match="need their config.json"):
        load_source(lone)


# ---------------------------------------------------------------------------- timm


def test_timm_state_dict_round_trip_and_inference(tmp_path, tiny_model):
    _perturb(tiny_model)
    src = tmp_path / "timm.safetensors"
    save_file(tiny_model.state_dict(), str(src))  # plain timm-style file, no vitcli metadata
    result = _run(src, "--out", tmp_path / "out.safetensors", "--heads", "2",
                  "--labels", ",".join(CLASSES))
    assert result.exit_code == 0, result.output
    loaded = load_model(tmp_path / "out.safetensors")
    assert loaded.config == tiny_model.config
    assert loaded.class_names == CLASSES
    assert loaded.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))  # ImageNet
    assert loaded.metadata["source"] == "timm state dict: timm.safetensors"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.model(x), tiny_model(x))


def test_timm_config_inference_from_shapes(tmp_path):
    # Width 192 is ViT-Ti: heads come from the paper table; no class token → mean pooling.
    model = create_model(image_size=32, patch_size=16, embed_dim=192, depth=1, num_heads=3,
                         mlp_ratio=2.0, num_classes=0, class_token=False, pooling="mean",
                         qkv_bias=False)
    src = tmp_path / "ti.safetensors"
    save_file(model.state_dict(), str(src))
    config = load_source(src).config
    assert config == model.config


def test_timm_no_embed_class_gets_a_zero_slot(tmp_path, tiny_model):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    state["pos_embed"] = state["pos_embed"][:, 1:]  # (1, 16, D): class token has no position
    src = tmp_path / "nec.safetensors"
    save_file(state, str(src))
    converted = load_source(src, heads=2)
    assert converted.state["pos_embed"].shape == (1, 17, 32)
    assert torch.equal(converted.state["pos_embed"][:, 0], torch.zeros(1, 32))
    assert any("no_embed_class" in n for n in converted.notes)


def test_timm_extras_are_refused_by_name(tmp_path, tiny_model):
    state = dict(tiny_model.state_dict())
    state["blocks.0.ls1.gamma"] = torch.ones(32)
    state["reg_token"] = torch.zeros(1, 4, 32)
    save_file(state, str(tmp_path / "x.safetensors"))
    result = _run(tmp_path / "x.safetensors", "--out", tmp_path / "o.safetensors", "--heads", "2")
    assert result.exit_code == 1
    assert "layer scale (ls1/ls2)" in result.output and "register tokens" in result.output
    assert not (tmp_path / "o.safetensors").exists()


def test_unknown_width_asks_for_heads(tmp_path, tiny_model):
    save_file(tiny_model.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(VitError, match="--heads"):
        load_source(tmp_path / "w.safetensors")


# ----------------------------------------------------------------------------- npz


@pytest.mark.parametrize("layout", ["vit", "big_vision"])
def test_npz_round_trip_identical_logits(tmp_path, layout):
    model = create_model(num_classes=3, **TINY)
    if layout == "big_vision":  # big_vision's ViT: no class token, average pooling
        model = create_model(num_classes=3, class_token=False, pooling="mean", **TINY)
    _perturb(model)
    npz_path = to_npz(model, tmp_path / "vit.npz", layout=layout)
    with np.load(npz_path, allow_pickle=False) as data:
        assert ("Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel" in data.files) == (
            layout == "vit")
    path, _converted = convert(npz_path, tmp_path / "out.safetensors")
    loaded = load_model(path)
    assert loaded.config.replace(layer_norm_eps=1e-6) == model.config
    assert loaded.preprocessing.mean == (0.5, 0.5, 0.5)  # the JAX release's [-1, 1] inputs
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), model(x), atol=1e-5, rtol=1e-5)


def test_npz_pre_logits_drops_head(tmp_path, tiny_model):
    npz_path = to_npz(tiny_model, tmp_path / "in21k.npz")
    with np.load(npz_path) as data:
        arrays = dict(data)
    arrays["pre_logits/kernel"], arrays["pre_logits/bias"] = np.eye(32), np.zeros(32)
    np.savez(npz_path, **arrays)
    converted = load_source(npz_path)
    assert converted.config.num_classes == 0
    assert any("pre_logits" in n for n in converted.notes)


# -------------------------------------------------------------------------- pickle


class NotWeights:
    """An arbitrary object: weights_only loading must refuse to rebuild it."""


def test_pickle_refused_without_flag_with_the_model_file_message(tmp_path, tiny_model):
    pth = tmp_path / "model.pth"
    torch.save(tiny_model.state_dict(), pth)
    with pytest.raises(VitError) as from_reader:
        read_header(pth)
    result = _run(pth, "--out", tmp_path / "o.safetensors")
    assert result.exit_code == 1
    assert f"error: {from_reader.value}" == " ".join(result.output.split())
    assert "--allow-pickle" in result.output


def test_pickle_loaded_with_flag_through_weights_only(tmp_path, tiny_model):
    pth = tmp_path / "ckpt.pth"
    wrapped = {"model": {f"module.{k}": v for k, v in tiny_model.state_dict().items()},
               "epoch": 3}
    torch.save(wrapped, pth)
    result = _run(pth, "--allow-pickle", "--heads", "2", "--out", tmp_path / "o.safetensors")
    assert result.exit_code == 0, result.output
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(load_model(tmp_path / "o.safetensors").model(x), tiny_model(x))
    torch.save({"model": tiny_model.state_dict(), "obj": NotWeights()}, tmp_path / "evil.pth")
    with pytest.raises(VitError, match="refused by weights_only"):
        load_source(tmp_path / "evil.pth", allow_pickle=True, heads=2)


# ----------------------------------------------------------------------- hub, misc


def test_hub_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VitError, match="offline .*vit convert FOLDER"):
        download_from_hub("google/vit-base-patch16-224", cache_dir=tmp_path / "cache")
    result = _run("--from-hub", "google/vit-base-patch16-224", "--out", tmp_path / "o.safetensors")
    assert result.exit_code == 1
    assert "error: cannot download google/vit-base-patch16-224: offline" in result.output


def test_labels_and_usage_errors(tmp_path, tiny_model, tiny_model_file):
    (tmp_path / "labels.txt").write_text("a\nb\n\nc\n")
    assert parse_labels(str(tmp_path / "labels.txt")) == ["a", "b", "c"]
    assert parse_labels("x, y") == ["x", "y"]
    save_file(tiny_model.state_dict(), str(tmp_path / "t.safetensors"))
    result = _run(tmp_path / "t.safetensors", "--heads", "2", "--labels", "a,b",
                  "--out", tmp_path / "o.safetensors")
    assert result.exit_code == 2 and "2 labels given for a model with 3 classes" in result.output
    result = _run(tiny_model_file, "--out", tmp_path / "o.safetensors")
    assert result.exit_code == 2 and "already a vitcli model file" in result.output
    assert _run("--out", tmp_path / "o.safetensors").exit_code == 2  # neither source nor hub
