"""Model-input preprocessing, kept as data in the model file.

Pillow + numpy only, so the torch and onnxruntime back ends run the very same code and
cannot disagree: open → colour mode → resize → centre crop → scale to 0-1 → normalise with
mean/std → CHW float32.

The resize reproduces each source exactly (tests/test_convert_families.py checks it against
transformers' own image processors on non-square photos):

  resize_mode "shorter"  the shorter side to resize_size, keeping the aspect ratio, then the
                         centre crop: timm (crop_pct), DINOv2, CLIP, vitcli's own models.
  resize_mode "squash"   both sides to resize_size, ignoring the aspect ratio, then the centre
                         crop (none when resize_size = image_size): transformers' ViT, SigLIP,
                         DeiT (256 → crop 224).
  convention             how the sizes are rounded: "vitcli" (long side rounded; the rule of
                         every file written before this field), "transformers" (long side
                         truncated, crop offset floor((h - c) / 2)), "torchvision" (timm:
                         long side truncated, crop offset round((h - c) / 2)).

Resampling is Pillow's, which antialiases when it shrinks, as transformers' PIL image
processors and timm's (torchvision on PIL images) do. A source's rescale factor other than
1/255 is folded into mean and std by the importer: (x·r − m)/s = (x/255 − m′)/s′ with
m′ = m/(255 r), s′ = s/(255 r), so every consumer keeps one normalisation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitcli.errors import UsageError
from vitcli.images import open_image
from vitcli.model.config import fits_json_type

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("shorter", "squash")
CONVENTIONS = ("vitcli", "transformers", "torchvision")
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass
class Preprocessing:
    """How an image becomes a model input; stored beside the weights."""

    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_fraction: float = 1.0  # resize to size / crop_fraction, then centre-crop to size
    color_mode: str = "RGB"  # "RGB" or "L"
    resize_mode: str = "shorter"  # "shorter" (keep the aspect ratio) or "squash"
    resize_size: int = 0  # side to resize to before the crop; 0 = image_size / crop_fraction
    convention: str = "vitcli"  # size rounding: "vitcli", "transformers", "torchvision"

    def __post_init__(self) -> None:
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if self.image_size < 1:
            raise UsageError(f"image size must be at least 1, not {self.image_size}")
        if not all(math.isfinite(m) for m in self.mean):
            raise UsageError(f"mean values must be finite numbers, not {self.mean}")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise UsageError(f"std values must be positive, not {self.std}")  # they divide
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}")
        if self.color_mode not in ("RGB", "L"):
            raise UsageError(f"color mode must be RGB or L, not {self.color_mode!r}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise UsageError(f"crop fraction must be in (0, 1], not {self.crop_fraction}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise UsageError(f"mean and std need {self.channels} values for {self.color_mode}")
        if self.resize_mode not in RESIZE_MODES:
            raise UsageError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, "
                             f"not {self.resize_mode!r}")
        if self.convention not in CONVENTIONS:
            raise UsageError(f"convention must be one of {', '.join(CONVENTIONS)}, "
                             f"not {self.convention!r}")
        if self.resize_size and not self.image_size <= self.resize_size <= 16 * self.image_size:
            raise UsageError(f"resize size must be 0 (from the crop fraction) or between the "
                             f"image size {self.image_size} and 16 times it, not {self.resize_size}")

    @property
    def resize_side(self) -> int:
        """The side the image is resized to before the centre crop."""
        return self.resize_size or round(self.image_size / self.crop_fraction)

    def at_size(self, image_size: int) -> Preprocessing:
        """The same preprocessing for another input size: the resize before the crop scales
        with it (DeiT's 256 → 224 becomes 439 → 384), as timm's crop_pct does."""
        resize = round(self.resize_size * image_size / self.image_size) if self.resize_size else 0
        return dataclasses.replace(self, image_size=image_size,
                                   resize_size=max(resize, image_size) if resize else 0)

    def whole_image(self) -> Preprocessing:
        """The same preprocessing without a crop margin (training keeps the whole image)."""
        return dataclasses.replace(self, crop_fraction=1.0, resize_size=0)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of an image of that size after the resize, before the crop."""
        side = self.resize_side
        if self.resize_mode == "squash":
            return side, side
        short, long = min(width, height), max(width, height)
        if self.convention == "vitcli":
            scaled = max(side, round(long * (side / short)))  # as resize_shorter
        else:  # transformers and torchvision: int(size * long / short)
            scaled = int(side * long / short)
        return (side, scaled) if width <= height else (scaled, side)

    def describe(self) -> str:
        """The resize and crop in words, e.g. 'bicubic resize of the shorter side to 256,
        centre crop 224'."""
        side, size = self.resize_side, self.image_size
        if self.resize_mode == "squash":
            how = f"{self.interpolation} resize to {side}×{side} (aspect ratio not kept)"
        else:
            how = f"{self.interpolation} resize of the shorter side to {side}"
        return how + (f", centre crop {size}" if side != size else ", centre crop")

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region of the original image (left, top, right, bottom) the model sees."""
        new_w, new_h = self.resized_size(width, height)
        left, top = crop_offsets(new_w, new_h, self.image_size, self.convention)
        sx, sy = width / new_w, height / new_h
        return (left * sx, top * sy, (left + self.image_size) * sx,
                (top + self.image_size) * sy)

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Build from stored JSON, ignoring unknown keys from newer versions.

        A hand-edited file can hold any JSON, so each field's type is checked here
        (ValueError naming the field) before the range checks of __post_init__.
        """
        values = {k: v for k, v in data.items() if k in _FIELD_TYPES}
        for key, value in values.items():
            kind, fits = _FIELD_TYPES[key]
            if not fits(value):
                raise ValueError(f"preprocessing field {key!r} should be {kind}, not {value!r}")
        return cls(**values)

    # -- the pipeline, in stages so that data caching can keep the uint8 stage

    def resize_crop(self, image: Image.Image) -> np.ndarray:
        """Stage 1: the resized, centre-cropped uint8 pixels (size, size, channels)."""
        image = image if image.mode == self.color_mode else image.convert(self.color_mode)
        if self.resize_mode == "shorter" and self.convention == "vitcli":
            image = trim_long_side(image)  # exact for vitcli's rounding only
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, INTERPOLATIONS[self.interpolation])
        image = center_crop(image, self.image_size, self.convention)
        arr = np.asarray(image, dtype=np.uint8)
        return arr[:, :, None] if arr.ndim == 2 else arr  # (H, W, C)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Stage 2: uint8 (..., H, W, C) → normalised float32 (..., C, H, W)."""
        x = pixels.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """A PIL image → the model input (C, H, W) float32."""
        return self.normalize(self.resize_crop(image))

    def load(self, path: str | Path) -> np.ndarray:
        """Open an image file and preprocess it (C, H, W) float32."""
        return self(open_image(path, self.color_mode))


def _numbers(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(fits_json_type(v, float) for v in value)


# field → (what it should be, in words; the JSON-typed check: bools are not numbers).
_FIELD_TYPES: dict[str, tuple[str, Any]] = {
    "image_size": ("an int", lambda v: fits_json_type(v, int)),
    "mean": ("a list of numbers", _numbers),
    "std": ("a list of numbers", _numbers),
    "interpolation": ("a string", lambda v: fits_json_type(v, str)),
    "crop_fraction": ("a number", lambda v: fits_json_type(v, float)),
    "color_mode": ("a string", lambda v: fits_json_type(v, str)),
    "resize_mode": ("a string", lambda v: fits_json_type(v, str)),
    "resize_size": ("an int", lambda v: fits_json_type(v, int)),
    "convention": ("a string", lambda v: fits_json_type(v, str)),
}


MAX_ASPECT = 4  # longer side over shorter side beyond which the far ends are cut first


def trim_long_side(image: Image.Image, max_aspect: int = MAX_ASPECT) -> Image.Image:
    """Cut the far ends of a very elongated image before it is resized.

    Only the centre square survives the crop, so the ends never reach the model; resizing
    them first would make a 20000×1 px strip into gigabytes of pixels. Images up to
    `max_aspect`:1 (every ordinary photo) are returned untouched.
    """
    w, h = image.size
    short, long = min(w, h), max(w, h)
    if long <= max_aspect * short:
        return image
    keep = max_aspect * short  # the centre crop plus a margin far wider than any filter
    start = (long - keep) // 2
    box = (start, 0, start + keep, h) if w > h else (0, start, w, start + keep)
    return image.crop(box)


def resize_shorter(image: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so the shorter side is `size`, keeping the aspect ratio."""
    w, h = image.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new == (w, h):
        return image
    return image.resize(new, INTERPOLATIONS[interpolation])


def crop_offsets(width: int, height: int, size: int,
                 convention: str = "vitcli") -> tuple[int, int]:
    """(left, top) of the central size×size square: floor((w - size) / 2), or torchvision's
    round((w - size) / 2) (Python's round: halves to even)."""
    if convention == "torchvision":
        return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    return (width - size) // 2, (height - size) // 2


def center_crop(image: Image.Image, size: int, convention: str = "vitcli") -> Image.Image:
    """The central size×size square."""
    left, top = crop_offsets(*image.size, size, convention)
    return image.crop((left, top, left + size, top + size))
