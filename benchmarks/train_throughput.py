"""Training throughput and peak memory: vitcli's ViT against Hugging Face transformers' ViT.

    python benchmarks/train_throughput.py                 # CPU: ViT-Ti/16 at 224 px, vit-nano
    python benchmarks/train_throughput.py --device cuda   # the same on a GPU (bf16 autocast)

Both models get the same architecture (width, depth, heads, MLP size, image and patch size,
classes, qkv bias, LayerNorm eps 1e-6, SDPA attention, no dropout), the same random batch,
the same thread count and the same optimiser (AdamW, foreach), and run the same training step:
forward, cross-entropy, backward, optimiser step. Each measurement runs in a fresh
subprocess, so peak memory (ru_maxrss on CPU, max_memory_allocated on CUDA) is that model's
own; the two implementations alternate `--repeats` times and the best speed of each counts,
which keeps a busy machine from favouring whichever ran second.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name → (preset, batch on CPU, batch on CUDA)
CONFIGS = {"ti16": ("vit-ti16", 32, 256), "nano": ("vit-nano", 128, 1024)}
NUM_CLASSES = 10


def _rss_kib() -> int:
    """Current resident memory (KiB) from /proc, Linux only; 0 elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def build(impl: str, preset: str):
    """The model of `impl` with the preset's architecture; returns (model, forward fn)."""
    from vitcli.model.config import get_preset

    c = get_preset(preset).config.replace(num_classes=NUM_CLASSES)
    if impl == "vitcli":
        from vitcli.model.vit import VisionTransformer

        return VisionTransformer(c), c
    from transformers import ViTConfig, ViTForImageClassification

    hf = ViTConfig(hidden_size=c.embed_dim, num_hidden_layers=c.depth,
                   num_attention_heads=c.num_heads, intermediate_size=c.mlp_dim,
                   image_size=c.image_size, patch_size=c.patch_size,
                   num_channels=c.in_channels, num_labels=NUM_CLASSES, qkv_bias=c.qkv_bias,
                   layer_norm_eps=c.layer_norm_eps, hidden_dropout_prob=0.0,
                   attention_probs_dropout_prob=0.0, attn_implementation="sdpa")
    return ViTForImageClassification(hf), c


def worker(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import resource

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    preset, cpu_batch, cuda_batch = CONFIGS[args.config]
    batch = args.batch or (cuda_batch if device.type == "cuda" else cpu_batch)
    if args.impl == "hf":
        import transformers  # noqa: F401  (imported before the baseline, like torch)
    baseline = _rss_kib()
    model, c = build(args.impl, preset)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, foreach=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c.in_channels, c.image_size, c.image_size, generator=g).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)
    amp = torch.bfloat16 if device.type == "cuda" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(x) if args.impl == "vitcli" else model(pixel_values=x).logits
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is KiB on Linux; the model's share is what it added to the baseline
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    print(json.dumps({"impl": args.impl, "config": args.config, "batch": batch,
                      "images_per_s": batch * args.steps / seconds, "peak_mib": peak_mib,
                      "params": sum(p.numel() for p in model.parameters())}))


def _env() -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH (kept, not replaced)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def measure(impl: str, config: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--config", config,
           "--device", args.device, "--threads", str(args.threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch or 0)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                         env=_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", default="ti16,nano", help="comma list of: " + ", ".join(CONFIGS))
    p.add_argument("--batch", type=int, default=0, help="0 = per-config default")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="vitcli", help=argparse.SUPPRESS)
    p.add_argument("--config", default="nano", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, "
          f"{args.steps} timed steps after {args.warmup} warm-up, best of {args.repeats}")
    header = (f"{'model':<10}{'batch':>6}{'vitcli img/s':>14}{'HF img/s':>11}{'ratio':>8}"
              f"{'vitcli MiB':>12}{'HF MiB':>9}")
    print(header)
    results = []
    for config in args.configs.split(","):
        runs: dict[str, list[dict]] = {"vitcli": [], "hf": []}
        for _ in range(args.repeats):
            for impl in ("vitcli", "hf"):
                runs[impl].append(measure(impl, config, args))
        best = {impl: max(r, key=lambda m: m["images_per_s"]) for impl, r in runs.items()}
        ratio = best["vitcli"]["images_per_s"] / best["hf"]["images_per_s"]
        mem = {impl: min(m["peak_mib"] for m in r) for impl, r in runs.items()}
        print(f"{CONFIGS[config][0]:<10}{best['vitcli']['batch']:>6}"
              f"{best['vitcli']['images_per_s']:>14.1f}{best['hf']['images_per_s']:>11.1f}"
              f"{ratio:>7.2f}×{mem['vitcli']:>12.0f}{mem['hf']:>9.0f}")
        results.append({"config": CONFIGS[config][0], "ratio": ratio, "vitcli": best["vitcli"],
                        "hf": best["hf"], "peak_mib": mem, "all": runs})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
