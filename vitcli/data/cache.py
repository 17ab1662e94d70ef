"""Decode images once, in parallel, and keep the resized uint8 pixels.

Training reads the same images every epoch; decoding PNG/JPEG again each time would make
a small ViT input-bound on a laptop. So every image is decoded once, resized by the
preprocessing, and stored as one uint8 array (N, S, S, C):

- on disk as `<key>.npy` + `<key>.json` in the cache folder (`$VITCLI_CACHE`, else
  `~/.cache/vitcli`), written atomically, so a second run with the same files and the same
  preprocessing skips decoding entirely;
- in memory when the array is small (under MEMORY_LIMIT); otherwise decoded straight into
  the cache file and memory-mapped (copy-on-write: the file itself is never changed).

The key hashes what the pixels depend on: every source's identity (path, size and mtime for
files; the dataset fingerprint for `datasets` data) and the preprocessing. Changing a file
changes its mtime, hence the key, hence the cache entry.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vitcli.errors import VitError
from vitcli.files import atomic_write, read_json_file

CACHE_VERSION = 1  # bump when the cached bytes would differ for the same key
MEMORY_LIMIT = 2 * 1024**3  # bytes of pixels kept in RAM; larger sets are memory-mapped
CHUNK = 256  # sources read and decoded per step, bounding memory for big datasets

# A source is a file path or the encoded bytes of an image (from a `datasets` table).
ImageSource = str | bytes
ReadChunk = Callable[[int, int], Sequence[ImageSource]]
Progress = Callable[[int, int], None]


@dataclass
class Decoded:
    """The readable images of one list of sources."""

    pixels: np.ndarray  # uint8 (n_good, S, S, C), in memory or memory-mapped
    good: np.ndarray  # int64 (n_good,): which sources these rows came from
    bad: list[tuple[int, str]]  # (source index, reason) of the images that were skipped
    from_cache: bool


def default_cache_dir() -> Path:
    """$VITCLI_CACHE, else ~/.cache/vitcli."""
    env = os.environ.get("VITCLI_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vitcli"


def cache_key(*parts: str) -> str:
    """A short, filesystem-safe key for everything the cached pixels depend on."""
    h = hashlib.sha256(f"vitcli-cache-v{CACHE_VERSION}".encode())
    for part in parts:
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:32]


def decode_cached(
    names: Sequence[str],
    read_chunk: ReadChunk,
    to_pixels: Callable[[Image.Image], np.ndarray],
    *,
    shape: tuple[int, int, int],
    mode: str,
    key: str,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> Decoded:
    """The decoded pixels of the sources called `names`, from the cache if it holds them.

    `read_chunk(start, stop)` gives the sources (paths or bytes); `to_pixels` turns an opened
    image into uint8 (S, S, C) of `shape`. Bad images are skipped and named in `bad`.
    """
    count = len(names)
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    hit = _read_cache(folder, key, count, shape)
    if hit is not None:
        if progress:
            progress(count, count)
        return hit
    decode = functools.partial(_decode_into, names=names, read_chunk=read_chunk,
                               to_pixels=to_pixels, mode=mode, progress=progress,
                               workers=workers)
    if count * math.prod(shape) > MEMORY_LIMIT:
        try:  # too big for RAM: decode straight into the cache file, then map it
            _decode_to_file(folder, key, decode, (count, *shape))
            hit = _read_cache(folder, key, count, shape)
            if hit is not None:
                return hit
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # RAM cannot hold it either: say so, do not die
                raise VitError(str(exc) if isinstance(exc, VitError) else
                               f"{folder}: no room for the decoded images "
                               f"({exc.strerror}); free space or pass --cache-dir") from None
            # no writable cache folder: fall back to memory
    pixels = np.empty((count, *shape), np.uint8)  # (N, S, S, C)
    n_good, bad = decode(pixels)
    pixels = pixels[:n_good]  # (n_good, S, S, C)
    try:
        npy, index = _paths(folder, key)
        atomic_write(npy, lambda tmp: _save_npy(tmp, pixels))
        _write_index(index, count, bad)
    except OSError:
        pass  # a read-only or full cache folder only costs the next run its speed-up
    return Decoded(pixels=pixels, good=_good_rows(count, bad), bad=bad, from_cache=False)


def open_source(source: ImageSource, name: str, mode: str) -> Image.Image:
    """Open a path or encoded bytes as an upright image in `mode`, or a VitError naming it."""
    from vitcli.images import open_image

    return open_image(source, mode, name=None if isinstance(source, str) else name)


def _decode_into(pixels: np.ndarray, *, names: Sequence[str], read_chunk: ReadChunk,
                 to_pixels: Callable[[Image.Image], np.ndarray], mode: str,
                 progress: Progress | None,
                 workers: int | None) -> tuple[int, list[tuple[int, str]]]:
    """Decode every source into `pixels`, good ones packed at the front, on a thread pool.

    Pillow releases the GIL while decoding and resizing. Returns how many rows are good and
    (source index, reason) for the others.
    """
    count = len(names)
    bad: list[tuple[int, str]] = []

    def decode(index: int, source: ImageSource) -> np.ndarray | str:
        try:
            return to_pixels(open_source(source, names[index], mode))
        except VitError as exc:
            return str(exc).removeprefix(f"{names[index]}: ")  # the name is listed beside it
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop training
            return f"could not be decoded ({type(exc).__name__}: {exc})"

    n_good = 0
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, count, CHUNK):
            stop = min(count, start + CHUNK)
            results = pool.map(decode, range(start, stop), read_chunk(start, stop))
            for index, result in zip(range(start, stop), results):
                if isinstance(result, str):
                    bad.append((index, result))
                else:
                    pixels[n_good] = result
                    n_good += 1
            if progress:
                progress(stop, count)
    return n_good, bad


def _decode_to_file(folder: Path, key: str,
                    decode: Callable[[np.ndarray], tuple[int, list[tuple[int, str]]]],
                    shape: tuple[int, ...]) -> list[tuple[int, str]]:
    """Decode into a memory-mapped .npy written atomically; rows past the good ones unused."""
    npy, index = _paths(folder, key)
    bad: list[tuple[int, str]] = []
    check_free_space(folder, math.prod(shape))

    def write(tmp: Path) -> None:
        mapped = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        reserve(tmp)  # blocks claimed now: a disk filling up later cannot SIGBUS the mapping
        _, found = decode(mapped)
        mapped.flush()
        del mapped
        bad.extend(found)

    atomic_write(npy, write)
    _write_index(index, shape[0], bad)
    return bad


FREE_SPACE_MARGIN = 256 * 1024**2  # left free for everything else on that disk


def check_free_space(folder: Path, size: int) -> None:
    """Refuse, in one line, a cache file that the disk holding `folder` has no room for.

    Checked before the file is created: a memory-mapped file on a full disk dies with
    SIGBUS (no message) at the first page that cannot be written.
    """
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if size + FREE_SPACE_MARGIN > free:
        raise VitError(f"{folder}: the decoded images need {size / 1e9:.1f} GB in the cache "
                       f"folder, {free / 1e9:.1f} GB is free; free space there or pass "
                       "--cache-dir on a bigger disk")


def reserve(path: Path) -> None:
    """Allocate every block of `path` now (posix_fallocate), so that writing through a
    memory map cannot run out of disk; ENOSPC comes back as an OSError here instead."""
    if not hasattr(os, "posix_fallocate"):  # macOS/Windows: the free-space check must do
        return
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it
                return
            raise


def _paths(folder: Path, key: str) -> tuple[Path, Path]:
    return folder / f"{key}.npy", folder / f"{key}.json"


def _write_index(index: Path, count: int, bad: list[tuple[int, str]]) -> None:
    """Written after the pixels: the index is what marks a cache entry complete."""
    meta = {"version": CACHE_VERSION, "count": count, "bad": [[i, r] for i, r in bad]}
    atomic_write(index, lambda tmp: tmp.write_text(json.dumps(meta)))


def _good_rows(count: int, bad: list[tuple[int, str]]) -> np.ndarray:
    """int64 indices of the sources that decoded, in order."""
    ok = np.ones(count, bool)
    ok[[i for i, _ in bad]] = False
    return np.flatnonzero(ok).astype(np.int64)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _read_cache(folder: Path, key: str, count: int,
                shape: tuple[int, int, int]) -> Decoded | None:
    """The cached entry, or None if it is missing, stale or damaged (then it is redone)."""
    npy, index = _paths(folder, key)
    try:
        meta = read_json_file(index)  # bounded: a cache folder is not trusted either
        bad = [(int(i), str(reason)) for i, reason in meta["bad"]]
        if meta["version"] != CACHE_VERSION or meta["count"] != count:
            return None
        # Copy-on-write: torch.from_numpy wants a writable array; the file is never changed.
        pixels = np.load(npy, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError, VitError):
        return None
    n_good = count - len(bad)
    if pixels.dtype != np.uint8 or pixels.shape[1:] != shape or len(pixels) < n_good:
        return None
    pixels = pixels[:n_good]  # (n_good, S, S, C); a file decoded in place may have spare rows
    if pixels.nbytes <= MEMORY_LIMIT:
        pixels = np.array(pixels)  # small: read into RAM once
    return Decoded(pixels=pixels, good=_good_rows(count, bad), bad=bad, from_cache=True)
