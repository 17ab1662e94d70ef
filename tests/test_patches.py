"""Patch vectors, the patchify plan, and the two pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CLASSES
from PIL import Image

from vitcli.errors import UsageError, VitError
from vitcli.model.checkpoint import load_model
from vitcli.model.patches import (
    draw_grid,
    draw_sequence,
    grid_scale,
    nearest_preset,
    patch_colours,
    patchify,
    patchify_image,
    plan,
    unpatchify,
)
from vitcli.model.vit import num_params
from vitcli.model.vit import patchify as torch_patchify


def test_patchify_matches_the_models_token_order():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    patches = patchify(pixels, 4)  # (9, 4, 4, 3)
    assert patches.shape == (9, 4, 4, 3)
    np.testing.assert_array_equal(patches[5], pixels[4:8, 8:12])  # row 1, column 2
    chw = torch.from_numpy(pixels).permute(2, 0, 1)[None]  # (1, C, H, W)
    np.testing.assert_array_equal(patches.reshape(9, -1), torch_patchify(chw, 4)[0].numpy())
    np.testing.assert_array_equal(unpatchify(patches, (3, 3)), pixels)


def test_patch_colours_are_the_patch_means():
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[:2, 2:] = (200, 100, 0)  # top-right patch
    pixels[2, 0] = (40, 40, 40)  # one pixel of four in the bottom-left patch
    colours = patch_colours(pixels, 2)
    assert colours.shape == (2, 2, 3)
    assert colours[0, 1].tolist() == [200, 100, 0]
    assert colours[1, 0].tolist() == [10, 10, 10]


def test_default_plan_is_vit_b16_at_224():
    setup = plan()
    assert (setup.config.patch_size, setup.config.image_size) == (16, 224)
    assert setup.source == "preset vit-b16 (1000-class head)" and setup.params == 86_567_656


def test_plan_picks_the_nearest_preset_and_uses_the_given_sizes():
    setup = plan(patch_size=4, image_size=32)
    # counted with the 1000-class head `vit models` uses (vit-nano's own config has 10)
    assert setup.source == "preset vit-nano (1000-class head)" and setup.params == 938_856
    assert nearest_preset(14, 224).name == "vit-h14"
    assert nearest_preset(32, 224).name == "vit-b32"
    setup = plan(patch_size=8, image_size=32)  # vit-mini's encoder at 32 px
    assert setup.source == "preset vit-mini (1000-class head)"
    assert setup.config.num_patches == 16


def test_plan_with_a_preset_alone_uses_its_sizes():
    setup = plan(preset="vit-h14")
    assert (setup.config.patch_size, setup.config.image_size) == (14, 224)
    assert setup.config.embed_dim == 1280


@pytest.mark.parametrize("size, patch, message", [
    (225, 16, "nearest valid sizes: 224 or 240"),
    (30, 16, "nearest valid sizes: 16 or 32"),
    (224, 300, "patch size 300 is larger than the 224 px input; use a patch of at most 224"),
    (512, 2, "at most 4,096"),
    (0, 16, "positive"),
])
def test_impossible_sizes_are_usage_errors(size, patch, message):
    with pytest.raises(UsageError, match=message):
        plan(patch_size=patch, image_size=size)


def test_plan_from_a_model_file_uses_its_sizes_and_preprocessing(tiny_model_file):
    setup = plan(model_path=tiny_model_file)
    assert (setup.config.patch_size, setup.config.image_size) == (8, 32)
    assert setup.source == str(tiny_model_file)
    assert setup.preprocessing.mean == (0.5, 0.5, 0.5)
    assert setup.params == num_params(load_model(tiny_model_file).model)
    bigger = plan(model_path=tiny_model_file, image_size=48)
    assert bigger.config.num_patches == 36 and bigger.preprocessing.image_size == 48
    with pytest.raises(UsageError, match="8 px patches"):
        plan(model_path=tiny_model_file, patch_size=16)
    with pytest.raises(UsageError, match="not both"):
        plan(model_path=tiny_model_file, preset="vit-b16")


def test_grid_picture_is_upscaled_so_numbers_fit():
    pixels = np.full((224, 224, 3), 90, np.uint8)
    im = draw_grid(pixels, 16)
    s = grid_scale(224, 14)
    assert s >= 3 and im.size == (224 * s, 224 * s)
    arr = np.asarray(im)
    assert (arr[0, :] == 255).all()  # grid line along the top
    cell = 16 * s
    corner = arr[2: cell // 2, 2: cell // 2]
    assert (corner == 255).any() and (corner == 0).any()  # a number: white with black outline
    centre = arr[cell // 2 + 2: cell - 2, cell // 2 + 2: cell - 2]
    assert (centre == 90).all()  # the number leaves the patch itself visible


@pytest.mark.parametrize("size, patch", [(32, 4), (224, 16), (224, 8), (384, 16)])
def test_token_numbers_fit_their_cells(size, patch):
    """Numbers no wider than half a cell nor taller than a third, whatever the grid: at small
    sizes they used to cover the image."""
    from vitcli.model.patches import _font, label_size

    grid = size // patch
    cell = patch * grid_scale(size, grid)
    widest = str(grid * grid)
    px = label_size(cell, widest)
    if px:
        left, top, right, bottom = _font(px).getbbox(widest)
        assert right - left <= cell / 2 and bottom - top <= cell / 3
    assert label_size(6, "196") == 0  # too small to read: no number rather than a smudge


def test_sequence_picture_has_a_slot_per_token_and_a_marked_class_token():
    pixels = np.zeros((32, 32, 3), np.uint8)
    with_cls = draw_sequence(pixels, 8, class_token=True)  # 17 tokens
    without = draw_sequence(pixels, 8, class_token=False)  # 16 tokens
    arr = np.asarray(with_cls)
    assert arr[10, 10].tolist() == [230, 80, 40]  # the class-token slot
    assert np.asarray(without)[10, 10].tolist() == [0, 0, 0]  # patch 0 is the first slot
    assert with_cls.size[1] >= without.size[1]


def test_patchify_image_writes_both_pictures_and_the_counts(tmp_path, image_file):
    result = patchify_image(image_file, tmp_path / "out", patch_size=8, image_size=32)
    assert result.original_size == (40, 30)
    assert result.grid == (4, 4) and result.num_patches == 16 and result.num_tokens == 17
    assert result.patch_dim == 8 * 8 * 3
    assert result.colours.shape == (4, 4, 3)
    for path in (result.grid_path, result.sequence_path):
        assert path.exists() and Image.open(path).format == "PNG"
    assert result.gflops > 0


def test_patchify_image_with_a_model_file(tmp_path, image_file, tiny_model_file):
    result = patchify_image(image_file, tmp_path, model_path=tiny_model_file)
    assert result.num_tokens == 17 and result.config.num_classes == len(CLASSES)


def test_unreadable_image_is_a_vit_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    with pytest.raises(VitError, match="not an image file"):
        patchify_image(bad, tmp_path / "out")


def _patch_coloured(rows: int, cols: int, patch: int) -> tuple[np.ndarray, list[tuple]]:
    """An image whose patches are solid, all different colours (none grey, none CLS orange)."""
    colours = [(20 + 13 * k, 240 - 11 * k, 60 + 7 * (k % 5)) for k in range(rows * cols)]
    pixels = np.zeros((rows * patch, cols * patch, 3), np.uint8)
    for k, colour in enumerate(colours):
        i, j = divmod(k, cols)
        pixels[i * patch:(i + 1) * patch, j * patch:(j + 1) * patch] = colour
    return pixels, colours


def _top_left(picture: np.ndarray, colour: tuple) -> tuple[int, int]:
    ys, xs = np.nonzero((picture == colour).all(axis=2))
    assert len(ys), f"colour {colour} not drawn"
    return int(ys.min()), int(xs.min())


def test_sequence_picture_lays_patches_out_in_token_order():
    """Read the picture left to right, top to bottom: CLS, then patch 0, 1, 2, ... row-major."""
    pixels, colours = _patch_coloured(3, 4, 8)
    picture = np.asarray(draw_sequence(pixels, 8, class_token=True))
    slots = [_top_left(picture, (230, 80, 40))] + [_top_left(picture, c) for c in colours]
    reading_order = sorted(range(len(slots)), key=lambda t: slots[t])
    assert reading_order == list(range(1 + 12))


def test_grid_picture_numbers_each_patch_with_its_token_index(monkeypatch):
    """The number drawn in row i, column j is i·cols + j + 1 (token 0 is the class token)."""
    import vitcli.model.patches as patches_module

    drawn: dict[tuple[int, int], str] = {}
    cell = 8 * grid_scale(24, 3)

    def record(draw, xy, text, px):
        drawn[(int(xy[1] // cell), int(xy[0] // cell))] = text  # (row, column) of the corner

    monkeypatch.setattr(patches_module, "_corner_label", record)
    pixels, _ = _patch_coloured(3, 4, 8)  # 3 rows × 4 columns
    draw_grid(pixels, 8, first_token=1)
    assert drawn == {(i, j): str(i * 4 + j + 1) for i in range(3) for j in range(4)}
    drawn.clear()
    draw_grid(pixels, 8, first_token=0)  # no class token: patches start at token 0
    assert drawn[(0, 0)] == "0" and drawn[(2, 3)] == "11"
