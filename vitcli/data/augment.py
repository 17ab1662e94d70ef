"""Batched data augmentation on tensors, on whatever device the batch is on.

One call turns a batch of cached uint8 pixels into normalised model inputs and soft targets:

    random resized crop + flip + rotate/shear/translate   one affine grid_sample per batch
    TrivialAugment-style colour ops                       a random op per sample and round
    normalise with mean/std
    mixup or cutmix (whole batch, timm's "batch" mode)     soft targets
    random erasing (per sample, normal noise)

Every random number comes from torch's global generator on the batch's device, so a
trainer that saves and restores torch's RNG state resumes bit-exactly. No torchvision:
the ops are written here in plain torch (after RandAugment, Cubuk et al. 2020;
TrivialAugment, Müller & Hutter 2021; mixup, Zhang et al. 2018; CutMix, Yun et al. 2019;
random erasing, Zhong et al. 2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitcli.errors import UsageError, plural
from vitcli.model.presets import TINY_IMAGE_MAX

AUGMENT_LEVELS = ("none", "light", "strong")
GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
COLOR_OPS = ("identity", "brightness", "contrast", "saturation", "sharpness", "posterize",
             "solarize", "autocontrast", "equalize")
ALL_OPS = COLOR_OPS + GEOMETRIC_OPS
# Strength of each op at magnitude 1 (RandAugment's magnitude 10, as in timm).
MAX_ROTATE_DEG = 30.0
MAX_SHEAR = 0.3
MAX_TRANSLATE = 0.3  # fraction of the image side
MAX_ENHANCE = 0.9  # brightness/contrast/saturation/sharpness factor 1 ± 0.9
GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as Pillow's convert("L")


def default_level(num_train_images: int) -> str:
    """The augmentation level for a dataset of this size.

    Strong augmentation (mixup, cutmix, big crops) regularises well but needs many epochs to
    pay off; on a few thousand images trained for minutes it mostly slows learning down, so
    small sets get "light" (crop, flip, mild colour and geometry) and large ones "strong".
    """
    return "light" if num_train_images < 10_000 else "strong"


@dataclass
class AugmentPolicy:
    """What augmentation does to a training batch."""

    level: str = "none"
    crop_scale: tuple[float, float] | None = None  # random-resized-crop area range; None = off
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # its aspect-ratio range
    hflip: bool = False
    translate: float = 0.0  # every sample shifted by up to ± this fraction of the side, x and y
    ops: tuple[str, ...] = ()  # chosen per sample, uniformly, num_ops times (TrivialAugment)
    num_ops: int = 0
    magnitude: float = 0.0  # 0-1: each op's strength is drawn uniformly from [0, magnitude]
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0  # chance a batch is mixed at all
    switch_prob: float = 0.5  # chance of cutmix rather than mixup when both are on
    erase_prob: float = 0.0  # chance each image gets a random-erasing box
    # What fills areas moved in from outside the picture: "grey" (RandAugment's mid-grey) or
    # "edge" (the nearest edge pixel: a shifted digit keeps its black background).
    fill: str = "grey"

    def __post_init__(self) -> None:
        unknown = set(self.ops) - set(ALL_OPS)
        if unknown:
            raise UsageError(f"{plural(len(unknown), 'unknown augmentation op')}: "
                             f"{', '.join(sorted(unknown))}; "
                             f"choose from {', '.join(ALL_OPS)}")

    @property
    def geometric(self) -> bool:
        """Whether the batch has to be resampled (crop, flip or a geometric op)."""
        return (self.crop_scale is not None or self.hflip or self.translate > 0
                or (self.num_ops > 0 and bool(set(self.ops) & set(GEOMETRIC_OPS))))

    @property
    def mixes(self) -> bool:
        return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


# At or below this training size, "light" means small shifts only (see make_policy): the
# tiny-image recipe's own limit.
SMALL_IMAGE_PX = TINY_IMAGE_MAX


def make_policy(level: str, *, hflip: bool = True, image_size: int | None = None) -> AugmentPolicy:
    """The policy of a named level; hflip=False for data where mirroring changes the class.

    For small images (≤ SMALL_IMAGE_PX) trained for minutes, "light" is a random shift of up to
    6 % in x and y plus random erasing of a box in a quarter of the images, and nothing else:
    crops, rotations and colour changes of a 28-px digit or garment remove most of what there
    is to learn (benchmarks/small_data.py; docs/small-data.md). The shift repeats the edge
    pixels: a grey border, which no test image has, cost about half a point on Fashion-MNIST.
    The erasing is worth about +0.8: the small ViT fits its 4,000 images well before the end.
    """
    if level == "none":
        return AugmentPolicy(level="none")
    if level == "light" and image_size is not None and image_size <= SMALL_IMAGE_PX:
        return AugmentPolicy(level="light", translate=0.06, hflip=hflip, fill="edge",
                             erase_prob=0.25)
    if level == "light":
        return AugmentPolicy(level="light", crop_scale=(0.5, 1.0), hflip=hflip,
                             ops=("identity", "brightness", "contrast", "rotate",
                                  "translate_x", "translate_y"),
                             num_ops=1, magnitude=0.3)
    if level == "strong":
        return AugmentPolicy(level="strong", crop_scale=(0.25, 1.0), hflip=hflip, ops=ALL_OPS,
                             num_ops=2, magnitude=0.9, mixup_alpha=0.8, cutmix_alpha=1.0,
                             erase_prob=0.25)
    raise UsageError(f"unknown augmentation level {level!r}; choose {', '.join(AUGMENT_LEVELS)}")


def normalize_batch(pixels: torch.Tensor, mean: Sequence[float],
                    std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, H, W, C) → normalised float32 (B, C, H, W), equal to Preprocessing.normalize."""
    mean_t, std_t = _stats(mean, std, pixels.device)
    x = pixels.float() / 255.0  # the same float32 operations, in the same order, as numpy's
    x = (x - mean_t.view(-1)) / std_t.view(-1)  # (B, H, W, C)
    return x.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against soft targets (B, K), as mixup/cutmix produce."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


class BatchAugment:
    """Augment and normalise a batch of cached uint8 pixels; see the module docstring."""

    def __init__(self, policy: AugmentPolicy, *, image_size: int, mean: Sequence[float],
                 std: Sequence[float], num_classes: int, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise UsageError(f"label smoothing must be in [0, 1), not {label_smoothing}")
        self.policy = policy
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    def __call__(self, pixels: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, S, S, C) + int64 (B,) → float32 (B, C, S, S) and soft targets (B, K)."""
        p = self.policy
        targets = self.soft_targets(labels)
        if not p.geometric and p.num_ops == 0 and pixels.shape[1] == self.image_size:
            x = normalize_batch(pixels, self.mean, self.std)  # 'none' is exactly eval's input
        else:
            x = pixels.permute(0, 3, 1, 2).float().contiguous() / 255.0  # (B, C, H, W), 0-1
            op_index, strength = self._draw_ops(x.shape[0], x.device)
            if p.geometric or x.shape[-1] != self.image_size:
                x = self._resample(x, op_index, strength)
            x = self._color_ops(x, op_index, strength)
            mean_t, std_t = _stats(self.mean, self.std, x.device)
            x = (x - mean_t) / std_t
        if p.mixes:
            x, targets = self._mix(x, targets)
        if p.erase_prob > 0:
            x = self._erase(x)
        return x.contiguous(), targets

    def soft_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """One-hot targets (B, K) with label smoothing folded in."""
        eps = self.label_smoothing
        one_hot = F.one_hot(labels.long(), self.num_classes).float()
        return one_hot * (1.0 - eps) + eps / self.num_classes

    # -- ops

    def _draw_ops(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per round and sample: which op (index into policy.ops) and its signed strength."""
        p = self.policy
        if p.num_ops == 0 or not p.ops:
            empty = torch.zeros(0, batch, device=device)
            return empty.long(), empty
        op_index = torch.randint(len(p.ops), (p.num_ops, batch), device=device)
        strength = torch.rand(p.num_ops, batch, device=device) * p.magnitude
        sign = torch.where(torch.rand(p.num_ops, batch, device=device) < 0.5, -1.0, 1.0)
        return op_index, strength * sign  # (R, B) each

    def _resample(self, x: torch.Tensor, op_index: torch.Tensor,
                  strength: torch.Tensor) -> torch.Tensor:
        """Crop, flip and geometric ops as one affine map per sample, one grid_sample."""
        p, b, dev = self.policy, x.shape[0], x.device
        # theta maps output coordinates (-1..1) to input coordinates: crop ∘ geometric op.
        crop = torch.eye(3, device=dev).repeat(b, 1, 1)  # (B, 3, 3)
        if p.crop_scale is not None:
            area = torch.empty(b, device=dev).uniform_(*p.crop_scale)
            log_ratio = torch.empty(b, device=dev).uniform_(*(math.log(r) for r in p.crop_ratio))
            w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # half-width, in units of 1
            h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
            crop[:, 0, 0], crop[:, 1, 1] = w, h
            crop[:, 0, 2] = (torch.rand(b, device=dev) * 2 - 1) * (1 - w)
            crop[:, 1, 2] = (torch.rand(b, device=dev) * 2 - 1) * (1 - h)
        if p.hflip:
            flip = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
            crop[:, 0, 0] = crop[:, 0, 0] * flip
        if p.translate > 0:  # the image spans 2 units of the grid, so a fraction f is 2f
            shift = (torch.rand(b, 2, device=dev) * 2 - 1) * (2 * p.translate)  # (B, 2)
            crop[:, 0, 2] = crop[:, 0, 2] + shift[:, 0]
            crop[:, 1, 2] = crop[:, 1, 2] + shift[:, 1]
        geo = torch.eye(3, device=dev).repeat(b, 1, 1)  # (B, 3, 3)
        for r in range(op_index.shape[0]):
            geo = geo @ self._geometric_matrix(op_index[r], strength[r])
        theta = (crop @ geo)[:, :2]  # (B, 2, 3)
        size = self.image_size
        grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
        if p.fill == "edge":
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                 align_corners=False)
        # Areas rotated or shifted in from outside the picture are mid-grey, as in RandAugment.
        return F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False) + 0.5

    def _geometric_matrix(self, op_index: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3) output→input maps for the geometric ops drawn this round (identity else)."""
        b, dev = op_index.shape[0], op_index.device
        m = torch.eye(3, device=dev).repeat(b, 1, 1)
        names = self.policy.ops

        def chosen(name: str) -> torch.Tensor:
            return (op_index == names.index(name)) if name in names else \
                torch.zeros(b, dtype=torch.bool, device=dev)

        angle = torch.where(chosen("rotate"), strength * math.radians(MAX_ROTATE_DEG), 0.0)
        cos, sin = angle.cos(), angle.sin()
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
        m[:, 0, 1] += torch.where(chosen("shear_x"), strength * MAX_SHEAR, 0.0)
        m[:, 1, 0] += torch.where(chosen("shear_y"), strength * MAX_SHEAR, 0.0)
        m[:, 0, 2] = torch.where(chosen("translate_x"), strength * 2 * MAX_TRANSLATE, 0.0)
        m[:, 1, 2] = torch.where(chosen("translate_y"), strength * 2 * MAX_TRANSLATE, 0.0)
        return m

    def _color_ops(self, x: torch.Tensor, op_index: torch.Tensor,
                   strength: torch.Tensor) -> torch.Tensor:
        """Apply each round's colour op to the samples that drew it."""
        for r in range(op_index.shape[0]):
            for k, name in enumerate(self.policy.ops):
                if name not in COLOR_OPS or name == "identity":
                    continue
                rows = (op_index[r] == k).nonzero().flatten()
                if rows.numel():
                    x = x.index_copy(0, rows, _COLOR[name](x[rows], strength[r, rows]))
        return x

    def _mix(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup or cutmix of the batch with itself reversed; targets mixed by area/weight."""
        p, dev = self.policy, x.device
        draws = torch.rand(2, device=dev)
        if draws[0] >= p.mix_prob:
            return x, targets
        cutmix = p.cutmix_alpha > 0 and (p.mixup_alpha <= 0 or bool(draws[1] < p.switch_prob))
        alpha = torch.tensor(p.cutmix_alpha if cutmix else p.mixup_alpha, device=dev)
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        other = x.flip(0)
        if cutmix:
            h, w = x.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = (torch.rand(2, device=dev) * torch.tensor([h, w], device=dev)).long().tolist()
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = other[:, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually kept
        else:
            x = x * lam + other * (1.0 - lam)
        return x, targets * lam + targets.flip(0) * (1.0 - lam)

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        """Random erasing: a box of normal noise in some images (area 2-33 %, aspect 0.3-3.3)."""
        b, _, h, w = x.shape
        dev = x.device
        apply = torch.rand(b, device=dev) < self.policy.erase_prob
        area = torch.empty(b, device=dev).uniform_(0.02, 1 / 3) * h * w
        aspect = torch.empty(b, device=dev).uniform_(math.log(0.3), math.log(1 / 0.3)).exp()
        eh = (area * aspect).sqrt().round().clamp(1, h)
        ew = (area / aspect).sqrt().round().clamp(1, w)
        top = (torch.rand(b, device=dev) * (h - eh + 1)).floor()
        left = (torch.rand(b, device=dev) * (w - ew + 1)).floor()
        rows = torch.arange(h, device=dev).view(1, h, 1)  # (1, H, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)  # (1, 1, W)
        box = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
               & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)))  # (B, H, W)
        mask = (box & apply.view(b, 1, 1)).unsqueeze(1)  # (B, 1, H, W)
        return torch.where(mask, torch.randn_like(x), x)


# ------------------------------------------------------------------------------- colour ops
# Each takes images (n, C, H, W) in 0-1 and signed strengths (n,) in -1..1.


def _factor(strength: torch.Tensor) -> torch.Tensor:
    return (1.0 + strength * MAX_ENHANCE).view(-1, 1, 1, 1)  # (n, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (n, 1, H, W)."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: degenerate + factor · (image − degenerate), clipped."""
    return (degenerate + _factor(strength) * (x - degenerate)).clamp(0.0, 1.0)


def _brightness(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, s)


def _contrast(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)  # (n, 1, 1, 1)
    return _blend(mean.expand_as(x), x, s)


def _saturation(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return _blend(_gray(x).expand_as(x), x, s)


def _sharpness(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's 3×3 smoothing filter (centre 5, ring 1), edges left as they are."""
    c = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)  # depthwise (C, 1, 3, 3)
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return _blend(smooth, x, s)


def _posterize(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Keep 8 − 4·|s| bits per channel."""
    step = (2.0 ** (4 * s.abs()).round()).view(-1, 1, 1, 1)  # (n, 1, 1, 1): 1..16
    return ((x * 255).round() / step).floor() * step / 255


def _solarize(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Invert the pixels above a threshold that falls from 1 to 0 with strength."""
    threshold = (1.0 - s.abs()).view(-1, 1, 1, 1)
    return torch.where(x >= threshold, 1.0 - x, x)


def _autocontrast(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to the full 0-1 range (flat channels stay as they are)."""
    lo = x.amin(dim=(2, 3), keepdim=True)  # (n, C, 1, 1)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp(min=1e-6), x)


def _equalize(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Histogram-equalise each channel (256 bins), batched through one scatter_add."""
    n, c, h, w = x.shape
    levels = (x * 255).round().long().clamp(0, 255).reshape(n * c, h * w)  # (nC, HW)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(
        1, levels, torch.ones_like(levels, dtype=torch.float32))  # (nC, 256)
    cdf = hist.cumsum(1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float(h * w))).amin(1, keepdim=True)
    denom = (h * w - cdf_min).clamp(min=1)
    lut = ((cdf - cdf_min) / denom).clamp(0, 1)  # (nC, 256)
    out = lut.gather(1, levels).view(n, c, h, w)
    flat = (cdf_min >= h * w).view(n, c, 1, 1)  # one grey level: leave it
    return torch.where(flat, x, out.to(x.dtype))


_COLOR = {
    "brightness": _brightness, "contrast": _contrast, "saturation": _saturation,
    "sharpness": _sharpness, "posterize": _posterize, "solarize": _solarize,
    "autocontrast": _autocontrast, "equalize": _equalize,
}


def _stats(mean: Sequence[float], std: Sequence[float],
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std as float32 (1, C, 1, 1) tensors on `device`."""
    mean_t = torch.tensor(tuple(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(tuple(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return mean_t, std_t
