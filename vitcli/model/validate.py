"""Check a model file before anything is allocated or run: one validation for every loader.

`vit info`, predict, eval, export, convert and `train --resume` all read model files through
`vitcli.model.checkpoint.check_model_file`, which runs the checks here in order (header,
metadata, config, tensor layout, tensors against the config), and `check_finite` (values),
so a file one of them refuses is refused by all, with the same one-line reason:

1. a regular file (a FIFO would block the reader forever; checked with os.stat first);
2. a bounded header: length within the file and under 100 MB, JSON nested at most 64 deep;
3. the metadata: JSON bounded the same way, every config number finite and in range
   (ViTConfig.validate), the parameter memory estimated from the config and bounded;
4. the layout: known dtypes, each tensor's byte range exactly its shape × dtype size, the
   ranges tiling the data section, which ends where the file ends;
5. the tensors agree with the config (names, shapes, floating-point dtypes), compared
   against the model built on the 'meta' device, which allocates nothing;
6. the calibration (a temperature in 0.001-1000) and the unknown rule (vitcli.model.ood:
   its method, threshold, promise, blocks, and the shapes of its statistics), and every
   other key vitcli writes (`check_metadata_keys`: epoch, val_top1, validation,
   train_precision, ...); keys vitcli does not know are kept as they are (shown escaped,
   copied into an ONNX export);
7. after loading, every weight finite (the first NaN/inf is named).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitcli.devices import PRECISIONS
from vitcli.errors import VitError, plural
from vitcli.model.config import ViTConfig
from vitcli.model.ood import TENSOR_PREFIX as OOD_PREFIX

if TYPE_CHECKING:
    import torch

# safetensors dtype names and their sizes in bytes.
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
               "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1,
               "BOOL": 1}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
MAX_TENSORS = 100_000


TEMPERATURE_KEY = "temperature"


def parse_temperature(metadata: dict[str, str]) -> float:
    """The stored softmax temperature; 1 for files written before calibration existed."""
    text = metadata.get(TEMPERATURE_KEY)
    if text is None:
        return 1.0
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"temperature {text!r} is not a number") from None
    if not (math.isfinite(value) and 1e-3 <= value <= 1e3):
        raise ValueError(f"temperature {text} is outside 0.001-1000")
    return value


# ------------------------------------------------------------------- the other keys

# vitcli_version as vitcli writes it (a PEP 440 version: 0.1.0, 1.2.0rc1, 0.1.0+local.3)
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*([.+_-]?[0-9A-Za-z]+)*")
VALIDATION_SOURCES = ("split", "val", "val_split", "none")  # vitcli.training.validation writes them
PRECISION_KEY = "precision"  # only an int8 ONNX export records one (vitcli.deploy.export)
# What `vit train` computed in (its --precision as resolved, never auto): the weights are
# float32 either way
TRAIN_PRECISION_KEY = "train_precision"
TRAIN_PRECISIONS = tuple(p for p in PRECISIONS if p != "auto")
_TEXT_LIMITS = {"calibration": 1_000, "source": 8_192}  # sentences and paths: any text


def check_metadata_keys(metadata: dict[str, str], *,
                        precisions: Collection[str] = ()) -> None:
    """Refuse a value vitcli could not have written under a key it writes; a ValueError
    naming the key (the caller adds the file). `precisions`: the `precision` values this
    kind of file may hold (an ONNX file's int8 descriptions; none for a model file, whose
    weights are float and whose precision is chosen when it runs).

    The config, class names, preprocessing, temperature and unknown rule have their own
    parsers (checkpoint.parse_metadata, parse_temperature, vitcli.model.ood); keys vitcli
    does not write pass untouched.
    """
    version = metadata.get("format_version")
    if version is not None and not (version.isascii() and version.isdigit()
                                    and int(version) >= 1):
        raise ValueError(f"format_version {version!r} is not a version number")
    text = metadata.get("vitcli_version")
    if text is not None and not (len(text) <= 64 and _VERSION.fullmatch(text)):
        raise ValueError(f"vitcli_version {text[:64]!r} is not a version")
    text = metadata.get("epoch")
    if text is not None and not (text.isascii() and text.isdigit() and 1 <= int(text) <= 10**9):
        raise ValueError(f"epoch {text[:64]!r} is not an epoch number")
    text = metadata.get("val_top1")
    if text:  # empty: a run without validation images
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0 <= value <= 1:
            raise ValueError(f"val_top1 {text[:64]!r} is not an accuracy in 0-1")
    if "validation" in metadata:
        _check_validation(metadata["validation"])
    for key, limit in _TEXT_LIMITS.items():
        if len(metadata.get(key, "")) > limit:
            raise ValueError(f"{key} is {len(metadata[key]):,} characters long (at most "
                             f"{limit:,})")
    text = metadata.get(TRAIN_PRECISION_KEY)
    if text is not None and text not in TRAIN_PRECISIONS:
        raise ValueError(f"{TRAIN_PRECISION_KEY} {text[:64]!r} is not fp32 or bf16")
    text = metadata.get(PRECISION_KEY)
    if text is not None and text not in precisions:
        where = (f"one of {', '.join(repr(p) for p in sorted(precisions))}" if precisions
                 else "recorded only by an int8 ONNX export")
        raise ValueError(f"{PRECISION_KEY} {text[:64]!r} is not a precision vitcli writes "
                         f"({where})")


def _check_validation(text: str) -> None:
    """The `validation` entry: how training chose its validation images (JSON object)."""
    try:
        how = json.loads(text)
    except ValueError:
        how = None
    source = how.get("source") if isinstance(how, dict) else None
    if source not in VALIDATION_SOURCES:
        raise ValueError(f"validation {text[:80]!r} is not how vitcli records the validation "
                         f"images (source one of {', '.join(VALIDATION_SOURCES)})")
    if source == "val_split":
        fraction, seed = how.get("fraction"), how.get("seed", 0)
        if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
                and 0 < fraction < 1):
            raise ValueError(f"validation fraction {fraction!r} is not in (0, 1)")
        if not (isinstance(seed, int) and not isinstance(seed, bool)):
            raise ValueError(f"validation seed {seed!r} is not a whole number")


def check_layout(path: Path, header: dict[str, Any], data_size: int) -> None:
    """Each tensor's byte range is its shape × dtype size; together they tile the data."""
    if len(header) > MAX_TENSORS:
        raise VitError(f"{path}: {len(header):,} tensors in the header; refused")
    spans = []
    for name, entry in header.items():
        dtype = entry["dtype"]
        if dtype not in DTYPE_SIZES:
            raise VitError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        begin, end = entry["data_offsets"]
        expected = math.prod(entry["shape"]) * DTYPE_SIZES[dtype]
        if end - begin != expected:
            raise VitError(f"{path}: tensor {name!r} of shape {tuple(entry['shape'])} "
                           f"{dtype} needs {expected:,} bytes, its data has {end - begin:,}; "
                           "corrupt safetensors header")
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise VitError(f"{path}: tensor {name!r} overlaps another or leaves a gap in the "
                           "data; corrupt safetensors header")
        position = end
    if position != data_size:
        raise VitError(f"{path}: the tensors cover {position:,} bytes of a {data_size:,}-byte "
                       "data section; truncated or corrupt safetensors file")


def expected_tensors(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the state dict of the model `config` describes (nothing allocated)."""
    import torch

    from vitcli.model.vit import VisionTransformer

    with torch.device("meta"):
        model = VisionTransformer(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_against_config(path: Path, header: dict[str, Any], config: ViTConfig) -> None:
    """The stored tensors are exactly those of the stored config: names, shapes, float dtypes."""
    expected = expected_tensors(config)
    missing = [k for k in expected if k not in header]
    # The unknown rule's statistics ride beside the weights; model/ood.py checks their shapes.
    unexpected = [k for k in header if k not in expected and not k.startswith(OOD_PREFIX)]
    if missing or unexpected:
        detail = ", ".join([f"missing {k}" for k in missing[:3]] +
                           [f"unexpected {k}" for k in unexpected[:3]])
        raise VitError(f"{path}: weights do not match the stored config ({detail})")
    for name, shape in expected.items():
        entry = header[name]
        if tuple(entry["shape"]) != shape:
            raise VitError(f"{path}: weights do not match the stored config ({name} has shape "
                           f"{tuple(entry['shape'])}, the config needs {shape})")
        if entry["dtype"] not in FLOAT_DTYPES:
            raise VitError(f"{path}: {name} is stored as {entry['dtype']}; weights must be "
                           "floating point (F32, F16, BF16 or F64)")


def check_finite(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse weights holding NaN or infinity, naming the first such tensor."""
    import torch

    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise VitError(f"{path}: weight {name} holds {plural(bad, 'NaN or infinite value')}; "
                           "the file is corrupt (or a diverged training run)")


def check_finite_file(path: str | Path) -> None:
    """check_finite over a safetensors file, one tensor in memory at a time (for `vit info`,
    which builds no model but must refuse what every loader refuses)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                check_finite(path, {name: f.get_tensor(name)})
    except (SafetensorError, OSError, ValueError) as exc:
        raise VitError(f"{path}: corrupt safetensors file ({exc})") from None


def check_usable_head(path: str | Path, config: ViTConfig, class_names: list[str]) -> None:
    """Prediction and evaluation need a classifier: refuse a model with 0 classes."""
    if config.num_classes == 0 or not class_names:
        raise VitError(f"{path}: a backbone without a classification head (0 classes): its "
                       "outputs are features, not labels; fine-tune a head first: vit train "
                       f"--data DATA --init {path} --freeze backbone")
