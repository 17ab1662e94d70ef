"""Is training input-bound? Data-pipeline images/s beside the model's training images/s.

    python benchmarks/data_throughput.py [--images 3000] [--batch 128] [--threads 2]

Generates its own images (28-32 px PNGs of shapes, 10 classes, in a temporary folder), then
measures in one run, with the same threads:

  decode + cache   load_data on a cold cache: list files, decode, resize, write the cache
  cached reload    load_data again: the cache is read instead of decoding
  augment <level>  BatchAugment on one batch of cached uint8 pixels (what each step pays),
                   with the policy `vit train` uses at 32 px (light = small shifts there)
  train step       the model `vit train` builds by default for 32-px images: forward,
                   backward, AdamW step on one batch

Decoding happens once per run; augmentation runs every step on the same cores as training,
so the figure that decides input-boundness is augmentation's share of a step.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitcli.data.augment import AUGMENT_LEVELS, BatchAugment, make_policy
from vitcli.data.image_set import load_data
from vitcli.model.preprocess import Preprocessing
from vitcli.model.vit import VisionTransformer
from vitcli.training.optim import build_optimizer
from vitcli.training.recipe import TrainOptions, model_config

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar", "dot", "frame", "wedge", "x")


def make_images(root: Path, count: int, seed: int = 0) -> None:
    """`count` small PNGs (28-32 px, grey or colour) in 10 class folders."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        kind = SHAPES[i % len(SHAPES)]
        size = int(rng.integers(28, 33))
        im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 90, 3)))
        draw = ImageDraw.Draw(im)
        c, r = size / 2 + rng.uniform(-3, 3), size * rng.uniform(0.2, 0.4)
        fill = tuple(int(v) for v in rng.integers(150, 256, 3))
        box = (c - r, c - r, c + r, c + r)
        if kind in ("circle", "dot", "ring"):
            draw.ellipse(box, fill=None if kind == "ring" else fill, outline=fill, width=3)
        elif kind in ("square", "frame"):
            draw.rectangle(box, fill=None if kind == "frame" else fill, outline=fill, width=3)
        else:
            draw.line(box, fill=fill, width=4)
            if kind in ("cross", "x"):
                draw.line((c - r, c + r, c + r, c - r), fill=fill, width=4)
        if i % 3 == 0:
            im = im.convert("L")
        (root / kind).mkdir(parents=True, exist_ok=True)
        im.save(root / kind / f"{i:05d}.png")


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of `repeat` calls (the machine is shared; the best is the least noisy)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # The model `vit train` builds for 32-px images, and the size it trains them at (35 px).
    config = model_config(TrainOptions(data="-"), typical_size=32, num_classes=10,
                          in_channels=3)
    size = config.image_size
    pre = Preprocessing(image_size=size, mean=(0.5,) * 3, std=(0.5,) * 3)
    rows: list[tuple[str, float, str]] = []

    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "images", Path(tmp) / "cache"
        make_images(data, args.images)
        n = args.images
        cold = timed(lambda: load_data(data, preprocessing=pre, val_split=0, cache_dir=cache))
        rows.append(("decode + cache (once per run)", n / cold, f"{cold:.2f} s for {n:,}"))
        warm = timed(lambda: load_data(data, preprocessing=pre, val_split=0, cache_dir=cache), 3)
        rows.append(("cached reload (once per run)", n / warm, f"{warm:.2f} s for {n:,}"))
        pixels = torch.from_numpy(load_data(data, preprocessing=pre, val_split=0,
                                            cache_dir=cache).train.pixels[:args.batch].copy())

    labels = torch.arange(len(pixels)) % 10
    step_aug: dict[str, float] = {}
    for level in AUGMENT_LEVELS:
        aug = BatchAugment(make_policy(level, image_size=size), image_size=size, mean=pre.mean,
                           std=pre.std, num_classes=10, label_smoothing=0.1)
        aug(pixels, labels)  # warm-up
        step_aug[level] = timed(lambda aug=aug: aug(pixels, labels), args.steps)
        rows.append((f"augment {level} (every step)", len(pixels) / step_aug[level],
                     f"{step_aug[level] * 1000:.1f} ms / batch"))

    model = VisionTransformer(config).train()
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    x, targets = BatchAugment(make_policy("none"), image_size=size, mean=pre.mean, std=pre.std,
                              num_classes=10)(pixels, labels)

    def train_step() -> None:
        loss = -(targets * torch.log_softmax(model(x), -1)).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_step()  # warm-up
    step = timed(train_step, args.steps)
    rows.append((f"train step, default ViT {config.depth}×{config.embed_dim} {size} px",
                 len(pixels) / step,
                 f"{step * 1000:.1f} ms / batch"))

    print(f"\ndata pipeline vs training, {args.images:,} images of 28-32 px, batch "
          f"{len(pixels)}, {args.threads} threads, torch {torch.__version__}\n")
    print(f"{'stage':<34}{'images/s':>12}   detail")
    for name, rate, detail in rows:
        print(f"{name:<34}{rate:>12,.0f}   {detail}")
    print("\naugmentation's share of a training step (same cores, one after the other):")
    for level, seconds in step_aug.items():
        print(f"  {level:<7} {seconds / (seconds + step):6.1%}   "
              f"augment/train speed ratio {step / seconds:5.1f}x")


if __name__ == "__main__":
    main()
