"""The two ways to run a model file: PyTorch (.safetensors) and onnxruntime (.onnx).

Both take the same normalised float32 batch (B, C, H, W) from the shared numpy
Preprocessing and give back logits as numpy, so everything after them (softmax, top-k,
tables) is one code path. The ONNX back end never imports torch: a shipped .onnx file
needs only onnxruntime, numpy and Pillow, and `vit predict` starts in a fraction of a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vitcli.errors import VitError
from vitcli.files import check_regular_file, load_json
from vitcli.model.checkpoint import FORMAT, FORMAT_VERSION, parse_metadata
from vitcli.model.config import ViTConfig
from vitcli.model.preprocess import Preprocessing
from vitcli.model.validate import PRECISION_KEY, check_metadata_keys

if TYPE_CHECKING:
    from vitcli.devices import Threads

ONNX_INPUT = "pixels"
ONNX_OUTPUT = "logits"  # already divided by the model file's temperature
ONNX_SCORE = "ood_score"  # the unknown score (vitcli.model.ood), when the file has the rule


def int8_precision(fused: bool) -> str:
    """The `precision` metadata of an `--int8` export (quantized from the fused-attention
    graph, or from the standard one where that could not be written)."""
    return f"int8 dynamic ({'linear and fused attention' if fused else 'linear'} weights)"


# every `precision` an --int8 export has written: today's two, and the first version's
ONNX_PRECISIONS = frozenset({int8_precision(True), int8_precision(False),
                             "int8 dynamic (MatMul/Gemm weights)"})


def onnx_precision(metadata: dict[str, str]) -> str:
    """"int8" for an ONNX file whose metadata records an int8 export, else "fp32"."""
    return "int8" if metadata.get(PRECISION_KEY) in ONNX_PRECISIONS else "fp32"


class Backend(Protocol):
    """What prediction needs from a model, whichever runtime executes it."""

    name: str
    path: Path
    config: ViTConfig
    class_names: list[str]
    preprocessing: Preprocessing
    threads: Threads | None  # the CPU threads it runs on; None: as the process has them

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """(B, C, H, W) float32 → (B, classes) float32, divided by the temperature."""
        ...

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Those logits and the unknown scores (B,) (None when the file has no rule)."""
        ...

    @property
    def ood_threshold(self) -> float | None:
        """Scores above this are `unknown`; None when the file has no unknown rule."""
        ...

    @property
    def compute_precision(self) -> str:
        """The arithmetic the model runs in: "fp32", "bf16" (autocast) or "int8" (an int8
        ONNX file); what predict records beside its answers."""
        ...

    def decide(self, batch: int) -> None:
        """Settle the precision for calls of `batch` images (PyTorch's `auto`: a call's work
        decides it); before the first call, so that unreadable images do not sway it."""
        ...


@dataclass
class OnnxBackend:
    """A vitcli ONNX file on onnxruntime (CPU), with its labels and preprocessing."""

    path: Path
    config: ViTConfig
    class_names: list[str]
    preprocessing: Preprocessing
    metadata: dict[str, str]
    session: Any = field(repr=False)
    name: str = "onnxruntime"
    ood_threshold: float | None = None  # from the metadata; the graph gives the score
    threads: Threads | None = None  # what the session's intra-op threads were set from

    @property
    def compute_precision(self) -> str:
        """"int8" for an `--int8` export (its metadata says so; checked when opened), else
        "fp32": an ONNX file runs at the precision it was exported in."""
        return onnx_precision(self.metadata)

    def decide(self, batch: int) -> None:
        """Nothing to settle: an ONNX file runs at the precision it was exported in."""

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        names = [ONNX_OUTPUT] + ([ONNX_SCORE] if self.ood_threshold is not None else [])
        fixed = self.session.get_inputs()[0].shape[0]
        if isinstance(fixed, int) and fixed != len(batch):
            parts = [self._run_fixed(names, batch[i:i + fixed], fixed)
                     for i in range(0, len(batch), fixed)]
            out = [np.concatenate(p) for p in zip(*parts)]
        else:
            out = self.session.run(names, {ONNX_INPUT: batch})
        return out[0], (out[1] if len(out) > 1 else None)

    def _run_fixed(self, names: list[str], chunk: np.ndarray, size: int) -> list[np.ndarray]:
        """Run a model exported with a fixed batch: pad the last chunk, drop the padding."""
        n = len(chunk)
        if n < size:
            pad = np.zeros((size - n, *chunk.shape[1:]), np.float32)  # (size-n, C, H, W)
            chunk = np.concatenate([chunk, pad])
        return [o[:n] for o in self.session.run(names, {ONNX_INPUT: chunk})]


@dataclass
class TorchBackend:
    """A vitcli .safetensors model file on PyTorch (any device).

    `precision` None with `auto` set: decided by a batch's work (devices.choose_precision)
    once, by `decide` (predict_paths: its batch size, or the image count when fewer) or
    else on the first batch it runs, and kept for the batches after it.
    """

    path: Path
    model_file: Any = field(repr=False)  # checkpoint.ModelFile
    device: Any = None  # torch.device
    name: str = "pytorch"
    precision: Any = None  # devices.Precision; None = fp32 (or `auto` not yet decided)
    auto: bool = False  # `--precision auto`, decided at the first batch
    threads: Threads | None = None  # torch's CPU threads during each call; None: as they are
    _outputs: Any = field(default=None, repr=False)

    @property
    def config(self) -> ViTConfig:
        return self.model_file.config

    @property
    def class_names(self) -> list[str]:
        return self.model_file.class_names

    @property
    def preprocessing(self) -> Preprocessing:
        return self.model_file.preprocessing

    @property
    def ood_threshold(self) -> float | None:
        ood = self.model_file.ood
        return None if ood is None else ood.threshold

    @property
    def compute_precision(self) -> str:
        return "fp32" if self.precision is None else self.precision.name

    def decide(self, batch: int) -> None:
        """Settle `auto` for batches of `batch` images (once; later calls change nothing)."""
        if self.auto and self.precision is None:
            from vitcli.devices import choose_for_batch
            from vitcli.model.config import count_macs

            self.precision = choose_for_batch("auto", self.device, count_macs(self.config),
                                              max(batch, 1))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        from vitcli.devices import torch_threads

        self.decide(len(batch))
        dtype = self.precision.dtype if self.precision is not None else None
        if self._outputs is None:  # the model plus temperature and score (model/outputs.py)
            self._outputs = self._build(dtype)
        threads = self.threads.count if self.threads is not None else 0
        with torch.inference_mode(), torch_threads(threads):
            x = torch.from_numpy(batch).to(self.device)
            with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
                out = self._outputs(x)  # (B, classes) logits / T [, (B,) scores in fp32]
        logits, score = out if isinstance(out, tuple) else (out, None)
        return (logits.float().cpu().numpy(),
                None if score is None else score.float().cpu().numpy())

    def _build(self, dtype: Any) -> Any:
        """The model with its temperature and score; in bf16 a copy whose matrix weights
        are stored in bf16 (devices.bf16_copy: autocast's own rounding, done once), so
        that the model file's fp32 model stays as it is for explanations and checks."""
        from vitcli.devices import bf16_copy
        from vitcli.model.outputs import model_outputs

        model = self.model_file.model
        if dtype is not None:
            model = bf16_copy(model)
        return model_outputs(self.model_file, model).to(self.device)


def is_onnx_path(path: Path) -> bool:
    """True for .onnx files, and for suffix-less files that start like an ONNX protobuf."""
    if path.suffix.lower() == ".onnx":
        return True
    if path.suffix.lower() == ".safetensors" or not path.is_file():  # is_file: never a FIFO
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors starts with an 8-byte length then "{"; ONNX with field 1 (ir_version).
    return head[:1] == b"\x08" and head[8:9] != b"{"


@dataclass
class OnnxFileInfo:
    """What an ONNX file says about itself without running it: the vitcli metadata and the
    graph's facts (`vit info model.onnx`)."""

    metadata: dict[str, str]
    opset: int | None
    ir_version: int
    stored_values: int  # numbers in the graph's initializers (int8 weights count once each)
    quantized: bool  # holds int8 weights (an `--int8` export)


def read_onnx_info(path: str | Path) -> OnnxFileInfo:
    """Read an ONNX file's vitcli metadata and graph facts (no onnxruntime session, no torch);
    a file that is not ONNX or not a vitcli export is one VitError naming it."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise VitError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends: any of them means corrupt
        raise VitError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    metadata = {p.key: p.value for p in model.metadata_props}
    check_onnx_metadata(path, metadata)
    _onnx_threshold(path, metadata,  # as open_onnx checks it
                    has_score=any(o.name == ONNX_SCORE for o in model.graph.output))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    values = 0
    quantized = False
    for init in model.graph.initializer:
        count = 1
        for d in init.dims:
            count *= d
        values += count
        quantized |= init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) \
            and count > 1
    if quantized != (onnx_precision(metadata) == "int8"):  # the weights say otherwise
        said = metadata.get(PRECISION_KEY, "no precision (fp32)")
        raise VitError(f"{path}: corrupt vitcli metadata ({PRECISION_KEY}: {said!r}, but the "
                       f"graph holds {'int8' if quantized else 'no int8'} weights)")
    return OnnxFileInfo(metadata=metadata, opset=opset, ir_version=model.ir_version,
                        stored_values=values, quantized=quantized)


def open_backend(path: str | Path, device: str = "auto", precision: str = "auto",
                 threads: int = 0) -> Backend:
    """The right back end for a model file: onnxruntime for .onnx, PyTorch otherwise.

    `precision` (auto | fp32 | bf16) applies to PyTorch; an ONNX file runs at the precision
    it was exported in. Either runs on `threads` CPU threads, 0 = from the cores free
    (devices.choose_threads: on all cores, a busy one holds every call up).
    """
    from vitcli.devices import check_precision, choose_threads

    check_precision(precision)
    cpu = choose_threads(threads)
    path = Path(path)
    if not path.exists():
        raise VitError(f"{path}: no such model file")
    check_regular_file(path, "model file")  # before anything opens it: a FIFO would hang
    if is_onnx_path(path):
        backend = open_onnx(path, threads=cpu.count)
        backend.threads = cpu
        return backend
    return open_torch(path, device, precision, threads=cpu)


def open_torch(path: Path, device: str = "auto", precision: str = "auto",
               threads: Threads | None = None) -> TorchBackend:
    """Load a .safetensors model file onto `device` (imports torch) to run at `precision` on
    `threads` (None: torch's threads as they are)."""
    from vitcli.model.checkpoint import check_model_file, load_checked

    # Checked once; a header or metadata it refuses is refused before torch is imported.
    checked = check_model_file(path)

    from vitcli.devices import check_precision, choose_precision, resolve_device

    target = resolve_device(device)
    model_file = load_checked(checked, device=str(target))
    precision = check_precision(precision)
    if precision == "auto":  # weighed on the first batch: its size is part of the rule
        return TorchBackend(path=path, model_file=model_file, device=target, auto=True,
                            threads=threads)
    chosen = choose_precision(precision, target, macs=0)  # refuses bf16 where impossible
    return TorchBackend(path=path, model_file=model_file, device=target, precision=chosen,
                        threads=threads)


def open_onnx(path: Path, threads: int = 0) -> OnnxBackend:
    """Open a vitcli ONNX file on onnxruntime with `threads` intra-op threads (0:
    onnxruntime's own choice, one a core), refusing foreign or corrupt files by name."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's problem
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail)
        raise VitError(f"{path}: not a valid ONNX file, or corrupt "
                       f"({_ort_reason(exc, path)})") from None
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    check_onnx_metadata(path, metadata)
    config, names, pre = parse_metadata(path, metadata)
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [ONNX_INPUT] or ONNX_OUTPUT not in outputs:
        raise VitError(f"{path}: ONNX graph has inputs {inputs} and outputs {outputs}; "
                       f"expected vitcli's {ONNX_INPUT!r} → {ONNX_OUTPUT!r}")
    threshold = _onnx_threshold(path, metadata, has_score=ONNX_SCORE in outputs)
    # The graph's pixel shape is fixed at export; metadata edited since would feed it
    # images it cannot take (onnxruntime's error would be a traceback, mid-prediction).
    classes = session.get_outputs()[outputs.index(ONNX_OUTPUT)].shape
    # A classifier's logits must be one per named class (a backbone's are features).
    if config.num_classes and (len(classes) != 2 or (isinstance(classes[1], int)
                                                     and classes[1] != len(names))):
        raise VitError(f"{path}: the graph's logits have shape {classes} but its metadata "
                       f"names {len(names)} classes; corrupt vitcli metadata")
    graph_chw = list(session.get_inputs()[0].shape[1:])
    expected = [pre.channels, pre.image_size, pre.image_size]
    if all(isinstance(d, int) for d in graph_chw) and graph_chw != expected:
        raise VitError(f"{path}: the graph takes (C, H, W) = {tuple(graph_chw)} but its "
                       f"preprocessing metadata makes {tuple(expected)}; corrupt vitcli metadata")
    return OnnxBackend(path=path, config=config, class_names=names, preprocessing=pre,
                       metadata=metadata, session=session, ood_threshold=threshold)


def _onnx_threshold(path: Path, metadata: dict[str, str], *, has_score: bool) -> float | None:
    """The unknown threshold from the metadata, checked against the graph's outputs."""
    from vitcli.model.ood import METADATA_KEY, NewerMethodError, parse_rule

    text = metadata.get(METADATA_KEY)
    if (text is None) != (not has_score):
        what = "an unknown threshold but no" if text is not None else "no unknown threshold for"
        raise VitError(f"{path}: corrupt vitcli ONNX file ({what} {ONNX_SCORE!r} output)")
    if text is None:
        return None
    try:
        return parse_rule(text)["threshold"]
    except NewerMethodError as exc:  # not corrupt: its message says what to do
        raise VitError(f"{path}: {exc}") from None
    except ValueError as exc:
        raise VitError(f"{path}: corrupt vitcli metadata ({exc})") from None


def _ort_reason(exc: Exception, path: Path) -> str:
    """onnxruntime's load error without the path and C++ source location that bury it."""
    text = " ".join(str(exc).split()).replace(f"Load model from {path} failed:", "")
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", text)
    text = re.sub(r"\S+\.(?:cc|cpp|h):\d+ [\w:~<>]+\([^)]*\) ?", "", text)
    return text[:200]


def check_onnx_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Refuse an ONNX file that vitcli did not export (no labels, no preprocessing), or
    whose metadata a vitcli model file could not hold."""
    from vitcli.model.validate import parse_temperature

    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise VitError(f"{path}: an ONNX file but not one exported by vitcli (no vitcli "
                       "metadata: labels and preprocessing are unknown); export it with "
                       "`vit export --onnx`")
    try:
        version = int(metadata.get("format_version", "0") or 0)
    except ValueError:
        raise VitError(f"{path}: corrupt vitcli metadata (format_version)") from None
    if version > FORMAT_VERSION:
        raise VitError(f"{path}: model file format {version} is newer than this vitcli "
                       f"understands ({FORMAT_VERSION}); upgrade vitcli")
    load_json(metadata.get("class_names", "[]"), source=f"{path}: class_names")
    try:  # the graph divides by it already; a value a model file may not hold is corrupt
        parse_temperature(metadata)
        # the keys a model file holds, by the same rules; `precision` as export writes it
        check_metadata_keys(metadata, precisions=ONNX_PRECISIONS)
    except ValueError as exc:
        raise VitError(f"{path}: corrupt vitcli metadata ({exc})") from None
