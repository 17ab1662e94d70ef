"""`vit audit`: what is in a folder of labelled images, and what is wrong with it.

Every file the training discovery rule lists (vitcli/data/sources.py) is read once: its bytes
are hashed (SHA-256), it is decoded as training decodes it (vitcli/images.py: upright, RGB)
and the decoded pixels are hashed too, and two perceptual hashes and small thumbnails are
kept (vitcli/data/perceptual.py). The records are cached beside the decoded images, keyed by
the listing's fingerprint (every file's path, size and mtime), so a second audit reads nothing.

Duplicates come in groups, each named file by file:
- exact: the same bytes, or the same decoded pixels in different files (a PNG saved again as
  BMP or WebP-lossless, or with other metadata): `match` says which;
- near: dHash and pHash within NEAR_HASH_BITS bits and the thumbnails' cosine at least
  NEAR_THUMB_COSINE (a re-encoded JPEG, a resized copy, a brightness change).
A group is *within a class* (one split, one label), *across classes* (the same image under two
labels) or *across splits* (train/validation leakage). The last two fail the audit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitcli.data.balance import imbalance_ratio
from vitcli.data.cache import CHUNK, ImageSource, cache_key, default_cache_dir
from vitcli.data.duplicates import (
    NEAR_CHROMA,
    NEAR_HASH_BITS,
    NEAR_THUMB_COSINE,
    FileRecord,
    Group,
    find_groups,
)
from vitcli.data.perceptual import SIGNATURE_BYTES, dhash, phash, signature
from vitcli.data.sources import EmptyClass, SplitRows, open_source
from vitcli.errors import VitError, plural
from vitcli.files import atomic_write, read_json_file

AUDIT_VERSION = 2  # bump when a record's fields or the signatures change
Progress = Callable[[int, int], None]

_BITS = {"1": 1, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}


@dataclass
class AuditReport:
    """Everything `vit audit` found; `to_dict` is its JSON."""

    data: str
    description: str
    class_names: list[str]
    splits: list[str]
    files: list[FileRecord]
    groups: list[Group]
    ignored: list[tuple[str, str]]  # non-image files in class folders
    thresholds: dict[str, Any] = field(default_factory=dict)
    empty_classes: list[EmptyClass] = field(default_factory=list)  # reported, not read

    @property
    def readable(self) -> list[FileRecord]:
        return [f for f in self.files if not f.error]

    @property
    def unreadable(self) -> list[FileRecord]:
        return [f for f in self.files if f.error]

    def add_model_pairs(self, pairs: np.ndarray, min_cosine: float) -> None:
        """Add the groups a model's features found (pairs of indices into `files`)."""
        from vitcli.data.duplicates import model_groups

        self.groups += model_groups(self.files, self.groups, pairs)
        self.thresholds["model_cosine"] = min_cosine

    @property
    def failed(self) -> bool:
        return any(g.fails for g in self.groups)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: readable images}} in class order."""
        out = {s: dict.fromkeys(self.class_names, 0) for s in self.splits}
        for f in self.readable:
            out[f.split][f.label] += 1
        return out

    def imbalance(self) -> dict[str, float]:
        """{split: largest class / smallest class}."""
        return {s: imbalance_ratio(np.array(list(c.values())))
                for s, c in self.counts().items()}

    def summary(self) -> dict[str, Any]:
        """Sizes, aspect ratios, colour modes, bit depths and formats of the readable files."""
        good = self.readable
        if not good:
            return {}
        w = np.array([f.width for f in good])
        h = np.array([f.height for f in good])
        aspect = np.round(w / h, 2)
        return {
            "width": {"min": int(w.min()), "median": float(np.median(w)), "max": int(w.max())},
            "height": {"min": int(h.min()), "median": float(np.median(h)), "max": int(h.max())},
            "sizes": _top(Counter(f"{f.width}×{f.height}" for f in good)),
            "aspect_ratio": {"min": float(aspect.min()), "median": float(np.median(aspect)),
                             "max": float(aspect.max()),
                             "most_common": _top(Counter(f"{a:.2f}" for a in aspect))},
            "modes": _top(Counter(f.mode for f in good)),
            "bits": _top(Counter(str(f.bits) for f in good)),
            "formats": _top(Counter(f.format or "?" for f in good)),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, names exactly as listed (never escaped)."""
        def member(i: int) -> dict[str, Any]:
            f = self.files[i]
            return {"path": f.path, "split": f.split, "class": f.label, "sha256": f.sha256,
                    "pixels_sha256": f.pixels_sha256, "width": f.width, "height": f.height}

        return {
            "data": self.data, "description": self.description,
            "clean": not self.failed, "class_names": self.class_names,
            "images": {s: c for s, c in self.counts().items()},
            "imbalance_ratio": {s: (r if np.isfinite(r) else None)
                                for s, r in self.imbalance().items()},
            "summary": self.summary(),
            "unreadable": [{"path": f.path, "split": f.split, "class": f.label,
                            "reason": f.error} for f in self.unreadable],
            "ignored": [{"path": p, "reason": r} for p, r in self.ignored],
            "empty_classes": [{"path": e.path, "split": e.split, "class": e.name}
                              for e in self.empty_classes],
            "thresholds": self.thresholds,
            "groups": [{"kind": g.kind, "match": g.match, "scope": g.scope, "fails": g.fails,
                        "files": [member(i) for i in g.members]} for g in self.groups],
        }


def _top(counter: Counter, n: int = 5) -> dict[str, int]:
    return dict(counter.most_common(n))


# ------------------------------------------------------------------------------ reading


def audit(data: str | Path, *, val: str | Path | None = None, cache_dir: Path | None = None,
          progress: Progress | None = None) -> AuditReport:
    """Read every image of `data` (and `val`) and find its duplicates; see the module doc.

    A class folder without images is a finding (`empty_classes`), not a reason to stop: the
    rest is audited. Refused only when no class folder holds an image at all.
    """
    source = open_source(data, cache_dir, allow_empty_classes=True)
    parts: dict[str, tuple[SplitRows, list[str]]] = {
        name: (rows, source.class_names) for name, rows in source.splits.items()}
    ignored = list(source.ignored)
    empty = list(source.empty_classes)
    description = source.label
    if val is not None:
        extra = open_source(val, cache_dir, allow_empty_classes=True)
        name = next((s for s in ("validation", "test", "train") if s in extra.splits),
                    next(iter(extra.splits)))
        split = "validation" if "validation" not in parts else "--val"
        parts[split] = (extra.splits[name], extra.class_names)
        ignored += extra.ignored
        empty += [dataclasses.replace(e, split=split) for e in extra.empty_classes
                  if e.split == name]
        description += f" and {extra.label} as {split}"
    class_names = list(source.class_names)
    for _, names in parts.values():
        class_names += [n for n in names if n not in class_names]
    total = sum(len(rows) for rows, _ in parts.values())
    files: list[FileRecord] = []
    thumbs: list[np.ndarray] = []
    for split, (rows, names) in parts.items():
        recs, th = _read_split(split, rows, names, cache_dir,
                               _offset(progress, len(files), total))
        files += recs
        thumbs.append(th)
    thumb_array = np.concatenate(thumbs) if thumbs else np.zeros((0, SIGNATURE_BYTES), np.uint8)
    groups = find_groups(files, thumb_array)
    return AuditReport(
        data=str(data), description=f"{description}: {plural(len(files), 'image')}",
        class_names=class_names, splits=list(parts), files=files, groups=groups,
        ignored=ignored, empty_classes=empty,
        thresholds={"near_hash_bits": NEAR_HASH_BITS, "near_thumbnail_cosine": NEAR_THUMB_COSINE,
                    "near_chroma": NEAR_CHROMA,
                    "hash_bits": 64})


def _offset(progress: Progress | None, start: int, total: int) -> Progress | None:
    if progress is None:
        return None
    return lambda done, _n: progress(start + done, total)


def _read_split(split: str, rows: SplitRows, names: list[str], cache_dir: Path | None,
                progress: Progress | None) -> tuple[list[FileRecord], np.ndarray]:
    """Records and signatures (N, 1072) of one split, from the cache when nothing changed."""
    key = cache_key(f"audit-v{AUDIT_VERSION}", rows.fingerprint,
                    hashlib.sha256(rows.rows.tobytes()).hexdigest())
    folder = cache_dir or default_cache_dir()
    cached = _load_records(folder, key, len(rows))
    if cached is not None:
        recs, thumbs = cached
    else:
        recs, thumbs = [], []
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for start in range(0, len(rows), CHUNK):
                stop = min(start + CHUNK, len(rows))
                sources = rows.read_rows(rows.rows[start:stop])
                for rec, th in pool.map(_read_one, sources, rows.names[start:stop]):
                    recs.append(rec)
                    thumbs.append(th)
                if progress is not None:
                    progress(stop, len(rows))
        thumbs = np.stack(thumbs) if thumbs else np.zeros((0, SIGNATURE_BYTES), np.uint8)
        _save_records(folder, key, recs, thumbs)
    for rec, label in zip(recs, rows.labels, strict=True):
        rec.split, rec.label = split, names[int(label)]
    if progress is not None:
        progress(len(rows), len(rows))
    return recs, thumbs


def _read_one(source: ImageSource, name: str) -> tuple[FileRecord, np.ndarray]:
    """Hash, measure and fingerprint one image; an unreadable one gets its reason."""
    from PIL import Image

    from vitcli.images import open_image

    rec = FileRecord(path=name, split="", label="")
    empty = np.zeros(SIGNATURE_BYTES, np.uint8)
    try:
        raw = Path(source).read_bytes() if isinstance(source, str) else bytes(source)
    except OSError as exc:
        rec.error = f"cannot read ({exc.strerror or exc})"
        return rec, empty
    rec.bytes, rec.sha256 = len(raw), hashlib.sha256(raw).hexdigest()
    try:
        rgb = open_image(raw, "RGB", name=name)  # as training decodes it, or a clear reason
        with Image.open(io.BytesIO(raw)) as im:  # the header again: the mode as stored
            rec.mode, rec.format = im.mode, im.format or ""
            rec.bits = _BITS.get(im.mode, 8)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a finding, not a crash
        message = str(exc) if str(exc) else type(exc).__name__
        rec.error = message[len(name) + 2:] if message.startswith(name + ": ") else message
        return rec, empty
    rec.width, rec.height = rgb.size
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}\0".encode())
    h.update(rgb.tobytes())
    rec.pixels_sha256 = h.hexdigest()
    rec.dhash, rec.phash = dhash(rgb), phash(rgb)
    return rec, signature(rgb)


def _load_records(folder: Path, key: str, n: int) -> tuple[list[FileRecord], np.ndarray] | None:
    try:
        data = read_json_file(folder / f"audit-{key}.json")  # bounded: caches are not trusted
        thumbs = np.load(folder / f"audit-{key}.npy", allow_pickle=False)
        recs = [FileRecord(**r) for r in data["records"]]
    except (OSError, ValueError, KeyError, TypeError, EOFError, VitError):
        return None
    if len(recs) != n or thumbs.shape != (n, SIGNATURE_BYTES):
        return None
    return recs, thumbs


def _save_records(folder: Path, key: str, recs: list[FileRecord], thumbs: np.ndarray) -> None:
    """Best effort: an audit without a writable cache folder reads everything next time."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        def write_thumbs(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # np.save(path) would add ".npy" to the temporary name
                np.save(f, thumbs)

        atomic_write(folder / f"audit-{key}.npy", write_thumbs)
        text = json.dumps({"records": [asdict(r) for r in recs]})
        atomic_write(folder / f"audit-{key}.json", lambda tmp: tmp.write_text(text))
    except OSError:
        pass


