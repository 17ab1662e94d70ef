"""`vit predict IMAGES... [--model FILE]`: classify images, optionally explain them.

Nothing here imports torch: with an .onnx model the command runs on onnxruntime alone.
Results go to stdout (Rich tables, or JSON lines with --json); progress, the model used and
per-image errors go to stderr.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vitcli.commands._common import BF16_MIN_GMAC, DeviceOpt, ThreadsOpt, plural, writing

if TYPE_CHECKING:
    from collections.abc import Callable

    from vitcli.deploy.backends import Backend
    from vitcli.deploy.predict import Prediction

MANY = 8  # above this many images: one table and a progress bar instead of a table each


def predict(
    inputs: Annotated[list[str], typer.Argument(
        help="Image files, folders (searched recursively) or glob patterns (quote them).",
        show_default=False)],
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="A vitcli model file: .safetensors (PyTorch) or .onnx "
        "(onnxruntime, no torch); without it, weights/best.safetensors of the newest run in "
        "runs/train.", show_default=False)] = None,  # no long path: help must not be cut
    topk: Annotated[int, typer.Option("--topk", "-k", min=1, max=100_000,
                                      help="How many labels to show for each image, best first.")] = 5,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Write one JSON object per image to stdout, nothing else.")] = False,
    csv_path: Annotated[Path | None, typer.Option(
        "--csv", help="Also write the results as a CSV table to this file.",
        show_default=False)] = None,
    explain: Annotated[Path | None, typer.Option(
        "--explain", help="Save attention heat maps per image into this folder "
        "(.safetensors models only).", show_default=False)] = None,
    device: DeviceOpt = "auto",
    precision: Annotated[str, typer.Option("--precision", help=(
        "auto, fp32 or bf16 (PyTorch files). auto: bf16 on a CUDA GPU, and on a CPU with "
        f"bf16 units from {BF16_MIN_GMAC} GMAC a batch; fp32 below. fp32 gives the "
        "probabilities of the exported ONNX file and of an imported model's source, to "
        "within float rounding (about 1e-6); bf16 is faster, to within about 1e-2. [default: "
        "auto]"), show_default=False)] = "auto",
    threads: ThreadsOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=4096,
                                            help="Images per forward pass.")] = 32,
    unknown: Annotated[str | None, typer.Option(
        "--unknown", help="on|off: answer 'unknown' for images beyond the model file's "
        "out-of-distribution threshold. [default: on if it has one]",
        show_default=False)] = None,
) -> None:
    """Classify images with a trained model: top-k labels and probabilities per image."""
    from vitcli.commands._common import err_console, fit_or_break, model_label, safe
    from vitcli.deploy.backends import is_onnx_path, open_backend
    from vitcli.deploy.predict import (
        collect_images,
        find_latest_model,
        require_classifier,
        unknown_rule,
    )
    from vitcli.devices import check_precision
    from vitcli.errors import UsageError, VitError

    precision = check_precision(precision)
    if model is None:
        model = find_latest_model()
        err_console.print(f"using model {safe(model)} (the newest in runs/train)",
                          highlight=False)
    onnx = is_onnx_path(model)
    if explain is not None and onnx:
        raise UsageError("--explain needs the .safetensors model file: attention maps are not "
                         "outputs of the ONNX graph; pass --model model.safetensors")
    if onnx and device not in ("auto", "cpu"):
        err_console.print(f"note: the ONNX back end runs on CPU; --device {safe(device)} "
                          "ignored")
    if explain is not None and explain.exists() and not explain.is_dir():
        raise UsageError(f"--explain {explain}: exists and is not a folder")
    if csv_path is not None and csv_path.is_dir():
        raise UsageError(f"--csv {csv_path}: is a folder; give a file name")
    rule = _on_off(unknown)
    backend = open_backend(model, device=device, precision=precision, threads=threads)
    # --precision fp32 or bf16 asked of an int8 file, bf16 of an fp32 one: said, not obeyed
    if onnx and precision not in ("auto", backend.compute_precision):
        err_console.print(f"note: this ONNX file runs in {backend.compute_precision}, as "
                          f"exported; --precision {precision} ignored", soft_wrap=True)
    require_classifier(backend)
    unknown_rule(backend, rule)  # --unknown on without a rule: said before any image is read
    skipped: list = []
    paths, results = collect_images(inputs, skipped)
    if csv_path is not None:  # never over the model or an image being predicted
        from vitcli.files import refuse_overwrite

        refuse_overwrite(csv_path, "--csv", {"--model": model})
        for image in paths if csv_path.exists() else []:
            refuse_overwrite(csv_path, "--csv", {"the input": image})
    if skipped:
        from vitcli.data.discovery import skipped_summary

        err_console.print(f"note: {safe(skipped_summary(skipped))}", highlight=False,
                          soft_wrap=True)

    def on_result(result: Prediction) -> None:
        if as_json:
            import json

            typer.echo(json.dumps(result.to_dict()))
        if not result.ok:
            _report_failure(result)

    for missing in results:  # empty folders, globs that matched nothing: a record each too
        on_result(missing)

    many = len(paths) > MANY and not as_json
    predicted = _run(backend, paths, topk, batch_size, on_result, show_progress=many,
                     unknown=rule)
    results += predicted
    if not as_json:
        _show(results, many, images=len(paths))
    if csv_path is not None:
        with writing(csv_path):
            write_csv(csv_path, results)
    ok = [r.path for r in predicted if r.ok]
    if explain is not None and ok:
        from vitcli.model.explain import explain_images

        model_file = backend.model_file  # type: ignore[attr-defined]  # torch: checked above
        top1 = {r.path: (r.labels[0], r.probabilities[0]) for r in predicted if r.ok}
        with writing(explain):
            explained = explain_images(model_file, ok, explain, predictions=top1,
                                       model_name=model_label(model))
        err_console.print(f"heat maps for {plural(len(explained), 'image')} in {safe(explain)}/ "
                          f"(attention of the {explained[0].source_row})", highlight=False)
    if ok:  # on stderr in every mode (--json too): what the answers were computed in
        err_console.print(fit_or_break(*_precision_line(backend), width=err_console.width),
                          highlight=False)
    failed = sum(not r.ok for r in results)
    if failed and len(results) == 1:  # its own error line is the one line: exit 1, no other
        from vitcli.errors import FAILURE

        raise typer.Exit(FAILURE)
    if failed:
        named = {Path(os.fspath(item)) for item in inputs}
        missing = results[:len(results) - len(predicted)]  # what collect_images gave back
        raise VitError(failure_line(len(paths), sum(not r.ok for r in predicted),
                                    sum(m.path in named for m in missing),
                                    sum(m.path not in named for m in missing)))
    if not results:
        raise VitError("no images to predict")


def failure_line(images: int, failed_images: int, empty_inputs: int = 0,
                 unreadable: int = 0) -> str:
    """The closing error, counting what the lines above count: images as the table does (a
    folder's notes.txt is no image and no input: it is skipped with a note), then the inputs
    that gave no image (an empty folder, a glob matching nothing) and the entries inside a
    folder that could not be read. '1 of 34 images could not be predicted'."""
    parts = []
    if failed_images:
        parts.append(f"{failed_images:,} of {plural(images, 'image')} could not be predicted")
    if empty_inputs:
        parts.append(f"no image in {plural(empty_inputs, 'input')}")
    if unreadable:
        parts.append(f"{plural(unreadable, 'entry', 'entries')} could not be read")
    return "; ".join(parts)


def _on_off(value: str | None) -> bool | None:
    """--unknown on|off as True/False; None when not given."""
    from vitcli.errors import check_choice

    if value is None:
        return None
    return check_choice("--unknown", value, ("on", "off")) == "on"


def _run(backend: Backend, paths: list[Path], topk: int, batch_size: int,
         on_result: Callable[[Prediction], None], show_progress: bool,
         unknown: bool | None = None) -> list[Prediction]:
    """Run prediction in batches, streaming each result to `on_result`."""
    from vitcli.deploy.predict import predict_paths

    if not show_progress:
        results = []
        for result in predict_paths(backend, paths, topk=topk, batch_size=batch_size,
                                    unknown=unknown):
            on_result(result)
            results.append(result)
        return results
    from rich.progress import Progress

    from vitcli.commands._common import progress_bar

    results = []
    with progress_bar(*Progress.get_default_columns()) as progress:
        task = progress.add_task("predicting", total=len(paths))
        for result in predict_paths(backend, paths, topk=topk, batch_size=batch_size,
                                    on_batch=lambda n: progress.advance(task, n),
                                    unknown=unknown):
            on_result(result)
            results.append(result)
    return results


def _report_failure(result: Prediction) -> None:
    """One stderr line naming the image that failed."""
    from vitcli.commands._common import print_error

    print_error(result.error or f"{result.path}: failed")


def _show(results: list[Prediction], many: bool, images: int | None = None) -> None:
    """A table per image for a few images, one summary table for many; `images`: how many
    images were read (the table's rows plus those that could not be predicted)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from vitcli.commands._common import console, format_score, plain, safe, score_decimals
    from vitcli.files import shown_path

    ok = [r for r in results if r.ok]
    if not many:
        for r in ok:
            # The file name on its own line, never wrapped: a table title is wrapped to the
            # table's width, which broke long paths mid-word on narrow or piped output.
            console.print(Text(plain(r.path), style="bold"), soft_wrap=True)
            if r.unknown:  # the answer first; the classes below are what it resembles most
                d = score_decimals(r.threshold, [r.score])
                console.print(Text(plain(f"unknown (nearest: {r.labels[0]}, score "
                                         f"{format_score(r.score, d)} > threshold "
                                         f"{format_score(r.threshold, d)})"), style="yellow"),
                              soft_wrap=True)
            table = Table(box=box.SIMPLE_HEAD)
            table.add_column("#", justify="right")
            table.add_column("label")
            table.add_column("probability", justify="right")
            for rank, (label, p) in enumerate(zip(r.labels, r.probabilities), 1):
                table.add_row(str(rank), safe(label), f"{p:.4f}")
            console.print(table)
        return
    root = common_folder([r.path for r in ok])
    # The folder once, on a line of its own (never wrapped); the rows name files within it,
    # so that long folder names do not fold every row into four lines.
    where = f" in {root}{os.sep}" if root is not None else ""
    failed = 0 if images is None else images - len(ok)  # each named by an error line above
    count = (f"{len(ok):,} of {plural(images, 'image')}" if failed and images is not None
             else plural(len(ok), "image"))
    tail = f" ({failed:,} could not be predicted)" if failed else ""
    console.print(Text(plain(f"{count}{where}{tail}"), style="bold"), soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("image", overflow="fold")  # the whole path, wrapped, never cut short
    table.add_column("label")
    table.add_column("probability", justify="right")
    runners_up = any(len(r.labels) > 1 for r in ok)  # --topk 1: no always-empty column
    if runners_up:
        table.add_column("next best")
    scored = any(r.score is not None for r in ok)
    decimals = max([score_decimals(r.threshold, [r.score]) for r in ok
                    if r.score is not None and r.threshold is not None], default=2)
    if scored:  # the threshold in the heading: a score means nothing without it
        limits = {format_score(r.threshold, decimals) for r in ok if r.threshold is not None}
        table.add_column("unknown score" + (f" (> {limits.pop()}: unknown)"
                                            if len(limits) == 1 else ""), justify="right")
    for r in ok:
        name = shown_path(r.path, root)  # the folder is named once, above the table
        # unknown: the nearest class and its probability stand beside the label
        label = f"unknown (nearest {r.labels[0]})" if r.unknown else r.labels[0]
        row = [safe(name), safe(label), f"{r.probabilities[0]:.4f}"]
        if runners_up:
            row.append(", ".join(f"{safe(label)} {p:.2f}" for label, p in
                                 zip(r.labels[1:], r.probabilities[1:])))
        if scored:
            # aligned decimals, enough that a score beside the threshold compares as it does
            row.append(format_score(r.score, decimals) if r.score is not None else "")
        table.add_row(*row)
    console.print(table)


def common_folder(paths: list[Path]) -> Path | None:
    """The deepest folder holding every path, or None when there is none worth naming."""
    try:
        root = Path(os.path.commonpath([p.parent for p in paths]))
    except ValueError:  # no paths, or absolute and relative ones mixed
        return None
    return None if str(root) in ("", ".", os.sep) else root


def _precision_line(backend: Backend) -> tuple[str, ...]:
    """'PyTorch on cpu, 1 thread (1 of 2 cores free, load 1.3),', 'precision fp32' and why:
    the choice (PyTorch), or as exported (ONNX); parts for fit_or_break. The threads only
    on the CPU: a GPU's speed does not hang on them."""
    from vitcli.deploy.backends import TorchBackend  # no torch: backends imports it lazily

    if isinstance(backend, TorchBackend):
        chosen = backend.precision  # None: no batch ran (`auto` undecided)
        where, why = f"PyTorch on {backend.device}", chosen.reason if chosen else "the default"
    else:  # an ONNX file runs as it was exported, on onnxruntime's CPU provider
        where, why = "onnxruntime on cpu", "as exported"
    if backend.threads is not None and where.endswith(" on cpu"):
        where += f", {backend.threads}"
    return f"{where},", f"precision {backend.compute_precision}", f"({why})"


def write_csv(path: Path, results: list[Prediction]) -> None:
    """image, label, probability, then label_2/probability_2 …, the unknown columns (when
    the file has the rule), compute_precision (fp32, bf16 or int8) and an error column."""
    import csv
    import io

    from vitcli.files import atomic_write

    k = max([len(r.labels) for r in results] + [1])
    header = ["image", "label", "probability"]
    for i in range(2, k + 1):
        header += [f"label_{i}", f"probability_{i}"]
    scored = any(r.score is not None for r in results)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    # label is the answer (`unknown` beyond the threshold); nearest is then the top class
    writer.writerow(header + (["nearest", "unknown_score", "threshold"] if scored else [])
                    + ["compute_precision", "error"])
    for r in results:
        row: list[str] = [str(r.path)]
        for i in range(k):
            has = i < len(r.labels)
            label = r.label if i == 0 and has else r.labels[i] if has else ""
            row += [label, f"{r.probabilities[i]:.6f}" if has else ""]
        if scored:
            # the exact numbers (shortest round trip), as in JSON: 6 digits made 15.0500012
            # and its threshold 15.0500004 one number
            row += ([r.labels[0], repr(float(r.score)), repr(float(r.threshold))]
                    if r.score is not None and r.labels else ["", "", ""])
        writer.writerow(row + [r.compute_precision or "", r.error or ""])
    # surrogateescape: a name that is not UTF-8 keeps its exact bytes in the table.
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8",
                                                  errors="surrogateescape"))
