"""Attention rollout: the maths on hand-made attention, and the heat-map pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, TINY
from PIL import Image
from typer.testing import CliRunner

from vitcli.cli import app
from vitcli.model.config import ViTConfig
from vitcli.model.explain import (
    CLASS_TOKEN_ROW,
    MEAN_ROW,
    attention_rollout,
    crop_box,
    readout_rows,
    to_grid,
)
from vitcli.model.preprocess import Preprocessing


def one_hot_attention(tokens: int, rows_to: dict[int, int], heads: int = 2) -> np.ndarray:
    """(1, heads, T, T) attention where token i attends only to rows_to[i] (else to itself)."""
    a = np.eye(tokens)
    for i, j in rows_to.items():
        a[i] = np.eye(tokens)[j]
    return np.broadcast_to(a, (1, heads, tokens, tokens)).copy()


def test_rollout_follows_attention_through_layers():
    """cls → patch j in the last layer, j → patch k in the first: k must get credit.

    Rollout = Â_L … Â_1 with Â = (A + I) / 2. The class-token row is ½ cls + ¼ j + ¼ k;
    the last layer alone would give k nothing, and the reversed product would too.
    """
    config = ViTConfig(image_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2)
    j, k = 2, 4  # token indices: class token is 0, patches 1..4
    first = one_hot_attention(5, {j: k})
    last = one_hot_attention(5, {0: j})
    joint = attention_rollout([first, last])
    np.testing.assert_allclose(joint.sum(-1), 1.0)
    np.testing.assert_allclose(joint[0, 0], [0.5, 0, 0.25, 0, 0.25])
    weights, source = readout_rows(joint, config)
    assert source == CLASS_TOKEN_ROW
    grid = to_grid(weights, (2, 2))
    # patch index p sits at row p // 2, column p % 2 (row-major, as PatchEmbed flattens)
    np.testing.assert_allclose(grid[0], [[0, 0.5], [0, 0.5]])
    last_only, _ = readout_rows(attention_rollout([last]), config)
    assert to_grid(last_only, (2, 2))[0, 1, 1] == 0  # patch k (index 3) is invisible


def test_heads_are_averaged():
    one = one_hot_attention(3, {0: 1}, heads=1)
    other = one_hot_attention(3, {0: 2}, heads=1)
    both = np.concatenate([one, other], axis=1)  # (1, 2, 3, 3)
    np.testing.assert_allclose(attention_rollout([both])[0, 0], [0.5, 0.25, 0.25])


def test_mean_pooling_model_uses_patch_rows():
    config = ViTConfig(image_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2,
                       pooling="mean", class_token=False)
    attn = one_hot_attention(4, {0: 3, 1: 3, 2: 3})  # every patch looks at patch 3
    weights, source = readout_rows(attention_rollout([attn]), config)
    assert source == MEAN_ROW
    assert weights.shape == (1, 4) and weights[0].argmax() == 3


def test_crop_box_matches_preprocessing_crop():
    pre = Preprocessing(image_size=32, crop_fraction=0.5)
    left, top, right, bottom = crop_box((40, 30), pre)
    # half the shorter side, up to the resize's whole-pixel rounding (40×30 → 85×64)
    assert (right - left, bottom - top) == (pytest.approx(15, abs=0.1), 15)
    assert (left + right) / 2 == pytest.approx(20, abs=0.5) and (top + bottom) / 2 == 15


def test_explain_images_writes_a_readable_figure_per_image(tiny_model_file: Path,
                                                           image_file: Path, tmp_path: Path):
    from vitcli.model.checkpoint import load_model
    from vitcli.model.explain import explain_images

    mf = load_model(tiny_model_file)
    twin = tmp_path / "other" / image_file.name  # same file name from another folder
    twin.parent.mkdir()
    twin.write_bytes(image_file.read_bytes())
    results = explain_images(mf, [image_file, twin], tmp_path / "maps",
                             predictions={image_file: ("cat", 0.91)}, model_name="exp/best")
    grid = (mf.config.grid_size, mf.config.grid_size)
    names = {f.name for r in results for f in r.files}
    assert len(names) == 2  # no file overwrote another
    for r in results:
        assert r.rollout.shape == r.last_layer.shape == grid
        np.testing.assert_allclose([r.rollout.sum(), r.last_layer.sum()], 1.0)
        for f in r.files:
            with Image.open(f) as im:  # a 40×30 image drawn at a readable size
                assert im.size[0] >= 800 and im.size[1] >= 300 and im.mode in ("RGB", "RGBA")


def test_contrast_spreads_a_near_uniform_map_over_the_whole_range():
    """Rollout's even baseline made photos a uniform tint: the map is shown in its own range."""
    from vitcli.model.explain import contrast, overlay

    flat_ish = np.full((4, 4), 1 / 16) + np.arange(16).reshape(4, 4) * 1e-4
    shown = contrast(flat_ish)
    assert shown.min() == 0 and shown.max() == 1
    assert np.all(contrast(np.full((4, 4), 1 / 16)) == 0)  # no patch preferred: no heat
    # Where the heat is 0 the image shows through untinted.
    grey = Image.new("RGB", (16, 16), (120, 120, 120))
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    out = np.asarray(overlay(grey, heat, Preprocessing(image_size=16, crop_fraction=1.0)))
    assert (out[12:, 12:] == 120).all() and not (out[:2, :2] == 120).all()


def test_the_figure_names_the_prediction_and_has_a_colour_bar(tmp_path: Path):
    from vitcli.model import explain

    captured = {}
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.figure

    save = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **kw):
        captured["title"] = fig._suptitle.get_text() if fig._suptitle else ""
        captured["axes"] = len(fig.axes)
        return save(fig, *a, **kw)

    matplotlib.figure.Figure.savefig = spy
    try:
        explain.write_figure(tmp_path / "x.png", Image.new("RGB", (32, 32)),
                             np.eye(4) / 4, np.eye(4) / 4,
                             Preprocessing(image_size=32, crop_fraction=1.0),
                             source=CLASS_TOKEN_ROW, label="ring", probability=0.835,
                             model_name="exp/best.safetensors")
    finally:
        matplotlib.figure.Figure.savefig = save
    assert "ring" in captured["title"] and "83.5%" in captured["title"]
    assert "exp/best.safetensors" in captured["title"]
    assert captured["axes"] == 4  # image, rollout, last layer, colour bar


@pytest.mark.slow
def test_predict_explain_cli(tmp_path: Path, image_file: Path):
    """`vit predict --explain` for a mean-pooling model: maps written, the readout named."""
    from vitcli.model.checkpoint import save_model
    from vitcli.model.vit import create_model

    model = create_model(num_classes=3, pooling="mean", class_token=False, **TINY).eval()
    path = save_model(tmp_path / "mean.safetensors", model, class_names=CLASSES)
    out = tmp_path / "heat"
    result = CliRunner().invoke(app, ["predict", str(image_file), "-m", str(path),
                                      "--explain", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "mean over patch tokens" in result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["photo.explain.png"]
    with Image.open(out / "photo.explain.png") as im:
        assert im.size[0] >= 800
