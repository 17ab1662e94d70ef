"""Open any image a user has, or say clearly why not.

Handles EXIF orientation, palette/alpha/CMYK/16-bit/float modes, truncated and non-image
files and decompression bombs. Never writes to the user's file. No torch here: the ONNX
prediction path uses it too.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitcli.errors import VitError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
# Pillow's own limit (about 89 million pixels); bigger files are refused per file.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def open_image(source: str | Path | bytes, mode: str = "RGB", *,
               name: str | None = None) -> Image.Image:
    """The decoded image in `mode` ("RGB" or "L"), upright, or a VitError naming the file.

    `source` is a path, or encoded bytes (images stored inside a dataset table) named `name`.
    """
    path = Path(name or "<image bytes>") if isinstance(source, bytes) else Path(source)
    opened = io.BytesIO(source) if isinstance(source, bytes) else path
    try:
        with warnings.catch_warnings():
            # A bomb warning becomes an error: refuse before decoding gigabytes of pixels.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opened) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                return to_mode(im, mode)
    except FileNotFoundError:
        raise VitError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise VitError(f"{path}: is a folder, not an image") from None
    except PermissionError:
        raise VitError(f"{path}: permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise VitError(
            f"{path}: image too large (over {MAX_PIXELS:,} pixels); refused as a possible "
            "decompression bomb") from None
    except UnidentifiedImageError:
        raise VitError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise VitError(f"{path}: broken or truncated image file ({exc})") from None


def to_mode(im: Image.Image, mode: str = "RGB") -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB or L without clipping or losing the picture.

    16-bit and 32-bit integer images are rescaled to 0-255 (not clipped); float images in
    0-1 are scaled up; transparent pixels are composited onto white.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be RGB or L, not {mode}")
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        im = _rescale_to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    if im.mode != mode:
        im = im.convert(mode)  # 1, L, RGB, CMYK, YCbCr, LAB, HSV
    return im


def _rescale_to_8bit(im: Image.Image) -> Image.Image:
    """Map a high-bit-depth single-channel image onto 0-255 (rescaled, never clipped)."""
    raw = np.asarray(im)
    arr = np.nan_to_num(raw.astype(np.float64))
    peak = arr.max(initial=0.0)
    if raw.dtype.kind == "f" and peak <= 1.0:
        top = 1.0  # float images in 0-1
    elif im.mode.startswith("I;16") or 255 < peak <= 65535:
        top = 65535.0  # 16-bit files, however Pillow stores them
    elif peak <= 255:
        top = 255.0  # 8-bit data in a wide container
    else:
        top = peak  # 32-bit data: stretch its range
    scaled = np.clip(arr, 0, None) * (255.0 / top)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
