"""transformers' image processors (preprocessor_config.json) as vitcli Preprocessing, exactly.

What each processor does (transformers 5, `image_processing_pil_*.py` and
`image_transforms.py`; the same rules as the 4.x "slow" processors):

  ViTImageProcessor      resize straight to height×width (bilinear), no crop, mean/std 0.5
  DeiTImageProcessor     resize straight to 256×256 (bicubic), centre crop 224, mean/std 0.5
  BitImageProcessor      shorter side to shortest_edge (bicubic), centre crop (DINOv2: 256 →
                         224), ImageNet mean/std for DINOv2's own files, CLIP's by default
  CLIPImageProcessor     shorter side to shortest_edge (bicubic), centre crop, CLIP mean/std
  SiglipImageProcessor   resize straight to height×width (bicubic), no crop, mean/std 0.5

Sizes: the long side is int(short · long / short), the crop offset floor((h − c) / 2)
(vitcli's "transformers" convention). Resampling is Pillow's on uint8 pixels, as the PIL
processors do; the torchvision processors (the default where torchvision is installed) resize
tensors with antialias and may differ from this by a grey level here and there.
"""

from __future__ import annotations

from typing import Any

from vitcli.errors import VitError
from vitcli.model.preprocess import Preprocessing

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

# The class defaults, for files that leave a key out (save_pretrained writes them all).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "ViTImageProcessor": {"size": {"height": 224, "width": 224}, "resample": 2,
                          "image_mean": HALF, "image_std": HALF, "do_center_crop": False},
    "DeiTImageProcessor": {"size": {"height": 256, "width": 256}, "resample": 3,
                           "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
                           "image_mean": HALF, "image_std": HALF},
    "BitImageProcessor": {"size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": True,
                          "crop_size": {"height": 224, "width": 224},
                          "image_mean": CLIP_MEAN, "image_std": CLIP_STD},
    "SiglipImageProcessor": {"size": {"height": 224, "width": 224}, "resample": 3,
                             "image_mean": HALF, "image_std": HALF, "do_center_crop": False},
}
_DEFAULTS["CLIPImageProcessor"] = _DEFAULTS["BitImageProcessor"]
_SHORTEST_EDGE_BY_INT = {"CLIPImageProcessor", "BitImageProcessor"}  # legacy int size
# PIL's resample codes, as the processors store them.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}
_RESAMPLE_REFUSED = {4: "box", 5: "hamming"}


def processor_class(p: dict[str, Any]) -> str:
    """'ViTImageProcessor' for ViTImageProcessor, ...Fast, ...Pil and ViTFeatureExtractor."""
    name = str(p.get("image_processor_type") or p.get("feature_extractor_type") or "")
    name = name.replace("FeatureExtractor", "ImageProcessor")
    for suffix in ("Fast", "Pil"):
        name = name.removesuffix(suffix)
    return name


def preprocessing(processor: dict[str, Any] | None, image_size: int, channels: int,
                  notes: list[str], where: str = "preprocessor_config.json",
                  default_class: str = "ViTImageProcessor") -> Preprocessing:
    """The exact Preprocessing of an image processor (its class defaults where it is silent).

    `image_size` is the model's; the processor's output size must equal it (the importer
    resamples a model first where its source interpolates, as DINOv2 does).
    """
    try:
        return _preprocessing(processor, image_size, channels, notes, default_class)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise VitError(f"{where}: unexpected values ({exc})") from None
    except VitError as exc:
        raise VitError(f"{where}: {exc}") from None


def output_size(processor: dict[str, Any] | None, default_class: str = "ViTImageProcessor"
                ) -> int | None:
    """The side of the square the processor hands the model, or None if it cannot tell."""
    try:
        p = _with_defaults(processor, default_class)
        mode, side = _resize(p)
        crop = _square(p.get("crop_size"), "crop_size") if p.get("do_center_crop") else None
        return crop or (side if mode == "squash" else None)
    except (TypeError, ValueError, KeyError, AttributeError, VitError):
        return None


def _with_defaults(processor: dict[str, Any] | None, default_class: str) -> dict[str, Any]:
    p = dict(processor or {})
    kind = processor_class(p) or default_class
    return {**_DEFAULTS.get(kind, _DEFAULTS[default_class]), **p, "_class": kind}


def _at_size(p: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The processor's rule scaled so that it hands over `image_size` (DeiT 256/224 kept)."""
    mode, side = _resize(p)
    crop = _square(p.get("crop_size"), "crop_size") if p.get("do_center_crop") else None
    new_side = round(side * image_size / (crop or side))
    size = {"shortest_edge": new_side} if mode == "shorter" else {"height": new_side,
                                                                  "width": new_side}
    return {**p, "size": size, "crop_size": {"height": image_size, "width": image_size}}


def _square(value: Any, key: str) -> int | None:
    """A square size field (int or {height, width}); a non-square one is refused."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    h, w = value.get("height"), value.get("width")
    if h is None or w is None:
        raise ValueError(f"{key} {value!r} has no height and width")
    if int(h) != int(w):
        raise VitError(f"{key} {h}×{w} is not square; vitcli models take square inputs")
    return int(h)


def _resize(p: dict[str, Any]) -> tuple[str, int]:
    """('squash' | 'shorter', side) from the processor's size field."""
    size = p.get("size")
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        # Legacy ints: CLIP's feature extractor meant the shortest edge, ViT's a square.
        return ("shorter" if p["_class"] in _SHORTEST_EDGE_BY_INT else "squash"), int(size)
    if isinstance(size, dict) and "shortest_edge" in size:
        if size.get("longest_edge"):
            raise VitError("size with a longest_edge (aspect-ratio-preserving resize without a "
                           "crop) is not supported")
        return "shorter", int(size["shortest_edge"])
    return "squash", _square(size, "size")


def _channels(values: Any, channels: int) -> list[float]:
    values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    return values if len(values) == channels else values[:1] * channels


def _preprocessing(processor: dict[str, Any] | None, image_size: int, channels: int,
                   notes: list[str], default_class: str) -> Preprocessing:
    p = _with_defaults(processor, default_class)
    if processor is None:  # the class's rule at the model's own size
        p = _at_size(p, image_size)
        notes.append(f"no preprocessor_config.json: {default_class}'s rule at "
                     f"{image_size} px")
    for key, what in (("do_pad", "padding"), ("crop_pct", "crop_pct resizing (ConvNeXt style)"),
                      ("do_reduce_labels", "label reduction")):
        if p.get(key):
            raise VitError(f"{what} ({key}) is not supported")
    if p.get("do_resize") is False:
        raise VitError("do_resize false: the processor does not resize; vitcli needs a size")
    mode, side = _resize(p)
    resample = p.get("resample", 2)
    if resample in _RESAMPLE_REFUSED:
        raise VitError(f"resample {resample} ({_RESAMPLE_REFUSED[resample]}) is not supported")
    interpolation = _RESAMPLE.get(resample)
    if interpolation is None:
        raise ValueError(f"resample {resample!r}")
    crop = _square(p.get("crop_size"), "crop_size") if p.get("do_center_crop") else None
    if crop is None and mode == "shorter":
        raise VitError("resizes the shorter side without a centre crop, so inputs are not "
                       "square; vitcli models take square inputs")
    out = crop or side
    if out != image_size:
        raise VitError(f"gives {out}×{out} px inputs, the model takes {image_size}×{image_size}")
    mean = _channels(p.get("image_mean", HALF), channels)
    std = _channels(p.get("image_std", HALF), channels)
    if p.get("do_normalize") is False:
        mean, std = [0.0] * channels, [1.0] * channels
    # Fold the rescale factor r into mean/std: (x·r − m)/s = (x/255 − m/(255r)) / (s/(255r)).
    r = float(p.get("rescale_factor", 1 / 255)) if p.get("do_rescale", True) else 1.0
    if r <= 0:
        raise ValueError(f"rescale_factor {r}")
    k = 255.0 * r
    mean, std = [m / k for m in mean], [s / k for s in std]
    return Preprocessing(image_size=image_size, mean=tuple(mean), std=tuple(std),
                         interpolation=interpolation, crop_fraction=image_size / side,
                         color_mode="L" if channels == 1 else "RGB", resize_mode=mode,
                         resize_size=side, convention="transformers")
