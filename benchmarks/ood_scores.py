"""Which out-of-distribution score should `unknown` use? Mahalanobis vs max-softmax, measured.

    python benchmarks/ood_scores.py                # 3 seeds, ~1 minute on 2 cores
    python benchmarks/ood_scores.py --seeds 1 --steps 150

A small ViT is trained on generated shapes (examples/make_shapes.py: circle, ring, square,
triangle), with `cross` held out. Both scores get a threshold passing 97.5 % of the
validation images, as `vit train` sets it, and are then shown new images of four kinds:
- new in-distribution shapes (how many are kept),
- uniform noise, and "unrelated" images (stripes and checkerboards: nothing like a shape),
- the held-out `cross` shape (a near miss: same colours and sizes, another outline).
Printed side by side per seed: the share each score rejects, and AUROC (in-distribution vs
each kind; 1 = perfectly separated, 0.5 = chance). Scores:
- max-softmax: 1 - max_k p_k (Hendrycks & Gimpel 2017), on the calibrated probabilities;
- mahalanobis: distance of the pre-logits features to the nearest class mean under a tied
  covariance (Lee et al. 2018), what vitcli.model.ood stores.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KNOWN = ("circle", "ring", "square", "triangle")
HELD_OUT = "cross"
SIZE = 32


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


def run(seed: int, steps: int, per_class: int) -> dict[str, dict[str, tuple[float, float]]]:
    """{score: {kind: (share rejected or kept, AUROC)}} for one seed."""
    from vitcli.evaluation.calibration import probabilities
    from vitcli.evaluation.ood import fit_trust, outputs_on
    from vitcli.model.ood import threshold_for

    train_x, train_y = shapes(KNOWN, per_class, seed)
    val_x, val_y = shapes(KNOWN, per_class // 4, seed + 1000)
    test_x, _ = shapes(KNOWN, per_class // 2, seed + 2000)
    sets = {"noise": noise(100, seed), "unrelated": unrelated(99, seed),
            HELD_OUT: shapes((HELD_OUT,), 100, seed + 3000)[0]}
    model = train_tiny(train_x, train_y, len(KNOWN), steps, seed)
    kw = dict(mean=(0.5,) * 3, std=(0.5,) * 3)
    trust = fit_trust(model, train_pixels=train_x, train_labels=train_y, val_pixels=val_x,
                      val_labels=val_y, num_classes=len(KNOWN), **kw)

    def scores(pixels: np.ndarray) -> dict[str, np.ndarray]:
        logits, maha = outputs_on(model, trust.ood, pixels, **kw)
        msp = 1 - probabilities(logits, trust.temperature).max(axis=1)
        return {"max-softmax": msp, "mahalanobis": maha}

    val, test = scores(val_x), scores(test_x)
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name in ("max-softmax", "mahalanobis"):
        threshold = threshold_for(val[name])
        row = {"kept (in-dist.)": (float(np.mean(test[name] <= threshold)), float("nan"))}
        for kind, pixels in sets.items():
            s = scores(pixels)[name]
            row[kind] = (float(np.mean(s > threshold)), auroc(test[name], s))
        out[name] = row
    out["_"] = {"top-1": (float(np.mean(outputs_on(model, None, test_x, **kw)[0].argmax(1)
                                        == np.repeat(np.arange(len(KNOWN)), per_class // 2))),
                          trust.temperature)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--per-class", type=int, default=80)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"train {', '.join(KNOWN)} ({args.per_class} each, {args.steps} steps); "
          f"held out: {HELD_OUT}; threshold: 97.5 % of validation images pass")
    kinds = ["kept (in-dist.)", "noise", "unrelated", HELD_OUT]
    for seed in range(args.seeds):
        result = run(seed, args.steps, args.per_class)
        acc, temp = result.pop("_")["top-1"]
        print(f"\nseed {seed}: test top-1 {acc:.1%}, temperature {temp:.3g}")
        print(f"{'score':<13}" + "".join(f"{k:>28}" for k in kinds))
        for name, row in result.items():
            cells = []
            for k in kinds:
                share, area = row[k]
                what = "kept" if k.startswith("kept") else "rejected"
                cells.append(f"{what} {share:6.1%}" + ("" if np.isnan(area)
                                                        else f" AUC {area:.3f}"))
            print(f"{name:<13}" + "".join(f"{c:>28}" for c in cells))


if __name__ == "__main__":
    main()
