"""Acceptance for the transformers families: a converted file predicts what its source predicts.

For every family: the transformers model with small random weights and its OWN image
processor, saved with save_pretrained, converted with `vit convert`, then `vit predict` on
generated non-square photos through the .safetensors file and through its exported .onnx
file must give the source's probabilities (processor + model on the same PIL image) within
1e-4. Bare backbones give the source's features instead, and `vit predict` refuses them.
The negative controls show that the same check fails when a resize mode, a pooling rule or
a token is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vitcli.cli import app
from vitcli.model.checkpoint import load_model

pytest.importorskip("transformers")

TOL = 1e-4
LABELS = 5
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             image_size=32, patch_size=8)
IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


def _families() -> dict[str, tuple]:
    """name → (model class, config, processor): each family's own processor, at toy size."""
    import transformers as T

    def labelled(**kw):
        return {**kw, "num_labels": LABELS}

    crop = {"height": 32, "width": 32}
    return {
        "vit": (T.ViTForImageClassification, T.ViTConfig(**labelled(**SMALL)),
                T.ViTImageProcessorPil(size=crop)),
        "deit-teacher": (T.DeiTForImageClassificationWithTeacher,
                         T.DeiTConfig(**labelled(**SMALL)),
                         T.DeiTImageProcessorPil(size={"height": 40, "width": 40},
                                                 crop_size=crop)),
        # DINOv2's position embedding is for 64 px (its processor crops 32): resampled
        "dinov2": (T.Dinov2ForImageClassification,
                   T.Dinov2Config(**labelled(**{**SMALL, "image_size": 64})),
                   T.BitImageProcessorPil(size={"shortest_edge": 40}, crop_size=crop,
                                          **IMAGENET)),
        "dinov2-backbone": (T.Dinov2Model, T.Dinov2Config(**SMALL),
                            T.BitImageProcessorPil(size={"shortest_edge": 40}, crop_size=crop,
                                                   **IMAGENET)),
        "dinov2-registers": (T.Dinov2WithRegistersForImageClassification,
                             T.Dinov2WithRegistersConfig(**labelled(**SMALL),
                                                         num_register_tokens=4),
                             T.BitImageProcessorPil(size={"shortest_edge": 40},
                                                    crop_size=crop, **IMAGENET)),
        "clip": (T.CLIPForImageClassification,
                 T.CLIPConfig(vision_config=SMALL, num_labels=LABELS),
                 T.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=crop)),
        "clip-vision": (T.CLIPVisionModel, T.CLIPVisionConfig(**SMALL),
                        T.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=crop)),
        "siglip": (T.SiglipForImageClassification,
                   T.SiglipConfig(vision_config=SMALL, num_labels=LABELS),
                   T.SiglipImageProcessorPil(size=crop)),
        "siglip-vision": (T.SiglipVisionModel, T.SiglipVisionConfig(**SMALL),
                          T.SiglipImageProcessorPil(size=crop)),
        "vit-mae": (T.ViTMAEModel, T.ViTMAEConfig(**SMALL, mask_ratio=0.0),
                    T.ViTImageProcessorPil(size=crop)),
    }


FAMILY_NAMES = ["vit", "deit-teacher", "dinov2", "dinov2-backbone", "dinov2-registers", "clip",
                "clip-vision", "siglip", "siglip-vision", "vit-mae"]
BACKBONES = {"dinov2-backbone", "clip-vision", "siglip-vision", "vit-mae"}


def source_output(name: str, model, pixel_values: torch.Tensor) -> torch.Tensor:
    """What the source gives: probabilities, or the features a backbone's users read."""
    with torch.no_grad():
        if name == "vit-mae":  # no masking, tokens in order: the encoder's class token
            noise = torch.arange(16, dtype=torch.float32).expand(len(pixel_values), -1)
            return model(pixel_values=pixel_values, noise=noise).last_hidden_state[:, 0]
        out = model(pixel_values=pixel_values)
        if name == "dinov2-backbone":  # DINOv2's linear evaluation: class + mean patch token
            h = out.last_hidden_state
            return torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=-1)
        if name in BACKBONES:
            return out.pooler_output
        return out.logits.softmax(-1)


def photos() -> list[Image.Image]:
    """Non-square RGB images with structure (gradients, rings, noise), landscape and portrait."""
    rng = np.random.default_rng(0)
    images = []
    for w, h in ((80, 50), (47, 90)):
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([(xx * 3 + yy) % 256, (yy * 5) % 256,
                        ((xx - w // 3) ** 2 + (yy - h // 2) ** 2) % 256], -1)
        rgb = rgb + rng.integers(-30, 30, rgb.shape)
        images.append(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)))
    return images


class Family:
    """One family built, saved, converted, with the source's answers on the photos."""

    def __init__(self, name: str, root: Path) -> None:
        model_cls, config, processor = _families()[name]
        torch.manual_seed(0)
        self.model = model_cls(config).eval()
        with torch.no_grad():  # weights far from init, so that every mistake shows
            for p in self.model.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        self.name, self.processor = name, processor
        self.folder = root / name
        self.model.save_pretrained(self.folder)
        processor.save_pretrained(self.folder)
        self.images = []
        for i, image in enumerate(photos()):
            image.save(root / f"{name}-{i}.png")
            self.images.append(root / f"{name}-{i}.png")
        pixels = processor(images=[Image.open(p) for p in self.images],
                           return_tensors="pt")["pixel_values"]
        self.expected = source_output(name, self.model, pixels)  # (images, classes | D)
        self.file = root / f"{name}.safetensors"
        result = CliRunner().invoke(app, ["convert", str(self.folder), "--out", str(self.file)])
        assert result.exit_code == 0, result.output

    @property
    def headless(self) -> bool:
        return self.name in BACKBONES


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, Family]:
    root = tmp_path_factory.mktemp("families")
    return {name: Family(name, root) for name in FAMILY_NAMES}


def predict_probs(model: Path, images: list[Path]) -> np.ndarray:
    """`vit predict --json` → (images, classes) probabilities in class order."""
    result = CliRunner().invoke(app, ["predict", *map(str, images), "--model", str(model),
                                      "--json", "--topk", str(LABELS)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    probs = np.zeros((len(images), LABELS))
    for i, row in enumerate(rows):
        assert Path(row["image"]).name == images[i].name
        for entry in row["topk"]:
            probs[i, entry["index"]] = entry["probability"]
    return probs


def python_output(model_file, images: list[Path], pre=None) -> torch.Tensor:
    """The converted model's probabilities (or features) through its own preprocessing."""
    pre = pre or model_file.preprocessing
    x = torch.from_numpy(np.stack([pre.load(p) for p in images]))  # (B, C, S, S)
    with torch.no_grad():
        out = model_file.model(x)
    return out if model_file.config.num_classes == 0 else out.softmax(-1)


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_converted_file_predicts_what_its_source_predicts(families, name):
    fam = families[name]
    mf = load_model(fam.file)
    # The pixels: vitcli's preprocessing equals the family's own processor on every photo.
    ours = np.stack([mf.preprocessing.load(p) for p in fam.images])
    theirs = fam.processor(images=[Image.open(p) for p in fam.images],
                           return_tensors="np")["pixel_values"]
    assert max_diff(ours, theirs) < 1e-5
    if fam.headless:
        assert max_diff(python_output(mf, fam.images), fam.expected) < TOL
        result = CliRunner().invoke(app, ["predict", str(fam.images[0]), "--model",
                                          str(fam.file)])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
        assert "without a classification head" in result.output
    else:
        assert max_diff(predict_probs(fam.file, fam.images), fam.expected) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_exported_onnx_predicts_what_the_source_predicts_and_int8_verifies(families, name,
                                                                           tmp_path):
    from vitcli.deploy.backends import open_backend
    from vitcli.deploy.export import export_onnx

    fam = families[name]
    onnx_path = tmp_path / f"{name}.onnx"
    report = export_onnx(fam.file, onnx_path, int8=True, batch="1")
    assert report.int8_path is not None and report.int8_path.exists()
    assert report.int8_max_prob_diff is not None  # verified at int8's own tolerance
    if fam.headless:
        backend = open_backend(onnx_path)
        mf = load_model(fam.file)
        x = np.stack([mf.preprocessing.load(p) for p in fam.images])
        assert max_diff(backend.logits(x), fam.expected) < TOL
        result = CliRunner().invoke(app, ["predict", str(fam.images[0]), "--model",
                                          str(onnx_path)])
        assert result.exit_code == 1 and "without a classification head" in result.output
    else:
        assert max_diff(predict_probs(onnx_path, fam.images), fam.expected) < TOL


# --------------------------------------------------------------------- negative controls


def test_the_check_fails_with_a_wrong_resize_mode(families):
    """transformers' ViT squashes; resizing the shorter side and cropping (vitcli's old
    rule) moves the probabilities by far more than the tolerance. So does DeiT's crop
    without its squash, and CLIP's crop with vitcli's rounding of the long side."""
    import dataclasses

    for name, wrong in (("vit", {"resize_mode": "shorter"}),
                        ("deit-teacher", {"resize_mode": "shorter"}),
                        ("dinov2", {"resize_mode": "squash"})):
        fam = families[name]
        mf = load_model(fam.file)
        assert max_diff(python_output(mf, fam.images), fam.expected) < TOL
        bad = dataclasses.replace(mf.preprocessing, **wrong)
        assert max_diff(python_output(mf, fam.images, bad), fam.expected) > TOL, name


def test_the_check_fails_with_a_wrong_pooling_rule(families):
    """CLIP's and SigLIP's classifiers read the mean token: the class token (CLIP) or the
    final norm (CLIP) or the MAP head's rule would not give the source's answer."""
    fam = families["clip"]
    mf = load_model(fam.file)
    assert max_diff(python_output(mf, fam.images), fam.expected) < TOL
    mf.model.config = mf.config.replace(pooling="cls")
    assert max_diff(python_output(mf, fam.images), fam.expected) > TOL
    fam = families["dinov2"]  # class token + mean patch token; the mean alone is wrong
    mf = load_model(fam.file)
    original = mf.model.pool
    mf.model.pool = lambda x: torch.cat([x[:, 0], x[:, 0]], dim=-1)  # class token twice
    assert max_diff(python_output(mf, fam.images), fam.expected) > TOL
    mf.model.pool = original
    assert max_diff(python_output(mf, fam.images), fam.expected) < TOL


def test_the_check_fails_with_a_wrong_token(families):
    """DINOv2's registers must stay out of the mean patch token, and DeiT's distillation
    head must be averaged in: either mistake shows."""
    fam = families["dinov2-registers"]
    mf = load_model(fam.file)
    assert max_diff(python_output(mf, fam.images), fam.expected) < TOL
    mf.model.num_prefix_tokens = 1  # registers averaged in with the patches
    assert max_diff(python_output(mf, fam.images), fam.expected) > TOL
    fam = families["deit-teacher"]
    mf = load_model(fam.file)
    mf.model.head_dist = mf.model.head  # the class-token head twice: no distillation head
    assert max_diff(python_output(mf, fam.images), fam.expected) > TOL


@pytest.mark.parametrize("size", [(32, 48), (48, 32), (56, 40), (16, 24)])
def test_dinov2_interpolates_to_any_grid_as_its_source(families, size):
    """Inputs of other sizes, non-square included, shrinking included: the position
    embedding is resampled as transformers' DINOv2 does it (bicubic, no antialias)."""
    fam = families["dinov2-backbone"]
    mf = load_model(fam.file)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        h = fam.model(pixel_values=x).last_hidden_state
        ours = mf.model(x)
    assert max_diff(ours, torch.cat([h[:, 0], h[:, 1:].mean(1)], dim=-1)) < TOL


# ------------------------------------------------------------------ backbones, refusals


@pytest.mark.parametrize("name, width", [("siglip-vision", 32), ("dinov2-backbone", 64)])
def test_a_bare_backbone_starts_a_fine_tune(families, name, width):
    """`vit train --init` on a converted backbone: every backbone tensor carried over, a new
    head over the features the family is read by (DINOv2: 2·D)."""
    from vitcli.model.vit import VisionTransformer
    from vitcli.training.finetune import init_config, init_from

    fam = families[name]
    config, _, names = init_config(fam.file, num_classes=4)
    model = VisionTransformer(config)
    report = init_from(model, fam.file)
    assert model.head.weight.shape == (4, width) and len(names) == 4
    backbone = [k for k in model.state_dict() if not k.startswith("head")]
    assert sorted(report.loaded) == sorted(backbone)


def test_info_and_patchify_show_the_source_layout_and_resize(families, tmp_path):
    """`vit info` counts the register tokens; `vit patchify --model` cuts what the model sees
    (DINOv2: shorter side to 40, centre crop 32; transformers' ViT: squashed to 32×32)."""
    fam = families["dinov2-registers"]
    info = CliRunner().invoke(app, ["info", str(fam.file)])
    assert info.exit_code == 0, info.output
    assert "1 class token + 4 register tokens = 21" in " ".join(info.stdout.split())
    for name, words in (("dinov2-registers", "resize of the shorter side to 40, centre crop 32"),
                        ("vit", "bilinear resize to 32×32 (aspect ratio not kept)")):
        fam = families[name]
        result = CliRunner().invoke(app, ["patchify", str(fam.images[0]), "--model",
                                          str(fam.file), "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert words in " ".join(result.stdout.replace("│", " ").split())


@pytest.mark.parametrize("kind", ["CLIPModel", "SiglipModel"])
def test_the_vision_tower_of_a_full_model_converts_without_a_processor_file(tmp_path, kind):
    """CLIPModel/SiglipModel: the text tower and projections are dropped; without a
    preprocessor_config.json the family's own rule applies at the model's size."""
    import transformers as T

    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config_cls = T.CLIPConfig if kind == "CLIPModel" else T.SiglipConfig
    torch.manual_seed(0)
    model = getattr(T, kind)(config_cls(vision_config=SMALL, text_config=text)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(tmp_path / kind)
    out = tmp_path / f"{kind}.safetensors"
    result = CliRunner().invoke(app, ["convert", str(tmp_path / kind), "--out", str(out)])
    assert result.exit_code == 0, result.output
    mf = load_model(out)
    assert mf.config.image_size == 32 and mf.preprocessing.image_size == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.vision_model(pixel_values=x).pooler_output
        assert max_diff(mf.model(x), expected) < TOL


def _edit_config(fam: Family, tmp_path: Path, **changes) -> Path:
    import shutil

    folder = tmp_path / f"{fam.name}-edited"
    shutil.copytree(fam.folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **changes}))
    return folder


@pytest.mark.parametrize("name, changes, words", [
    ("vit", {"model_type": "dinov2"}, "claims to be DINOv2 (dinov2) but its weights do not fit"),
    ("dinov2-backbone", {"model_type": "vit"}, "claims to be ViT (vit) but its weights"),
    ("clip-vision", {"model_type": "siglip_vision_model"}, "claims to be SigLIP vision"),
    ("vit", {"model_type": "beit"}, "model_type 'beit' is not supported"),
    ("dinov2-backbone", {"use_swiglu_ffn": True}, "SwiGLU MLP of DINOv2-g"),
    ("vit", {"hidden_act": "relu"}, "MLP activation 'relu' is not supported"),
])
def test_wrong_or_unsupported_families_are_refused_in_one_line(families, tmp_path, name,
                                                               changes, words):
    folder = _edit_config(families[name], tmp_path, **changes)
    out = tmp_path / "out.safetensors"
    result = CliRunner().invoke(app, ["convert", str(folder), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1 and words in result.output
    assert not out.exists()  # never half-written
