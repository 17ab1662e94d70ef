"""How strict `vit audit`'s near-duplicate rule is: edited copies against distinct images.

    python benchmarks/near_duplicates.py [--images 400] [--size 96]

Generates distinct images (random shapes on smooth random textures, as tests/test_audit.py),
edits each in ten ways (JPEG, resizing, brightness, contrast) and prints, per edit, the largest
dHash and pHash distances and the smallest thumbnail cosine beside the thresholds, then the
same figures over every pair of distinct images. docs/audit.md holds a run.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitcli.data.duplicates import (  # noqa: E402
    NEAR_CHROMA,
    NEAR_HASH_BITS,
    NEAR_THUMB_COSINE,
)
from vitcli.data.perceptual import (  # noqa: E402
    chroma_distance,
    colour_thumbnail,
    dhash,
    hamming,
    phash,
    thumbnail,
    thumbnail_cosine,
)


def distinct_image(rng: np.random.Generator, size: int) -> Image.Image:
    low = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    im = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        x1, y1 = x0 + int(rng.integers(10, size // 2)), y0 + int(rng.integers(10, size // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse, draw.rectangle)[int(rng.integers(0, 2))]([x0, y0, x1, y1], fill=colour)
    fine = rng.integers(-20, 21, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(im, np.int16) + fine, 0, 255).astype(np.uint8))


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def edits(im: Image.Image) -> dict[str, Image.Image]:
    w, h = im.size
    half = im.resize((w // 2, h // 2), Image.Resampling.LANCZOS)
    return {
        "JPEG 95": jpeg(im, 95), "JPEG 75": jpeg(im, 75), "JPEG 50": jpeg(im, 50),
        "x0.5": half, "x0.75": im.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.BILINEAR),
        "x2": im.resize((w * 2, h * 2), Image.Resampling.BICUBIC),
        "brightness +15%": ImageEnhance.Brightness(im).enhance(1.15),
        "brightness -15%": ImageEnhance.Brightness(im).enhance(0.85),
        "contrast +20%": ImageEnhance.Contrast(im).enhance(1.2),
        "x0.5 then JPEG 75": jpeg(half, 75),
    }


def fingerprints(im: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.array([dhash(im), phash(im)], np.uint64), thumbnail(im), colour_thumbnail(im)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    images = [distinct_image(rng, args.size) for _ in range(args.images)]
    base = [fingerprints(im) for im in images]
    print(f"limits: dHash and pHash <= {NEAR_HASH_BITS} bits, thumbnail cosine >= "
          f"{NEAR_THUMB_COSINE}, chromaticity within {NEAR_CHROMA}; {args.images} images of "
          f"{args.size} px")
    print(f"{'edit':20s} {'dHash max':>9s} {'pHash max':>9s} {'cosine min':>10s} "
          f"{'chroma max':>10s} {'found':>6s}")
    for name in edits(images[0]):
        d, c, k = [], [], []
        for im, (h, t, col) in zip(images, base, strict=True):
            h2, t2, col2 = fingerprints(edits(im)[name])
            d.append(hamming(h, h2))
            c.append(thumbnail_cosine(t[None], t2[None])[0])
            k.append(chroma_distance(col[None], col2[None])[0])
        d, c, k = np.array(d), np.array(c), np.array(k)
        found = np.mean((d.max(axis=1) <= NEAR_HASH_BITS) & (c >= NEAR_THUMB_COSINE)
                        & (k <= NEAR_CHROMA))
        print(f"{name:20s} {d[:, 0].max():9d} {d[:, 1].max():9d} {c.min():10.4f} "
              f"{k.max():10.4f} {found:6.1%}")
    hashes = np.stack([h for h, _, _ in base])
    thumbs = np.stack([t for _, t, _ in base])
    colours = np.stack([col for _, _, col in base])
    i, j = np.triu_indices(len(images), 1)
    dd = hamming(hashes[i, 0], hashes[j, 0])
    dp = hamming(hashes[i, 1], hashes[j, 1])
    cos = thumbnail_cosine(thumbs[i], thumbs[j])
    chroma = chroma_distance(colours[i], colours[j])
    flagged = np.sum((dd <= NEAR_HASH_BITS) & (dp <= NEAR_HASH_BITS) & (cos >= NEAR_THUMB_COSINE)
                     & (chroma <= NEAR_CHROMA))
    print(f"{'distinct pairs':20s} {'min ' + str(dd.min()):>9s} {'min ' + str(dp.min()):>9s} "
          f"{f'max {cos.max():.4f}':>10s} {f'min {chroma.min():.3f}':>10s} {flagged:6d} of "
          f"{len(dd):,} flagged")
    print(f"closest distinct pair: {np.maximum(dd, dp).min()} bits on the larger hash; "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
