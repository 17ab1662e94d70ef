"""Generate the bundled `shapes` dataset: 5 classes of coloured shapes at 32×32 px.

    python examples/make_shapes.py            # rewrites examples/shapes/{train,val}/<class>/
    python examples/make_shapes.py --out DIR --train 100 --val 20 --seed 0

The class is the shape only; colour, size, position, rotation and background are random, so a
model has to look at the outline (a colour shortcut does not exist). Shapes are drawn at 4×
and downsampled, so their edges are anti-aliased like a real photo's. Deterministic: the same
seed gives byte-identical PNGs. Needs only numpy and Pillow.
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "cross", "ring", "square", "triangle")
SIZE = 32
SUPERSAMPLE = 4


def _polygon(cx: float, cy: float, r: float, corners: int, angle: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(angle + 2 * math.pi * k / corners),
             cy + r * math.sin(angle + 2 * math.pi * k / corners)) for k in range(corners)]


def draw_shape(kind: str, rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """One RGB image of `kind` in a random colour, size, place and angle on a random background."""
    S = size * SUPERSAMPLE
    # A bright shape on a dark background, each in a random colour.
    background = rng.integers(0, 90, 3)
    foreground = rng.integers(140, 256, 3)
    im = Image.new("RGB", (S, S), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(im)
    fill = tuple(int(v) for v in foreground)
    r = S * rng.uniform(0.22, 0.38)
    cx, cy = S / 2 + rng.uniform(-S / 8, S / 8, 2)
    angle = rng.uniform(-0.25, 0.25)  # small tilt; large ones make the classes overlap
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "ring":
        width = max(SUPERSAMPLE * 2, int(r * rng.uniform(0.25, 0.4)))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=width)
    elif kind == "square":
        draw.polygon(_polygon(cx, cy, r * 1.3, 4, angle + math.pi / 4), fill=fill)
    elif kind == "triangle":
        draw.polygon(_polygon(cx, cy, r * 1.25, 3, angle - math.pi / 2), fill=fill)
    elif kind == "cross":
        arm = r * rng.uniform(0.28, 0.38)
        for a in (angle, angle + math.pi / 2):  # two bars at right angles
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * arm, dx * arm
            draw.polygon([(cx - dx * r + px, cy - dy * r + py), (cx + dx * r + px, cy + dy * r + py),
                          (cx + dx * r - px, cy + dy * r - py), (cx - dx * r - px, cy - dy * r - py)],
                         fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    im = im.resize((size, size), Image.Resampling.LANCZOS)
    # Faint sensor noise (±3 levels): real photos are never perfectly flat.
    noisy = np.asarray(im, np.int16) + rng.integers(-3, 4, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_shapes(out: Path, *, train: int = 100, val: int = 20, seed: int = 0) -> int:
    """Write out/{train,val}/<class>/NNN.png; return the number of images written."""
    rng = np.random.default_rng(seed)
    count = 0
    for split, n in (("train", train), ("val", val)):
        for kind in CLASSES:
            folder = out / split / kind
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            for i in range(n):
                draw_shape(kind, rng).save(folder / f"{i:03d}.png", optimize=True)
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "shapes")
    parser.add_argument("--train", type=int, default=100, help="images per class for train/")
    parser.add_argument("--val", type=int, default=20, help="images per class for val/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = make_shapes(args.out, train=args.train, val=args.val, seed=args.seed)
    print(f"wrote {n} images of {len(CLASSES)} classes to {args.out}")


if __name__ == "__main__":
    main()
