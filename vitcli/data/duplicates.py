"""Duplicate images: exact groups (the same bytes, or the same decoded pixels), near groups
(perceptual hashes confirmed by thumbnails), and the cheap byte check `vit train` runs.

A group is *within a class* (one split, one label), *across classes* (the same image under two
labels) or *across splits* (train/validation leakage); the last two are what `vit audit` fails
on. Reading the files and the report live in vitcli/data/audit.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitcli.data.cache import CHUNK, ImageSource, cache_key, default_cache_dir
from vitcli.data.perceptual import (
    chroma_distance,
    close_pairs,
    split_signatures,
    thumbnail_cosine,
)
from vitcli.data.sources import SplitRows
from vitcli.errors import VitError, plural
from vitcli.files import atomic_write, read_json_file, shown_path

# Near-duplicate thresholds, measured (benchmarks/near_duplicates.py, docs/audit.md): on 400
# generated 96-px images, JPEG at quality 50-95, resizing ×0.5-×2, brightness ±15 % and
# contrast +20 % moved dHash by ≤ 6 bits, pHash by ≤ 10 and left the thumbnail cosine ≥ 0.986;
# of 79,800 pairs of distinct images the closest were 11 bits (dHash), 14 (pHash) and 16 (the
# larger of the two) apart, and no thumbnail cosine passed 0.68.
NEAR_HASH_BITS = 10  # dHash and pHash each differ in at most this many of 64 bits
NEAR_THUMB_COSINE = 0.98  # and the mean-removed 32×32 thumbnails agree this well
# and the colours agree: chromaticity of the 4×4 colour thumbnails within this. JPEG, resizing
# and brightness ±15 % moved it by ≤ 0.025 (contrast +20 % by up to 0.135); the recoloured
# circles of examples/shapes (same shape and place, other colours) differ by 0.12-0.22.
NEAR_CHROMA = 0.1
PAIR_CHUNK = 65_536  # candidate pairs confirmed at a time (about 0.5 GB of float64 thumbnails)
# `vit audit --model`: pairs whose pooled features (the class token) have at least this cosine.
# Measured with a ViT trained on examples/shapes (val top-1 100 %): JPEG 50-75 and ×2 copies
# kept ≥ 0.988, ×0.75 ≥ 0.967, but brightness +15 % fell as low as 0.15, and 151 of 35,700
# pairs of distinct images of one class reached 0.99 (no pair of two classes did): a
# classifier's features group look-alikes, so these groups are shown and never fail the audit.
MODEL_COSINE = 0.99


@dataclass
class FileRecord:
    """One listed image: where it is, what it is, and its fingerprints."""

    path: str  # exactly as listed (a file path, or "<dataset>[split][i]")
    split: str
    label: str  # class name
    bytes: int = 0
    sha256: str = ""  # of the file's bytes
    pixels_sha256: str = ""  # of the decoded RGB pixels and their size ("" when unreadable)
    width: int = 0
    height: int = 0
    mode: str = ""  # Pillow's mode as stored: L, RGB, RGBA, P, I;16, ...
    bits: int = 0  # bits per channel as stored
    format: str = ""  # PNG, JPEG, ...
    dhash: int = 0
    phash: int = 0
    error: str = ""  # why it could not be read; "" when it could


@dataclass
class Group:
    """Files that hold the same picture (exact) or nearly (near)."""

    kind: str  # exact | near | model
    match: str  # bytes | pixels (exact); perceptual (near); features (model)
    scope: str  # within class | across classes | across splits | across splits and classes
    members: list[int]  # indices into AuditReport.files

    @property
    def fails(self) -> bool:
        """Leakage or an image under two labels: what makes `vit audit` exit 1. Groups found by
        a model's features only never fail (MODEL_COSINE says why)."""
        return self.kind != "model" and self.scope != "within class"


# ------------------------------------------------------------- the cheap check of `vit train`


@dataclass
class ByteConflicts:
    """Exact copies (same file bytes) that make training or its validation wrong."""

    leaked: list[tuple[str, str]]  # (validation file, training file with the same bytes)
    two_labels: list[tuple[str, str]]  # (file, another file with the same bytes, other label)

    def line(self, data: str) -> str | None:
        """One warning line pointing at `vit audit`, or None when there is nothing to say."""
        said = []
        if self.leaked:
            n = len(self.leaked)
            said.append(f"{plural(n, 'validation image')} {'is' if n == 1 else 'are'} byte-identical to "
                        f"training images (first: {shown_path(self.leaked[0][0], data)} = "
                        f"{shown_path(self.leaked[0][1], data)})")
        if self.two_labels:
            n = len(self.two_labels)
            said.append(f"{plural(n, 'image')} {'is' if n == 1 else 'are'} stored under two labels (first: "
                        f"{shown_path(self.two_labels[0][0], data)} = "
                        f"{shown_path(self.two_labels[0][1], data)})")
        if not said:
            return None
        return " and ".join(said) + f"; `vit audit {data}` lists them and near-duplicates too"


def byte_conflicts(train: SplitRows, val: SplitRows | None,
                   cache_dir: Path | None = None) -> ByteConflicts:
    """Training files copied into validation, and files whose bytes carry two labels.

    Only the files' bytes are hashed (no decoding); the hashes are cached under the
    listing's fingerprint, so a run on unchanged data reads nothing.
    """
    parts = [("train", train)] + ([("validation", val)] if val is not None else [])
    first: dict[str, tuple[str, str, int]] = {}  # sha256 → (split, name, label)
    leaked: list[tuple[str, str]] = []
    two_labels: list[tuple[str, str]] = []
    for split, rows in parts:
        for name, label, digest in zip(rows.names, rows.labels.tolist(),
                                       _byte_hashes(rows, cache_dir), strict=True):
            if not digest:
                continue
            seen = first.setdefault(digest, (split, name, label))
            if seen[1] == name:
                continue
            if seen[2] != label:
                two_labels.append((name, seen[1]))
            elif split != seen[0]:
                leaked.append((name, seen[1]))
    return ByteConflicts(leaked=leaked, two_labels=two_labels)


def _byte_hashes(rows: SplitRows, cache_dir: Path | None) -> list[str]:
    """SHA-256 of each row's bytes ("" when unreadable), cached by the rows' fingerprint."""
    key = cache_key("sha256-v1", rows.fingerprint, hashlib.sha256(rows.rows.tobytes()).hexdigest())
    path = (cache_dir or default_cache_dir()) / f"sha256-{key}.json"
    try:
        digests = read_json_file(path)  # bounded: caches are not trusted
        if isinstance(digests, list) and len(digests) == len(rows):
            return digests
    except (OSError, ValueError, VitError):
        pass

    def one(source: ImageSource) -> str:
        try:
            raw = Path(source).read_bytes() if isinstance(source, str) else bytes(source)
        except OSError:
            return ""
        return hashlib.sha256(raw).hexdigest()

    digests = []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(rows), CHUNK):
            digests += pool.map(one, rows.read_rows(rows.rows[start:start + CHUNK]))
    text = json.dumps(digests)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(text))
    except OSError:
        pass
    return digests


# ----------------------------------------------------------------------------- grouping


def find_groups(files: Sequence[FileRecord], signatures: np.ndarray) -> list[Group]:
    """Exact groups (same bytes or same pixels), then near groups (see the module doc).

    Groups that fail (across splits or classes) come first, then the larger ones.
    """
    n = len(files)
    exact = _UnionFind(n)
    for attr in ("sha256", "pixels_sha256"):
        first: dict[str, int] = {}
        for i, f in enumerate(files):
            value = getattr(f, attr)
            if value:
                exact.union(first.setdefault(value, i), i)
    groups = []
    for members in exact.groups():
        match = "bytes" if len({files[i].sha256 for i in members}) == 1 else "pixels"
        groups.append(Group("exact", match, _scope(files, members), members))

    readable = np.array([i for i, f in enumerate(files) if not f.error], np.int64)
    confirmed: list[tuple[int, int]] = []
    if len(readable) > 1:
        hashes = np.array([[files[i].dhash, files[i].phash] for i in readable], np.uint64)
        pairs = readable[close_pairs(hashes, np.array([NEAR_HASH_BITS] * 2))]  # (P, 2)
        roots = np.array([exact.find(i) for i in range(n)], np.int64)  # (N,) exact group
        pairs = pairs[roots[pairs[:, 0]] != roots[pairs[:, 1]]]
        for start in range(0, len(pairs), PAIR_CHUNK):  # bounded memory: 1 KB a pair
            part = pairs[start:start + PAIR_CHUNK]
            grey_a, colour_a = split_signatures(signatures[part[:, 0]])
            grey_b, colour_b = split_signatures(signatures[part[:, 1]])
            near_pairs = ((thumbnail_cosine(grey_a, grey_b) >= NEAR_THUMB_COSINE)
                          & (chroma_distance(colour_a, colour_b) <= NEAR_CHROMA))
            confirmed += [(int(a), int(b)) for a, b in part[near_pairs]]
    for members in near_groups(files, confirmed):
        groups.append(Group("near", "perceptual", _scope(files, members), members))
    groups.sort(key=lambda g: (not g.fails, g.kind != "exact", -len(g.members), g.members[0]))
    return groups


def near_groups(files: Sequence[FileRecord], pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Near-duplicate pairs gathered into groups without chaining.

    Connected components would chain look-alikes (on Fashion-MNIST, 184 trousers became one
    group). Instead, leader clustering: the file with the most near-duplicates first, with
    those not yet grouped; so every member of a group is a near-duplicate of its first file
    (the leader). A file whose near-duplicates were all grouped already joins the group of
    the first of them. A pair across splits or classes that ends up in two groups is added
    as a group of its own, so no leakage is hidden.
    """
    neighbours: dict[int, list[int]] = {}
    for a, b in pairs:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    group_of: dict[int, int] = {}
    groups: list[list[int]] = []
    for i in sorted(neighbours, key=lambda i: (-len(neighbours[i]), i)):
        if i in group_of:
            continue
        free = sorted(j for j in neighbours[i] if j not in group_of)
        target = len(groups) if free else group_of[min(neighbours[i])]
        if free:
            groups.append([])
        for j in [i, *free]:
            groups[target].append(j)
            group_of[j] = target
    for a, b in pairs:
        if group_of[a] != group_of[b] and _scope(files, [a, b]) != "within class":
            groups.append([a, b])
    return groups


def model_groups(files: Sequence[FileRecord], groups: Sequence[Group],
                 pairs: np.ndarray) -> list[Group]:
    """Groups of the `pairs` (P, 2) a model's features found, beyond the pairs that an exact or
    near group already holds; kind "model", match "features"."""
    known = _UnionFind(len(files))
    for g in groups:
        for i in g.members[1:]:
            known.union(g.members[0], i)
    linked = _UnionFind(len(files))
    for a, b in pairs:
        if known.find(int(a)) != known.find(int(b)):
            linked.union(int(a), int(b))
    return [Group("model", "features", _scope(files, m), m) for m in linked.groups()]


def _scope(files: Sequence[FileRecord], members: list[int]) -> str:
    splits = len({files[i].split for i in members}) > 1
    labels = len({files[i].label for i in members}) > 1
    if splits and labels:
        return "across splits and classes"
    return "across splits" if splits else "across classes" if labels else "within class"


class _UnionFind:
    """Disjoint sets over 0..n-1; `groups` lists the sets of two or more, in index order."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        sets: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            sets.setdefault(self.find(i), []).append(i)
        return [m for m in sets.values() if len(m) > 1]
