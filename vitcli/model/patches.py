"""How an image becomes a sequence of patch tokens: the numbers and the pictures.

`vit patchify` stands on this module. Everything here is numpy + Pillow (no torch), so the
command starts instantly and reads a model file's header without loading its weights.

Token order is row-major over the patch grid, as in the model (`PatchEmbed` flattens the
convolution output row by row); with a class token, patch i is token i + 1 and token 0 is
the class token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vitcli.errors import UsageError, VitError, plural
from vitcli.images import open_image
from vitcli.model.config import ViTConfig, count_params, gflops, size_mismatch
from vitcli.model.preprocess import Preprocessing
from vitcli.model.presets import PRESETS, Preset, get_preset

MAX_PATCHES = 4096  # beyond this the pictures are unreadable and huge
_MIN_CELL_PX = 44  # a grid cell this wide holds a 3-4 digit number legibly
_MAX_CANVAS_PX = 2048
_CLS_COLOUR = (230, 80, 40)
_GRID_COLOUR = (255, 255, 255)


# ------------------------------------------------------------------------- patch vectors


def patchify(pixels: np.ndarray, patch_size: int) -> np.ndarray:
    """Cut an (H, W, C) image into its patches in token order: (N, P, P, C).

    The same split as `vitcli.model.vit.patchify`, kept in image layout for drawing; flatten
    each patch (`.reshape(N, -1)`) to get the P·P·C vectors the embedding projects.
    """
    H, W, C = pixels.shape
    P = patch_size
    if H % P or W % P:
        raise UsageError(f"image size {H}x{W} is not divisible by patch size {P}")
    x = pixels.reshape(H // P, P, W // P, P, C)  # (h, p1, w, p2, C)
    x = x.transpose(0, 2, 1, 3, 4)  # (h, w, p1, p2, C)
    return x.reshape((H // P) * (W // P), P, P, C)  # (N, P, P, C), row-major


def unpatchify(patches: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Put (N, P, P, C) patches in token order back into an (H, W, C) image."""
    rows, cols = grid
    N, P, _, C = patches.shape
    if N != rows * cols:
        raise ValueError(f"{N} patches do not fill a {rows}x{cols} grid")
    x = patches.reshape(rows, cols, P, P, C)  # (h, w, p1, p2, C)
    x = x.transpose(0, 2, 1, 3, 4)  # (h, p1, w, p2, C)
    return x.reshape(rows * P, cols * P, C)  # (H, W, C)


def patch_colours(pixels: np.ndarray, patch_size: int) -> np.ndarray:
    """The mean colour of every patch, (rows, cols, 3) uint8: the terminal preview."""
    H, W, _ = pixels.shape
    patches = patchify(_rgb(pixels), patch_size)  # (N, P, P, 3)
    means = patches.reshape(len(patches), -1, 3).mean(axis=1)  # (N, 3)
    return np.rint(means).astype(np.uint8).reshape(H // patch_size, W // patch_size, 3)


# ----------------------------------------------------------------------------- the setup


PRESET_HEAD_CLASSES = 1000  # the head `vit models` counts presets with


@dataclass
class PatchPlan:
    """What the model sees: architecture (for the figures) and preprocessing (for pixels)."""

    config: ViTConfig
    preprocessing: Preprocessing
    source: str  # "preset vit-b16" or the model file's path
    params: int


def plan(*, patch_size: int | None = None, image_size: int | None = None,
         preset: str | None = None, model_path: Path | None = None) -> PatchPlan:
    """Settle patch size, image size and architecture from the options given.

    A model file wins (its patch size is fixed, its image size may be overridden since
    position embeddings resample); otherwise explicit --patch/--size, then the preset's own,
    then 16 px patches at 224 px.
    """
    if model_path is not None:
        if preset is not None:
            raise UsageError("give --model or --preset, not both")
        return _plan_from_model(model_path, patch_size, image_size)
    base = get_preset(preset).config if preset else None
    patch = patch_size if patch_size is not None else (base.patch_size if base else 16)
    size = image_size if image_size is not None else (base.image_size if base else 224)
    _check_sizes(size, patch)
    chosen = get_preset(preset) if preset else nearest_preset(patch, size)
    # A 1000-class head, as `vit models` counts presets (vit-nano's own config has 10).
    config = chosen.config.replace(image_size=size, patch_size=patch, in_channels=3,
                                   num_classes=PRESET_HEAD_CLASSES)
    return PatchPlan(config=config, preprocessing=Preprocessing(image_size=size),
                     source=f"preset {chosen.name} ({PRESET_HEAD_CLASSES}-class head)",
                     params=count_params(config))


def _plan_from_model(path: Path, patch_size: int | None, image_size: int | None) -> PatchPlan:
    # Header only: the figures and preprocessing need no weights (and no torch).
    from vitcli.model.checkpoint import (
        count_file_params,
        parse_metadata,
        read_header,
        read_metadata,
    )

    metadata = read_metadata(path)
    config, _, pre = parse_metadata(path, metadata)
    if patch_size is not None and patch_size != config.patch_size:
        raise UsageError(f"{path} uses {config.patch_size} px patches; --patch {patch_size} "
                         "cannot change a trained model's patch size")
    header, _ = read_header(path)
    params = count_file_params({k: v for k, v in header.items()
                                if k != "pos_embed" or config.pos_embed == "learned"})
    if image_size is not None and image_size != config.image_size:
        _check_sizes(image_size, config.patch_size)
        config = config.replace(image_size=image_size)
        pre = pre.at_size(image_size)
    return PatchPlan(config=config, preprocessing=pre, source=str(path), params=params)


def _check_sizes(size: int, patch: int) -> None:
    if patch <= 0 or size <= 0:
        raise UsageError("--size and --patch must be positive")
    if size % patch:
        raise UsageError(size_mismatch(size, patch))
    if (size // patch) ** 2 > MAX_PATCHES:
        raise UsageError(f"{size} px with {patch} px patches gives {(size // patch) ** 2:,} "
                         f"patches (at most {MAX_PATCHES:,}); use bigger patches or a smaller size")


def nearest_preset(patch_size: int, image_size: int) -> Preset:
    """The preset closest to this patch and image size; ties go to the Base model."""
    def distance(name: str) -> tuple[int, int, int]:
        c = PRESETS[name].config
        return (c.patch_size != patch_size, abs(c.image_size - image_size),
                0 if name.startswith("vit-b") else 1)

    return PRESETS[min(PRESETS, key=distance)]


# ------------------------------------------------------------------------------ pictures


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 1|3) uint8 → (H, W, 3): grey models are drawn in grey."""
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels


def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, px))


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, px: int,
           fill: tuple[int, int, int] = (255, 255, 255)) -> None:
    """Centred text with a dark outline, readable over any picture."""
    draw.text(xy, text, font=_font(px), fill=fill, anchor="mm", stroke_width=max(1, px // 7),
              stroke_fill=(0, 0, 0))


def _corner_label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
                  px: int) -> None:
    """A token number in a cell's top-left corner, small enough to leave the patch visible."""
    draw.text(xy, text, font=_font(px), fill=(255, 255, 255), anchor="la",
              stroke_width=max(1, px // 8), stroke_fill=(0, 0, 0))


def grid_scale(image_size: int, grid: int) -> int:
    """Upscale factor so that each cell is wide enough for its number (canvas capped)."""
    patch = image_size // grid
    want = math.ceil(_MIN_CELL_PX / patch)
    return max(1, min(want, _MAX_CANVAS_PX // image_size))


def draw_grid(pixels: np.ndarray, patch_size: int, first_token: int = 1) -> Image.Image:
    """The resized image, upscaled, with the patch grid and each patch's token number."""
    H, W, _ = pixels.shape
    rows, cols = H // patch_size, W // patch_size
    s = grid_scale(H, rows)
    cell = patch_size * s
    canvas = Image.fromarray(_rgb(pixels)).resize((W * s, H * s), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    line = max(1, cell // 24)
    for i in range(rows + 1):
        draw.line([(0, i * cell), (W * s, i * cell)], fill=_GRID_COLOUR, width=line)
    for j in range(cols + 1):
        draw.line([(j * cell, 0), (j * cell, H * s)], fill=_GRID_COLOUR, width=line)
    px = label_size(cell, str(rows * cols + first_token - 1))
    if px >= _MIN_LABEL_PX:  # too small to read: the grid alone shows the split
        pad = max(1, cell // 16)
        for i in range(rows):
            for j in range(cols):
                _corner_label(draw, (j * cell + pad + line, i * cell + pad + line),
                              str(i * cols + j + first_token), px)
    return canvas


_MIN_LABEL_PX = 8  # smaller digits cannot be read
_LABEL_WIDTH = 0.5  # of the cell, at most, for the widest token number
_LABEL_HEIGHT = 0.3


def label_size(cell: int, widest: str) -> int:
    """Font size in px for token numbers in a cell of `cell` px: the widest number takes at
    most half the cell's width and a third of its height, so the patch stays visible; 0 when
    even the smallest readable size would not fit."""
    px = max(_MIN_LABEL_PX, int(cell * _LABEL_HEIGHT))
    while px >= _MIN_LABEL_PX:
        left, top, right, bottom = _font(px).getbbox(widest)
        if right - left <= cell * _LABEL_WIDTH and bottom - top <= cell * _LABEL_HEIGHT:
            return px
        px -= 1
    return 0


def draw_sequence(pixels: np.ndarray, patch_size: int, class_token: bool = True) -> Image.Image:
    """The patches in the order the encoder reads them, wrapped into rows, token 0 = class.

    Each slot shows the patch (upscaled) with its token number under it; the class token's
    slot is a coloured box marked CLS, since it is a learned vector, not image pixels.
    """
    patches = patchify(_rgb(pixels), patch_size)  # (N, P, P, 3)
    n_tokens = len(patches) + int(class_token)
    per_row = min(32, max(8, math.ceil(math.sqrt(n_tokens) * 1.5)))
    cell = 48 if n_tokens <= 256 else 32 if n_tokens <= 1024 else 20  # keeps the PNG < ~2k px
    gap, label_px = max(2, cell // 12), max(9, cell // 4)
    slot_w, slot_h = cell + gap, cell + label_px + 2 * gap
    rows = math.ceil(n_tokens / per_row)
    canvas = Image.new("RGB", (per_row * slot_w + gap, rows * slot_h + gap), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    for t in range(n_tokens):
        x0 = gap + (t % per_row) * slot_w
        y0 = gap + (t // per_row) * slot_h
        if class_token and t == 0:
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=_CLS_COLOUR)
            _label(draw, (x0 + cell / 2, y0 + cell / 2), "CLS", max(8, cell // 3))
        else:
            patch = patches[t - int(class_token)]
            tile = Image.fromarray(np.ascontiguousarray(patch)).resize(
                (cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (x0, y0))
        draw.text((x0 + cell / 2, y0 + cell + gap + label_px / 2), str(t),
                  font=_font(label_px), fill=(230, 230, 230), anchor="mm")
    return canvas


def _save_png(picture: Image.Image, path: Path) -> None:
    """Write atomically (never a half-written PNG), or a VitError naming the file."""
    from vitcli.files import atomic_write

    try:
        atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
    except OSError as exc:
        raise VitError(f"{path}: cannot write the picture ({exc.strerror or exc})") from None


# ------------------------------------------------------------------------- the whole job


@dataclass
class PatchifyResult:
    """The figures `vit patchify` reports and the pictures it wrote."""

    image_path: Path
    original_size: tuple[int, int]  # (width, height) of the file
    config: ViTConfig
    preprocessing: Preprocessing
    source: str
    params: int
    gflops: float
    grid_path: Path
    sequence_path: Path
    colours: np.ndarray = field(repr=False)  # (rows, cols, 3) uint8 mean colour per patch

    @property
    def grid(self) -> tuple[int, int]:
        return (self.config.grid_size, self.config.grid_size)

    @property
    def num_patches(self) -> int:
        return self.config.num_patches

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    @property
    def patch_dim(self) -> int:
        return self.config.patch_dim


def patchify_image(image_path: str | Path, out_dir: str | Path, *,
                   patch_size: int | None = None, image_size: int | None = None,
                   preset: str | None = None,
                   model_path: str | Path | None = None) -> PatchifyResult:
    """Split one image into patch tokens, write the two pictures, and return the figures."""
    setup = plan(patch_size=patch_size, image_size=image_size, preset=preset,
                 model_path=Path(model_path) if model_path else None)
    image_path, out_dir = Path(image_path), Path(out_dir)
    pre = setup.preprocessing
    image = open_image(image_path, pre.color_mode)
    original = image.size
    pixels = pre.resize_crop(image)  # (S, S, C) uint8: exactly what the model is given
    P = setup.config.patch_size
    first = setup.config.num_prefix_tokens
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None
    grid_path = out_dir / f"{image_path.stem}_grid.png"
    sequence_path = out_dir / f"{image_path.stem}_sequence.png"
    from vitcli.files import refuse_overwrite

    for output in (grid_path, sequence_path):
        refuse_overwrite(output, "--out", {"IMAGE": image_path, "--model": model_path})
    _save_png(draw_grid(pixels, P, first_token=first), grid_path)
    _save_png(draw_sequence(pixels, P, class_token=setup.config.class_token), sequence_path)
    return PatchifyResult(
        image_path=image_path, original_size=original, config=setup.config,
        preprocessing=pre, source=setup.source, params=setup.params,
        gflops=gflops(setup.config), grid_path=grid_path, sequence_path=sequence_path,
        colours=patch_colours(pixels, P),
    )


# Worse than this many patches a side, attention has almost nothing to relate (a 32-px image
# with 16-px patches is a 2×2 grid: 4 tokens); past MAX_TOKENS, attention's cost (quadratic in
# the tokens) dominates. Both are warned about, with a patch size that would be better.
MIN_GRID = 4
MAX_TOKENS = 1024


def grid_warning(image_size: int, patch_size: int) -> str | None:
    """A warning when the patch grid is degenerate (too few patches, or too many), else None.

    Suggests the patch size that gives an 8×8 grid (a 2×2 grid has 4 tokens: attention has
    next to nothing to relate, and each token must describe a quarter of the image).
    """
    grid = image_size // max(patch_size, 1)
    tokens = grid * grid
    better = max(1, image_size // 8)
    if grid < MIN_GRID:
        return (f"{patch_size}-px patches cut a {image_size}-px image into a {grid}×{grid} grid: "
                f"only {plural(tokens, 'token')} for attention to relate; a patch of about "
                f"{better} px ({image_size // better}×{image_size // better} grid) suits "
                f"this size better (--patch {better})")
    if tokens > MAX_TOKENS:
        coarser = max(1, math.ceil(image_size / 32))
        return (f"{patch_size}-px patches cut a {image_size}-px image into a {grid}×{grid} grid: "
                f"{tokens:,} tokens, and attention's cost grows with their square; "
                f"--patch {coarser} ({image_size // coarser}×{image_size // coarser} grid) is far "
                "cheaper")
    return None
