"""Shared fixtures: tiny models and generated images, never downloads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TINY = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(autouse=True)
def _few_threads():
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def ort_threads(monkeypatch) -> list[int]:
    """A machine of 4 usable cores with a load of 1.0 (3 free, the commands' guess), and the
    intra_op_num_threads of every onnxruntime session opened, in order."""
    import onnxruntime as ort

    import vitcli.devices as devices

    monkeypatch.setattr(devices, "usable_cores", lambda: 4)
    monkeypatch.setattr(devices, "load_average", lambda: 1.0)
    sessions: list[int] = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda path, options, **kw: sessions.append(
        options.intra_op_num_threads) or real(path, options, **kw))
    return sessions


@pytest.fixture
def tiny_model():
    """A 2-block, 32-px ViT with 3 classes, in eval mode."""
    from vitcli.model.vit import create_model

    return create_model(num_classes=len(CLASSES), **TINY).eval()


@pytest.fixture
def tiny_model_file(tmp_path: Path, tiny_model) -> Path:
    """A saved vitcli model file for `tiny_model` with class names."""
    from vitcli.model.checkpoint import save_model

    return save_model(tmp_path / "tiny.safetensors", tiny_model, class_names=CLASSES)


def draw_shape(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """An RGB image of one shape on a random background: learnable, tiny, generated."""
    from PIL import ImageDraw

    bg = tuple(int(v) for v in rng.integers(0, 80, 3))
    fg = tuple(int(v) for v in rng.integers(150, 256, 3))
    im = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(im)
    r = size * rng.uniform(0.25, 0.4)
    cx, cy = size / 2 + rng.uniform(-size / 8, size / 8, 2)
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=fg)
    elif kind == "square":
        draw.rectangle(box, fill=fg)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    return im


def make_image_folder(root: Path, per_class: int = 8, size: int = 32, seed: int = 0,
                      classes: list[str] = CLASSES) -> Path:
    """root/<class>/<i>.png for each class."""
    rng = np.random.default_rng(seed)
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(kind, size, rng).save(root / kind / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A folder of class sub-folders: 3 shapes × 8 images of 32×32 px."""
    return make_image_folder(tmp_path / "shapes")


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    """One 40×30 RGB JPEG (not square, not a multiple of common patch sizes)."""
    rng = np.random.default_rng(1)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    return path
