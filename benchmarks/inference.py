"""Inference speed of one model on three back ends, side by side, from the same run.

    python benchmarks/inference.py                      # ViT-Ti/16, 224 px, random weights
    python benchmarks/inference.py --model m.safetensors --data imgs/   # + accuracy

PyTorch eager fp32 (the reference), PyTorch under bf16 autocast where the CPU has bf16
matrix units (what `vit eval` and `vit predict --precision auto` run there), onnxruntime fp32
and onnxruntime int8, all from `vit export --onnx --int8`, all with the same number of
threads. Reports batch-1 latency and batch-32 throughput, and with --data each one's
accuracy and top-1 agreement. The back ends take turns over --rounds rounds (the speed of a
shared machine drifts by 10-20 % over a minute; measured one after the other, a drift would
land on one back end only): each figure is the median over the rounds of each round's
median, and each speed-up the median of the rounds' own speed-ups. Goals (issue 17): int8
≥ 2.5× faster than PyTorch fp32 eager at batch 1 with ≤ 1 point of accuracy lost; ONNX
fp32 no slower than eager.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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


def main() -> None:
    import torch

    from vitcli.deploy.backends import open_onnx, open_torch
    from vitcli.deploy.export import export_onnx
    from vitcli.deploy.onnx_checks import median_seconds, random_inputs
    from vitcli.devices import cpu_bf16_units

    args = parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    workdir = Path(tempfile.mkdtemp(prefix="vit-bench-"))
    model = args.model or make_random_model(args.preset, workdir)
    compare = f", comparing on {args.data}" if args.data else ""
    print(f"exporting {model} (fp32 + int8{compare})", file=sys.stderr)
    report = export_onnx(model, workdir / "model.onnx", int8=True, data=args.data)
    backends = {"PyTorch eager fp32": open_torch(model, "cpu", precision="fp32")}
    if cpu_bf16_units():
        backends["PyTorch bf16 autocast"] = open_torch(model, "cpu", precision="bf16")
    backends["ONNX Runtime fp32"] = open_onnx(report.path, threads=threads)
    backends["ONNX Runtime int8"] = open_onnx(report.int8_path, threads=threads)
    mf = backends["PyTorch eager fp32"].model_file
    one, many = random_inputs(mf, 1, seed=0), random_inputs(mf, args.batch, seed=1)
    sizes = {"PyTorch eager fp32": model.stat().st_size, "ONNX Runtime fp32": report.size_bytes,
             "ONNX Runtime int8": report.int8_size_bytes,
             "PyTorch bf16 autocast": model.stat().st_size}
    latency: dict[str, list[float]] = {name: [] for name in backends}
    batch_s: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(args.rounds):
        for name, backend in backends.items():
            time.sleep(0.05)  # the last back end's idle threads stop spinning
            latency[name].append(median_seconds(lambda b=backend: b.logits(one), args.runs,
                                                budget_s=30))
            batch_s[name].append(median_seconds(lambda b=backend: b.logits(many), 3,
                                                warmup=1, budget_s=60))
    base = latency["PyTorch eager fp32"]
    rows = [(name, 1000 * float(np.median(latency[name])),
             float(np.median(np.divide(base, latency[name]))),
             args.batch / float(np.median(batch_s[name])), sizes[name]) for name in backends]
    rounds = np.divide(base, latency["ONNX Runtime int8"])
    print_table(mf, threads, rows, report, args, rounds)


def make_random_model(preset: str, workdir: Path) -> Path:
    """A preset with random weights and 1000 classes: speed does not depend on training."""
    from vitcli.model.checkpoint import save_model
    from vitcli.model.vit import create_model

    model = create_model(preset, num_classes=1000).eval()
    return save_model(workdir / f"{preset}.safetensors", model)


def print_table(mf, threads: int, rows: list, report, args: argparse.Namespace,
                int8_rounds: np.ndarray) -> None:
    """Back ends as rows: latency, speed-up over PyTorch, throughput, size, accuracy."""
    c = mf.config
    print(f"\n{c.image_size} px, patch {c.patch_size}, width {c.embed_dim}, depth {c.depth}, "
          f"{len(mf.class_names)} classes; {threads} thread(s); batch-1 median of {args.runs} "
          f"runs, {args.rounds} rounds")
    print(f"int8 quantized from the {report.int8_graph}")
    d = report.data
    accuracy = {}
    if d is not None:
        accuracy = {"PyTorch eager fp32": (d.torch_accuracy, "reference"),
                    "ONNX Runtime fp32": (d.onnx_accuracy, f"{d.agreement:.1%} vs PyTorch"),
                    "ONNX Runtime int8": (d.int8_accuracy, f"{d.int8_agreement:.1%} vs fp32")}
    throughput = f"batch-{args.batch} img/s"
    head = f"{'back end':<21} {'batch-1 ms':>10} {'speed-up':>9} {throughput:>14} {'size MB':>8}"
    print(head + (f" {'accuracy':>9}  top-1 agreement" if d else ""))
    for name, ms, speedup, per_s, size in rows:
        line = f"{name:<21} {ms:>10.2f} {speedup:>8.2f}× {per_s:>14.1f} {size / 1e6:>8.2f}"
        if name in accuracy:
            acc, agree = accuracy[name]
            line += f" {acc:>9.2%}  {agree}"
        print(line)
    if d is not None:
        print(f"accuracy on {d.description}")
    speedup = {name: value for name, _, value, _, _ in rows}
    int8_speedup = speedup["ONNX Runtime int8"]
    print(f"\nint8 speed-up in each round: {', '.join(f'{r:.2f}×' for r in int8_rounds)}")
    print(f"goal int8 ≥ 2.5× PyTorch fp32 eager at batch 1: {int8_speedup:.2f}× "
          f"{'met' if int8_speedup >= 2.5 else 'MISSED'}")
    print(f"goal ONNX fp32 no slower than eager: {speedup['ONNX Runtime fp32']:.2f}× "
          f"{'met' if speedup['ONNX Runtime fp32'] >= 1 else 'MISSED'}")
    if d is not None and d.int8_accuracy is not None:
        lost = 100 * (d.onnx_accuracy - d.int8_accuracy)
        # 0.99 - 0.98 is 1.0000000000000009 in floats: compare at the precision printed
        print(f"goal int8 loses ≤ 1 point: {lost:+.2f} points lost "
              f"{'met' if round(lost, 6) <= 1 else 'MISSED'}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
