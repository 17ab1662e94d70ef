"""Writing files safely: atomic replacement and folders claimed by number.

Every file vitcli writes goes through `atomic_write`, so an interrupted or failed write never
leaves a truncated file where a good one was. Below every sub-package: it imports only errors.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from vitcli.errors import VitError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` and move tmp over `path` only if it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        _chmod_like_open(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _chmod_like_open(path: Path) -> None:
    """Give the file the mode open() would have (mkstemp makes it owner-only, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)



def claim_numbered_dir(root: str | Path, base: str, sep: str = "") -> Path:
    """Create and return <root>/<base>, else <base><sep>2, <base><sep>3, ... the first free.

    `mkdir(exist_ok=False)` is the claim, so two runs started at once cannot share a folder.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1, 100_000):
            candidate = root / (base if n == 1 else f"{base}{sep}{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return candidate
    except OSError as exc:
        raise VitError(f"{exc.filename or root}: cannot create a folder there "
                       f"({exc.strerror or exc})") from None
    raise VitError(f"{root}: no free folder name for {base!r}")


def model_label(path: str | Path) -> str:
    """A model file named for a title: `exp3/best.safetensors` for a run's weights (whose
    file names are the same in every run), else the file name."""
    path = Path(path)
    parent = path.resolve().parent if path.exists() else path.parent
    if parent.name == "weights" and parent.parent.name:
        return f"{parent.parent.name}/{path.name}"
    return path.name


_SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing"}


def data_label(data: str | Path) -> str:
    """A data folder named for a title or a folder name: `shapes/val` for a split folder
    (`val` alone says nothing), else the folder's (or dataset's) own name."""
    text = str(data).rstrip("/\\")
    path = Path(text)
    if path.name.lower() in _SPLIT_NAMES and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    return path.name or text

