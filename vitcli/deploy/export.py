"""ONNX export that is verified before it is kept: metadata, checker, parity, int8.

`export_onnx` writes to a temporary file, adds the same vitcli metadata the .safetensors
file holds (labels, preprocessing, config) as ONNX metadata_props, runs the full ONNX
checker, and compares onnxruntime with PyTorch at batch 1 and batch 8. Only a file that
passes all of that is moved into place; a failure leaves nothing behind.

The int8 file is onnxruntime's dynamic quantization (weights int8 per output channel,
activations quantized on the fly) of the linear layers and attention: on a ViT they hold
nearly all the compute, while LayerNorm and GELU stay in float32. It is quantized from a
second, onnxruntime-only export whose attention is one fused node (`vitcli.deploy.onnx_graph`), so
that it becomes onnxruntime's `QAttention`; that graph is checked against PyTorch first.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitcli.deploy.backends import (
    ONNX_INPUT,
    ONNX_OUTPUT,
    ONNX_SCORE,
    PRECISION_KEY,
    int8_precision,
    open_onnx,
)
from vitcli.deploy.onnx_checks import (
    DataCheck,
    Labelled,
    Latency,
    Parity,
    compare_on_data,
    load_labelled,
    measure_latency,
    random_inputs,
    verify_parity,
)
from vitcli.errors import UsageError, VitError
from vitcli.files import atomic_write, refuse_overwrite

if TYPE_CHECKING:
    from vitcli.devices import Threads
    from vitcli.model.checkpoint import ModelFile
    from vitcli.model.config import ViTConfig

DEFAULT_OPSET = 20  # what torch 2.13's exporter emits natively; ORT ≥ 1.17 runs it
MIN_OPSET = 17  # LayerNormalization became a standard op in 17
PROTOBUF_LIMIT = 2 * 1024**3


@dataclass
class ExportReport:
    """What `export_onnx` wrote and how it checked it."""

    path: Path
    opset: int
    batch: str
    exporter: str
    size_bytes: int
    parity: list[Parity]
    int8_path: Path | None = None
    int8_size_bytes: int | None = None
    int8_max_prob_diff: float | None = None  # vs fp32 on the random parity batch
    int8_graph: str | None = None  # what int8 was quantized from, and why if not fused
    latency: Latency | None = None  # batch 1, per back end, timed as vit predict runs them
    data: DataCheck | None = None

    @property
    def latency_ms(self) -> dict[str, float]:
        """{back end: median batch-1 ms} ("pytorch" is fp32 eager, the reference)."""
        return self.latency.ms if self.latency is not None else {}


def default_output(model_path: Path) -> Path:
    """model.safetensors → model.onnx beside it."""
    return model_path.with_suffix(".onnx")


def int8_path_for(path: Path) -> Path:
    """model.onnx → model.int8.onnx beside it."""
    return path.with_suffix(".int8.onnx")


def parse_batch(batch: str) -> int | None:
    """'dynamic' → None (a symbolic batch axis); 'N' → a fixed batch of N."""
    if str(batch).lower() == "dynamic":
        return None
    try:
        n = int(batch)
    except ValueError:
        raise UsageError(f"--batch must be 'dynamic' or a positive number, not {batch!r}") from None
    if not 1 <= n <= MAX_FIXED_BATCH:
        raise UsageError(f"--batch must be 'dynamic' or a number in [1, {MAX_FIXED_BATCH:,}], "
                         f"not {batch!r}")
    return n


MAX_FIXED_BATCH = 4096  # the export runs the graph at this batch to verify it


# ------------------------------------------------------------------------------ export


def export_onnx(model: str | Path, out: str | Path | None = None, *, opset: int = DEFAULT_OPSET,
                batch: str = "dynamic", int8: bool = False, data: str | Path | None = None,
                precision: str = "auto", threads: int = 0,
                log: Callable[[str], None] | None = None) -> ExportReport:
    """Export a .safetensors model file to a verified ONNX file (and an int8 one).

    `precision` says which PyTorch rows the latency table (and the --data table) lists
    beside the ONNX files: fp32 eager always (the reference of every speed-up; `vit predict
    --precision fp32`); bf16 autocast too for `bf16`, and for `auto` when auto would run
    this model in bf16 here (devices.choose_precision: a CPU with bf16 units, and a batch-1
    call of at least 1 GMAC, such as ViT-Ti/16 at 224 px; a graph fixed at batch N weighs
    N images). The ONNX graph itself is fp32 and is checked against PyTorch fp32.
    `threads`: PyTorch's and onnxruntime's CPU threads for the checks and the timings,
    0 = from the cores free (devices.choose_threads).
    """
    from vitcli.devices import check_precision, choose_threads, torch_threads
    from vitcli.model.checkpoint import check_model_file

    say = log or (lambda _msg: None)
    model_path = Path(model)
    # The model file first: an ONNX --model is refused as such (checkpoint.refusal_message)
    # before --out, whose default is that very file, would be "the same file as --model".
    # Checked once: load_checked below loads what this check passed.
    checked = check_model_file(model_path)
    out_path = Path(out) if out else default_output(model_path)
    if out_path.suffix.lower() != ".onnx":
        raise UsageError(f"--out {out_path}: the output file name must end in .onnx")
    if out_path.is_dir():
        raise UsageError(f"--out {out_path}: is a folder; give a file name")
    if opset < MIN_OPSET:
        raise UsageError(f"--opset {opset}: vitcli exports opset {MIN_OPSET} or newer")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise UsageError(f"--opset {opset}: the installed onnx knows opsets up to {newest}")
    fixed = parse_batch(batch)
    precision = check_precision(precision)
    cpu = choose_threads(threads)
    refuse_overwrite(out_path, "--out", {"--model": model_path})
    if int8:
        refuse_overwrite(int8_path_for(out_path), "--int8 output", {"--model": model_path})
    from vitcli.model.config import check_fits

    check_fits(checked.config, max(fixed or 2, 2), training=False, what="--batch")
    bf16_row, bf16_why = bf16_reference(precision, checked.config, fixed or 1)
    with torch_threads(cpu.count):  # parity, --data and int8 checks: on the cores free too
        return _export_checked(checked, model_path, out_path, opset=opset, batch=batch,
                               fixed=fixed, int8=int8, data=data, bf16_row=bf16_row,
                               bf16_why=bf16_why, threads=cpu, say=say)


def _export_checked(checked: Any, model_path: Path, out_path: Path, *, opset: int, batch: str,
                    fixed: int | None, int8: bool, data: str | Path | None, bf16_row: bool,
                    bf16_why: str | None, threads: Threads,
                    say: Callable[[str], None]) -> ExportReport:
    """export_onnx once its arguments passed: load, export, check, quantize, time (on
    `threads`, which export_onnx has set torch to)."""
    from vitcli.model.checkpoint import load_checked

    mf = load_checked(checked, device="cpu")
    size = sum(p.numel() * p.element_size() for p in mf.model.parameters())
    if size > PROTOBUF_LIMIT:
        raise VitError(f"{model_path}: {size / 1e9:.1f} GB of weights is over ONNX's 2 GB "
                       "single-file limit")
    labelled = load_labelled(data, mf, say) if data else None

    report: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        say(f"exporting {model_path} (opset {opset}, batch {batch})")
        report["exporter"] = _torch_export(mf, tmp, opset, fixed)
        add_metadata(tmp, mf)
        _check(tmp, opset)
        say("verifying onnxruntime against PyTorch")
        report["parity"] = verify_parity(mf, tmp, fixed, threads=threads.count)
        if labelled is not None:
            report["data"] = compare_on_data(mf, tmp, labelled, threads=threads.count,
                                             bf16=bf16_row)

    atomic_write(out_path, write)
    result = ExportReport(path=out_path, opset=opset, batch=batch, exporter=report["exporter"],
                          size_bytes=out_path.stat().st_size, parity=report["parity"],
                          data=report.get("data"))
    if int8:
        say("quantizing to int8")
        add_int8(result, mf, labelled, say, threads=threads.count)
    say("timing batch-1 latency")
    result.latency = measure_latency(mf, result.path, result.int8_path, fixed, bf16=bf16_row,
                                     bf16_why=bf16_why, threads=threads.count,
                                     threads_reason=threads.reason)
    return result


def bf16_reference(precision: str, config: ViTConfig, batch: int) -> tuple[bool, str | None]:
    """Whether the latency table (batches of `batch`) lists PyTorch bf16 autocast, and why
    (or why not).

    `bf16`: always. `auto`: only where `vit predict --precision auto` would run this model
    in bf16 on this CPU at that batch (devices.choose_precision weighs a batch's work);
    otherwise the reason auto keeps fp32, for the caption. `fp32`: never, and no reason to
    give.
    """
    import torch

    from vitcli.devices import choose_for_batch
    from vitcli.model.config import count_macs

    if precision == "fp32":
        return False, None
    chosen = choose_for_batch(precision, torch.device("cpu"), count_macs(config), batch)
    return chosen.name == "bf16", chosen.reason


def _torch_export(mf: ModelFile, path: Path, opset: int, fixed: int | None) -> str:
    """Write the bare graph with torch.onnx: the dynamo exporter, else the TorchScript one.

    Returns which exporter produced the file. The dynamo exporter (torch ≥ 2.5 default)
    records the batch axis symbolically; the example batch is 2 so that it is not
    specialised to the 0/1 sizes that torch.export treats as constants.
    """
    import torch

    from vitcli.deploy.onnx_graph import export_copy
    from vitcli.model.outputs import model_outputs

    example, shapes, names = _export_inputs(mf, fixed)
    model, _ = export_copy(mf.model)  # linears as Gemm (vitcli.deploy.onnx_graph says why)
    model = model_outputs(mf, model)  # logits / T, and the unknown score as a second output
    errors = []
    with _quiet_exporter():
        try:
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                        dynamic_shapes=shapes, verbose=False, **names)
            program.save(str(path))
            return "dynamo"
        except Exception as exc:  # the dynamo path still has gaps; fall back, then explain
            errors.append(f"dynamo: {' '.join(str(exc).split())[:200]}")
        try:
            axes = None if fixed else {name: {0: "batch"} for name in
                                       [ONNX_INPUT, *names["output_names"]]}
            torch.onnx.export(model, (example,), str(path), dynamo=False,
                              opset_version=opset, dynamic_axes=axes, **names)
            return "torchscript"
        except Exception as exc:
            errors.append(f"torchscript: {' '.join(str(exc).split())[:200]}")
    raise VitError(f"ONNX export failed ({'; '.join(errors)})")


def _export_inputs(mf: ModelFile, fixed: int | None) -> tuple[Any, tuple | None, dict]:
    """The example batch, the dynamo exporter's batch axis and the graph's input/output names."""
    import torch

    c, s = mf.config.in_channels, mf.config.image_size
    example = torch.zeros(fixed or 2, c, s, s)  # (B, C, H, W)
    shapes = None if fixed else ({0: torch.export.Dim("batch", min=1, max=4096)},)
    outputs = [ONNX_OUTPUT] + ([ONNX_SCORE] if mf.ood is not None else [])
    return example, shapes, dict(input_names=[ONNX_INPUT], output_names=outputs)


class _quiet_exporter:
    """Silence the exporter's warnings (torchvision ops, deprecations) for one export."""

    def __enter__(self) -> None:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._loggers = {n: logging.getLogger(n).level for n in ("torch.onnx", "torch.export",
                                                                 "onnxscript", "root")}
        for name in self._loggers:
            logging.getLogger(name).setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for name, level in self._loggers.items():
            logging.getLogger(name).setLevel(level)
        self._warnings.__exit__(*exc)


def onnx_metadata(mf: ModelFile) -> dict[str, str]:
    """The .safetensors file's metadata (extra keys too), core keys rewritten from the model."""
    import json

    from vitcli import __version__
    from vitcli.model.checkpoint import FORMAT, FORMAT_VERSION

    return {
        # every key the model file holds (checked when it was read) but a precision: the
        # ONNX file's own is written by export, for an int8 file only
        **{k: v for k, v in mf.metadata.items() if k != PRECISION_KEY},
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "vitcli_version": __version__,
        "config": mf.config.to_json(),
        "class_names": json.dumps(mf.class_names),
        "preprocessing": mf.preprocessing.to_json(),
    }


def add_metadata(path: Path, mf: ModelFile, extra: dict[str, str] | None = None) -> None:
    """Store labels, preprocessing and config as the ONNX file's metadata_props."""
    import onnx

    proto = onnx.load(str(path))
    meta = {**onnx_metadata(mf), **(extra or {})}
    kept = [p for p in proto.metadata_props if p.key not in meta]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "vitcli"
    proto.doc_string = (f"vitcli ViT classifier, {len(mf.class_names)} classes; input "
                        f"'{ONNX_INPUT}' (B, {mf.config.in_channels}, {mf.config.image_size}, "
                        f"{mf.config.image_size}) normalised as in metadata 'preprocessing'")
    onnx.save(proto, str(path))


def _check(path: Path, opset: int = DEFAULT_OPSET) -> None:
    """The full ONNX checker (with shape inference); a failure is an export bug, said plainly."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        hint = ""
        if opset != DEFAULT_OPSET:  # the exporter converts its graph; not every opset works
            hint = (f" (opset {opset} may be beyond what this torch/onnxscript can write; "
                    f"try the default, --opset {DEFAULT_OPSET})")
        detail = " ".join(str(exc).split())[:300]
        raise VitError(f"exported ONNX graph fails onnx.checker{hint}: {detail}") from None


# ------------------------------------------------------------------------------ int8


def quantize_int8(src: Path, dst: Path, exclude: list[str] | None = None) -> None:
    """Dynamic int8 quantization of MatMul/Gemm/Attention weights (per output channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_exporter():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                         nodes_to_exclude=exclude or [])


FUSED_GRAPH = "fused attention (onnxruntime QAttention)"


def score_nodes(path: Path) -> list[str]:
    """The nodes that compute the unknown score: kept in float32 by int8 quantization.

    The score is a distance in whitened feature space; int8 weights there would move it
    across the threshold for images near it, and they cost next to nothing in float32.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if ONNX_SCORE not in [o.name for o in graph.output]:
        return []
    # Walk back from the score output to the features it shares with the logits.
    producers = {out: node for node in graph.node for out in node.output}
    logits_side: set[str] = set()
    stack = [ONNX_OUTPUT]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.name not in logits_side:
            logits_side.add(node.name)
            stack.extend(node.input)
    found: list[str] = []
    stack = [ONNX_SCORE]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.name not in logits_side and node.name not in found:
            found.append(node.name)
            stack.extend(node.input)
    return found


def packed_graph(mf: ModelFile, path: Path, opset: int, fixed: int | None,
                 threads: int = 0) -> str | None:
    """Write and verify (on `threads` onnxruntime threads) the fused-attention graph that
    int8 is quantized from.

    Returns None when it is ready, else why not: this torch cannot write it, or onnxruntime
    disagrees with PyTorch on it. The caller then quantizes the standard graph, which is
    slower only, and reports why.
    """
    from vitcli.deploy.onnx_graph import export_packed
    from vitcli.model.outputs import model_outputs

    try:
        with _quiet_exporter():
            export_packed(mf.model, path, opset, *_export_inputs(mf, fixed),
                          wrap=lambda m: model_outputs(mf, m))
        add_metadata(path, mf)  # the onnxruntime back end reads its preprocessing
        verify_parity(mf, path, fixed, threads=threads)
    except Exception as exc:  # an older torch/onnxscript, or a graph onnxruntime rejects
        return " ".join(str(exc).split())[:160] or type(exc).__name__  # never empty
    return None


def add_int8(report: ExportReport, mf: ModelFile, data: Labelled | None,
             say: Callable[[str], None] = lambda _msg: None, threads: int = 0) -> None:
    """Write model.int8.onnx beside the fp32 file and measure how far it drifts from fp32,
    both on `threads` intra-op threads (0: onnxruntime's own count)."""
    import tempfile

    dst = int8_path_for(report.path)
    fp32 = open_onnx(report.path, threads=threads)

    def write(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="vit-int8-") as work:
            packed = Path(work) / "packed.onnx"
            why_not = packed_graph(mf, packed, report.opset, parse_batch(report.batch),
                                   threads=threads)
            fused = why_not is None
            if not fused:
                say(f"fused attention unavailable ({why_not}); quantizing the standard graph")
            src = packed if fused else report.path
            quantize_int8(src, tmp, exclude=score_nodes(src))
        report.int8_graph = (FUSED_GRAPH if fused
                             else f"standard graph (fused attention unavailable: {why_not})")
        add_metadata(tmp, mf, {PRECISION_KEY: int8_precision(fused)})
        x = random_inputs(mf, report.parity[-1].batch, seed=0)
        ref = fp32.logits(x)
        int8 = open_onnx(tmp, threads=threads)
        got = int8.logits(x)
        if got.shape != ref.shape or not np.isfinite(got).all():
            raise VitError("int8 model gives malformed output; nothing was written")
        from vitcli.evaluation.metrics import softmax

        report.int8_max_prob_diff = float(np.abs(softmax(ref) - softmax(got)).max())
        if data is not None and report.data is not None:
            (logits_fp32, score_fp32), (logits_int8, score_int8) = (
                fp32.outputs(data.inputs), int8.outputs(data.inputs))
            top_fp32, top_int8 = logits_fp32.argmax(1), logits_int8.argmax(1)
            report.data.int8_agreement = float((top_fp32 == top_int8).mean())
            report.data.int8_accuracy = float((top_int8 == data.labels).mean())
            if score_fp32 is not None and score_int8 is not None:
                # the int8 blocks feed the (float32) score too: its answers can drift
                unknown_fp32 = score_fp32 > fp32.ood_threshold
                unknown_int8 = score_int8 > fp32.ood_threshold
                report.data.unknown_fp32 = int(unknown_fp32.sum())
                report.data.unknown_int8 = int(unknown_int8.sum())
                report.data.int8_unknown_agreement = float((unknown_fp32 == unknown_int8).mean())

    atomic_write(dst, write)
    report.int8_path, report.int8_size_bytes = dst, dst.stat().st_size


