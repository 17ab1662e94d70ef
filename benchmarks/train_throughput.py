"""Training and evaluation throughput: vitcli's ViT against Hugging Face transformers' ViT.

    python benchmarks/train_throughput.py                 # CPU: ViT-Ti/16 at 224 px, vit-nano
    python benchmarks/train_throughput.py --device cuda   # the same on a GPU (bf16 autocast)
    python benchmarks/train_throughput.py --configs ti16 --user   # + `vit train` end to end

Columns, all from one run: transformers' ViT in fp32 eager (the peer); vitcli's model in fp32
eager; vitcli at the precision `vit train --precision auto` picks on this machine (bf16
autocast on a GPU, and on a CPU with bf16 units from 1 GMAC a training step or a batch,
fp32 elsewhere: vitcli.devices.choose_precision); with --user also `vit train` itself (the library call the
command makes, on generated 224-px images, augmentation and all; images/s of its second
epoch as the progress bar reports it). Evaluation: the peer and vitcli fp32 eager forward
passes without gradients, and `vit eval`'s own path (vitcli.evaluation.predict_logits on uint8
pixels, at the auto precision), all at --eval-batch.

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
    from vitcli.model.presets import get_preset

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


def auto_precision(device, config, batch: int, *, training: bool):
    """What `--precision auto` picks for this model on this machine, for a training step
    or a forward pass of `batch` images."""
    from vitcli.devices import choose_precision
    from vitcli.model.config import call_macs

    return choose_precision("auto", device, macs=call_macs(config, batch, training=training))


def worker(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import resource

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    preset, cpu_batch, cuda_batch = CONFIGS[args.config]
    batch = args.batch or (cuda_batch if device.type == "cuda" else cpu_batch)
    if args.impl == "vit-train":
        user_train(args, preset, batch)
        return
    if args.impl == "hf":
        import transformers  # noqa: F401  (imported before the baseline, like torch)
    baseline = _rss_kib()
    model, c = build("hf" if args.impl == "hf" else "vitcli", preset)
    model.to(device).train()
    # The peer runs as its users run it on this device: fp32 eager on a CPU, bf16 autocast
    # on a GPU (as before); vitcli at fp32, or at what --precision auto picks.
    if args.impl == "vitcli-auto":
        training = args.task != "eval"
        amp = auto_precision(device, c, batch if training else args.eval_batch,
                             training=training).dtype
    elif args.impl == "vitcli-fp32" or device.type != "cuda":
        amp = None
    else:
        amp = torch.bfloat16
    if args.task == "eval":
        eval_worker(args, model, c, device, amp, baseline)
        return
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, foreach=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c.in_channels, c.image_size, c.image_size, generator=g).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(x) if args.impl != "hf" else model(pixel_values=x).logits
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
                      "precision": "bf16" if amp is not None else "fp32",
                      "params": sum(p.numel() for p in model.parameters())}))


def eval_worker(args: argparse.Namespace, model, c, device, amp, baseline: int) -> None:
    """Inference images/s: a forward pass without gradients, or `vit eval`'s own path."""
    import resource

    import numpy as np
    import torch

    from vitcli.evaluation.evaluate import predict_logits

    model.eval()
    batch = args.eval_batch
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (batch, c.image_size, c.image_size, c.in_channels),
                          dtype=np.uint8)  # (B, S, S, C), as vit eval holds decoded images
    x = torch.randn(batch, c.in_channels, c.image_size, c.image_size).to(device)
    precision = "bf16" if amp is not None else "fp32"
    if args.impl == "vitcli-auto" and amp is not None:  # as vit eval stores them
        from vitcli.devices import bf16_weights

        bf16_weights(model)

    def run() -> None:
        if args.impl == "vitcli-auto":  # vit eval: normalisation on the device, then the model
            predict_logits(model, pixels, mean=(0.5,) * c.in_channels,
                           std=(0.5,) * c.in_channels, batch_size=batch, device=device,
                           precision=precision)
            return
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            model(x) if args.impl != "hf" else model(pixel_values=x).logits

    for _ in range(args.warmup):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    print(json.dumps({"impl": args.impl, "config": args.config, "batch": batch,
                      "images_per_s": batch * args.steps / seconds, "peak_mib": peak_mib,
                      "precision": precision}))


def user_train(args: argparse.Namespace, preset: str, batch: int) -> None:
    """`vit train` as a user runs it (the library call the command makes), on generated images.

    Reports the images/s of the second epoch as the progress bar shows it: the step's
    whole cost (batch gather, augmentation, forward, backward, clipping, optimiser).
    """
    import tempfile

    import numpy as np
    from PIL import Image

    from vitcli.model.presets import get_preset
    from vitcli.training.recipe import TrainOptions
    from vitcli.training.trainer import train

    size = get_preset(preset).config.image_size
    steps = max(args.steps, 2)
    root = Path(tempfile.mkdtemp(prefix="vit-user-train-"))
    rng = np.random.default_rng(0)
    for split, count in (("train", batch * steps), ("val", 8)):
        for i in range(count):
            folder = root / split / f"class{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    seen: dict[str, object] = {}

    def on_event(kind: str, **f) -> None:
        if kind == "start":
            seen["precision"] = f["precision"]
        if kind == "step" and f["epoch"] == 2:
            seen["images_per_s"] = f["images_per_s"]

    options = TrainOptions(data=str(root / "train"), val=str(root / "val"), model=preset,
                           batch_size=batch, epochs=2, threads=args.threads,
                           device=args.device, project=str(root / "runs"),
                           cache_dir=str(root / "cache"))
    train(options, on_event=on_event)
    print(json.dumps({"impl": "vit-train", "config": args.config, "batch": batch,
                      "images_per_s": seen["images_per_s"], "peak_mib": 0.0,
                      "precision": str(seen["precision"]).split()[0]}))


def _env() -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH (kept, not replaced)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def measure(impl: str, config: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--config", config,
           "--device", args.device, "--threads", str(args.threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(args.batch or 0), "--task", args.task,
           "--eval-batch", str(args.eval_batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                         env=_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


TRAIN_IMPLS = {"hf": "HF fp32", "vitcli-fp32": "vitcli fp32", "vitcli-auto": "vitcli auto",
               "vit-train": "vit train"}
EVAL_IMPLS = {"hf": "HF fp32", "vitcli-fp32": "vitcli fp32", "vitcli-auto": "vit eval"}


def compare(task: str, impls: dict[str, str], args: argparse.Namespace) -> list[dict]:
    """Each implementation --repeats times, alternating; the best speed of each counts."""
    print(f"\n{task}: images/s (ratio to HF fp32 eager); precision as each ran")
    print(f"{'model':<10}{'batch':>6}" + "".join(f"{name:>20}" for name in impls.values()))
    results = []
    for config in args.configs.split(","):
        runs: dict[str, list[dict]] = {impl: [] for impl in impls}
        for _ in range(args.repeats):
            for impl in impls:
                runs[impl].append(measure(impl, config, argparse.Namespace(**{
                    **vars(args), "task": task})))
        best = {impl: max(r, key=lambda m: m["images_per_s"]) for impl, r in runs.items()}
        peer = best["hf"]["images_per_s"]
        cells = "".join(f"{b['images_per_s']:>9.1f} {b['images_per_s'] / peer:>4.2f}× "
                        f"{b['precision']:>4}" for b in best.values())
        print(f"{CONFIGS[config][0]:<10}{best['hf']['batch']:>6}{cells}", flush=True)
        results.append({"task": task, "config": CONFIGS[config][0],
                        "ratios": {impl: b["images_per_s"] / peer for impl, b in best.items()},
                        "best": best, "all": runs})
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", default="ti16,nano", help="comma list of: " + ", ".join(CONFIGS))
    p.add_argument("--batch", type=int, default=0, help="0 = per-config default")
    p.add_argument("--eval-batch", type=int, default=64, help="batch of the eval comparison")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tasks", default="train,eval", help="train, eval or both")
    p.add_argument("--user", action="store_true", help="also time `vit train` end to end")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="vitcli-fp32", help=argparse.SUPPRESS)
    p.add_argument("--config", default="nano", help=argparse.SUPPRESS)
    p.add_argument("--task", default="train", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    from vitcli.devices import cpu_bf16_units

    units = cpu_bf16_units() if args.device == "cpu" else None
    print(f"torch {torch.__version__}, device {args.device}"
          f"{f' (bf16 units: {units})' if args.device == 'cpu' else ''}, {args.threads} "
          f"threads, {args.steps} timed steps after {args.warmup} warm-up, best of "
          f"{args.repeats}, load average {os.getloadavg()[0]:.1f}")
    results = []
    tasks = args.tasks.split(",")
    if "train" in tasks:
        impls = dict(TRAIN_IMPLS)
        if not args.user:
            del impls["vit-train"]
        results += compare("train", impls, args)
    if "eval" in tasks:
        results += compare("eval", EVAL_IMPLS, args)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
