"""Opening any image a user has: modes, EXIF orientation, broken files, bombs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitcli.errors import VitError
from vitcli.images import is_image_path, open_image


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    im = Image.new("P", (4, 4), 0)
    im.putpalette([255, 0, 0] + [0, 0, 255] * 255)  # index 0 red, others blue
    im.putpixel((0, 0), 1)
    path = tmp_path / "p.png"
    im.save(path, transparency=0)  # index 0 (red) is transparent
    pixels = np.asarray(open_image(path))
    assert pixels[1, 1].tolist() == [255, 255, 255]  # was transparent red
    assert pixels[0, 0].tolist() == [0, 0, 255]


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[0, 0] = (255, 0, 0, 255)  # opaque red
    arr[0, 1] = (255, 0, 0, 0)  # fully transparent
    arr[1, 0] = (0, 0, 0, 128)  # half-transparent black
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(path)
    pixels = np.asarray(open_image(path)).astype(int)
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[0, 1].tolist() == [255, 255, 255]
    assert all(abs(v - 127) <= 1 for v in pixels[1, 0])


def test_cmyk_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    im = open_image(path)
    r, g, b = np.asarray(im)[4, 4].astype(int)
    assert im.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16_bit_grey_is_rescaled_not_clipped(tmp_path):
    arr = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    grey = np.asarray(open_image(path, "L"))
    assert grey.tolist() == [[0, 128], [255, 4]]
    rgb = np.asarray(open_image(path))
    assert rgb[1, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)  # 20 wide, 10 high; the left column is white
    arr[:, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=100)
    im = open_image(path)
    assert im.size == (10, 20)
    pixels = np.asarray(im).astype(int)
    assert pixels[0].mean() > 200 and pixels[-1].mean() < 50  # left column → top row


def test_grey_mode_is_single_channel(tmp_path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (3, 3), (255, 255, 255)).save(path)
    im = open_image(path, "L")
    assert im.mode == "L" and np.asarray(im).max() == 255


@pytest.mark.parametrize("kind", ["png", "jpg"])
def test_truncated_images_are_refused(tmp_path, kind):
    good = tmp_path / f"good.{kind}"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / f"cut.{kind}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VitError, match="broken or truncated") as info:
        open_image(bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"just some text, not pixels\n"], ids=["empty", "text"])
def test_empty_and_non_image_files_are_refused(tmp_path, content):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(VitError, match="not an image file") as info:
        open_image(path)
    assert str(path) in str(info.value)


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(VitError, match="no such file"):
        open_image(tmp_path / "nope.png")
    with pytest.raises(VitError, match="is a folder"):
        open_image(tmp_path)


@pytest.mark.parametrize("pixels", [150, 1000], ids=["over-limit", "over-twice-limit"])
def test_decompression_bombs_are_refused(tmp_path, monkeypatch, pixels):
    path = tmp_path / "big.png"
    side = int(pixels**0.5) + 1
    Image.new("RGB", (side, side)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # warn above 100, error above 200
    with pytest.raises(VitError, match="too large") as info:
        open_image(path)
    assert str(path) in str(info.value)


def test_image_extensions_are_recognised(tmp_path):
    assert is_image_path(tmp_path / "a.JPG") and is_image_path(tmp_path / "b.webp")
    assert not is_image_path(tmp_path / "notes.txt")
