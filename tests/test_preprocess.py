"""Preprocessing: resize the shorter side, centre-crop, normalise, CHW float32."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vitcli.errors import UsageError
from vitcli.model.preprocess import Preprocessing, center_crop, resize_shorter, trim_long_side


def columns_image(width: int, height: int) -> Image.Image:
    """Each column's value is its x coordinate, so crops can be read off the pixels."""
    row = np.arange(width, dtype=np.uint8)
    return Image.fromarray(np.repeat(np.tile(row, (height, 1))[:, :, None], 3, axis=2))


def test_resize_shorter_side_keeps_aspect_ratio():
    assert resize_shorter(Image.new("RGB", (40, 30)), 24).size == (32, 24)
    assert resize_shorter(Image.new("RGB", (30, 90)), 15).size == (15, 45)
    same = Image.new("RGB", (24, 24))
    assert resize_shorter(same, 24) is same


def test_center_crop_takes_the_middle():
    crop = np.asarray(center_crop(columns_image(10, 4), 4))
    assert crop.shape == (4, 4, 3)
    assert crop[0, :, 0].tolist() == [3, 4, 5, 6]


def test_resize_crop_gives_uint8_hwc_of_the_centre():
    pre = Preprocessing(image_size=8, interpolation="nearest")
    pixels = pre.resize_crop(columns_image(16, 8))  # no resize needed: shorter side is 8
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    assert pixels[0, :, 0].tolist() == list(range(4, 12))


def test_crop_fraction_resizes_up_first():
    pre = Preprocessing(image_size=28, crop_fraction=0.875, interpolation="nearest")
    # round(28 / 0.875) = 32: a 32×32 image is not resized, only cropped by 2 px a side.
    pixels = pre.resize_crop(columns_image(32, 32))
    assert pixels.shape == (28, 28, 3)
    assert pixels[0, 0, 0] == 2 and pixels[0, -1, 0] == 29


def test_normalize_values_and_layout():
    pre = Preprocessing(image_size=2, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    pixels = np.zeros((2, 2, 3), np.uint8)
    pixels[0, 0] = (255, 255, 0)
    x = pre.normalize(pixels)
    assert x.shape == (3, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [1.0, 2.0, -1.0])
    np.testing.assert_allclose(x[:, 1, 1], [-1.0, -2.0, -1.0])
    batch = pre.normalize(np.stack([pixels, pixels]))  # (B, H, W, C) → (B, C, H, W)
    assert batch.shape == (2, 3, 2, 2)


def test_imagenet_defaults_and_grey_mode(tmp_path):
    path = tmp_path / "white.png"
    Image.new("RGB", (20, 10), (255, 255, 255)).save(path)
    x = Preprocessing(image_size=8).load(path)
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                            (1 - 0.406) / 0.225], rtol=1e-5)
    grey = Preprocessing(image_size=8, mean=(0.5,), std=(0.5,), color_mode="L").load(path)
    assert grey.shape == (1, 8, 8)
    np.testing.assert_allclose(grey, 1.0)


def test_json_round_trip():
    pre = Preprocessing(image_size=64, mean=(0.1, 0.2, 0.3), std=(1, 2, 3),
                        interpolation="bilinear", crop_fraction=0.9)
    again = Preprocessing.from_dict(json.loads(pre.to_json()))
    assert again == pre and isinstance(again.mean, tuple)


@pytest.mark.parametrize("changes, message", [
    ({"interpolation": "cubic"}, "interpolation must be"),
    ({"color_mode": "CMYK"}, "color mode"),
    ({"crop_fraction": 0.0}, "crop fraction"),
    ({"mean": (0.5,)}, "mean and std need 3"),
    ({"image_size": 0}, "image size must be at least 1"),
    ({"std": (0.5, 0.0, 0.5)}, "std values must be positive"),
    ({"std": (0.5, -0.2, 0.5)}, "std values must be positive"),
    ({"std": (0.5, float("nan"), 0.5)}, "std values must be positive"),
    ({"mean": (0.5, float("inf"), 0.5)}, "mean values must be finite"),
])
def test_bad_settings_are_usage_errors(changes, message):
    with pytest.raises(UsageError, match=message):
        Preprocessing(**changes)


@pytest.mark.parametrize("key, value", [
    ("image_size", "x"), ("image_size", 32.0), ("image_size", True), ("image_size", None),
    ("mean", "0.5"), ("mean", 5), ("mean", ["a", "b", "c"]), ("mean", [[0.5], [0.5], [0.5]]),
    ("std", [0.5, None, 0.5]), ("std", [True, True, True]), ("interpolation", 3),
    ("interpolation", []), ("color_mode", ["RGB"]), ("crop_fraction", "0.9"),
    ("crop_fraction", None),
])
def test_stored_fields_of_the_wrong_type_are_named(key, value):
    """A hand-edited model file can hold any JSON: each field's type is checked by name."""
    good = Preprocessing(image_size=32).to_dict()
    with pytest.raises(ValueError, match=f"preprocessing field '{key}' should be"):
        Preprocessing.from_dict({**good, key: value})
    assert Preprocessing.from_dict(good) == Preprocessing(image_size=32)


def test_very_elongated_images_are_trimmed_before_resizing():
    """A 1000×2 px strip gives the same centre as resizing it whole, without the huge resize."""
    strip = columns_image(250, 2).resize((1000, 2), Image.Resampling.NEAREST)  # x // 4
    pre = Preprocessing(image_size=8, interpolation="nearest")
    whole = np.asarray(center_crop(resize_shorter(strip, 8, "nearest"), 8))  # 4000×8 first
    np.testing.assert_array_equal(pre.resize_crop(strip), whole)
    ordinary = Image.new("RGB", (40, 10))  # 4:1 and below are never trimmed
    assert trim_long_side(ordinary) is ordinary
    assert trim_long_side(Image.new("RGB", (3, 100))).size == (3, 12)


def test_the_legacy_rule_is_unchanged_for_files_without_the_new_fields():
    """Files written before resize_mode/convention resize exactly as before."""
    import random

    rng = random.Random(0)
    pre = Preprocessing.from_dict({"image_size": 24, "crop_fraction": 0.875})
    assert (pre.resize_mode, pre.resize_size, pre.convention) == ("shorter", 0, "vitcli")
    for _ in range(300):
        w, h = rng.randint(1, 900), rng.randint(1, 900)
        expected = resize_shorter(Image.new("L", (w, h)), pre.resize_side).size
        assert pre.resized_size(w, h) == expected


@pytest.mark.parametrize("changes, size, box", [
    # transformers' ViT: straight to 32×32, the whole image is seen
    ({"resize_mode": "squash", "convention": "transformers"}, (80, 50), (0, 0, 80, 50)),
    # DeiT: squash to 40×40, crop 32: the centre 80 % on each axis
    ({"resize_mode": "squash", "resize_size": 40, "convention": "transformers"}, (80, 50),
     (8, 5, 72, 45)),
    # CLIP / DINOv2: shorter side to 40 (80×50 → 64×40), crop 32
    ({"resize_size": 40, "convention": "transformers"}, (80, 50), (20, 5, 60, 45)),
])
def test_resize_modes_crop_the_region_the_source_crops(changes, size, box):
    pre = Preprocessing(image_size=32, **changes)
    assert pre.crop_box(*size) == pytest.approx(box)
    pixels = pre.resize_crop(Image.new("RGB", size))
    assert pixels.shape == (32, 32, 3)


def test_transformers_truncates_and_torchvision_rounds_the_crop_offset():
    # 101×67 → shorter side 32: transformers/torchvision int(32·101/67) = 48; vitcli round → 48
    assert Preprocessing(image_size=32, convention="transformers").resized_size(67, 100) == (
        32, 47)  # int(47.76)
    assert Preprocessing(image_size=32).resized_size(67, 100) == (32, 48)  # round(47.76)
    from vitcli.model.preprocess import crop_offsets

    assert crop_offsets(39, 32, 32, "transformers") == (3, 0)  # floor(3.5)
    assert crop_offsets(39, 32, 32, "torchvision") == (4, 0)  # round(3.5)


@pytest.mark.parametrize("changes, words", [
    ({"resize_mode": "stretch"}, "resize mode"),
    ({"convention": "opencv"}, "convention"),
    ({"resize_size": 10}, "resize size"),
])
def test_bad_resize_fields_are_refused(changes, words):
    with pytest.raises(UsageError, match=words):
        Preprocessing(image_size=32, **changes)


def test_another_input_size_scales_the_resize_before_the_crop():
    """DeiT's squash to 256 then crop 224, fine-tuned at 384: squash to 439, crop 384."""
    deit = Preprocessing(image_size=224, resize_mode="squash", resize_size=256,
                         convention="transformers", crop_fraction=224 / 256)
    bigger = deit.at_size(384)
    assert (bigger.image_size, bigger.resize_size, bigger.resize_mode) == (384, 439, "squash")
    assert bigger.resize_crop(Image.new("RGB", (80, 50))).shape == (384, 384, 3)
    legacy = Preprocessing(image_size=32, crop_fraction=0.875).at_size(64)
    assert (legacy.resize_size, legacy.resize_side) == (0, 73)  # round(64 / 0.875)
