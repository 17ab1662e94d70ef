"""What --data is: a folder, a saved dataset or a Hub name, listed as splits of labelled rows.

Nothing is decoded here; each split says how to read its rows (file paths, or the encoded
bytes stored in a `datasets` table) so that vitcli.data.cache can decode them once, in parallel,
and skip bad ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitcli.data.cache import ImageSource, default_cache_dir
from vitcli.errors import VitError
from vitcli.files import atomic_write

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


def open_source(data: str | Path, cache_dir: Path | None = None) -> DataSource:
    """Recognise what --data is and list its splits (a folder's listing is cached)."""
    path = Path(data).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return from_saved_dataset(path)
        return from_folder(path, cache_dir)
    if path.exists():
        raise VitError(f"{data}: is a file; --data needs a folder of class sub-folders, "
                       "a dataset saved with save_to_disk, or a Hub dataset name")
    if looks_like_hub_name(str(data)):
        return from_hub(str(data))
    raise VitError(f"{data}: no such folder")


def looks_like_hub_name(text: str) -> bool:
    """'mnist' or 'owner/name'; not './x', '/abs/x', 'a/b/c' or 'x.png'."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", text)) \
        and Path(text).suffix.lower() not in (".png", ".jpg", ".jpeg", ".zip")


def hub_offline() -> bool:
    """Whether the user has told Hugging Face libraries to stay offline."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


# ------------------------------------------------------------------------------- folders


def from_folder(root: Path, cache_dir: Path | None = None) -> DataSource:
    """A folder of class sub-folders, or of split folders of class sub-folders.

    The split folders are chosen here from the top level only (so a class called "test"
    is never mistaken for a split); `datasets`' imagefolder then lists the image files of
    exactly `<split>/<class>/<file>` and names the classes (sorted folder names). Its answer
    is cached under a hash of every file's path, size and mtime: listing through imagefolder
    costs about half a millisecond a file, a directory scan a few microseconds.
    """
    label = f"folder {root}/"
    root = root.absolute()  # imagefolder lists absolute paths; report ours the same way
    split_dirs = _split_folders(root)
    tops = split_dirs or {"train": root}
    if not any(_class_dirs(folder) for folder in tops.values()):
        raise VitError(f"{root}: no class sub-folders with images (expected {root}/<class>/"
                       "<image> or train/ and val/ folders of class folders)")
    scans = {split: _scan(folder) for split, folder in tops.items()}
    listing_file = (cache_dir or default_cache_dir()) / f"listing-{_listing_key(scans)}.json"
    listing = _read_listing(listing_file)
    if listing is None:
        listing = _imagefolder_listing(tops, root)
        with contextlib.suppress(OSError):  # no cache folder: list again next time
            atomic_write(listing_file, lambda tmp: tmp.write_text(json.dumps(listing)))
    class_names = listing["class_names"]
    splits: dict[str, SplitRows] = {}
    ignored: BadFiles = []
    for split, folder in tops.items():
        paths, labels = listing["splits"][split]
        if not paths:
            raise VitError(f"{folder}: no image files in its class sub-folders")
        _check_class_folders(folder, paths)
        stats = scans[split]
        fingerprint = hashlib.sha256("".join(f"{p}\0{stats.get(os.path.normpath(p))}\n"
                                             for p in paths).encode()).hexdigest()
        splits[split] = _rows(paths, np.asarray(labels, np.int64),
                              lambda rows, p=paths: [p[i] for i in rows], fingerprint)
        listed = {os.path.normpath(p) for p in paths}
        ignored += [(p, "not an image file; ignored") for p in stats if p not in listed]
    return DataSource(splits=splits, class_names=class_names, ignored=ignored, label=label)


def _scan(folder: Path) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime_ns)} of the non-hidden files in the class folders of `folder`."""
    found: dict[str, tuple[int, int]] = {}
    for class_dir in _class_dirs(folder):
        with os.scandir(class_dir) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if not _hidden(entry.name) and entry.is_file():
                    st = entry.stat()
                    found[os.path.normpath(entry.path)] = (st.st_size, st.st_mtime_ns)
    return found


def _listing_key(scans: dict[str, dict[str, tuple[int, int]]]) -> str:
    from importlib.metadata import version

    h = hashlib.sha256(f"imagefolder {version('datasets')}".encode())
    for split, stats in scans.items():
        h.update(f"[{split}]".encode())
        for path, (size, mtime) in stats.items():
            h.update(f"{path}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()[:32]


def _read_listing(path: Path) -> dict[str, Any] | None:
    try:
        listing = json.loads(path.read_text())
        return listing if {"class_names", "splits"} <= set(listing) else None
    except (OSError, ValueError):
        return None


def _imagefolder_listing(tops: dict[str, Path], root: Path) -> dict[str, Any]:
    """{"class_names": [...], "splits": {split: [paths, labels]}} from `datasets`' imagefolder."""
    data_files = {split: os.path.join(_glob_escape(str(folder)), "*", "*")
                  for split, folder in tops.items()}
    dsd = _imagefolder(data_files, root)
    class_names = _class_names(dsd)
    splits = {split: _list_files(dsd[split], class_names) for split in tops}
    return {"class_names": class_names, "splits": splits}


def _split_folders(root: Path) -> dict[str, Path]:
    """{"train": root/train, "validation": root/val, ...} for the split folders at the top.

    A folder with a split's name that holds images itself (not class folders) is a class.
    """
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        split = SPLIT_NAMES.get(child.name.lower())
        if split and child.is_dir() and _class_dirs(child) and not _has_images(child):
            if split in found:
                raise VitError(f"{root}: both {found[split].name}/ and {child.name}/ are "
                               f"{split} folders; keep one")
            found[split] = child
    return found


def _imagefolder(data_files: dict[str, str], root: Path) -> Any:
    """`datasets`' imagefolder over these files, streamed (no Arrow copy is written)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset("imagefolder", data_files=data_files, streaming=True)
    except FileNotFoundError:  # includes datasets' DataFilesNotFoundError
        raise VitError(f"{root}: no image files found in its class sub-folders") from None


def _class_names(dsd: Any) -> list[str]:
    """ClassLabel names of the imagefolder, or [] when it saw a single class folder."""
    feature = next(iter(dsd.values())).features.get("label")
    return list(feature.names) if feature is not None else []


def _list_files(split: Any, class_names: list[str]) -> tuple[list[str], list[int]]:
    """Every image path of a streamed imagefolder split, with its label."""
    from datasets import Image

    paths, labels = [], []
    for row in split.cast_column("image", Image(decode=False)):
        path = row["image"]["path"]
        paths.append(path)
        if "label" in row:
            labels.append(row["label"])
        else:  # imagefolder adds no label for one class; that class is the folder name
            labels.append(_single_class(class_names, Path(path).parent.name))
    return paths, labels


def _single_class(class_names: list[str], name: str) -> int:
    if name not in class_names:
        class_names.append(name)
    return class_names.index(name)


def _class_dirs(folder: Path) -> list[Path]:
    return [d for d in sorted(folder.iterdir()) if d.is_dir() and not _hidden(d.name)]


def _has_images(folder: Path) -> bool:
    from vitcli.images import is_image_path

    return any(f.is_file() and is_image_path(f) for f in folder.iterdir())


def _check_class_folders(folder: Path, paths: list[str]) -> None:
    """A class folder without a single image file is a mistake worth stopping for."""
    used = {Path(p).parent.name for p in paths}
    for d in _class_dirs(folder):
        if d.name not in used:
            raise VitError(f"{d}: class {d.name!r} has no image files")


def _hidden(name: str) -> bool:
    return name.startswith((".", "__"))


def _glob_escape(text: str) -> str:
    """Escape glob characters in a real folder name ([, ], *, ?)."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


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


def from_hub(name: str) -> DataSource:
    """A dataset from the Hugging Face Hub by name; a clear error when offline."""
    unreachable = (f"{name}: no such folder, and the Hugging Face Hub is unreachable so it cannot "
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
