"""Writing files safely: atomic replacement and folders claimed by number.

Every file vitcli writes goes through `atomic_write`, so an interrupted or failed write never
leaves a truncated file where a good one was. Below every sub-package: it imports only errors.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from vitcli.errors import VitError


class WriteError(VitError, OSError):
    """A write that failed (disk full, read-only, no permission): one line naming the file.

    Also an OSError, so that callers that treat a failed optional write (a cache entry) as
    harmless keep doing so.
    """

    def __init__(self, path: Path, exc: OSError) -> None:
        VitError.__init__(self, f"{path}: cannot write ({exc.strerror or exc}); "
                                "nothing was replaced")
        self.errno = exc.errno
        self.strerror = exc.strerror
        self.filename = str(path)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` and move tmp over `path` only if it succeeded.

    A failure (disk full, interrupted, an exception in `write`) leaves the old file as it
    was and no temporary file behind; an OSError comes back as a WriteError (one line).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                        dir=path.parent)
    except OSError as exc:
        raise WriteError(path, exc) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        _chmod_like_open(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(path, exc) from None
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 text; a name that is not UTF-8 keeps its exact bytes."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8",
                                                         errors="surrogateescape"))


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (links, `..` and hard links resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist yet: compare where they would be
        return Path(a).resolve() == Path(b).resolve()


def refuse_overwrite(output: str | Path, option: str,
                     inputs: dict[str, str | Path | None]) -> None:
    """A UsageError when writing `output` would replace one of the command's inputs.

    `inputs` maps a label ("--model") to a path; outputs are never written over an input,
    whatever its name or suffix (export --onnx --model weights.onnx, eval --json MODEL).
    """
    from vitcli.errors import UsageError

    for label, source in inputs.items():
        if source is not None and same_file(output, source):
            raise UsageError(f"{option} {output}: is the same file as {label} {source}; "
                             "writing it would destroy an input. Choose another name")


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


def shown_path(path: str | os.PathLike[str], folder: str | os.PathLike[str] | None) -> str:
    """`path` as a list of images shows it: relative to `folder` (the data folder the user
    gave) when it lies inside it, else `path` as given.

    Listings hold absolute paths (a data source makes its root absolute, so that a run can
    resume from anywhere), which repeat the user's own folder on every row. Both sides are
    made absolute and normalised, then compared again with links resolved, so that
    `--data imgs`, `--data ./imgs/` and `--data /home/me/imgs` all show `cat/01.png`. The
    text is not escaped: the caller escapes it for the terminal (commands._common.safe).
    """
    text = os.fspath(path)
    root = os.fspath(folder) if folder is not None else ""
    if not root:
        return text
    for absolute in (os.path.abspath, os.path.realpath):
        try:
            inside = os.path.relpath(absolute(text), absolute(root))
        except ValueError:  # another drive (Windows)
            continue
        if inside != os.curdir and inside.split(os.sep)[0] != os.pardir:
            return inside
    return text


def wrap_title(text: str, width_in: float, fontsize: float = 12.0) -> str:
    """`text` broken into lines that fit `width_in` inches at `fontsize` points, so that a
    figure title built from long run, model and data names is never cut off at the edge.

    Assumes an average glyph of 0.62 em (DejaVu Sans, matplotlib's default, is about 0.55-0.6);
    words longer than a line are split. Lines the text already has are kept.
    """
    import textwrap

    per_line = max(12, int(width_in * 72 / (0.62 * fontsize)))
    return "\n".join(textwrap.fill(line, per_line, break_on_hyphens=False) or line
                      for line in text.split("\n"))


# ------------------------------------------------------------------------ reading safely

JSON_MAX_DEPTH = 64  # nesting of any JSON vitcli reads; real files need under 10
JSON_MAX_BYTES = 100 * 1024 * 1024  # safetensors' own cap on its header


def check_regular_file(path: str | Path, what: str = "file") -> os.stat_result:
    """The stat of `path` if it is a regular file (links followed), else a VitError.

    Checked with os.stat before anything opens the file: opening a FIFO blocks until a
    writer appears (a hang), and a device or socket is never a model or a JSON file.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VitError(f"{path}: no such file") from None
    except OSError as exc:
        raise VitError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise VitError(f"{path}: is a folder, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "a device")
        raise VitError(f"{path}: is {kind}, not a regular file; refused")
    return st


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth_ok(text: str | bytes, max_depth: int = JSON_MAX_DEPTH) -> bool:
    """Whether no array/object in the JSON `text` nests deeper than `max_depth`.

    Checked before json.loads (recursive) sees a document nested thousands deep (a
    RecursionError, or a stack overflow in other parsers): strings removed, then the
    innermost empty pairs removed `max_depth` times, each pass at C speed; whatever is left
    nests deeper (or does not pair up, which is not JSON either).
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKET)
    for _ in range(max_depth):
        if not brackets:
            return True
        brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
    return not brackets


def load_json(text: str | bytes, *, source: str, max_depth: int = JSON_MAX_DEPTH,
              max_bytes: int = JSON_MAX_BYTES) -> object:
    """Parse JSON that came from outside (a model file, a config.json, a run's state).

    Bounded in size and nesting depth, and every error is one VitError naming `source`:
    never a RecursionError, a MemoryError or a UnicodeDecodeError traceback. NaN and
    Infinity (which Python's json accepts) are refused as not JSON.
    """
    import json

    if len(text) > max_bytes:
        raise VitError(f"{source}: JSON too large ({len(text):,} bytes; at most {max_bytes:,})")
    if not json_depth_ok(text, max_depth):
        raise VitError(f"{source}: not valid JSON, or JSON nested deeper than {max_depth} "
                       "levels; refused")

    def no_constant(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise VitError(f"{source}: not valid JSON ({exc})") from None


def read_json_file(path: str | Path, *, max_bytes: int = JSON_MAX_BYTES) -> object:
    """load_json of a file, after checking it is a regular file of bounded size."""
    st = check_regular_file(path, "JSON file")
    if st.st_size > max_bytes:
        raise VitError(f"{path}: too large for a JSON file ({st.st_size:,} bytes)")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise VitError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return load_json(data, source=str(path), max_bytes=max_bytes)
