"""Which out-of-distribution score should `unknown` use? Measured side by side, per seed.

    python benchmarks/ood_scores.py                      # tiny ViT, 3 seeds, ~1 minute
    python benchmarks/ood_scores.py --trainer vit        # vit train's recipe, ~40 s a seed
    python benchmarks/ood_scores.py --seeds 1 --steps 150

A ViT is trained on generated shapes (examples/make_shapes.py: circle, ring, square,
triangle), with `cross` held out: `--trainer tiny` is a 2-block ViT (width 48) trained
full-batch, `--trainer vit` is `vit train`'s own recipe (the README quick start's 4-block,
80-wide model at 35 px; 100 training and 20 validation images a class, --epochs 40). Every
score gets its threshold as `vit train` sets it (vitcli.model.ood.threshold_for: a new
in-distribution image passes with probability >= 97.5 %) and is then shown images of six kinds:
- new in-distribution shapes ("false unknown": the share wrongly called unknown),
- uniform noise; "unrelated" images (stripes and checkerboards: nothing like a shape);
- pink noise (a 1/f spectrum, the statistics of natural images, no object);
- photo crops: random square crops (25-100 % of the shorter side, flipped or not) of the
  two photos in examples/photos (a cat, a person), the images a user might try;
- the held-out `cross` shape (a near miss: same colours and sizes, another outline).
Printed per seed and as the mean over seeds: the share each score calls unknown and the
AUROC (in-distribution vs each kind; 1 = perfectly separated, 0.5 = chance). Scores:
- max-softmax: 1 - max_k p_k (Hendrycks & Gimpel 2017), on the calibrated probabilities;
- energy: -logsumexp of the logits (Liu et al. 2020, "Energy-based OOD detection");
- last block: Mahalanobis distance of the last block's pooled tokens, before the final
  norm, to the nearest class mean under a tied covariance (Lee et al. 2018): the rule
  model files carried before (method "mahalanobis");
- relative: the last block's squared distance minus that to one class-agnostic Gaussian
  (Ren et al. 2021, "A Simple Fix to Mahalanobis Distance for Improving Near-OOD
  Detection");
- every block: the same distance over the pooled tokens of every block (up to 4) side by
  side, under one tied covariance over all of them (Lee et al.'s feature ensemble as one
  Gaussian): what vitcli.model.ood stores now (method "mahalanobis_blocks").
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KNOWN = ("circle", "ring", "square", "triangle")
HELD_OUT = "cross"
SIZE = 32
PHOTOS = ROOT / "examples" / "photos"
KINDS = ("noise", "unrelated", "pink noise", "photo crops", HELD_OUT)
SCORES = ("max-softmax", "energy", "last block", "relative", "every block")


def _shapes_module():
    spec = importlib.util.spec_from_file_location("make_shapes", ROOT / "examples" / "make_shapes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shapes(kinds: tuple[str, ...], per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32, 32, 3) generated shapes and their class indices into `kinds`."""
    draw = _shapes_module().draw_shape
    rng = np.random.default_rng(seed)
    pixels = [np.asarray(draw(k, rng)) for k in kinds for _ in range(per_class)]
    labels = [i for i in range(len(kinds)) for _ in range(per_class)]
    return np.stack(pixels), np.array(labels)


def noise(n: int, seed: int) -> np.ndarray:
    """Uniform random pixels (N, 32, 32, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def unrelated(n: int, seed: int) -> np.ndarray:
    """Stripes and checkerboards in random colours and periods: no shape at all (N, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    out = []
    for i in range(n):
        period = int(rng.integers(3, 9))
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if i % 3 == 0:
            mask = (xx // period) % 2
        elif i % 3 == 1:
            mask = (yy // period) % 2
        else:
            mask = ((xx // period) + (yy // period)) % 2
        out.append(np.where(mask[..., None] == 1, a, b).astype(np.uint8))
    return np.stack(out)


def pink_noise(n: int, seed: int) -> np.ndarray:
    """Noise with a 1/f amplitude spectrum per channel, stretched to 0-255 (N, 32, 32, 3):
    the second-order statistics of natural images, without any object."""
    rng = np.random.default_rng(seed)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(SIZE), np.fft.fftfreq(SIZE)))  # (S, S)
    f[0, 0] = 1.0
    white = rng.standard_normal((n, 3, SIZE, SIZE))
    x = np.real(np.fft.ifft2(np.fft.fft2(white) / f))  # (N, 3, S, S)
    lo, hi = x.min(axis=(1, 2, 3), keepdims=True), x.max(axis=(1, 2, 3), keepdims=True)
    return ((x - lo) / (hi - lo + 1e-9) * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def photo_crops(n: int, seed: int) -> np.ndarray:
    """Random square crops of examples/photos (25-100 % of the shorter side, half of them
    mirrored), resized to 32 px (N, 32, 32, 3): photographs, nothing like a drawn shape."""
    from PIL import Image

    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg"))]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(min(photo.size) * rng.uniform(0.25, 1.0))
        x0 = int(rng.integers(0, photo.size[0] - side + 1))
        y0 = int(rng.integers(0, photo.size[1] - side + 1))
        crop = photo.crop((x0, y0, x0 + side, y0 + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(np.asarray(crop.resize((SIZE, SIZE), Image.Resampling.BICUBIC)))
    return np.stack(out)


def train_tiny(pixels: np.ndarray, labels: np.ndarray, num_classes: int, steps: int,
               seed: int = 0):
    """A 2-block ViT (width 48) trained full-batch with AdamW and flips/shifts; eval mode."""
    import torch

    from vitcli.model.vit import create_model

    torch.manual_seed(seed)
    model = create_model(num_classes=num_classes, image_size=SIZE, patch_size=8, embed_dim=48,
                         depth=2, num_heads=3, mlp_ratio=2.0)
    x = torch.from_numpy(pixels).float().div(255).sub(0.5).div(0.5).permute(0, 3, 1, 2)
    y = torch.from_numpy(labels)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        shift = torch.randint(-3, 4, (2,), generator=gen).tolist()
        xb = torch.roll(x, shifts=shift, dims=(2, 3))  # cheap augmentation: shift
        loss = torch.nn.functional.cross_entropy(model(xb), y, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an outside image > score of an inside one), ties counted half."""
    both = np.concatenate([inside, outside])
    ranks = both.argsort().argsort().astype(np.float64) + 1
    r_out = ranks[len(inside):].sum()
    return float((r_out - len(outside) * (len(outside) + 1) / 2) / (len(inside) * len(outside)))


def _model_and_data(trainer: str, seed: int, steps: int, per_class: int, threads: int,
                    work: Path):
    """(model, mean, std, temperature, train (x, y), val (x, y), stored OodStats or None,
    resize) for one seed; `resize` brings 32-px images to the model's input."""
    if trainer == "tiny":
        train_x, train_y = shapes(KNOWN, per_class, seed)
        val_x, val_y = shapes(KNOWN, per_class // 4, seed + 1000)
        model = train_tiny(train_x, train_y, len(KNOWN), steps, seed)
        return (model, (0.5,) * 3, (0.5,) * 3, None, (train_x, train_y), (val_x, val_y), None,
                lambda x: x)
    import shutil

    from PIL import Image

    from vitcli.data.image_set import load_data
    from vitcli.model.checkpoint import load_model
    from vitcli.training.recipe import TrainOptions
    from vitcli.training.trainer import train

    data = work / f"shapes{seed}"
    _shapes_module().make_shapes(data, train=100, val=20, seed=seed)
    for split in ("train", "val"):
        shutil.rmtree(data / split / HELD_OUT)
    result = train(TrainOptions(data=str(data), epochs=40, seed=seed, threads=threads,
                                project=str(work / "runs"), name=f"seed{seed}"))
    mf = load_model(result.best_path)
    pre = mf.preprocessing
    bundle = load_data(data, preprocessing=pre)  # the pixels vit train had
    assert tuple(bundle.class_names) == KNOWN, bundle.class_names

    def resize(x: np.ndarray) -> np.ndarray:
        return np.stack([pre.resize_crop(Image.fromarray(a)) for a in x])

    return (mf.model, pre.mean, pre.std, mf.temperature,
            (bundle.train.pixels, bundle.train.labels), (bundle.val.pixels, bundle.val.labels),
            mf.ood, resize)


def run(seed: int, steps: int, per_class: int, trainer: str = "tiny", threads: int = 2,
        work: Path | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    """{score: {kind: (share called unknown, AUROC)}} for one seed, plus "_" facts."""
    from vitcli.evaluation.calibration import fit_temperature, probabilities
    from vitcli.evaluation.ood import features_and_logits
    from vitcli.model.ood import (
        OodStats,
        fit_gaussians,
        mahalanobis_numpy,
        score_blocks,
        threshold_for,
    )

    work = work or Path(tempfile.mkdtemp(prefix="ood_scores_"))
    model, mean, std, temperature, (train_x, train_y), (val_x, val_y), stored, resize = \
        _model_and_data(trainer, seed, steps, per_class, threads, work)
    test_x, test_y = shapes(KNOWN, 100, seed + 2000)
    sets = {"noise": noise(200, seed), "unrelated": unrelated(198, seed),
            "pink noise": pink_noise(200, seed + 4000), "photo crops": photo_crops(200, seed),
            HELD_OUT: shapes((HELD_OUT,), 200, seed + 3000)[0]}
    images = {"train": train_x, "val": val_x, "test": resize(test_x),
              **{k: resize(v) for k, v in sets.items()}}
    kw = dict(mean=mean, std=std)
    blocks = score_blocks(len(model.blocks))
    last = {k: features_and_logits(model, x, **kw) for k, x in images.items()}  # (f, logits)
    every = {k: features_and_logits(model, x, blocks=blocks, **kw)[0]
             for k, x in images.items()}
    if temperature is None:
        temperature = fit_temperature(last["val"][1], val_y)

    k = len(KNOWN)
    means, chol = fit_gaussians(last["train"][0], train_y, k)
    before = OodStats(class_means=means, precision_cholesky=chol, threshold=0.0)
    means0, chol0 = fit_gaussians(last["train"][0], np.zeros_like(train_y), 1)
    background = OodStats(class_means=means0, precision_cholesky=chol0, threshold=0.0)
    if stored is None:  # the tiny model: fitted here as fit_trust does
        means, chol = fit_gaussians(every["train"], train_y, k, num_blocks=len(blocks))
        stored = OodStats(class_means=means, precision_cholesky=chol, threshold=0.0,
                          blocks=blocks)

    def relative(f: np.ndarray) -> np.ndarray:
        z = f.astype(np.float64) @ before.precision_cholesky  # (N, D), whitened
        m = before.class_means.astype(np.float64) @ before.precision_cholesky  # (K, D)
        d2 = ((z[:, None] - m[None]) ** 2).sum(-1)  # (N, K)
        return d2.min(1) - mahalanobis_numpy(f, background) ** 2

    scores = {
        "max-softmax": lambda s: 1 - probabilities(last[s][1], temperature).max(axis=1),
        "energy": lambda s: -_logsumexp(last[s][1]),
        "last block": lambda s: mahalanobis_numpy(last[s][0], before),
        "relative": lambda s: relative(last[s][0]),
        "every block": lambda s: mahalanobis_numpy(every[s], stored),
    }
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, score in scores.items():
        threshold = threshold_for(score("val"))
        test = score("test")
        row = {"false unknown": (float(np.mean(test > threshold)), float("nan"))}
        for kind in sets:
            s = score(kind)
            row[kind] = (float(np.mean(s > threshold)), auroc(test, s))
        out[name] = row
    top1 = float(np.mean(last["test"][1].argmax(1) == test_y))
    out["_"] = {"facts": (top1, temperature, len(val_y), len(blocks))}
    return out


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    top = x.max(axis=1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", choices=("tiny", "vit"), default="tiny")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="tiny trainer's steps")
    parser.add_argument("--per-class", type=int, default=80, help="tiny trainer's images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    what = ("vit train's recipe, 100 a class, 40 epochs" if args.trainer == "vit" else
            f"tiny ViT, {args.per_class} a class, {args.steps} steps")
    print(f"train {', '.join(KNOWN)} ({what}); held out: {HELD_OUT}; threshold as vit train "
          "sets it (vitcli.model.ood.threshold_for, 97.5 %); 400 new shapes, 200 of each other "
          "kind (198 unrelated)")
    cols = ["false unknown", *KINDS]
    runs = []
    with tempfile.TemporaryDirectory(prefix="ood_scores_") as work:
        for seed in range(args.seeds):
            result = run(seed, args.steps, args.per_class, args.trainer, args.threads,
                         Path(work))
            top1, temp, n_val, n_blocks = result.pop("_")["facts"]
            # threshold_for takes rank k = ceil(q (n + 1)) of n: a new in-distribution image
            # passes with probability k / (n + 1) (exchangeable scores)
            rank = min(int(np.ceil(0.975 * (n_val + 1) - 1e-9)), n_val)
            print(f"\nseed {seed}: test top-1 {top1:.1%}, temperature {temp:.3g}, "
                  f"{n_val} validation images (expected false unknown "
                  f"{1 - rank / (n_val + 1):.1%}), every block = {n_blocks} blocks")
            _table(cols, {name: result[name] for name in SCORES})
            runs.append(result)
    if len(runs) > 1:
        print(f"\nmean of {len(runs)} seeds")
        _table(cols, {name: {k: tuple(np.mean([r[name][k] for r in runs], axis=0))
                             for k in cols} for name in SCORES})


def _table(cols: list[str], rows: dict[str, dict[str, tuple[float, float]]]) -> None:
    print(f"{'score':<12}" + "".join(f"{c:>18}" for c in cols))
    for name, row in rows.items():
        cells = []
        for c in cols:
            share, area = row[c]
            cells.append(f"{share:5.1%}" + ("" if np.isnan(area) else f" AUC {area:.3f}"))
        print(f"{name:<12}" + "".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
