"""Small data: `vit train` with its defaults against a tuned CNN, same data, same time.

    python benchmarks/small_data.py --npz fashion4k.npz --minutes 2
    python benchmarks/small_data.py --data ./digits --train-size 4000 --minutes 2

--data is a folder of class sub-folders of small images (optionally with train/ and test/
sub-folders); --npz holds x_train, y_train, x_test, y_test. The ViT side is the product
itself: `vitcli.training.trainer.train` (what `vit train --data DIR --time-budget MINUTES` runs) with every
default, on the sampled images written to a temporary folder; its time budget includes its
validation passes. The CNN peer (`--cnn tuned`, the default) is 5 conv blocks of width
w, w, 2w, 2w, 4w ≤ 128 with BatchNorm, a ±2-px shift augmentation and AdamW with a warm-up +
cosine whose step count is fitted to the budget (a probe measures seconds per step first, its
time taken from the budget), trained from tensors in memory with the same threads; it is the
best of `--cnn-widths` base widths (each trained for the whole budget; picked on the test
images, which flatters the CNN). `--precision auto` (the default) gives each side the
arithmetic that is faster for it on this CPU: `vit train`'s own `auto`, and for the CNN the
faster of fp32 and bf16 autocast on its probe where the CPU has bf16 matrix units (both
probes taken from its budget); `fp32` or `bf16` sets both. `--cnn simple` is the earlier
4-layer CNN with an affine augmentation and the cosine laid over the clock. Both are scored
on the same test images with the model at the end of the budget.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from small_data_lib import (  # noqa: E402
    Augment,
    Recipe,
    SmallCNN,
    Split,
    TunedCNN,
    load_folder,
    load_npz,
    stratified_indices,
    train,
    train_fitted,
)

CNN_RECIPE = Recipe(batch_size=128, lr=3e-3, weight_decay=5e-3, warmup=0.05,
                    label_smoothing=0.1, augment=Augment(scale=(0.9, 1.1), rotate=10.0,
                                                         translate=0.1))
TUNED_CNN_RECIPE = Recipe(batch_size=128, lr=3e-3, weight_decay=5e-3, warmup=0.05,
                          label_smoothing=0.1,
                          augment=Augment(scale=(1.0, 1.0), rotate=0.0, translate=0.0, shift=2))


@dataclass
class VitRun:
    accuracy: float
    images_per_s: float
    epochs: float
    steps: int
    params: int
    precision: str


def write_folder(root: Path, x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> Path:
    """uint8 (N, C, H, W) images → root/<class>/<i>.png, the layout `vit train` reads."""
    from PIL import Image

    for i, (image, label) in enumerate(zip(x, y.tolist())):
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = image.permute(1, 2, 0).squeeze(-1).numpy()  # (H, W) or (H, W, C)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return root


def train_vit(data: Split, minutes: float, seed: int, model: str | None,
              patch_embed: str | None = None, optimizer: str | None = None,
              precision: str = "auto", threads: int = 0) -> VitRun:
    """`vit train --data TRAIN --val TEST --time-budget MINUTES --threads N` with every other
    default (and `--model`, `--patch-embed`, `--optimizer`, `--precision` when given): the
    CNN's thread count, not one `vit train` picks from the cores it finds free."""
    from vitcli.training.recipe import TrainOptions
    from vitcli.training.runs import read_json
    from vitcli.training.trainer import train as vit_train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root / "train", data.x_train, data.y_train, data.classes)  # uint8 already
        write_folder(root / "test", data.x_test, data.y_test, data.classes)
        result = vit_train(TrainOptions(data=str(root / "train"), val=str(root / "test"),
                                        time_budget=minutes, seed=seed, model=model,
                                        patch_embed=patch_embed, optimizer=optimizer,
                                        precision=precision, threads=threads,
                                        project=str(root / "runs"),
                                        cache_dir=str(root / "cache")))
        from vitcli.model.checkpoint import count_file_params, read_header

        header, _ = read_header(result.last_path)
        row = result.last_row or {}
        return VitRun(accuracy=float(row.get("val_top1") or 0.0),
                      images_per_s=float(row.get("images_per_s") or 0.0),
                      epochs=float(result.epochs), steps=result.steps,
                      params=count_file_params(header),
                      precision=read_json(result.run_dir / "args.json")["resolved"]["precision"])


def build_parser() -> argparse.ArgumentParser:
    """The options; each one's help says its default (`--help` is how people learn them)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="folder of class sub-folders (optionally train/ and test/)")
    src.add_argument("--npz", help=".npz with x_train, y_train, x_test, y_test")
    ap.add_argument("--train-size", type=int, default=4000, help="training images: a "
                    "stratified, seeded sample (default: %(default)s; 0 = all)")
    ap.add_argument("--test-size", type=int, default=0, help="cap the test set, stratified "
                    "(default: %(default)s = all)")
    ap.add_argument("--minutes", type=float, default=2.0, help="training budget per model, "
                    "in minutes (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, the same for "
                    "both models (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the sample, the test cap, "
                    "the CNN and `vit train` (default: %(default)s)")
    ap.add_argument("--model", default=None, help="vitcli preset for the ViT side "
                    "(default: what `vit train` picks for the data)")
    ap.add_argument("--patch-embed", default=None, help="the ViT's `vit train --patch-embed` "
                    "(default: the preset's)")
    ap.add_argument("--optimizer", default=None, help="the ViT's `vit train --optimizer` "
                    "(default: the recipe's)")
    ap.add_argument("--only", choices=["cnn", "vit"], help="train just one of the two "
                    "(default: both)")
    ap.add_argument("--cnn", choices=["tuned", "simple"], default="tuned", help="the CNN "
                    "peer (default: %(default)s)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="both sides' arithmetic; auto: `vit train`'s own, and the CNN's "
                    "faster of fp32 and bf16 on its probe (default: %(default)s)")
    ap.add_argument("--cnn-widths", default="16,24,32", help="tuned CNN base widths; the best "
                    "counts (each trains for the whole budget; default: %(default)s)")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    data = load_npz(args.npz) if args.npz else load_folder(args.data, seed=args.seed)
    if args.train_size and args.train_size < len(data.y_train):
        keep = stratified_indices(data.y_train, args.train_size, args.seed)
        data.x_train, data.y_train = data.x_train[keep], data.y_train[keep]
    if args.test_size and args.test_size < len(data.y_test):
        keep = stratified_indices(data.y_test, args.test_size, args.seed)
        data.x_test, data.y_test = data.x_test[keep], data.y_test[keep]
    batch = (CNN_RECIPE if args.cnn == "simple" else TUNED_CNN_RECIPE).batch_size
    if args.only != "vit" and len(data.y_train) < batch:
        ap.error(f"{len(data.y_train)} training images are fewer than the CNN's batch of "
                 f"{batch}: give more (--train-size, or more images)")
    print(f"data: {len(data.y_train)} train, {len(data.y_test)} test, "
          f"{tuple(data.x_train.shape[1:])}, {len(data.classes)} classes; "
          f"{args.minutes:g} min per model, {args.threads} threads", flush=True)

    rows = []
    seconds = args.minutes * 60
    if args.only != "vit" and args.cnn == "simple":
        torch.manual_seed(args.seed)
        cnn = SmallCNN(data.x_train.shape[1], len(data.classes))
        rows.append(("4-layer CNN", cnn, train(cnn, data, CNN_RECIPE, seconds=seconds, seed=args.seed)))
    elif args.only != "vit":
        from vitcli.devices import cpu_bf16_units

        precisions = ((args.precision,) if args.precision != "auto"
                      else ("fp32", "bf16") if cpu_bf16_units() else ("fp32",))
        tried = []
        for width in (int(w) for w in args.cnn_widths.split(",")):
            torch.manual_seed(args.seed)
            cnn = TunedCNN(data.x_train.shape[1], len(data.classes), width=width)
            result = train_fitted(cnn, data, TUNED_CNN_RECIPE, seconds=seconds, seed=args.seed,
                                  precisions=precisions)
            print(f"tuned CNN width {width}: {result.accuracy:.2%} ({result.steps} steps, "
                  f"{result.epochs:.1f} epochs, {result.precision})", flush=True)
            tried.append((result.accuracy, width, cnn, result))
        _, width, cnn, result = max(tried, key=lambda t: t[0])
        rows.append((f"tuned CNN w{width}", cnn, result))
    if args.only != "cnn":
        vit = train_vit(data, args.minutes, args.seed, args.model, args.patch_embed,
                        args.optimizer, args.precision, threads=args.threads)
        rows.append(("ViT (vit train)", None, vit))

    print(f"\n{'model':<16}{'params':>10}{'test top-1':>12}{'images/s':>10}{'epochs':>8}"
          f"{'steps':>7}{'precision':>10}")
    for name, model, r in rows:
        params = r.params if model is None else sum(p.numel() for p in model.parameters())
        print(f"{name:<16}{params:>10,}{r.accuracy:>12.2%}{r.images_per_s:>10.0f}"
              f"{r.epochs:>8.1f}{r.steps:>7}{r.precision:>10}")
    if len(rows) == 2:
        diff = rows[1][2].accuracy - rows[0][2].accuracy
        print(f"\nViT − CNN: {diff * 100:+.2f} points")


if __name__ == "__main__":
    main()
