"""The one rule for finding images in a folder: every command sees the same files.

Train, eval, `export --data`, predict (folders and globs) and any new command list images
through this module, so they cannot disagree about what a folder holds:

- directory links are followed, each real folder (device, inode) entered once: a link loop
  or a second link to the same folder is skipped and named, never walked forever;
- hidden entries (`.x`, macOS `._x`, `.ipynb_checkpoints/`) and `__x` entries (`__MACOSX/`,
  `__pycache__/`) are skipped, as every command skips them;
- a name may hold any bytes (a Latin-1 `caf\\xe9.png`): names are kept as Python strings
  with surrogate escapes (os.fsdecode), sorted by their bytes so that every process and
  machine orders classes and files the same way;
- no file in the folder changes how it is read (a stray `metadata.csv` is just a non-image);
- every entry left out is returned with the reason (unreadable folder, vanished file, link
  loop, not an image), so a command can name it.

Nothing is cached: a scan costs microseconds a file, and a cached listing could differ from
what the folder holds now.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vitcli.errors import VitError, plural
from vitcli.images import is_image_path

# Reasons an entry is left out (Skipped.reason starts with one of these).
UNREADABLE = "unreadable folder"
VANISHED = "vanished while listed"
LOOP = "link loop or folder already listed"
NOT_IMAGE = "not an image file"
BROKEN_LINK = "broken link"
NOT_REGULAR = "not a regular file"
CANNOT_READ = "cannot be read"
IGNORED = "; ignored"  # added after a listing's reason where a data set reports it


@dataclass(frozen=True)
class Skipped:
    """One entry the listing left out, and why."""

    path: str
    reason: str


@dataclass
class FileStat:
    """What a listed file's pixels depend on: its path, size and modification time."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class ClassListing:
    """The images of a folder of class sub-folders: files, labels, class names, skips."""

    files: list[FileStat]
    labels: list[int]
    class_names: list[str]
    skipped: list[Skipped] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)


def is_hidden(name: str) -> bool:
    """Hidden (`.x`, `._x`, `.ipynb_checkpoints`) or private (`__x`) entries: never listed."""
    return name.startswith((".", "__"))


def sort_key(name: str) -> bytes:
    """Names ordered by their bytes: the same order in every locale, process and machine."""
    return os.fsencode(name)


def display(path: str | os.PathLike[str]) -> str:
    """A path as text that can be printed anywhere: undecodable bytes shown as \\xNN."""
    text = os.fspath(path)
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def _scan(folder: str, skipped: list[Skipped]) -> list[os.DirEntry[str]] | None:
    """The visible entries of one folder in byte order, or None (skip recorded) if unreadable."""
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if not is_hidden(e.name)]
    except FileNotFoundError:
        skipped.append(Skipped(folder, VANISHED))
        return None
    except OSError as exc:
        skipped.append(Skipped(folder, f"{UNREADABLE} ({exc.strerror or exc})"))
        return None
    return sorted(entries, key=lambda e: sort_key(e.name))


def _kind(entry: os.DirEntry[str], skipped: list[Skipped]) -> os.stat_result | None:
    """The entry's stat (links followed), or None with the reason recorded."""
    try:
        return entry.stat(follow_symlinks=True)
    except FileNotFoundError:
        reason = BROKEN_LINK if entry.is_symlink() else VANISHED
        skipped.append(Skipped(entry.path, reason))
    except OSError as exc:
        skipped.append(Skipped(entry.path, f"{CANNOT_READ} ({exc.strerror or exc})"))
    return None


def walk_images(folder: str | os.PathLike[str], *, recursive: bool = True,
                seen: set[tuple[int, int]] | None = None,
                skipped: list[Skipped] | None = None) -> tuple[list[FileStat], list[Skipped]]:
    """Every image file in `folder` (recursively by default), in byte order, and the skips.

    `seen` holds the (device, inode) of folders already entered; pass one set to several
    calls so that no folder is listed twice across them.
    """
    seen = set() if seen is None else seen
    skipped = [] if skipped is None else skipped
    found: list[FileStat] = []
    root = os.fspath(folder)
    try:
        st = os.stat(root)
    except OSError as exc:
        skipped.append(Skipped(root, f"{UNREADABLE} ({exc.strerror or exc})"))
        return found, skipped
    key = (st.st_dev, st.st_ino)
    if key in seen:
        skipped.append(Skipped(root, LOOP))
        return found, skipped
    seen.add(key)
    _walk(root, found, seen, skipped, recursive)
    return found, skipped


def _walk(root: str, found: list[FileStat], seen: set[tuple[int, int]],
          skipped: list[Skipped], recursive: bool) -> None:
    """Append the image files under `root` to `found` (root itself already in `seen`)."""
    # Depth-first, each level in byte order, a folder's contents where the folder sorts:
    # the order of the sorted full paths, without holding more than one path per level.
    stack = [iter(_scan(root, skipped) or [])]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        info = _kind(entry, skipped)
        if info is None:
            continue
        if stat.S_ISDIR(info.st_mode):
            if not recursive:
                continue
            key = (info.st_dev, info.st_ino)
            if key in seen:
                skipped.append(Skipped(entry.path, LOOP))
                continue
            seen.add(key)
            stack.append(iter(_scan(entry.path, skipped) or []))
        elif not stat.S_ISREG(info.st_mode):
            skipped.append(Skipped(entry.path, NOT_REGULAR))
        elif is_image_path(Path(entry.name)):
            found.append(FileStat(entry.path, info.st_size, info.st_mtime_ns))
        else:
            skipped.append(Skipped(entry.path, NOT_IMAGE))


def class_folders(folder: str | os.PathLike[str]) -> list[str]:
    """The visible sub-folders of `folder` (links followed), in byte order."""
    skipped: list[Skipped] = []
    entries = _scan(os.fspath(folder), skipped)
    if entries is None:
        reason = skipped[0].reason if skipped else UNREADABLE
        raise VitError(f"{display(folder)}: {reason}")
    out = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=True):
                out.append(entry.path)
        except OSError:
            continue
    return out


def empty_class_words(name: str) -> str:
    """"class 'x' has no image files": the one wording of an empty class folder, the fact
    `vit train` refuses and `vit audit` reports (a class folder holding no image file at
    any depth, as list_classes finds it)."""
    return f"class {display(name)!r} has no image files"


def list_classes(folder: str | os.PathLike[str], *, allow_empty: bool = False) -> ClassListing:
    """The images of `folder/<class>/...` (files inside a class folder at any depth).

    Classes are the visible sub-folders, sorted by their bytes; a class's label is its
    position in that order; a class folder without images is named in `empty_classes`.
    Raises VitError when no class folder holds a single image, unless `allow_empty` (an
    audit reports such a folder rather than refusing it).
    """
    root = os.fspath(folder)
    classes = class_folders(root)
    listing = ClassListing(files=[], labels=[], class_names=[])
    # Every class folder (and the root) is claimed before any is walked, so that a link from
    # one class into another (or back up to the root) is a loop, whatever the order.
    seen: set[tuple[int, int]] = set()
    keys = {}
    for path in [root, *classes]:
        try:
            st = os.stat(path)
        except OSError as exc:
            listing.skipped.append(Skipped(path, f"{UNREADABLE} ({exc.strerror or exc})"))
            continue
        if (st.st_dev, st.st_ino) in seen:
            listing.skipped.append(Skipped(path, LOOP))
            continue
        seen.add((st.st_dev, st.st_ino))
        keys[path] = (st.st_dev, st.st_ino)
    for class_dir in classes:
        if class_dir not in keys:
            continue
        files: list[FileStat] = []
        _walk(class_dir, files, seen, listing.skipped, True)
        name = os.path.basename(class_dir)
        if not files:
            listing.empty_classes.append(name)
            continue
        label = len(listing.class_names)
        listing.class_names.append(name)
        listing.files += files
        listing.labels += [label] * len(files)
    if not listing.files and not allow_empty:
        raise VitError(no_images_message(root))
    return listing


def no_images_message(folder: str | os.PathLike[str]) -> str:
    """Why a folder of class folders that hold no image at all is refused."""
    return (f"{display(folder)}: no image files in its class sub-folders "
            f"(expected {display(folder)}/<class>/<image>)")


# What a skipped entry is, by its reason: (one, many) in words. A reason the listing did not
# give (a file with an image's name that Pillow could not decode) is an unreadable image.
_KINDS = {
    NOT_IMAGE: ("file that is not an image", "files that are not images"),
    NOT_REGULAR: ("entry that is not a regular file", "entries that are not regular files"),
    BROKEN_LINK: ("broken link", "broken links"),
    LOOP: ("link loop or folder listed already", "link loops or folders listed already"),
    VANISHED: ("entry that vanished while listed", "entries that vanished while listed"),
    UNREADABLE: ("unreadable folder", "unreadable folders"),
    CANNOT_READ: ("entry that cannot be read", "entries that cannot be read"),
}
_UNREADABLE_IMAGE = ("unreadable image", "unreadable images")


def _kind_of(reason: str) -> tuple[str, str]:
    reason = reason.removesuffix(IGNORED)
    if reason in _KINDS:  # exact: a decoder's "not an image file (or a format …)" is not
        return _KINDS[reason]
    for start in (UNREADABLE, CANNOT_READ):  # these carry the system's words in brackets
        if reason.startswith(start + " ("):
            return _KINDS[start]
    return _UNREADABLE_IMAGE


def skipped_words(reasons: Iterable[str]) -> str:
    """What was skipped, counted by kind: '1 file that is not an image', '2 unreadable
    images', '1 file that is not an image, 1 broken link and 2 unreadable images'.

    `reasons` are the reasons of the entries the listing left out (Skipped.reason, or
    "<reason>; ignored") and the messages of images that could not be decoded; every
    command words its skipped files with this, so a notes.txt is never an 'unreadable
    image' in one and an 'entry' in another.
    """
    counts: dict[tuple[str, str], int] = {}
    for reason in reasons:
        kind = _kind_of(reason)
        counts[kind] = counts.get(kind, 0) + 1
    parts = [plural(n, one, many) for (one, many), n in counts.items()]
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def skipped_summary(skipped: list[Skipped], *, limit: int = 3) -> str:
    """One line that counts the skipped entries by kind and names the first few."""
    first = ", ".join(display(s.path) for s in skipped[:limit])
    more = ", …" if len(skipped) > limit else ""
    return f"skipped {skipped_words(s.reason for s in skipped)}: {first}{more}"


def skipped_note(bad_files: list[tuple[str, str]],
                 folder: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """('skipped 2 unreadable images', '(first: cat/x.png: truncated)'): the files a
    command left out of labelled data, counted by kind (skipped_words), and the first one
    named relative to `folder`, the data folder the user gave. Eval and `export --data` say
    it so, on two lines where one is too narrow; text, not yet escaped for a terminal."""
    from vitcli.files import shown_path

    path, reason = bad_files[0]
    reason = reason[len(path):].lstrip(": ") if reason.startswith(path) else reason
    first = f"{shown_path(path, folder)}: {reason.removesuffix(IGNORED)}"
    lead = "first: " if len(bad_files) > 1 else ""
    return f"skipped {skipped_words(r for _, r in bad_files)}", f"({lead}{first})"
