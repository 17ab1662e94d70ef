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
from vitcli.files import atomic_write, wrap_title
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
    """Rollout and last-layer maps (B, rows, cols) for a preprocessed batch (B, C, H, W),
    and the token they read."""
    return maps_and_probabilities(model_file, batch)[:3]


def maps_and_probabilities(model_file: ModelFile, batch: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, str, np.ndarray]:
    """`attention_maps` and the class probabilities (B, K) of the same forward pass."""
    import torch

    model = model_file.model
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits, maps = model.forward_with_attention(torch.from_numpy(batch).to(device))
    probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()  # (B, K)
    arrays = [m.float().cpu().numpy() for m in maps]  # L × (B, heads, T, T)
    config = model_file.config
    grid = (config.grid_size, config.grid_size)
    rollout, source = readout_rows(attention_rollout(arrays), config)
    last = arrays[-1].astype(np.float64).mean(axis=1)  # (B, T, T): heads averaged
    last_row, _ = readout_rows(last, config)
    return to_grid(rollout, grid), to_grid(last_row, grid), source, probs


# ------------------------------------------------------------------------------ pictures


def crop_box(size: tuple[int, int], pre: Preprocessing) -> tuple[float, float, float, float]:
    """The region of the original image (left, top, right, bottom) the model saw."""
    return pre.crop_box(*size)  # resize-then-crop, undone in original pixels


def colorize(heat: np.ndarray) -> np.ndarray:
    """A 0-1 map (H, W) → RGB uint8 (H, W, 3) with matplotlib's 'inferno' colour map."""
    from matplotlib import colormaps

    rgba = colormaps["inferno"](np.clip(heat, 0.0, 1.0))  # (H, W, 4) floats
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def contrast(grid_map: np.ndarray) -> np.ndarray:
    """A map (rows, cols) rescaled to its own range: the weakest patch 0, the strongest 1.

    Rollout adds the identity at every layer, so every patch carries a large, even baseline
    (the class token's own share is already left out: only the patch columns are read), and
    on a photo the raw map is a near-uniform tint. Rescaling to the map's own range shows
    which patches the prediction rests on; a flat map (no patch preferred) stays 0.
    """
    low, high = float(grid_map.min()), float(grid_map.max())
    if high - low <= 1e-9 * max(abs(high), 1e-12):
        return np.zeros_like(grid_map, dtype=np.float64)
    return (grid_map - low) / (high - low)


def heat_over_crop(size: tuple[int, int], grid_map: np.ndarray,
                   pre: Preprocessing) -> np.ndarray:
    """The contrasted map stretched over the crop the model saw, 0 outside it: (H, W)."""
    w, h = size
    heat = contrast(grid_map)
    left, top, right, bottom = crop_box((w, h), pre)
    box = (round(left), round(top), round(right), round(bottom))
    span = (max(box[2] - box[0], 1), max(box[3] - box[1], 1))
    # Bilinear: a coarse grid (e.g. 14×14) reads better as a smooth map than as blocks.
    heat_img = Image.fromarray((heat * 255).astype(np.uint8), mode="L").resize(
        span, INTERPOLATIONS["bilinear"])
    full = np.zeros((h, w), np.float32)  # no heat outside the crop: the model never saw it
    full[box[1]:box[1] + span[1], box[0]:box[0] + span[0]] = \
        np.asarray(heat_img, np.float32)[:h - box[1], :w - box[0]] / 255.0
    return full


def overlay(image: Image.Image, grid_map: np.ndarray, pre: Preprocessing,
            alpha: float = 0.7) -> Image.Image:
    """The heat map blended over the image at the image's own size.

    The colour's opacity follows the heat, so patches the prediction does not rest on show
    the image itself instead of a tint.
    """
    image = image.convert("RGB")
    full = heat_over_crop(image.size, grid_map, pre)
    colored = Image.fromarray(colorize(full), mode="RGB")
    mask = Image.fromarray((full * alpha * 255).astype(np.uint8), mode="L")
    return Image.composite(colored, image, mask)


FIGURE_PANEL_IN = 3.4  # inches a panel; at 100 dpi about 340 px, whatever the image's size
SMALL_IMAGE_PX = 96  # images up to this size are drawn with visible pixels (no smoothing)


def write_figure(path: Path, image: Image.Image, rollout: np.ndarray, last_layer: np.ndarray,
                 pre: Preprocessing, *, source: str, label: str | None = None,
                 probability: float | None = None, model_name: str | None = None) -> Path:
    """One PNG per image: the crop the model saw, the rollout and the last layer over it,
    a colour bar, and the predicted label with its probability in the title.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt


    image = image.convert("RGB")
    left, top, right, bottom = crop_box(image.size, pre)
    box = (round(left), round(top), round(right), round(bottom))
    seen = image.crop(box)
    heats = [heat_over_crop(image.size, m, pre)[box[1]:box[3], box[0]:box[2]]
             for m in (rollout, last_layer)]
    smooth = "nearest" if max(seen.size) <= SMALL_IMAGE_PX else "bilinear"
    fig, axes = plt.subplots(1, 3, figsize=(3 * FIGURE_PANEL_IN + 0.9, FIGURE_PANEL_IN + 0.9),
                             constrained_layout=True)
    axes[0].imshow(seen, interpolation=smooth)
    axes[0].set_title("what the model saw")
    shown = None
    for ax, heat, name in zip(axes[1:], heats, ("attention rollout", "last layer")):
        ax.imshow(seen, interpolation=smooth)
        shown = ax.imshow(heat, cmap="inferno", vmin=0, vmax=1, alpha=np.clip(heat * 0.8, 0, 1),
                          interpolation="bilinear", extent=(-0.5, seen.size[0] - 0.5,
                                                            seen.size[1] - 0.5, -0.5))
        ax.set_title(name)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(shown, ax=axes[1:].tolist(), fraction=0.046, pad=0.02)
    bar.set_label(f"attention of the {source.split(' (')[0]}\n(this image's weakest → strongest "
                  "patch)", fontsize=8)
    heading = "" if label is None else f"predicted: {label}"
    if probability is not None:
        heading += f" ({probability:.1%})"
    if model_name:
        heading += f"   ·   model: {model_name}" if heading else f"model: {model_name}"
    if heading:
        fig.suptitle(wrap_title(heading, 3 * FIGURE_PANEL_IN + 0.9))

    def save(tmp: Path) -> None:
        fig.savefig(tmp, dpi=100, format="png")

    try:
        atomic_write(path, save)
    finally:
        plt.close(fig)
    return path


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
                   batch_size: int = 16, *,
                   predictions: dict[Path, tuple[str, float]] | None = None,
                   model_name: str | None = None) -> list[Explanation]:
    """Write `<stem>.explain.png` per image into `out_dir`: see `write_figure`.

    `predictions` maps an image to its (label, probability) for the title; without it the
    model's own top-1 is computed here. The images must be readable (prediction already
    filtered out the broken ones).
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
        rollouts, lasts, source, probs = maps_and_probabilities(model_file, batch)
        for i, (path, image) in enumerate(zip(chunk, images)):
            if predictions is not None and path in predictions:
                label, probability = predictions[path]
            else:
                top = int(probs[i].argmax())
                label, probability = model_file.class_names[top], float(probs[i, top])
            target = out / f"{stems[start + i]}.explain.png"
            write_figure(target, image, rollouts[i], lasts[i], pre, source=source, label=label,
                         probability=probability, model_name=model_name)
            results.append(Explanation(path, rollouts[i], lasts[i], source, [target]))
    return results
