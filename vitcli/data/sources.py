"""What --data is: a folder, a saved dataset or a Hub name, listed as splits of labelled rows.

Nothing is decoded here; each split says how to read its rows (file paths, or the encoded
bytes stored in a `datasets` table) so that vitcli.data.cache can decode them once, in parallel,
and skip bad ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitcli.data.cache import ImageSource
from vitcli.data.discovery import (
    IGNORED,
    FileStat,
    class_folders,
    display,
    empty_class_words,
    list_classes,
    no_images_message,
    sort_key,
    walk_images,
)
from vitcli.errors import VitError

BadFiles = list[tuple[str, str]]  # (path or row name, reason)
# Split folder names as `datasets` recognises them (datasets.data_files.SPLIT_KEYWORDS).
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test", "eval": "test", "evaluation": "test",
}


@dataclass
class SplitRows:
    """One split before decoding: what to read, its labels, and what its pixels depend on."""

    names: list[str]  # file path or "<dataset>[split][i]", one per row
    labels: np.ndarray  # int64 (N,)
    read_rows: Callable[[Sequence[int]], list[ImageSource]]
    fingerprint: str  # changes whenever any source changes
    rows: np.ndarray  # int64 (N,): which rows of read_rows these are

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: np.ndarray) -> SplitRows:
        """The rows at positions `index` of this split."""
        return dataclasses.replace(self, names=[self.names[i] for i in index],
                                   labels=self.labels[index], rows=self.rows[index])


@dataclass
class DataSource:
    """What --data turned out to be: its splits, class names and files it had to ignore."""

    splits: dict[str, SplitRows]  # "train", "validation", "test" or the dataset's own names
    class_names: list[str]
    ignored: BadFiles  # non-image files found in class folders
    label: str  # "folder imgs/" or "dataset mnist", for messages
    # class folders without images (folders only, with allow_empty_classes; else refused)
    empty_classes: list[EmptyClass] = field(default_factory=list)


@dataclass(frozen=True)
class EmptyClass:
    """A class folder that holds no image file, in one split of a folder."""

    split: str
    name: str
    path: str  # the folder, absolute

    def message(self, root: str | os.PathLike[str] | None = None) -> str:
        """"data/train/cat: class 'cat' has no image files", the folder shown relative to
        `root` (files.shown_path); text, not yet escaped for a terminal."""
        from vitcli.files import shown_path

        return f"{display(shown_path(self.path, root))}: {empty_class_words(self.name)}"


def empty_class_advice(count: int) -> str:
    """What to do about `count` empty class folders, which `vit train` refuses."""
    if count == 1:
        return f"vit train refuses an empty class folder: {EMPTY_FIX}"
    return "vit train refuses empty class folders: add images to them or remove them"


EMPTY_FIX = "add images to it or remove it"


def open_source(data: str | Path, cache_dir: Path | None = None, *,
                allow_empty_classes: bool = False) -> DataSource:
    """Recognise what --data is and list its splits.

    A folder with an empty class folder is refused (a classifier cannot learn or be scored
    on a class without images) unless `allow_empty_classes`, where the DataSource names it
    in `empty_classes` and the other classes are listed as usual: `vit audit` reports it.
    """
    path = Path(data).expanduser()
    if path.is_dir():
        # What save_to_disk writes (a DatasetDict, or a Dataset's state + info), not one
        # stray JSON file: a labelling tool's leftovers must not switch how a folder is read.
        if (path / "dataset_dict.json").is_file() or (
                (path / "state.json").is_file() and (path / "dataset_info.json").is_file()):
            return from_saved_dataset(path)
        return from_folder(path, cache_dir, allow_empty_classes=allow_empty_classes)
    if path.exists():
        raise VitError(f"{data}: is a file; --data needs a folder of class sub-folders, "
                       "a dataset saved with save_to_disk, or a Hub dataset name")
    hint = _did_you_mean(path)
    # `examples/shape` next to an existing `examples/` is a mistyped folder, not a Hub name.
    local = path.parent != Path(".") and path.parent.is_dir()
    if looks_like_hub_name(str(data)) and not local:
        return from_hub(str(data), hint)
    raise VitError(f"{data}: no such folder{hint}")


def _did_you_mean(path: Path) -> str:
    """' (did you mean examples/shapes?)' when a folder beside `path` has a close name."""
    import difflib

    try:
        names = [p.name for p in path.parent.iterdir() if p.is_dir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.75)
    return f" (did you mean {path.parent / close[0]}?)" if close else ""


def looks_like_hub_name(text: str) -> bool:
    """'mnist' or 'owner/name'; not './x', '/abs/x', 'a/b/c' or 'x.png'."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", text)) \
        and Path(text).suffix.lower() not in (".png", ".jpg", ".jpeg", ".zip")


def hub_offline() -> bool:
    """Whether the user has told Hugging Face libraries to stay offline."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


# ------------------------------------------------------------------------------- folders


def from_folder(root: Path, cache_dir: Path | None = None, *,
                allow_empty_classes: bool = False) -> DataSource:
    """A folder of class sub-folders, or of split folders of class sub-folders.

    The split folders are chosen here from the top level only (so a class called "test"
    is never mistaken for a split); vitcli.data.discovery then lists the image files of each
    `<split>/<class>/` folder (the one rule every command uses: links followed once, hidden
    and `__` entries skipped, any bytes in a name, classes sorted by their bytes). No file in
    the folder changes how it is read, and the listing is never cached: a scan costs a few
    microseconds a file, and a cached one could differ from what the folder holds now.
    `cache_dir` is accepted for the other sources' sake.
    """
    del cache_dir
    label = f"folder {display(root)}/"
    root = root.absolute()
    split_dirs = _split_folders(root)
    tops = split_dirs or {"train": root}
    if not any(class_folders(folder) for folder in tops.values()):
        raise VitError(f"{display(root)}: no class sub-folders with images (expected "
                       f"{display(root)}/<class>/<image> or train/ and val/ folders of class "
                       "folders)")
    listings = {split: list_classes(folder, allow_empty=allow_empty_classes)
                for split, folder in tops.items()}
    if not any(listing.files for listing in listings.values()):  # nothing at all to read
        raise VitError(no_images_message(next(iter(tops.values()))))
    class_names = sorted({n for lst in listings.values() for n in lst.class_names},
                         key=sort_key)
    splits: dict[str, SplitRows] = {}
    ignored: BadFiles = []
    empty: list[EmptyClass] = []
    for split, folder in tops.items():
        listing = listings[split]
        empty += [EmptyClass(split, name, os.path.join(folder, name))
                  for name in listing.empty_classes]
        if empty and not allow_empty_classes:
            raise VitError(f"{empty[0].message()}; {EMPTY_FIX}")
        if not listing.files:  # every class of this split is empty: named in `empty`
            continue
        index = {name: class_names.index(name) for name in listing.class_names}
        paths = [f.path for f in listing.files]
        labels = np.asarray([index[listing.class_names[i]] for i in listing.labels], np.int64)
        splits[split] = _rows(paths, labels, lambda rows, p=paths: [p[i] for i in rows],
                              listing_fingerprint(listing.files))
        ignored += [(s.path, f"{s.reason}{IGNORED}") for s in listing.skipped]
    return DataSource(splits=splits, class_names=class_names, ignored=ignored, label=label,
                      empty_classes=empty)


def listing_fingerprint(files: list[FileStat]) -> str:
    """A hash of every listed file's path (its bytes), size and modification time."""
    h = hashlib.sha256()
    for f in files:
        h.update(os.fsencode(f.path) + f"\0{f.size}\0{f.mtime_ns}\n".encode())
    return h.hexdigest()


def _split_folders(root: Path) -> dict[str, Path]:
    """{"train": root/train, "validation": root/val, ...} for the split folders at the top.

    A folder with a split's name that holds images itself (not class folders) is a class.
    """
    found: dict[str, Path] = {}
    for child in map(Path, class_folders(root)):
        split = SPLIT_NAMES.get(child.name.lower())
        if split and class_folders(child) and not _has_images(child):
            if split in found:
                raise VitError(f"{display(root)}: both {display(found[split].name)}/ and "
                               f"{display(child.name)}/ are {split} folders; keep one")
            found[split] = child
    return found


def _has_images(folder: Path) -> bool:
    return bool(walk_images(folder, recursive=False)[0])


def _rows(names: list[str], labels: np.ndarray, read_rows: Callable[[Sequence[int]],
          list[ImageSource]], fingerprint: str) -> SplitRows:
    return SplitRows(names=names, labels=labels, read_rows=read_rows, fingerprint=fingerprint,
                     rows=np.arange(len(names), dtype=np.int64))


# ------------------------------------------------------------------------------- datasets


def from_saved_dataset(path: Path) -> DataSource:
    """A Dataset or DatasetDict written with save_to_disk."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise VitError(f"{path}: not a readable saved dataset ({exc})") from None
    return _from_datasets(loaded, name=path.name, label=f"dataset {path}/")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub (HF_ENDPOINT, default huggingface.co) opens quickly."""
    import os
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def from_hub(name: str, hint: str = "") -> DataSource:
    """A dataset from the Hugging Face Hub by name; a clear error when offline."""
    unreachable = (f"{name}: no such folder{hint}, and the Hugging Face Hub is unreachable so it cannot "
                   "be loaded as a Hub dataset name; pass a local folder of class sub-folders "
                   "(or a dataset saved with save_to_disk)")
    if hub_offline():
        raise VitError(unreachable + " [offline mode: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set]")
    if not hub_reachable():
        # Without this, datasets retries for ~25 s and logs every retry before giving up.
        raise VitError(unreachable + " [no connection to the Hub]")
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise VitError(f"{unreachable} ({type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a bad name
        if "offline" in str(exc).lower() or "connect" in str(exc).lower():
            raise VitError(unreachable) from None
        raise VitError(f"{name}: no such folder, and not a loadable Hub dataset "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    return _from_datasets(loaded, name=name, label=f"dataset {name}")


def _from_datasets(loaded: Any, *, name: str, label: str) -> DataSource:
    """Splits of a Dataset/DatasetDict, its image and label columns found by feature type."""
    import datasets

    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    if not parts:
        raise VitError(f"{label}: has no splits")
    splits: dict[str, SplitRows] = {}
    class_names: list[str] | None = None
    for split, ds in parts.items():
        image_col, label_col, names = _columns(ds, label)
        class_names = class_names or names
        if names != class_names:
            raise VitError(f"{label}: split {split} has different class names")
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
        labels = np.asarray(ds[label_col], np.int64)
        rows_name = [f"{name}[{split}][{i}]" for i in range(len(ds))]
        splits[SPLIT_NAMES.get(split.lower(), split)] = _rows(
            rows_name, labels, _row_reader(ds, image_col),
            hashlib.sha256(f"{ds._fingerprint}\0{split}".encode()).hexdigest())
    return DataSource(splits=splits, class_names=class_names or [], ignored=[], label=label)


def _columns(ds: Any, label: str) -> tuple[str, str, list[str]]:
    """The image column (Image feature) and label column (ClassLabel) and its names."""
    import datasets

    features = ds.features
    image_col = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)),
                     None)
    if image_col is None:
        raise VitError(f"{label}: no image column (an Image feature) among "
                       f"{', '.join(features)}")
    if label_col is None:
        raise VitError(f"{label}: no label column (a ClassLabel feature) among "
                       f"{', '.join(features)}")
    return image_col, label_col, list(features[label_col].names)


def _row_reader(ds: Any, image_col: str) -> Callable[[Sequence[int]], list[ImageSource]]:
    """Read rows' encoded bytes (or their file path when the table stores only that)."""
    def read(rows: Sequence[int]) -> list[ImageSource]:
        cells = ds.select_columns([image_col])[[int(r) for r in rows]][image_col]
        return [c["bytes"] if c.get("bytes") else (c.get("path") or b"") for c in cells]
    return read
