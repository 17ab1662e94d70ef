"""`vit export --onnx --model FILE`: a verified ONNX file (and optionally an int8 one)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vitcli.commands._common import BF16_MIN_GMAC, ThreadsOpt, plural
from vitcli.deploy.export import DEFAULT_OPSET, MAX_FIXED_BATCH, MIN_OPSET

if TYPE_CHECKING:
    from vitcli.deploy.export import ExportReport
    from vitcli.deploy.onnx_checks import Latency


def export(
    model: Annotated[Path, typer.Option("--model", "-m", help="The .safetensors model file.",
                                        show_default=False)],
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX (the only format so far; required).")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="The .onnx file to write, named after the model file. "
        "[default: beside the model]",
        show_default=False)] = None,
    opset: Annotated[int, typer.Option("--opset", min=MIN_OPSET, max=1000,
                                       help="ONNX opset version.")] = DEFAULT_OPSET,
    batch: Annotated[str, typer.Option(
        "--batch", help="'dynamic' for any batch size, or a fixed batch N "
                        f"(1-{MAX_FIXED_BATCH:,}).")] = "dynamic",
    int8: Annotated[bool, typer.Option(
        "--int8", help="Also write a dynamically quantized int8 file beside --out "
                       "(model.onnx → model.int8.onnx; for onnxruntime).")] = False,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Labelled images (class sub-folders) to compare the back ends on.",
        show_default=False)] = None,
    precision: Annotated[str, typer.Option(
        "--precision", help="Which PyTorch latencies the table lists beside the ONNX files: "
        "fp32 always; bf16 autocast too with bf16, or with auto on a CPU with bf16 matrix "
        f"units from {BF16_MIN_GMAC} GMAC at the table's batch. The ONNX graph is "
        "fp32 and checked against PyTorch fp32 either way.")] = "auto",
    threads: ThreadsOpt = 0,
) -> None:
    """Export a model to ONNX with its labels and preprocessing, verified against PyTorch."""
    from vitcli.commands._common import err_console, safe, writing
    from vitcli.deploy.export import export_onnx
    from vitcli.errors import UsageError

    if not onnx:
        raise UsageError("say which format: `vit export --onnx --model FILE` (ONNX is the only "
                         "format so far)")
    with err_console.status("exporting") as status:
        with writing(out):  # the output place: no such folder, a file in the way, disk full
            report = export_onnx(model, out, opset=opset, batch=batch, int8=int8, data=data,
                                 precision=precision, threads=threads,
                                 log=lambda msg: status.update(safe(msg)))
    show_report(report, data)


def show_report(report: ExportReport, data: Path | None = None) -> None:
    """The files written, the parity checks, and (with --data) agreement and accuracy; files
    of `data` that were left out are counted in the words every command uses."""
    from rich import box
    from rich.table import Table

    from vitcli.commands._common import console, fit_or_break, safe, warn
    from vitcli.data.discovery import skipped_note
    from vitcli.deploy.onnx_checks import ATOL, RTOL

    files = Table(title="written", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("file", "size"):
        files.add_column(col, justify="left" if col == "file" else "right")
    files.add_row(safe(report.path), _mb(report.size_bytes))
    if report.int8_path and report.int8_size_bytes:
        files.add_row(safe(report.int8_path), _mb(report.int8_size_bytes))
    console.print(files)
    if report.latency is not None:
        show_latency(report.latency)
    # Broken between facts where the terminal is narrow (they wrapped mid-phrase at 80).
    verified = fit_or_break(f"verified opset {report.opset}, batch {report.batch} "
                            f"({report.exporter} exporter);", "onnx.checker full check passed")
    console.print("[green]verified[/]" + verified.removeprefix("verified"), highlight=False)
    parity = ", ".join(f"{p.max_abs_diff:.1e} (batch {p.batch})" for p in report.parity)
    console.print(fit_or_break(f"onnxruntime = PyTorch within rtol {RTOL:.0e}, atol {ATOL:.0e};"
                               .replace("e-0", "e-"),
                               f"max |Δlogit| {parity}"), highlight=False)
    if report.int8_max_prob_diff is not None:
        console.print(f"int8 from the {safe(report.int8_graph)}", highlight=False)
        console.print(f"int8 vs fp32 on random inputs: max |Δprobability| "
                      f"{report.int8_max_prob_diff:.3f}", highlight=False)
    d = report.data
    if d is None:
        return
    if d.bad_files:  # before the table, as eval warns before its results
        count, first = skipped_note(d.bad_files, data)
        warn(safe(count), safe(first))
    table = Table(title=safe(d.description) or plural(d.images, "image"), title_justify="left",
                  box=box.SIMPLE_HEAD)
    for col in ("back end", "accuracy", "top-1 agreement"):
        table.add_column(col, justify="left" if col == "back end" else "right")
    table.add_row("PyTorch fp32", f"{d.torch_accuracy:.2%}", "reference")
    if d.bf16_accuracy is not None and d.bf16_agreement is not None:  # the latency's row
        table.add_row("PyTorch bf16", f"{d.bf16_accuracy:.2%}",
                      f"{d.bf16_agreement:.2%} vs PyTorch fp32")
    ties = f" ({plural(d.ties, 'numerical tie')})" if d.ties else ""
    table.add_row("ONNX fp32", f"{d.onnx_accuracy:.2%}", f"{d.agreement:.2%} vs PyTorch{ties}")
    if d.int8_accuracy is not None and d.int8_agreement is not None:
        table.add_row("ONNX int8", f"{d.int8_accuracy:.2%}",
                      f"{d.int8_agreement:.2%} vs ONNX fp32")
    console.print(table)
    if d.int8_unknown_agreement is not None:
        lines = [f"unknown answers: ONNX fp32 calls {d.unknown_fp32} of {d.images} unknown, "
                 f"int8 {d.unknown_int8};",
                 f"the same answer on {d.int8_unknown_agreement:.2%} of the images"]
        if d.int8_unknown_agreement < 1:
            lines[1] += "; int8 moves the unknown score too:"
            lines.append("use model.onnx where the unknown answer must match the model file's")
            warn(lines.pop(0), to=console, soft_wrap=False)
        for line in lines:
            console.print(line, highlight=False)


# The rows of the latency table, in order: back end, and what it is beside the name.
LATENCY_ROWS = (("pytorch", "PyTorch fp32 eager"), ("pytorch bf16", "PyTorch bf16 autocast"),
                ("onnx fp32", "ONNX Runtime fp32"), ("onnx int8", "ONNX Runtime int8"))


def show_latency(latency: Latency) -> None:
    """Each back end's batch-1 latency and its speed-up over PyTorch fp32 eager (the way
    `vit predict --precision fp32` runs a .safetensors file), with the threads (and why that
    many) and runs under it; why bf16 is listed or not, and a warning where it came out
    slower than fp32."""
    from rich import box
    from rich.table import Table

    from vitcli.commands._common import console, fit_or_break, safe, warn

    table = Table(title=f"batch-{latency.batch} latency", title_justify="left",
                  box=box.SIMPLE_HEAD)
    table.add_column("back end")
    table.add_column("median", justify="right")
    table.add_column("speed-up over PyTorch fp32 eager", justify="right")
    for name, label in LATENCY_ROWS:
        if name in latency.ms:
            table.add_row(label, _ms(latency.ms[name]), f"{latency.speedup(name):.2f}×")
    console.print(table)
    counts = sorted(set(latency.runs.values()))
    runs = (plural(counts[0], "timed run") if len(counts) == 1
            else f"{counts[0]}-{counts[-1]} timed runs")  # fewer where a run is slow
    why = [f"({safe(latency.threads_reason)})"] if latency.threads_reason else []
    console.print(fit_or_break(f"batch {latency.batch}, median of {runs},",
                               f"{plural(latency.threads, 'thread')} for PyTorch and onnxruntime",
                               *why), highlight=False)
    if latency.bf16 is None:
        return
    reason = f"({safe(latency.bf16.removeprefix('auto: '))})"
    if not latency.bf16_listed:  # auto keeps this model in fp32 here: no bf16 row
        console.print(fit_or_break("no PyTorch bf16 row: --precision auto runs this model in "
                                   "fp32", reason), highlight=False)
        return
    auto = latency.bf16.startswith("auto")
    why = "what --precision auto picks" if auto else "asked for"
    if latency.speedup("pytorch bf16") >= 1:
        console.print(fit_or_break(f"PyTorch bf16 autocast: {why}", reason) if auto
                      else f"PyTorch bf16 autocast: {safe(latency.bf16)}", highlight=False)
        return
    calls = "for single images" if latency.batch == 1 else f"at batch {latency.batch}"
    warn(f"PyTorch bf16 ({why}) is slower than fp32 here;",
         f"{calls}, vit predict --precision fp32 is faster", to=console,
         soft_wrap=False)


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f} ms"
