"""Model-input preprocessing, kept as data in the model file.

Pillow + numpy only, so the torch and onnxruntime back ends run the very same code and
cannot disagree: open → colour mode → resize shorter side to size / crop_fraction →
centre crop → scale to 0-1 → normalise with mean/std → CHW float32.
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
        image = trim_long_side(image)
        image = resize_shorter(image, round(self.image_size / self.crop_fraction),
                               self.interpolation)
        image = center_crop(image, self.image_size)
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


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central size×size square."""
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))
