"""The self-describing model file: safetensors weights + JSON metadata, never pickle.

Metadata keys (all strings, as safetensors requires; `typed_metadata` decodes them):
  format          "vitcli"
  format_version  "1"
  config          ViTConfig as JSON
  class_names     JSON list of the labels, in output order
  preprocessing   Preprocessing as JSON (size, mean, std, interpolation, crop, colour mode)
  temperature     softmax temperature fitted on validation data (absent = 1; model/outputs.py)
  ood             the unknown rule's method and threshold, with tensors ood.* (model/ood.py)
  + any extra string keys a caller adds (e.g. "vitcli_version", "source").

Writes are atomic: a temporary file in the same folder, fsync, then os.replace, so a crash
never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitcli.errors import VitError
from vitcli.files import atomic_write, check_regular_file, load_json
from vitcli.model.config import ViTConfig
from vitcli.model.preprocess import Preprocessing

if TYPE_CHECKING:
    import torch

    from vitcli.model.ood import OodStats
    from vitcli.model.vit import VisionTransformer

FORMAT = "vitcli"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar"})
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own cap on the JSON header


@dataclass
class ModelFile:
    """A loaded model with everything needed to use it the way it was trained."""

    model: VisionTransformer
    config: ViTConfig
    class_names: list[str]
    preprocessing: Preprocessing
    ood_info: dict[str, Any] | None = None  # vitcli.model.ood.parse_ood's checked rule
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    temperature: float = 1.0  # probabilities are softmax(logits / temperature)
    ood: OodStats | None = None  # the unknown rule's statistics, if the file has them


# ------------------------------------------------------------------------------- writing


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> Path:
    """Atomically write a safetensors file (any tensors, string metadata)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata=metadata))


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save_model(path: str | Path, model: torch.nn.Module, *,
               class_names: list[str] | None = None,
               preprocessing: Preprocessing | None = None,
               extra: dict[str, str] | None = None,
               temperature: float | None = None, ood: OodStats | None = None) -> Path:
    """Write the model file: weights plus config, class names and preprocessing.

    With `temperature` and `ood` (calibration and the unknown rule, fitted at the end of
    training), those travel in the same file.
    """
    from vitcli import __version__

    model = unwrap_model(model)
    config: ViTConfig = model.config
    names = list(class_names) if class_names is not None else [
        f"class_{i}" for i in range(config.num_classes)]
    if config.num_classes and len(names) != config.num_classes:
        raise VitError(f"{len(names)} class names for a model with {config.num_classes} outputs")
    pre = preprocessing or default_preprocessing(config)
    if pre.image_size != config.image_size:  # such a file is refused when loaded
        raise VitError(f"preprocessing image size {pre.image_size} differs from the model's "
                       f"image size {config.image_size}")
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "vitcli_version": __version__,
        "config": config.to_json(),
        "class_names": json.dumps(names),
        "preprocessing": pre.to_json(),
        **(extra or {}),
    }
    tensors = dict(model.state_dict())
    if temperature is not None:
        metadata["temperature"] = repr(float(temperature))
    if ood is not None:
        import torch

        metadata["ood"] = ood.metadata()
        tensors.update({k: torch.from_numpy(v) for k, v in ood.tensors().items()})
    return save_tensors(path, tensors, metadata)


def default_preprocessing(config: ViTConfig) -> Preprocessing:
    """Neutral preprocessing for a model trained from scratch (mean/std 0.5)."""
    c = config.in_channels
    return Preprocessing(image_size=config.image_size, mean=(0.5,) * c, std=(0.5,) * c,
                         color_mode="L" if c == 1 else "RGB")


# ------------------------------------------------------------------------------- reading


def read_header(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The safetensors header (tensor entries, metadata), checked without torch.

    Refuses pickle checkpoints, missing files and truncated or corrupt files with a
    VitError that names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise VitError(f"{path}: is a folder; give the .safetensors model file inside it")
    size = check_regular_file(path, "model file").st_size  # before open: a FIFO would hang
    with open(path, "rb") as f:
        head = f.read(9)
        # safetensors: u64 little-endian header length, then a JSON object.
        looks_safetensors = len(head) == 9 and head[8:9] == b"{"
        if not looks_safetensors:
            raise VitError(refusal_message(path, head, size))
        (n,) = struct.unpack("<Q", head[:8])
        if n > _HEADER_LIMIT or 8 + n > size:
            raise VitError(f"{path}: truncated or corrupt safetensors file (bad header length)")
        f.seek(8)
        header = load_json(f.read(n), source=f"{path}: corrupt safetensors header")
    if not isinstance(header, dict):
        raise VitError(f"{path}: corrupt safetensors header")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(v, str) for v in metadata.values()):
        raise VitError(f"{path}: corrupt safetensors header (metadata is not text)")
    bad = next((name for name, entry in header.items() if not _tensor_entry_ok(entry)), None)
    if bad is not None:
        raise VitError(f"{path}: corrupt safetensors header (bad tensor entry {bad!r})")
    data_end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + n + data_end > size:
        raise VitError(
            f"{path}: truncated safetensors file ({size:,} bytes, needs {8 + n + data_end:,})")
    from vitcli.model.validate import check_layout

    check_layout(path, header, size - 8 - n)
    return header, metadata


def _tensor_entry_ok(entry: Any) -> bool:
    """A tensor entry as safetensors writes it: dtype, shape (ints), data_offsets (2 ints)."""
    def ints(values: Any) -> bool:
        return isinstance(values, list) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)

    return (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
            and ints(entry.get("shape")) and ints(entry.get("data_offsets"))
            and len(entry["data_offsets"]) == 2)


def refusal_message(path: Path, head: bytes, size: int) -> str:
    """Why a file that is not safetensors is refused, and what to do instead."""
    suffix = path.suffix.lower()
    if head[:2] == b"PK" or head[:1] == b"\x80" or suffix in PICKLE_SUFFIXES:
        source = path
        if suffix in (".safetensors", ".npz"):  # `vit convert` goes by this suffix: rename
            source = path.with_suffix(".pt")
            rename = f"Rename it to {source.name}, then convert it once with "
        else:
            rename = "Convert it once with "
        return (f"{path}: looks like a PyTorch pickle checkpoint; vitcli never unpickles files "
                f"(they can run code). {rename}"
                f"`vit convert {source} --allow-pickle --out model.safetensors`")
    if suffix == ".onnx":
        return f"{path}: is an ONNX file; this command needs a .safetensors model file"
    if size == 0:
        return f"{path}: empty file, not a model"
    return f"{path}: not a safetensors model file"


def read_metadata(path: str | Path) -> dict[str, str]:
    """The vitcli metadata of a model file (no torch), or a VitError if it is not one."""
    return vitcli_metadata(path, read_header(path)[1])


def vitcli_metadata(path: str | Path, metadata: dict[str, str]) -> dict[str, str]:
    """`metadata` (read_header's) if it is a vitcli model file's this vitcli can read, else
    a VitError naming `path`."""
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise VitError(
            f"{path}: a safetensors file but not a vitcli model file (no vitcli metadata); "
            "import other ViT weights with `vit convert`")
    try:
        version = int(metadata.get("format_version", "0") or 0)
    except ValueError:
        raise VitError(f"{path}: corrupt vitcli metadata (format_version "
                       f"{metadata['format_version']!r})") from None
    if version > FORMAT_VERSION:
        raise VitError(
            f"{path}: model file format {version} is newer than this vitcli understands "
            f"({FORMAT_VERSION}); upgrade vitcli")
    from vitcli.model.validate import check_metadata_keys

    try:  # every other key vitcli writes (a model file records no precision)
        check_metadata_keys(metadata)
    except ValueError as exc:
        raise VitError(f"{path}: corrupt vitcli metadata ({exc})") from None
    return metadata


def parse_metadata(path: str | Path,
                   metadata: dict[str, str]) -> tuple[ViTConfig, list[str], Preprocessing]:
    """Config, class names and preprocessing from a model file's metadata."""
    try:
        config = ViTConfig.from_dict(_json_of(metadata["config"], dict, "config"))
        names = _json_of(metadata.get("class_names", "[]"), list, "class_names")
        if not all(isinstance(n, str) for n in names):
            raise ValueError("class_names must be a list of strings")
        if config.num_classes and len(names) != config.num_classes:
            raise ValueError(f"{len(names)} class names for {config.num_classes} outputs")
        pre = Preprocessing.from_dict(_json_of(metadata["preprocessing"], dict, "preprocessing")) \
            if "preprocessing" in metadata else default_preprocessing(config)
        if pre.image_size != config.image_size:
            # vitcli always writes them equal; the model would take the other size anyway
            # (resampling its position embedding) and predict silently wrong.
            raise ValueError(f"preprocessing image size {pre.image_size} differs from the "
                             f"config's image size {config.image_size}")
    except (KeyError, TypeError, ValueError, VitError) as exc:
        # A stored value that fails validation (a UsageError when typed on a command line)
        # is a broken file here: exit 1, naming the file.
        raise VitError(f"{path}: corrupt vitcli metadata ({exc})") from None
    return config, names, pre


# Metadata values that are text whatever they look like: a version "2" stays "2".
TEXT_KEYS = frozenset({"format", "vitcli_version", "source", "precision"})


def typed_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    """The metadata with every value typed as a JSON reader expects it: numbers as numbers,
    `true`/`false` as booleans, objects and lists as such, empty text as null.

    safetensors and ONNX metadata hold text only, so vitcli stores numbers and objects as
    JSON text ("0.987500", '{"source": "split"}'); a consumer of `vit info --json` should
    not have to know which key to parse. Names and versions (TEXT_KEYS), text that is not
    JSON, and numbers JSON cannot hold (1e999) stay as stored. The one decoding rule for
    every format: `vit info --json` of a model file and of its ONNX export agree.
    """
    import json

    typed: dict[str, Any] = {}
    for key, text in metadata.items():
        typed[key] = text
        if key in TEXT_KEYS:
            continue
        if not text.strip():
            typed[key] = None  # e.g. val_top1 of a run without validation images
            continue
        try:
            value = load_json(text, source=key)
            json.dumps(value, allow_nan=False)  # 1e999 parses as inf: not JSON's
        except (VitError, ValueError):
            continue  # plain text
        if not isinstance(value, str):  # '"x"' is text either way; keep it as stored
            typed[key] = value
    return typed


def _json_of(text: str, kind: type, key: str) -> Any:
    """Parse one metadata value, which must be JSON of the given kind (object or list)."""
    value = load_json(text, source=key)
    if not isinstance(value, kind):
        raise ValueError(f"{key} should be a JSON {'object' if kind is dict else 'list'}")
    return value


@dataclass
class CheckedFile:
    """A model file that passed every check that needs no weights loaded."""

    path: Path
    header: dict[str, Any]  # tensor name → {dtype, shape, data_offsets}
    metadata: dict[str, str]
    config: ViTConfig
    class_names: list[str]
    preprocessing: Preprocessing
    temperature: float = 1.0
    ood_info: dict[str, Any] | None = None  # vitcli.model.ood.parse_ood's checked rule


def check_model_file(path: str | Path) -> CheckedFile:
    """Every check of a vitcli model file short of reading its weights (see the module doc)."""
    from vitcli.model.validate import check_against_config

    path = Path(path)
    header, stored = read_header(path)  # 1, 2 and 4: the file is read once
    metadata = vitcli_metadata(path, stored)
    config, names, pre = parse_metadata(path, metadata)  # 3
    check_against_config(path, header, config)  # 5
    temperature, ood_info = _check_trust(path, metadata, header, config)  # 6
    return CheckedFile(path, header, metadata, config, names, pre, temperature, ood_info)


def _check_trust(path: Path, metadata: dict[str, str], header: dict[str, Any],
                 config: ViTConfig) -> tuple[float, dict[str, Any] | None]:
    """The stored temperature and unknown rule, checked against the file's tensors."""
    from vitcli.model import ood as ood_rule
    from vitcli.model.validate import parse_temperature

    try:
        temperature = parse_temperature(metadata)
        ood_info = ood_rule.parse_ood(metadata, {k: v["shape"] for k, v in header.items()},
                                      num_classes=config.num_classes,
                                      feature_dim=config.head_in_dim, depth=config.depth)
    except ood_rule.NewerMethodError as exc:  # not corrupt: its message says what to do
        raise VitError(f"{path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise VitError(f"{path}: corrupt vitcli metadata ({exc})") from None
    return temperature, ood_info


def count_file_params(header: dict[str, Any]) -> int:
    """Number of model weights stored in a safetensors header (no torch needed): every
    tensor but the unknown rule's statistics (`ood.*`), which are stored beside them."""
    from vitcli.model.ood import TENSOR_PREFIX

    total = 0
    for name, entry in header.items():
        if name.startswith(TENSOR_PREFIX):
            continue
        n = 1
        for dim in entry.get("shape", []):
            n *= int(dim)
        total += n
    return total


def load_model(path: str | Path, *, device: str = "cpu",
               image_size: int | None = None) -> ModelFile:
    """Load a vitcli model file: the ready model (eval mode) with labels and preprocessing.

    With `image_size`, the position embedding is resampled for that input size and the
    preprocessing follows.
    """
    # every check before anything is allocated
    return load_checked(check_model_file(path), device=device, image_size=image_size)


def load_checked(checked: CheckedFile, *, device: str = "cpu",
                 image_size: int | None = None) -> ModelFile:
    """load_model for a file check_model_file has passed: a caller that needed the checked
    config first (export sizes its batch by it) does not check the file a second time."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vitcli.model import ood as ood_rule
    from vitcli.model.validate import check_finite
    from vitcli.model.vit import VisionTransformer

    path, metadata, config = checked.path, checked.metadata, checked.config
    names, pre = checked.class_names, checked.preprocessing
    temperature, ood_info = checked.temperature, checked.ood_info
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise VitError(f"{path}: corrupt safetensors file ({exc})") from None
    check_finite(path, state)
    stats_tensors = {k: state.pop(k).cpu().numpy() for k in list(state)
                     if k.startswith(ood_rule.TENSOR_PREFIX)}
    try:
        ood = ood_rule.stats_from(ood_info, stats_tensors) if ood_info else None
    except ValueError as exc:
        raise VitError(f"{path}: corrupt unknown statistics ({exc})") from None
    model = VisionTransformer(config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor whose shape does not fit the stored config
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line),
                     str(exc).splitlines()[0])
        raise VitError(f"{path}: weights do not match the stored config ({first})") from None
    if missing or unexpected:
        detail = ", ".join([f"missing {k}" for k in missing[:3]] +
                           [f"unexpected {k}" for k in unexpected[:3]])
        raise VitError(f"{path}: weights do not match the stored config ({detail})")
    model.to(device).eval()
    if image_size and image_size != config.image_size:
        model.set_image_size(image_size)
        config = model.config
        pre = pre.at_size(image_size)
    return ModelFile(model=model, config=config, class_names=names, preprocessing=pre,
                     metadata=metadata, path=path, temperature=temperature, ood=ood)
