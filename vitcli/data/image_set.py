"""Labelled images for training and evaluation, through Hugging Face `datasets`.

`--data` may be
- a folder of class sub-folders (`imgs/cat/1.png`, ...), or one with split folders
  (`imgs/train/cat/1.png`, `imgs/val/...`; split names as `datasets` spells them:
  train/training, validation/valid/val/dev, test/testing/eval/evaluation);
- a dataset saved with `save_to_disk` (a Dataset or a DatasetDict);
- a Hub dataset name (needs the Hub; offline it is a clear error).

Folders are listed by vitcli.data.discovery (the one rule every command uses: class
folders sorted by their bytes, links followed once, hidden entries skipped, no stray file
switching modes); saved and Hub datasets go through `datasets`. The images are decoded
here with `vitcli.images` so that a bad file is skipped and reported instead of stopping
the run. Decoded, resized pixels are cached (vitcli.data.cache) so no epoch decodes again.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitcli.data import VAL_SPLIT
from vitcli.data.cache import ImageSource, Progress, cache_key, decode_cached
from vitcli.data.sources import (
    SPLIT_NAMES,
    BadFiles,
    DataSource,
    SplitRows,
    open_source,
)
from vitcli.errors import UsageError, VitError, plural
from vitcli.model.preprocess import Preprocessing

DEFAULT_VAL_SPLIT = 0.1
MIN_PER_CLASS_FOR_DEFAULT_VAL = 10  # every class keeps ≥ 9 train images and gives ≥ 1 to val


@dataclass
class ImageSet:
    """One split, decoded once and cached."""

    pixels: np.ndarray  # uint8 (N, S, S, C), S = preprocessing.image_size
    labels: np.ndarray  # int64 (N,)
    paths: list[str]  # where each image came from (file path, or "<dataset>[split][i]")
    class_names: list[str]
    description: str = ""  # e.g. "folder imgs/, split validation: 300 images"

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataBundle:
    """Everything training needs from --data: train and validation sets and what was skipped."""

    train: ImageSet
    val: ImageSet | None
    class_names: list[str]
    bad_files: BadFiles  # skipped while decoding, train and val
    description: str  # one line, e.g. "folder imgs/: 1,200 train / 300 val (...)"
    val_split: float | None = None  # the fraction carved out of train as validation, if any
    copies: str | None = None  # one line about byte-identical copies across splits or labels
    fingerprint: str = ""  # of every source file (path, size, mtime) and the class names


# ------------------------------------------------------------------------------- public API


def load_data(data: str | Path, *, preprocessing: Preprocessing, val: str | Path | None = None,
              val_split: float | None = None, seed: int = 0, cache_dir: Path | None = None,
              progress: Progress | None = None, check_copies: bool = False) -> DataBundle:
    """The decoded training and validation sets of --data.

    Train pixels keep the whole image (shorter side resized to S, centre crop, crop_fraction
    1.0) so that random-resized-crop sees all of it; val pixels are exactly
    preprocessing.resize_crop, what eval and predict see.

    Validation, first that applies: --val PATH; an explicit val_split (stratified, seeded,
    0 = none); the data's own validation split, else its test split; by default 10 %
    stratified when every class has at least 10 images, else no validation.

    With `check_copies`, the files' bytes are hashed (cached) and `copies` says in one line
    how many validation files copy a training file and how many files carry two labels
    (vitcli.data.duplicates.byte_conflicts; `vit audit` goes further).
    """
    VAL_SPLIT.check("--val-split", val_split)
    source = open_source(data, cache_dir)
    train_split = _pick_train_split(source)
    class_names = source.class_names
    if len(class_names) < 2:
        raise VitError(f"{source.label}: only one class ({', '.join(class_names) or 'none'}); "
                       "a classifier needs at least two class folders")
    train, val_part, how, carved = train_split, None, "no validation", None
    if val is not None:
        val_source = open_source(val, cache_dir)
        val_name = _pick_eval_split(val_source, None)
        val_part = _relabel(val_source.splits[val_name], val_source.class_names, class_names, val)
        how = f"val from {val_source.label}"
        source.ignored += val_source.ignored
    elif val_split is not None:  # explicit: carve it from train, or 0 = no validation
        if val_split > 0:
            train, val_part = _stratified_split(train_split, val_split, seed)
            how, carved = f"stratified {val_split:.0%} split, seed {seed}", val_split
    elif own := next((s for s in ("validation", "test") if s in source.splits), None):
        val_part, how = source.splits[own], f"its {own} split as validation"
    elif _enough_for_default_val(train_split, len(class_names)):
        train, val_part = _stratified_split(train_split, DEFAULT_VAL_SPLIT, seed)
        how = f"default stratified {DEFAULT_VAL_SPLIT:.0%} split, seed {seed}"
        carved = DEFAULT_VAL_SPLIT
    _check_classes(train, class_names, source.label)
    copies = None
    if check_copies:
        from vitcli.data.duplicates import byte_conflicts

        copies = byte_conflicts(train, val_part, cache_dir).line(str(data))

    total = len(train.labels) + (len(val_part.labels) if val_part is not None else 0)
    whole = preprocessing.whole_image()
    train_set, bad = _decode(train, whole, class_names, cache_dir, _offset(progress, 0, total))
    _check_decoded(train_set, class_names, source.label, bad)
    val_set = None
    if val_part is not None:
        val_set, val_bad = _decode(val_part, preprocessing, class_names, cache_dir,
                                   _offset(progress, len(train.labels), total))
        bad += val_bad
        val_set = val_set if len(val_set) else None
    n_val = len(val_set) if val_set is not None else 0
    description = f"{source.label}: {len(train_set):,} train / {n_val:,} val ({how})"
    train_set.description = f"{source.label}: {len(train_set):,} training images"
    if val_set is not None:
        val_set.description = f"{source.label}: {n_val:,} validation images ({how})"
    parts = [train_split.fingerprint, val_part.fingerprint if val_part is not None else "",
             *class_names]
    fingerprint = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")
                                 ).hexdigest()
    return DataBundle(train=train_set, val=val_set, class_names=class_names,
                      bad_files=source.ignored + bad, description=description,
                      val_split=carved if val_set is not None else None, copies=copies,
                      fingerprint=fingerprint)


def load_eval_data(data: str | Path, *, preprocessing: Preprocessing, split: str | None = None,
                   val_split: float | None = None, seed: int = 0, cache_dir: Path | None = None,
                   progress: Progress | None = None) -> tuple[ImageSet, BadFiles]:
    """Labelled images to evaluate, pixels exactly preprocessing.resize_crop, and the bad files.

    A folder of class sub-folders is evaluated whole; data with splits gives `split` if named,
    else validation, else test, else train. With `val_split`, the images `load_data` holds out
    of the training split with that fraction and seed, so a run that carved its validation
    from --data can be re-measured on exactly that set. The set's description says which.
    """
    if val_split is not None:
        if split is not None:
            raise UsageError("--split and --val-split choose the images in two different ways; "
                             "give one")
        if not 0.0 < val_split < 1.0:
            raise UsageError(f"--val-split must be in (0, 1), not {val_split}")
    source = open_source(data, cache_dir)
    if val_split is None:
        name = _pick_eval_split(source, split)
        part = source.splits[name]
    else:
        name = "train"  # what training splits, whatever the source calls it
        part = _stratified_split(_pick_train_split(source), val_split, seed)[1]
    if not len(part.labels):
        raise VitError(f"{data}: the {name} split has no images")
    images, bad = _decode(part, preprocessing, source.class_names, cache_dir, progress)
    if not len(images):
        raise VitError(f"{data}: none of its {plural(len(part.labels), 'image')} could be read "
                       f"(first: {bad[0][1]})")
    if val_split is not None:
        where = (f", the stratified {val_split:.0%} of its training images held out with "
                 f"seed {seed}")
    else:
        where = f", split {name}" if len(source.splits) > 1 or name != "train" else ""
    images.description = f"{source.label}{where}: {plural(len(images), 'image')}"
    return images, source.ignored + bad


def typical_image_size(data: str | Path, sample: int = 64, *,
                       cache_dir: Path | None = None) -> int:
    """Median shorter side of a sample of the training images (train picks a default size).

    Only image headers are read, so this is fast even on large photos.
    """
    part = _pick_train_split(open_source(data, cache_dir))
    rows = np.unique(np.linspace(0, len(part.labels) - 1, num=min(sample, len(part.labels)))
                     .round().astype(np.int64))
    sides = [side for src in part.read_rows(part.rows[rows])
             if (side := _shorter_side(src)) is not None]
    if not sides:
        raise VitError(f"{data}: none of the sampled images could be read")
    return int(np.median(sides))


def _shorter_side(source: ImageSource) -> int | None:
    """The shorter side from the image header, or None if it cannot be read."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            # A decompression-bomb warning here would reach stderr raw; the file is named
            # (refused) when it is decoded, so here it is only not sampled.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as im:
                return min(im.size)
    except Exception:  # noqa: BLE001 - unreadable files are reported when decoding
        return None


# ------------------------------------------------------------------------------- splits


def _pick_train_split(source: DataSource) -> SplitRows:
    if "train" in source.splits:
        return source.splits["train"]
    if len(source.splits) == 1:
        return next(iter(source.splits.values()))
    raise VitError(f"{source.label} has splits {', '.join(source.splits)} but none called "
                   "train; pass a folder or dataset with a train split")


def _pick_eval_split(source: DataSource, split: str | None) -> str:
    """The split to evaluate: the one asked for, else validation, test, train."""
    if split is not None:
        name = SPLIT_NAMES.get(split.lower(), split)
        if name not in source.splits:
            raise UsageError(f"{source.label} has no split {split!r}; it has: "
                             f"{', '.join(source.splits)}")
        return name
    for name in ("validation", "test", "train"):
        if name in source.splits:
            return name
    return next(iter(source.splits))


def _stratified_split(part: SplitRows, fraction: float, seed: int) -> tuple[SplitRows, SplitRows]:
    """Train and val parts with `fraction` of every class in val (≥ 1 where a class has 2+)."""
    rng = np.random.default_rng(seed)
    val_rows = []
    for label in np.unique(part.labels):
        rows = np.flatnonzero(part.labels == label)
        n_val = min(max(round(fraction * len(rows)), 1), len(rows) - 1)
        val_rows.append(rng.permutation(rows)[:n_val])
    val_rows = np.sort(np.concatenate(val_rows)) if val_rows else np.zeros(0, np.int64)
    train_rows = np.setdiff1d(np.arange(len(part.labels)), val_rows)
    return part.subset(train_rows), part.subset(val_rows)


def _enough_for_default_val(part: SplitRows, num_classes: int) -> bool:
    counts = np.bincount(part.labels, minlength=num_classes)
    return bool(counts.size and counts.min() >= MIN_PER_CLASS_FOR_DEFAULT_VAL)


def _relabel(part: SplitRows, names: list[str], target: list[str], where: str | Path) -> SplitRows:
    """`part` with labels renumbered from its class names to `target`'s order."""
    unknown = sorted(set(names) - set(target))
    if unknown:
        raise VitError(f"{where}: classes not in the training data: {', '.join(unknown[:5])}")
    mapping = np.array([target.index(n) for n in names], np.int64)
    return dataclasses.replace(part, labels=mapping[part.labels])


def _check_classes(part: SplitRows, class_names: list[str], label: str) -> None:
    if not len(part.labels):
        raise VitError(f"{label}: no training images found")
    counts = np.bincount(part.labels, minlength=len(class_names))
    empty = [class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise VitError(f"{label}: class {empty[0]!r} has no training images")


def _check_decoded(images: ImageSet, class_names: list[str], label: str, bad: BadFiles) -> None:
    counts = np.bincount(images.labels, minlength=len(class_names))
    empty = [class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        first = next((f"; e.g. {reason}" for _, reason in bad), "")
        raise VitError(f"{label}: class {empty[0]!r} has no readable training image{first}")


# ------------------------------------------------------------------------------- decoding


def _decode(part: SplitRows, preprocessing: Preprocessing, class_names: list[str],
            cache_dir: Path | None, progress: Progress | None) -> tuple[ImageSet, BadFiles]:
    """Decode (or load from the cache) one split with `preprocessing`."""
    rows = part.rows
    s = preprocessing.image_size
    key = cache_key(part.fingerprint, hashlib.sha256(rows.tobytes()).hexdigest(),
                    preprocessing.to_json())
    decoded = decode_cached(part.names, lambda a, b: part.read_rows(rows[a:b]),
                            preprocessing.resize_crop, shape=(s, s, preprocessing.channels),
                            mode=preprocessing.color_mode, key=key, cache_dir=cache_dir,
                            progress=progress)
    images = ImageSet(pixels=decoded.pixels, labels=part.labels[decoded.good],
                      paths=[part.names[i] for i in decoded.good], class_names=class_names)
    return images, [(part.names[i], reason) for i, reason in decoded.bad]


def _offset(progress: Progress | None, start: int, total: int) -> Progress | None:
    """Report one split's progress as part of the whole (train then val)."""
    if progress is None:
        return None
    return lambda done, _count: progress(start + done, total)
