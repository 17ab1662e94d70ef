"""Which patches a prediction rests on: attention rollout and last-layer attention maps.

Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers"):
average each layer's attention over heads, add the identity for the residual connection,
renormalise the rows, and multiply the layers together. The row of the token the head reads
(the class token) then says how much each input patch flowed into the prediction. Models
that pool by averaging the patch tokens have no such single row: we average the patch
tokens' rows instead, and say so.

The maps are computed in numpy from the (B, heads, T, T) matrices the model returns, and
drawn back over the original image: the model only saw the centre crop, so the heat map
covers exactly that region and nothing outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vitcli.errors import UsageError
from vitcli.files import atomic_write
from vitcli.images import open_image
from vitcli.model.config import ViTConfig
from vitcli.model.preprocess import INTERPOLATIONS, Preprocessing

if TYPE_CHECKING:
    from vitcli.model.checkpoint import ModelFile

CLASS_TOKEN_ROW = "class token"
MEAN_ROW = "mean over patch tokens (model pools by averaging: no class token read)"


@dataclass
class Explanation:
    """Heat maps over the patch grid for one image, plus the picture files written."""

    path: Path
    rollout: np.ndarray  # (rows, cols), sums to 1
    last_layer: np.ndarray  # (rows, cols), sums to 1
    source_row: str  # which token's attention the maps show
    files: list[Path]


def attention_rollout(maps: list[np.ndarray]) -> np.ndarray:
    """Accumulated attention (B, T, T) through all layers, residuals included."""
    joint = None
    for attn in maps:
        a = attn.astype(np.float64).mean(axis=1)  # (B, T, T): heads averaged
        a = a + np.eye(a.shape[-1])  # the residual path carries each token to itself
        a = a / a.sum(axis=-1, keepdims=True)  # rows sum to 1 again
        joint = a if joint is None else a @ joint  # (B, T, T): later layers on the left
    if joint is None:
        raise ValueError("attention rollout needs at least one attention map")
    return joint


def readout_rows(joint: np.ndarray, config: ViTConfig) -> tuple[np.ndarray, str]:
    """The attention the classifier reads, over the patches only: (B, N) and its source."""
    prefix = config.num_prefix_tokens
    if config.pooling in ("cls", "cls_mean") and config.class_token:
        return joint[:, 0, prefix:], CLASS_TOKEN_ROW  # (B, N)
    return joint[:, prefix:, prefix:].mean(axis=1), MEAN_ROW  # (B, N)


def to_grid(weights: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Patch weights (B, N) → normalised maps (B, rows, cols) in row-major patch order."""
    maps = weights.reshape(weights.shape[0], *grid)  # (B, rows, cols)
    return maps / np.maximum(maps.sum(axis=(1, 2), keepdims=True), 1e-12)


def attention_maps(model_file: ModelFile,
                   batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Rollout and last-layer maps (B, rows, cols) for a preprocessed batch (B, C, H, W)."""
    import torch

    model = model_file.model
    device = next(model.parameters()).device
    with torch.inference_mode():
        _, maps = model.forward_with_attention(torch.from_numpy(batch).to(device))
    arrays = [m.float().cpu().numpy() for m in maps]  # L × (B, heads, T, T)
    config = model_file.config
    grid = (config.grid_size, config.grid_size)
    rollout, source = readout_rows(attention_rollout(arrays), config)
    last = arrays[-1].astype(np.float64).mean(axis=1)  # (B, T, T): heads averaged
    last_row, _ = readout_rows(last, config)
    return to_grid(rollout, grid), to_grid(last_row, grid), source


# ------------------------------------------------------------------------------ pictures


def crop_box(size: tuple[int, int], pre: Preprocessing) -> tuple[float, float, float, float]:
    """The region of the original image (left, top, right, bottom) the model saw."""
    return pre.crop_box(*size)  # resize-then-crop, undone in original pixels


def colorize(heat: np.ndarray) -> np.ndarray:
    """A 0-1 map (H, W) → RGB uint8 (H, W, 3) with matplotlib's 'inferno' colour map."""
    from matplotlib import colormaps

    rgba = colormaps["inferno"](np.clip(heat, 0.0, 1.0))  # (H, W, 4) floats
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def overlay(image: Image.Image, grid_map: np.ndarray, pre: Preprocessing,
            alpha: float = 0.55) -> Image.Image:
    """The heat map stretched over the crop the model saw, blended with the image.

    Returned at the image's own size so it lines up with the file the user gave.
    """
    image = image.convert("RGB")
    w, h = image.size
    # Min-max: rollout adds the identity at every layer, so every patch carries a large, even
    # baseline; stretching min..max to 0..1 shows which patches the prediction rests on.
    low, high = float(grid_map.min()), float(grid_map.max())
    heat = (grid_map - low) / max(high - low, 1e-12)  # weakest patch 0, strongest 1
    left, top, right, bottom = crop_box((w, h), pre)
    box = (round(left), round(top), round(right), round(bottom))
    span = (max(box[2] - box[0], 1), max(box[3] - box[1], 1))
    # Bilinear: a coarse grid (e.g. 14×14) reads better as a smooth map than as blocks.
    heat_img = Image.fromarray((heat * 255).astype(np.uint8), mode="L").resize(
        span, INTERPOLATIONS["bilinear"])
    full = np.zeros((h, w), np.float32)  # no heat outside the crop: the model never saw it
    full[box[1]:box[1] + span[1], box[0]:box[0] + span[0]] = \
        np.asarray(heat_img, np.float32)[:h - box[1], :w - box[0]] / 255.0
    colored = Image.fromarray(colorize(full), mode="RGB")
    mask = Image.fromarray((np.sqrt(full) * alpha * 255).astype(np.uint8), mode="L")
    return Image.composite(colored, image, mask)


def output_names(paths: list[Path]) -> list[str]:
    """A unique file stem per image: photos from different folders often share a name."""
    counts: dict[str, int] = {}
    for path in paths:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    used: set[str] = set()
    stems = []
    for path in paths:
        stem = path.stem if counts[path.stem] == 1 else f"{path.parent.name}_{path.stem}"
        base, n = stem, 1
        while stem in used:
            n += 1
            stem = f"{base}_{n}"
        used.add(stem)
        stems.append(stem)
    return stems


def explain_images(model_file: ModelFile, paths: list[Path], out_dir: str | Path,
                   batch_size: int = 16) -> list[Explanation]:
    """Write `<stem>.rollout.png` and `<stem>.last_layer.png` per image into `out_dir`.

    The images must be readable (prediction already filtered out the broken ones).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pre = model_file.preprocessing
    results = []
    stems = output_names(paths)
    inputs = {Path(p).resolve() for p in paths}
    for stem in stems:
        for file in (out / f"{stem}.rollout.png", out / f"{stem}.last_layer.png"):
            if file.resolve() in inputs:
                raise UsageError(f"--explain {out_dir}: would write {file} over an input "
                                 "image; choose another folder")
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = [open_image(p, pre.color_mode) for p in chunk]
        batch = np.stack([pre(im) for im in images])  # (B, C, H, W)
        rollouts, lasts, source = attention_maps(model_file, batch)
        for i, (path, image) in enumerate(zip(chunk, images)):
            stem = stems[start + i]
            files = [out / f"{stem}.rollout.png", out / f"{stem}.last_layer.png"]
            for file, heat in zip(files, (rollouts[i], lasts[i])):
                picture = overlay(image, heat, pre)
                atomic_write(file, lambda tmp, p=picture: p.save(tmp, format="PNG"))
            results.append(Explanation(path, rollouts[i], lasts[i], source, files))
    return results
