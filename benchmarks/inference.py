"""Inference speed of one model on up to four back ends, side by side, from the same run.

    python benchmarks/inference.py                      # ViT-Ti/16, 224 px, random weights
    python benchmarks/inference.py --model m.safetensors --data imgs/   # + accuracy

PyTorch eager fp32 (the reference), PyTorch under bf16 autocast (only where the CPU has bf16
matrix units), onnxruntime fp32 and onnxruntime int8 (both from `vit export --onnx --int8`),
all with the same number of threads: four rows on a CPU with bf16 units, three elsewhere.
The script also says which of the two PyTorch rows `vit eval` and `vit predict --precision
auto` run for this model here, at batch 1 and at --batch (`vitcli.devices.choose_precision`:
bf16 only for batches of at least BF16_MIN_MACS multiply-accumulates). Reports batch-1
latency and batch-32 throughput, and with --data each one's accuracy and top-1 agreement.

The back ends take turns over --rounds rounds (the speed of a shared machine drifts by
20-30 % from minute to minute, docs/precision.md; measured one after the other, a drift
would land on one back end only): each ms and img/s figure is the median over the rounds of
each round's median, and each speed-up the median of the rounds' own speed-ups, printed with
their range (lowest–highest round). A goal counts as met only when every round clears it
(MISSED when none does, UNSETTLED in between), and the script warns when a back end's rounds
differ by more than 30 %. Goals (issue 17): int8 ≥ 2.5× faster than PyTorch fp32 eager at
batch 1 with ≤ 1 point of accuracy lost; ONNX fp32 no slower than eager.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vitcli.deploy.export import ExportReport
    from vitcli.devices import Precision
    from vitcli.model.checkpoint import ModelFile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitcli.errors import plural  # noqa: E402

REFERENCE = "PyTorch eager fp32"
BF16 = "PyTorch bf16 autocast"
ONNX_FP32 = "ONNX Runtime fp32"
INT8 = "ONNX Runtime int8"
INT8_GOAL = 2.5  # × PyTorch fp32 eager at batch 1 (issue 17)
DISAGREE = 0.30  # rounds whose speed-ups differ by more than this are worth a warning
WIDTH = 80  # every line the script prints fits a terminal of this width
GOAL_RULE = "met = every round clears it; MISSED = none does; UNSETTLED = some do"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a vitcli .safetensors model file")
    parser.add_argument("--data", type=Path, help="labelled images (class sub-folders)")
    parser.add_argument("--preset", default="vit-ti16", help="without --model (default ViT-Ti/16)")
    parser.add_argument("--threads", type=int, default=0, help="threads per back end (0: torch's)")
    parser.add_argument("--runs", type=int, default=30, help="timed batch-1 runs per round")
    parser.add_argument("--rounds", type=int, default=5, help="turns each back end takes")
    parser.add_argument("--batch", type=int, default=32, help="batch for throughput")
    return parser.parse_args()


# ------------------------------------------------------------------ reading the rounds


@dataclass(frozen=True)
class Spread:
    """The rounds' speed-ups of one back end: median, lowest and highest round."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, rounds: Sequence[float]) -> Spread:
        values = np.asarray(rounds, dtype=float)
        return cls(float(np.median(values)), float(values.min()), float(values.max()))

    @property
    def disagreement(self) -> float:
        """How far the highest round is above the lowest, as a fraction (0.3 = 30 %)."""
        return self.high / self.low - 1 if self.low > 0 else float("inf")

    def __str__(self) -> str:  # 2.10× (1.77–2.37)
        return f"{self.median:.2f}× ({self.low:.2f}–{self.high:.2f})"


def goal_verdict(rounds: Sequence[float], goal: float) -> str:
    """`met` when every round's speed-up reaches `goal`, `MISSED` when none does, else
    `UNSETTLED (k of n rounds clear it)`: one fast round on a drifting machine (1.85× and
    5.53×, median 3.69×) must not read as a goal met."""
    cleared = sum(1 for r in rounds if r >= goal)
    if cleared == len(rounds):
        return "met"
    if cleared == 0:
        return "MISSED"
    return f"UNSETTLED ({cleared} of {len(rounds)} rounds clear it)"


def disagreement_warning(spreads: dict[str, Spread], tolerance: float = DISAGREE,
                         load: float | None = None) -> str | None:
    """One warning naming the back ends whose rounds differ by more than `tolerance`
    (None when they all agree); `load` is the load average, said when known."""
    wide = {name: s for name, s in spreads.items() if s.disagreement > tolerance}
    if not wide:
        return None
    worst = max(s.disagreement for s in wide.values())
    named = "; ".join(f"{name} {s.low:.2f}–{s.high:.2f}×" for name, s in wide.items())
    return (f"warning: the rounds disagree by up to {100 * worst:.0f} % ({named}), more "
            f"than {100 * tolerance:.0f} %: the machine's speed drifted during the run"
            f"{f' (load average {load:.1f})' if load is not None else ''}, so the medians "
            "and verdicts are not reliable. Rerun on a quieter machine (see `uptime`) or "
            "with more --rounds.")


def say(text: str = "") -> None:
    """Print `text` wrapped to WIDTH columns (continuation lines indented)."""
    print(textwrap.fill(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False)
          if len(text) > WIDTH else text)


# ------------------------------------------------------------------------- measuring


def main() -> None:
    args = parse_args()
    # The exported files (and a random model) live only as long as the run.
    with tempfile.TemporaryDirectory(prefix="vit-bench-") as tmp:
        measure(args, Path(tmp))


def measure(args: argparse.Namespace, workdir: Path) -> None:
    """Export, let the back ends take turns, print the report (files go to `workdir`)."""
    import torch

    from vitcli.deploy.backends import open_onnx, open_torch
    from vitcli.deploy.export import export_onnx
    from vitcli.deploy.onnx_checks import median_seconds, random_inputs
    from vitcli.devices import choose_precision, cpu_bf16_units
    from vitcli.model.config import call_macs

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    model = args.model or make_random_model(args.preset, workdir)
    compare = f", comparing on {args.data}" if args.data else ""
    print(f"exporting {model} (fp32 + int8{compare})", file=sys.stderr)
    report = export_onnx(model, workdir / "model.onnx", int8=True, data=args.data)
    backends = {REFERENCE: open_torch(model, "cpu", precision="fp32")}
    if cpu_bf16_units():
        backends[BF16] = open_torch(model, "cpu", precision="bf16")
    backends[ONNX_FP32] = open_onnx(report.path, threads=threads)
    backends[INT8] = open_onnx(report.int8_path, threads=threads)
    mf = backends[REFERENCE].model_file
    one, many = random_inputs(mf, 1, seed=0), random_inputs(mf, args.batch, seed=1)
    sizes = {REFERENCE: model.stat().st_size, BF16: model.stat().st_size,
             ONNX_FP32: report.size_bytes, INT8: report.int8_size_bytes}
    latency: dict[str, list[float]] = {name: [] for name in backends}
    batch_s: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(args.rounds):
        for name, backend in backends.items():
            time.sleep(0.05)  # the last back end's idle threads stop spinning
            latency[name].append(median_seconds(lambda b=backend: b.logits(one), args.runs,
                                                budget_s=30))
            batch_s[name].append(median_seconds(lambda b=backend: b.logits(many), 3,
                                                warmup=1, budget_s=60))
    base = latency[REFERENCE]
    speedups = {name: [float(r) for r in np.divide(base, latency[name])] for name in backends}
    rows = [(name, 1000 * float(np.median(latency[name])), speedups[name],
             args.batch / float(np.median(batch_s[name])), sizes[name]) for name in backends]
    auto = [choose_precision("auto", torch.device("cpu"), macs=call_macs(mf.config, batch))
            for batch in (1, args.batch)]
    print_report(mf, threads, rows, report, args, auto)


def make_random_model(preset: str, workdir: Path) -> Path:
    """A preset with random weights and 1000 classes: speed does not depend on training."""
    from vitcli.model.checkpoint import save_model
    from vitcli.model.vit import create_model

    model = create_model(preset, num_classes=1000).eval()
    return save_model(workdir / f"{preset}.safetensors", model)


# -------------------------------------------------------------------------- reporting


def print_report(mf: ModelFile, threads: int, rows: list, report: ExportReport,
                 args: argparse.Namespace, auto: list[Precision]) -> None:
    """Back ends as rows (latency, speed-up with its range, throughput, size), then
    accuracy with --data, which PyTorch row `auto` runs (at batch 1, at --batch), and the
    goals' verdicts."""
    c = mf.config
    print(f"\n{c.image_size} px, patch {c.patch_size}, width {c.embed_dim}, depth {c.depth}, "
          f"{plural(len(mf.class_names), 'class', 'classes')}; {plural(threads, 'thread')}")
    say(f"batch 1: median of {plural(args.runs, 'run')} a round; batch {args.batch}: median "
        f"of 3 runs a round; {plural(args.rounds, 'round')}, the back ends taking turns")
    say(f"int8 quantized from the {report.int8_graph}")
    throughput = f"batch-{args.batch} img/s"
    print(f"\n{'back end':<21} {'batch-1 ms':>10}  {'speed-up (range)':<20} {throughput:>14} "
          f"{'size MB':>8}")
    for name, ms, rounds, per_s, size in rows:
        speedup = "1.00×" if name == REFERENCE else str(Spread.of(rounds))
        print(f"{name:<21} {ms:>10.2f}  {speedup:<20} {per_s:>14.1f} {size / 1e6:>8.2f}")
    say("ms and img/s: median of the rounds; speed-up: median of the rounds' own speed-ups "
        "over PyTorch eager fp32 (lowest–highest round), which is not the ratio of the ms "
        "column when the rounds disagree")
    for batch, chosen in zip((1, args.batch), auto, strict=True):
        row = BF16 if chosen.name == "bf16" else REFERENCE  # bf16 only with bf16 units
        say(f"at batch {batch}, `vit eval` and `vit predict --precision auto` run this model "
            f"at {chosen.name} here ({chosen.reason}): the \"{row}\" row")
    d = report.data
    if d is not None:
        print()
        say(f"accuracy on {d.description}")
        print(f"{'back end':<21} {'accuracy':>9}  top-1 agreement")
        for name, acc, agree in ((REFERENCE, d.torch_accuracy, "reference"),
                                 (ONNX_FP32, d.onnx_accuracy, f"{d.agreement:.1%} vs PyTorch"),
                                 (INT8, d.int8_accuracy, f"{d.int8_agreement:.1%} vs fp32")):
            if acc is not None:
                print(f"{name:<21} {acc:>9.2%}  {agree}")
    speedups = {name: rounds for name, _, rounds, _, _ in rows}
    print(f"\ngoals ({GOAL_RULE}):")
    int8, fp32 = speedups[INT8], speedups[ONNX_FP32]
    say(f"  int8 ≥ {INT8_GOAL:g}× PyTorch fp32 eager at batch 1: {Spread.of(int8)} "
        f"{goal_verdict(int8, INT8_GOAL)}")
    say(f"  ONNX fp32 no slower than eager: {Spread.of(fp32)} {goal_verdict(fp32, 1.0)}")
    if d is not None and d.int8_accuracy is not None:
        lost = 100 * (d.onnx_accuracy - d.int8_accuracy)
        # 0.99 - 0.98 is 1.0000000000000009 in floats: compare at the precision printed
        say(f"  int8 loses ≤ 1 point: {lost:+.2f} points lost "
            f"{'met' if round(lost, 6) <= 1 else 'MISSED'}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    warning = disagreement_warning({name: Spread.of(r) for name, r in speedups.items()
                                    if name != REFERENCE}, load=load)
    if warning:
        print()
        say(warning)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
