"""Linear probe wall time: features cached once against a forward pass every epoch, one run.

    python benchmarks/linear_probe.py                 # 2,000 images, 224 px, ViT-S/16, 30 epochs
    python benchmarks/linear_probe.py --uncached-epochs 3   # the slow side measured on 3 epochs
    python benchmarks/linear_probe.py --quick         # toy sizes (the smoke test)

A folder of generated 224-px images (10 classes of coloured shapes) is written to a temporary
folder and decoded once into vitcli's image cache, so neither side pays for decoding. The
backbone is a ViT-S/16-sized model with random weights (the cost of a forward pass does not
depend on the weights). Both sides run `vit train --init M --freeze backbone --augment none`
through the library with the same seed, data, batch and epochs; one with the feature cache,
one with `cache_features=False` (the backbone runs every step and for every validation). When
the uncached side runs fewer epochs (`--uncached-epochs`), its per-epoch time is measured and
the line for the full run says "projected".
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_folder(root: Path, *, images: int, size: int, classes: int, seed: int = 0) -> Path:
    """root/<class>/<i>.png: a coloured shape per image, its kind and colour set by the class."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for i in range(images):
        label = i % classes
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
        image = Image.fromarray(noise)
        draw = ImageDraw.Draw(image)
        r = size * rng.uniform(0.15, 0.35)
        cx, cy = size / 2 + rng.uniform(-size / 6, size / 6, 2)
        hue = (label * 53) % 256
        colour = (hue, 255 - hue, (hue * 7) % 256)
        box = (cx - r, cy - r, cx + r, cy + r)
        [draw.ellipse, draw.rectangle, draw.chord][label % 3](
            box, fill=colour, **({"start": 0, "end": 180} if label % 3 == 2 else {}))
        image.save(folder / f"{i:05d}.png")
    return root


def run(args: argparse.Namespace) -> None:
    import torch

    from vitcli.data.image_set import load_data
    from vitcli.errors import plural
    from vitcli.model.checkpoint import save_model
    from vitcli.model.preprocess import Preprocessing
    from vitcli.model.vit import create_model
    from vitcli.training.recipe import TrainOptions
    from vitcli.training.trainer import train

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        clock = time.perf_counter()
        data = make_folder(tmp_path / "photos", images=args.images, size=args.size,
                           classes=args.classes)
        made = time.perf_counter() - clock
        torch.manual_seed(0)
        arch = dict(image_size=args.size, patch_size=args.patch)
        if args.quick:
            arch.update(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
        model = create_model(args.model, num_classes=1000, **arch).eval()
        pre = Preprocessing(image_size=args.size)
        source = save_model(tmp_path / "backbone.safetensors", model, preprocessing=pre)
        cache = tmp_path / "cache"
        clock = time.perf_counter()
        load_data(str(data), preprocessing=pre, val_split=args.val_split, seed=0,
                  cache_dir=cache)  # decoded once here; both runs read the cache
        decoded = time.perf_counter() - clock
        c = model.config
        _warm_up(tmp_path)
        print(f"{_cpu()}, {plural(args.threads, 'thread')}, "
              f"torch {torch.__version__}; load {_load()}")
        print(f"data: {args.images:,} generated {args.size}-px images, {args.classes} classes, "
              f"{args.val_split:g} held out for validation (written in {made:.1f} s, decoded "
              f"once in {decoded:.1f} s, not counted below)")
        print(f"backbone: {c.depth}×{c.embed_dim} ({c.num_heads} heads), patch {c.patch_size}, "
              f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, random "
              f"weights; head trained {args.epochs} epochs, batch {args.batch}")

        def probe(name: str, epochs: int, cached: bool) -> tuple[float, object]:
            options = TrainOptions(
                data=str(data), val_split=args.val_split, init=str(source), freeze="backbone",
                augment="none", epochs=epochs, batch_size=args.batch, warmup=0, device="cpu",
                threads=args.threads, seed=0, project=str(tmp_path / "runs"), name=name,
                cache_dir=str(cache), cache_features=cached)
            start = time.perf_counter()
            result = train(options)
            return time.perf_counter() - start, result

        cached_s, cached = probe("cached", args.epochs, True)
        uncached_epochs = args.uncached_epochs or args.epochs
        uncached_s, uncached = probe("uncached", uncached_epochs, False)
        per_epoch = uncached_s / uncached_epochs
        full = per_epoch * args.epochs
        measured = "measured" if uncached_epochs == args.epochs else (
            f"projected from {uncached_epochs} measured epochs ({uncached_s:.1f} s)")
        print()
        print(f"{'linear probe, ' + str(args.epochs) + ' epochs':<44}{'wall time':>12}")
        print(f"{'cached features (one forward pass + head)':<44}{cached_s:>10.1f} s")
        print(f"{'forward pass every epoch':<44}{full:>10.1f} s   {measured}")
        print(f"{'speed-up':<44}{full / cached_s:>10.1f} ×")
        print(f"one forward pass over the images: {cached.probe.split('(')[1].split(')')[0]}; "
              f"uncached: {per_epoch:.1f} s per epoch (train + validation)")
        top1 = (cached.best_top1, uncached.best_top1)
        if None not in top1:
            print(f"best val top-1: cached {top1[0]:.2%} ({args.epochs} epochs), uncached "
                  f"{top1[1]:.2%} ({uncached_epochs} epochs)")


def _warm_up(tmp_path: Path) -> None:
    """One untimed toy probe, so the first side timed does not pay for the imports and
    first-call set-up (about 4 s here) that every later run skips."""
    from vitcli.model.checkpoint import save_model
    from vitcli.model.vit import create_model
    from vitcli.training.recipe import TrainOptions
    from vitcli.training.trainer import train

    data = make_folder(tmp_path / "warm", images=12, size=32, classes=2)
    model = create_model(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                         num_classes=2)
    source = save_model(tmp_path / "warm.safetensors", model)
    train(TrainOptions(data=str(data), val_split=0.25, init=str(source), freeze="backbone",
                       epochs=1, batch_size=4, device="cpu", project=str(tmp_path / "warm-runs"),
                       cache_dir=str(tmp_path / "warm-cache")))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--model", default="vit-s16", help="backbone preset (ViT-S/16)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--uncached-epochs", type=int, default=0,
                        help="epochs the uncached side runs (0 = --epochs); fewer: projected")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--val-split", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="toy sizes: 60 images of 32 px, a 2-block backbone, 3 epochs")
    args = parser.parse_args()
    if args.quick:
        args.images, args.size, args.patch, args.classes = 60, 32, 8, 3
        args.epochs, args.batch, args.threads = 3, 8, 1
    run(args)


if __name__ == "__main__":
    main()
