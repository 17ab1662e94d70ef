"""The pieces behind benchmarks/small_data.py: data in memory, batched augmentation, a small
CNN peer, and one time-budgeted training loop shared by the CNN and the ViT.

Everything runs from uint8 tensors held in memory, so on 2 CPU cores the figures measure the
models, not image decoding. Kept apart from the script so that research runs can import it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}

# ------------------------------------------------------------------------------------ data


@dataclass
class Split:
    """Images (N, C, H, W) uint8 and labels (N,) int64, plus the class names."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: list[str]


def _as_nchw(x: np.ndarray) -> Tensor:
    x = np.asarray(x)
    if x.dtype != np.uint8:  # floats in [0, 1] or 0-255
        x = np.clip(x * (255.0 if x.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
    if x.ndim == 3:  # (N, H, W) grayscale
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC → NCHW
    return torch.from_numpy(np.ascontiguousarray(x))


def load_npz(path: str | Path) -> Split:
    """x_train, y_train, x_test, y_test from an .npz file (x: N×H×W, N×H×W×C or N×C×H×W)."""
    with np.load(path) as z:
        parts = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    y_train, y_test = (torch.from_numpy(np.asarray(y).astype(np.int64).ravel()) for y in parts[1::2])
    n = int(max(y_train.max(), y_test.max())) + 1
    return Split(_as_nchw(parts[0]), y_train, _as_nchw(parts[2]), y_test,
                 [str(i) for i in range(n)])


def _read_folder(root: Path, classes: list[str] | None = None) -> tuple[Tensor, Tensor, list[str]]:
    from PIL import Image

    classes = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB")))
            labels.append(label)
    if not images:
        raise SystemExit(f"no images found under {root}")
    x = np.stack(images)  # (N, H, W, 3): sizes must agree (28×28 for the benchmark)
    if all((img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()
           for img in images[:: max(1, len(images) // 200)]):
        x = x[..., :1]  # grayscale stored as RGB: keep one channel
    return _as_nchw(x), torch.tensor(labels), classes


def load_folder(root: str | Path, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Class sub-folders, or train/ and test/ (or val/) sub-folders of class sub-folders."""
    root = Path(root)
    test_dir = next((root / d for d in ("test", "val", "validation") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        x_train, y_train, classes = _read_folder(root / "train")
        x_test, y_test, _ = _read_folder(test_dir, classes)
        return Split(x_train, y_train, x_test, y_test, classes)
    x, y, classes = _read_folder(root)
    test = stratified_indices(y, test_fraction, seed)
    train = torch.from_numpy(np.setdiff1d(np.arange(len(y)), test.numpy()))
    return Split(x[train], y[train], x[test], y[test], classes)


def stratified_indices(y: Tensor, size: int | float, seed: int = 0) -> Tensor:
    """Indices of a class-balanced sample: `size` images (or that fraction), seeded."""
    y = y.numpy()
    classes = np.unique(y)
    total = int(round(size * len(y))) if isinstance(size, float) else min(int(size), len(y))
    rng = np.random.default_rng(seed)
    per_class = total // len(classes)
    picked = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        picked.append(rng.choice(idx, min(per_class, len(idx)), replace=False))
    picked = np.concatenate(picked)
    short = total - len(picked)  # rounding, or classes smaller than their share
    if short > 0:
        rest = np.setdiff1d(np.arange(len(y)), picked)
        picked = np.concatenate([picked, rng.choice(rest, min(short, len(rest)), replace=False)])
    return torch.from_numpy(np.sort(picked))


# ---------------------------------------------------------------------------- augmentation


@dataclass
class Augment:
    """Batched augmentation of float images in [0, 1], applied on the fly to every batch.

    The random affine (scale, aspect, rotation, translation) plays the part of a random
    resized crop; at 28 px a crop-and-resize loses too much of the image.
    """

    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor range (1 = unchanged)
    aspect: float = 0.0  # log-aspect jitter, ± this
    rotate: float = 10.0  # degrees, ±
    shear: float = 0.0  # degrees, ±
    translate: float = 0.1  # fraction of the image size, ±
    flip: float = 0.0  # probability of a horizontal flip
    erase: float = 0.0  # probability of erasing one random rectangle
    mixup: float = 0.0  # Beta(α, α) for mixup; 0 = off
    cutmix: float = 0.0  # Beta(α, α) for cutmix; 0 = off
    shift: int = 0  # whole-pixel shift, ± this many px on each axis, zero fill

    def __call__(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        dev = x.device
        if self.shift:
            x = random_shift(x, self.shift)
        if self.scale != (1.0, 1.0) or self.rotate or self.translate or self.aspect or self.shear:
            lo, hi = self.scale
            s = torch.empty(B, device=dev).uniform_(math.log(lo), math.log(hi)).exp()
            a = torch.empty(B, device=dev).uniform_(-self.aspect, self.aspect).exp().sqrt()
            r = torch.empty(B, device=dev).uniform_(-1, 1) * math.radians(self.rotate)
            sh = torch.empty(B, device=dev).uniform_(-1, 1) * math.radians(self.shear)
            t = torch.empty(B, 2, device=dev).uniform_(-1, 1) * (2 * self.translate)
            # output → input map: rotate · shear · zoom⁻¹ (grid coordinates run from -1 to 1)
            cos, sin, zero, one = torch.cos(r), torch.sin(r), torch.zeros_like(r), torch.ones_like(r)
            rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
            shear = torch.stack([torch.stack([one, torch.tan(sh)], 1), torch.stack([zero, one], 1)], 1)
            zoom = torch.diag_embed(torch.stack([1 / (s * a), a / s], 1))
            theta = torch.cat([rot @ shear @ zoom, t[:, :, None]], dim=2)  # (B, 2, 3)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.flip:
            flip = torch.rand(B, device=dev) < self.flip
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.erase:
            x = random_erase(x, self.erase)
        return x


def random_shift(x: Tensor, px: int) -> Tensor:
    """Shift each image by a whole number of pixels in [-px, px] per axis, zero fill."""
    B, _, H, W = x.shape
    padded = F.pad(x, (px, px, px, px))  # (B, C, H + 2px, W + 2px)
    dy = torch.randint(0, 2 * px + 1, (B,), device=x.device)
    dx = torch.randint(0, 2 * px + 1, (B,), device=x.device)
    rows = (dy[:, None] + torch.arange(H, device=x.device)[None])  # (B, H)
    cols = (dx[:, None] + torch.arange(W, device=x.device)[None])  # (B, W)
    out = padded[torch.arange(B, device=x.device)[:, None, None], :, rows[:, :, None],
                 cols[:, None, :]]  # (B, H, W, C): advanced indices first
    return out.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def random_erase(x: Tensor, p: float) -> Tensor:
    """Zero one random rectangle (2-33 % of the area) in a fraction p of the images."""
    B, _, H, W = x.shape
    area = torch.empty(B).uniform_(0.02, 0.33) * H * W
    ratio = torch.empty(B).uniform_(math.log(0.3), math.log(3.3)).exp()
    h = (area * ratio).sqrt().clamp(1, H).long()
    w = (area / ratio).sqrt().clamp(1, W).long()
    top = (torch.rand(B) * (H - h + 1)).long()
    left = (torch.rand(B) * (W - w + 1)).long()
    rows = torch.arange(H)[None, :]
    cols = torch.arange(W)[None, :]
    mask = (((rows >= top[:, None]) & (rows < (top + h)[:, None]))[:, :, None]
            & ((cols >= left[:, None]) & (cols < (left + w)[:, None]))[:, None, :])  # (B, H, W)
    mask &= (torch.rand(B) < p)[:, None, None]
    return x.masked_fill(mask[:, None].to(x.device), 0.0)


def mix(x: Tensor, y: Tensor, num_classes: int, aug: Augment, smoothing: float) -> tuple[Tensor, Tensor]:
    """Soft targets, with mixup or cutmix (one of them per batch) when switched on."""
    target = F.one_hot(y, num_classes).float() * (1 - smoothing) + smoothing / num_classes
    modes = [m for m, a in (("mixup", aug.mixup), ("cutmix", aug.cutmix)) if a > 0]
    if not modes:
        return x, target
    mode = modes[torch.randint(len(modes), ()).item()]
    alpha = aug.mixup if mode == "mixup" else aug.cutmix
    lam = float(np.random.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], device=x.device)
    if mode == "mixup":
        x = lam * x + (1 - lam) * x[perm]
    else:
        H, W = x.shape[-2:]
        h, w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        top, left = np.random.randint(0, H - h + 1), np.random.randint(0, W - w + 1)
        x = x.clone()
        x[..., top:top + h, left:left + w] = x[perm][..., top:top + h, left:left + w]
        lam = 1 - h * w / (H * W)
    return x, lam * target + (1 - lam) * target[perm]


# ---------------------------------------------------------------------------- the CNN peer


class SmallCNN(nn.Sequential):
    """The 4-layer CNN peer: conv32-conv32-pool-conv64-conv64-pool-fc (BN + ReLU)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        def conv(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

        w = width
        super().__init__(
            *conv(in_channels, w), *conv(w, w), nn.MaxPool2d(2),
            *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(2 * w, num_classes),
        )


class TunedCNN(nn.Sequential):
    """The tuned CNN peer: 5 conv blocks (BN + ReLU) of width w, w, 2w, 2w, 4w (capped at
    128), max-pool after the 2nd and 4th, global average pool, linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        def conv(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o),
                    nn.ReLU(inplace=True)]

        w = [min(128, width * k) for k in (1, 1, 2, 2, 4)]
        super().__init__(
            *conv(in_channels, w[0]), *conv(w[0], w[1]), nn.MaxPool2d(2),
            *conv(w[1], w[2]), *conv(w[2], w[3]), nn.MaxPool2d(2), *conv(w[3], w[4]),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w[4], num_classes),
        )


# ------------------------------------------------------------------------------- training


@dataclass
class Recipe:
    """Optimiser, schedule and augmentation for one run."""

    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.05  # fraction of the budget spent warming up
    min_lr: float = 0.0  # as a fraction of lr, reached at the end of the cosine
    label_smoothing: float = 0.1
    clip_grad: float = 1.0
    ema: float = 0.0  # decay of an EMA of the weights used for testing; 0 = off
    augment: Augment = field(default_factory=Augment)
    image_size: int | None = None  # resize (pad-free bilinear) to this before the model
    pad_to: int | None = None  # zero-pad to this size instead (e.g. 28 → 32)
    precision: str = "fp32"  # or "bf16": autocast around the forward pass, fp32 weights


@dataclass
class Result:
    accuracy: float
    images_per_s: float
    epochs: float
    steps: int
    seconds: float
    train_loss: float
    precision: str = "fp32"


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases, class token and position embedding."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(progress: float, warmup: float, min_lr: float) -> float:
    """Linear warm-up, then cosine to min_lr; progress runs from 0 to 1 over the budget."""
    if progress < warmup:
        return progress / warmup
    t = min(1.0, (progress - warmup) / max(1e-8, 1 - warmup))
    return min_lr + (1 - min_lr) * 0.5 * (1 + math.cos(math.pi * t))


def prepare(x: Tensor, mean: float | Tensor, std: float | Tensor, recipe: Recipe) -> Tensor:
    """uint8 images → float [0, 1], padded/resized to the model's size (not yet normalised)."""
    x = x.float().div_(255)
    if recipe.pad_to and recipe.pad_to > x.shape[-1]:
        p = recipe.pad_to - x.shape[-1]
        x = F.pad(x, (p // 2, p - p // 2, p // 2, p - p // 2))
    elif recipe.image_size and recipe.image_size != x.shape[-1]:
        x = F.interpolate(x, size=recipe.image_size, mode="bilinear", align_corners=False,
                          antialias=True)
    return x


@torch.inference_mode()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, mean, std, recipe: Recipe,
             batch_size: int = 500) -> float:
    """Top-1 accuracy on uint8 images."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = (prepare(x[i:i + batch_size], mean, std, recipe) - mean) / std
        correct += (model(xb).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / len(x)


def train(model: nn.Module, data: Split, recipe: Recipe, *, seconds: float | None = None,
          epochs: float | None = None, seed: int = 0, log=None, score: bool = True) -> Result:
    """Train within a wall-clock budget (or a number of epochs) and return test accuracy.

    The learning-rate schedule is laid over the budget: progress is the fraction of the
    seconds (or of the steps) used so far, so warm-up and cosine fit whatever the machine
    manages. Evaluation happens after the budget and is not counted in it.
    """
    assert seconds or epochs, "give a time budget or a number of epochs"
    torch.manual_seed(seed)
    np.random.seed(seed)
    x, y = data.x_train, data.y_train
    n, num_classes = len(x), len(data.classes)
    xf = x.float() / 255
    mean = xf.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = xf.std(dim=(0, 2, 3)).view(1, -1, 1, 1)
    opt = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.lr,
                            betas=(0.9, 0.999))
    ema = None
    if recipe.ema:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(recipe.ema),
            use_buffers=True)
    steps_per_epoch = n // recipe.batch_size
    total_steps = int(epochs * steps_per_epoch) if epochs else None
    amp = torch.bfloat16 if recipe.precision == "bf16" else None
    step, seen, losses = 0, 0, []
    start = time.perf_counter()
    perm, pos = torch.randperm(n), 0
    model.train()
    while True:
        elapsed = time.perf_counter() - start
        progress = max(elapsed / seconds if seconds else 0.0,
                       step / total_steps if total_steps else 0.0)
        if progress >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = recipe.lr * lr_factor(progress, recipe.warmup, recipe.min_lr)
        if pos + recipe.batch_size > n:  # drop the ragged end; reshuffle every epoch
            perm, pos = torch.randperm(n), 0
        idx = perm[pos:pos + recipe.batch_size]
        pos += recipe.batch_size
        xb = recipe.augment(prepare(x[idx], mean, std, recipe))
        xb, target = mix(xb, y[idx], num_classes, recipe.augment, recipe.label_smoothing)
        xb = (xb - mean) / std
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            out = model(xb)
        loss = torch.sum(-target * F.log_softmax(out.float(), dim=-1), dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
        opt.step()
        if ema is not None:
            ema.update_parameters(model)
        step += 1
        seen += len(idx)
        losses.append(loss.item())
        if log and step % 200 == 0:
            log(f"step {step}  epoch {seen / n:.1f}  loss {np.mean(losses[-200:]):.3f}  "
                f"{seen / (time.perf_counter() - start):.0f} img/s")
    elapsed = time.perf_counter() - start
    test_model = ema.module if ema is not None else model
    acc = evaluate(test_model, data.x_test, data.y_test, mean, std, recipe) if score else 0.0
    return Result(accuracy=acc, images_per_s=seen / elapsed, epochs=seen / n, steps=step,
                  seconds=elapsed, train_loss=float(np.mean(losses[-50:])) if losses else float("nan"),
                  precision=recipe.precision)


def train_fitted(model: nn.Module, data: Split, recipe: Recipe, *, seconds: float,
                 seed: int = 0, probe_steps: int = 10,
                 precisions: tuple[str, ...] = ("fp32",)) -> Result:
    """Train for a step count fitted to `seconds`: a probe on a throwaway copy measures
    seconds per step (its time is taken from the budget), then a warm-up + cosine schedule
    runs over exactly the steps that fit, so the lr reaches its floor when the budget ends
    rather than being cut off by the clock. With several `precisions` the probe runs in
    each and the fastest trains (all their probes are taken from the budget)."""
    import copy
    import dataclasses

    start = time.perf_counter()
    steps_per_epoch = len(data.y_train) // recipe.batch_size
    timed = []
    for precision in precisions:
        probe = copy.deepcopy(model)
        tried = dataclasses.replace(recipe, precision=precision)
        measured = train(probe, data, tried, epochs=(probe_steps + 0.5) / steps_per_epoch,
                         seed=seed, score=False)  # its first steps pay allocations: a slight overestimate
        timed.append((measured.seconds / max(measured.steps, 1), measured.seconds, tried))
        del probe
    sec_per_step, _, recipe = min(timed, key=lambda t: t[0])
    setup = (time.perf_counter() - start - sum(t[1] for t in timed)) / len(timed)  # paid again
    left = seconds - (time.perf_counter() - start) - setup
    steps = max(1, int(left / sec_per_step))
    return train(model, data, recipe, epochs=(steps + 0.5) / steps_per_epoch, seed=seed)
