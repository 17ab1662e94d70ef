"""Perceptual hashes: 64-bit fingerprints that survive re-encoding, resizing and small
changes of brightness, for finding near-duplicate images (`vit audit`).

- dHash (difference hash; N. Krawetz, "Kind of Like That", 2013): the image in grey at 9×8,
  one bit per horizontal neighbour pair: is the left pixel brighter?
- pHash (DCT hash; Zauner, "Implementation and Benchmarking of Perceptual Image Hash
  Functions", 2010): the image in grey at 32×32, its 2-D DCT-II, one bit per coefficient
  of the lowest 8×8 frequencies: is it above their median (the DC term left out of the median)?

A third check confirms a pair: the cosine of the two 32×32 grey thumbnails with their mean
removed (unchanged by brightness and contrast, and by re-encoding almost so). Two images are
near-duplicates when all three agree (vitcli/data/audit.py holds the thresholds and how they
were measured). Pillow and numpy only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH_BITS = 64
_DCT_SIZE = 32
_LOW = 8


def _dct_matrix(n: int) -> np.ndarray:
    """(n, n) orthonormal DCT-II matrix C: C @ x is the DCT of a column x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


_DCT = _dct_matrix(_DCT_SIZE)
_BIT_WEIGHTS = (np.uint64(1) << np.arange(HASH_BITS, dtype=np.uint64))  # (64,)


def _pack(bits: np.ndarray) -> int:
    """64 booleans → one unsigned 64-bit integer (bit i = bits[i])."""
    return int((bits.reshape(-1).astype(np.uint64) * _BIT_WEIGHTS).sum())


def _grey(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """float64 (h, w) grey levels of `image` resized to size = (w, h) with a box filter."""
    return np.asarray(image.convert("L").resize(size, Image.Resampling.BOX), np.float64)


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: (8, 9) grey → 8 × 8 comparisons of horizontal neighbours."""
    g = _grey(image, (9, 8))  # (8, 9)
    return _pack(g[:, :-1] > g[:, 1:])


def phash(image: Image.Image) -> int:
    """64-bit DCT hash: the lowest 8×8 DCT coefficients of the 32×32 grey image, each above
    the median of those 64 without the DC term."""
    g = _grey(image, (_DCT_SIZE, _DCT_SIZE))  # (32, 32)
    low = (_DCT @ g @ _DCT.T)[:_LOW, :_LOW]  # (8, 8) lowest frequencies
    return _pack(low > np.median(low.reshape(-1)[1:]))


THUMB = 32


def thumbnail(image: Image.Image) -> np.ndarray:
    """uint8 (32, 32) grey thumbnail (box filter), kept to confirm near-duplicate pairs."""
    return np.asarray(image.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX), np.uint8)


def thumbnail_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of mean-removed thumbnails, row by row: (P, 32, 32) × 2 → (P,) in [-1, 1].

    A flat thumbnail (no contrast at all) is compared as all-equal: cosine 1 with another
    flat one, 0 with anything else.
    """
    def unit(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = t.reshape(len(t), -1).astype(np.float64)  # (P, 1024)
        x -= x.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-9), norm[:, 0] <= 1e-9

    ua, flat_a = unit(a)
    ub, flat_b = unit(b)
    cos = (ua * ub).sum(axis=1)
    return np.where(flat_a & flat_b, 1.0, cos)


COLOUR_GRID = 4


def colour_thumbnail(image: Image.Image) -> np.ndarray:
    """uint8 (4, 4, 3) RGB thumbnail (box filter): where the colours are, coarsely."""
    return np.asarray(image.convert("RGB").resize((COLOUR_GRID, COLOUR_GRID),
                                                  Image.Resampling.BOX), np.uint8)


def chroma_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest difference of chromaticity r/(r+g+b), g/(r+g+b), b/(r+g+b) over the cells of
    colour thumbnails, row by row: (P, 4, 4, 3) × 2 → (P,) in [0, 1].

    Brightness scales r, g and b together and leaves chromaticity alone; a recoloured copy
    (a blue circle painted green) moves it. Dark cells (r+g+b < 30) have no reliable colour
    and are left out.
    """
    fa, fb = a.astype(np.float64), b.astype(np.float64)
    sa, sb = fa.sum(axis=-1, keepdims=True), fb.sum(axis=-1, keepdims=True)  # (P, 4, 4, 1)
    diff = np.abs(fa / np.maximum(sa, 1.0) - fb / np.maximum(sb, 1.0)).max(axis=-1)  # (P, 4, 4)
    lit = (sa[..., 0] >= 30) & (sb[..., 0] >= 30)
    return np.where(lit, diff, 0.0).reshape(len(a), -1).max(axis=1)


SIGNATURE_BYTES = THUMB * THUMB + COLOUR_GRID * COLOUR_GRID * 3  # 1,072


def signature(image: Image.Image) -> np.ndarray:
    """uint8 (1072,): the grey 32×32 thumbnail and the 4×4 colour thumbnail, flattened (one
    array to cache per image; `split_signatures` takes it apart)."""
    return np.concatenate([thumbnail(image).reshape(-1), colour_thumbnail(image).reshape(-1)])


def split_signatures(signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, 1072) → grey (P, 32, 32) and colour (P, 4, 4, 3) thumbnails."""
    grey = signatures[:, :THUMB * THUMB].reshape(-1, THUMB, THUMB)
    return grey, signatures[:, THUMB * THUMB:].reshape(-1, COLOUR_GRID, COLOUR_GRID, 3)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between uint64 hashes (broadcasting), as uint8."""
    return np.bitwise_count(np.bitwise_xor(a, b))


def close_pairs(hashes: np.ndarray, max_bits: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """int64 (P, 2) index pairs i < j whose hashes are all within `max_bits`.

    hashes: uint64 (N, H), one column per hash kind; max_bits: (H,) the largest Hamming
    distance allowed for each. Brute force over all pairs in chunks of rows on the first
    kind, the others checked on its candidates only: O(N²) bit counts, about 20 s for
    N = 70,000 on one core (docs/audit.md).
    """
    n = len(hashes)
    first = np.ascontiguousarray(hashes[:, 0])
    found = [np.zeros((0, 2), np.int64)]
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        rest = first[start:]  # only pairs with j ≥ i: the upper triangle
        xor = np.bitwise_xor(first[start:stop, None], rest[None, :])  # (c, N - start)
        rows, cols = np.nonzero(np.bitwise_count(xor) <= max_bits[0])
        rows += start
        cols += start
        keep = cols > rows
        rows, cols = rows[keep], cols[keep]
        for k in range(1, hashes.shape[1]):
            ok = hamming(hashes[rows, k], hashes[cols, k]) <= max_bits[k]
            rows, cols = rows[ok], cols[ok]
        found.append(np.stack([rows, cols], axis=1).astype(np.int64))
    return np.concatenate(found)
