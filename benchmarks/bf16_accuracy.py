"""Does bf16 training reach fp32's accuracy? `vit train --precision fp32` against `bf16`.

    python benchmarks/bf16_accuracy.py --npz fashion-mnist.npz --epochs 10 --seeds 0,1
    python benchmarks/bf16_accuracy.py --finetune-only          # just the 224-px fine-tune

Two tasks, each trained twice per seed with the same seed, data and number of steps (epochs,
not a time budget, so that both precisions see the same updates), once in fp32 and once
under bf16 autocast (fp32 master weights and optimiser state, as `--precision bf16` runs):

1. Small data: the small-data benchmark's data (--npz or --data, a stratified sample of
   --train-size images) with every other `vit train` default, scored on the test images.
2. A 224-px fine-tune on generated shapes: a width-192 ViT (ViT-Ti/16's width and patch,
   --depth blocks) is first trained in fp32 on three shape classes, then fine-tuned with
   `--init` on all five (a new head) in each precision, scored on held-out shapes.

Each model is scored by `vit eval` in fp32, so the figures differ only by how they trained.
Prints the accuracies side by side and the differences; several seeds show the noise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

PRECISIONS = ("fp32", "bf16")


def fit_and_score(train_dir: Path, test_dir: Path, work: Path, precision: str, seed: int,
                  **options) -> float:
    """`vit train` at `precision`, then `vit eval --precision fp32` of its last model."""
    from vitcli.evaluation.evaluate import evaluate
    from vitcli.training.recipe import TrainOptions
    from vitcli.training.trainer import train

    result = train(TrainOptions(data=str(train_dir), val=str(test_dir), seed=seed,
                                precision=precision, project=str(work / "runs"),
                                cache_dir=str(work / "cache"), **options))
    return evaluate(result.last_path, test_dir, device="cpu", precision="fp32",
                    cache_dir=work / "cache").metrics.top1


def small_data(args: argparse.Namespace, work: Path) -> list[tuple[int, dict[str, float]]]:
    from small_data import write_folder
    from small_data_lib import load_folder, load_npz, stratified_indices

    data = load_npz(args.npz) if args.npz else load_folder(args.data, seed=0)
    keep = stratified_indices(data.y_train, args.train_size, 0)
    test = stratified_indices(data.y_test, args.test_size, 0) if args.test_size else None
    x_test, y_test = (data.x_test, data.y_test) if test is None else (data.x_test[test],
                                                                      data.y_test[test])
    write_folder(work / "small" / "train", data.x_train[keep], data.y_train[keep], data.classes)
    write_folder(work / "small" / "test", x_test, y_test, data.classes)
    print(f"small data: {len(keep)} train, {len(y_test)} test images, {args.epochs} epochs",
          flush=True)
    rows = []
    for seed in args.seeds:
        scores = {p: fit_and_score(work / "small" / "train", work / "small" / "test", work, p,
                                   seed, epochs=args.epochs) for p in PRECISIONS}
        rows.append((seed, scores))
        print(f"  seed {seed}: fp32 {scores['fp32']:.2%}  bf16 {scores['bf16']:.2%}  "
              f"bf16 - fp32 {100 * (scores['bf16'] - scores['fp32']):+.2f} points", flush=True)
    return rows


def shapes(root: Path, classes: tuple[str, ...], per_class: int, seed: int, size: int) -> Path:
    """Generated shapes at `size` px (examples/make_shapes.py's drawing), a folder per class."""
    from make_shapes import draw_shape

    rng = np.random.default_rng(seed)
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(kind, rng, size=size).save(root / kind / f"{i:04d}.png")
    return root


def finetune(args: argparse.Namespace, work: Path) -> list[tuple[int, dict[str, float]]]:
    from make_shapes import CLASSES

    from vitcli.training.recipe import TrainOptions
    from vitcli.training.trainer import train

    base = tuple(c for c in CLASSES if c in ("circle", "square", "triangle"))
    src = train(TrainOptions(
        data=str(shapes(work / "ft" / "pre", base, args.ft_images, 10, 224)), model="vit-ti16",
        depth=args.depth, epochs=args.ft_epochs, precision="fp32", val_split=0.1,
        project=str(work / "runs"), cache_dir=str(work / "cache")))
    train_dir = shapes(work / "ft" / "train", CLASSES, args.ft_images, 11, 224)
    test_dir = shapes(work / "ft" / "test", CLASSES, args.ft_images // 4, 12, 224)
    print(f"224-px fine-tune: width 192, depth {args.depth}, from a 3-class fp32 model "
          f"(val top-1 {src.best_top1:.2%}) to 5 classes, {args.ft_images} train / "
          f"{args.ft_images // 4} test images per class, {args.ft_epochs} epochs", flush=True)
    rows = []
    for seed in args.seeds:
        scores = {p: fit_and_score(train_dir, test_dir, work, p, seed, init=str(src.last_path),
                                   epochs=args.ft_epochs) for p in PRECISIONS}
        rows.append((seed, scores))
        print(f"  seed {seed}: fp32 {scores['fp32']:.2%}  bf16 {scores['bf16']:.2%}  "
              f"bf16 - fp32 {100 * (scores['bf16'] - scores['fp32']):+.2f} points", flush=True)
    return rows


def summary(name: str, rows: list[tuple[int, dict[str, float]]]) -> None:
    from vitcli.errors import plural

    if not rows:
        return
    diffs = [100 * (s["bf16"] - s["fp32"]) for _, s in rows]
    spread = [100 * s[p] for _, s in rows for p in PRECISIONS]
    print(f"{name}: bf16 - fp32 = {np.mean(diffs):+.2f} points on average over "
          f"{plural(len(rows), 'seed')} (each: {', '.join(f'{d:+.2f}' for d in diffs)}); accuracies "
          f"range {min(spread):.2f}-{max(spread):.2f} %")


def main(argv: list[str] | None = None) -> None:
    import os

    import torch

    from vitcli.devices import cpu_bf16_units

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="small-data folder of class sub-folders")
    ap.add_argument("--npz", help="small-data .npz with x_train, y_train, x_test, y_test")
    ap.add_argument("--train-size", type=int, default=4000)
    ap.add_argument("--test-size", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10, help="small-data epochs per run")
    ap.add_argument("--seeds", default="0,1", help="comma list")
    ap.add_argument("--depth", type=int, default=4, help="blocks of the 224-px model")
    ap.add_argument("--ft-images", type=int, default=60, help="fine-tune images per class")
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--finetune-only", action="store_true")
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if not args.finetune_only and not (args.npz or args.data):
        ap.error("give --npz or --data for the small-data task, or --finetune-only")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU bf16 units: "
          f"{cpu_bf16_units()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vit-bf16-acc-") as tmp:
        work = Path(tmp)
        small = [] if args.finetune_only else small_data(args, work)
        tuned = finetune(args, work)
    print()
    summary("small data", small)
    summary("224-px fine-tune", tuned)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
