"""The linear probe on cached features: the frozen backbone runs once per image, not per epoch.

With `--freeze backbone` only the head trains, and without augmentation every epoch feeds the
head the very same pooled features. So they are computed once (one forward pass over the
training and validation images, in eval mode), kept as a float32 (N, D) array, and the epochs
train the head alone on them: 30 epochs cost one forward pass plus seconds. This is how the
linear-probe evaluations of CLIP (Radford et al. 2021, Sec. 3.2: logistic regression on
fixed features) and DINOv2 (Oquab et al. 2023) are run.

The features are what the head sees: `forward_head(forward_features(x), pre_logits=True)`.
Before trusting them the probe checks, on a few images, that the head applied to the cached
features gives the full model's logits (1e-4); a model whose head reads anything else falls
back to a forward pass every step, and says so. The model file saved at each epoch end is
the whole model (the untouched backbone and the trained head), so it predicts exactly what
the probe measured.

With augmentation on, each epoch's images differ, so there is nothing to cache: the backbone
runs every step (without building its backward graph, since none of its weights train).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from vitcli.data.augment import BatchAugment
from vitcli.errors import plural

CHECK_IMAGES = 8  # images whose full-model logits are compared with head(features)
CHECK_TOLERANCE = 1e-4  # largest logit difference accepted (float32 rounding is ~1e-6)

Progress = Callable[[int, int], None]


def _distilled(model: nn.Module) -> bool:
    return getattr(model, "dist_token", None) is not None


class PreLogits(nn.Module):
    """The backbone up to the head's input: images (B, C, H, W) → pooled features (B, D).

    A distilled model (DeiT) has two heads, one on the class token and one on the
    distillation token: its features are both tokens side by side, (B, 2D).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.model.forward_features(x)  # (B, T, D)
        if _distilled(self.model):
            return torch.cat([tokens[:, 0], tokens[:, 1]], dim=-1)  # (B, 2D)
        return self.model.forward_head(tokens, pre_logits=True)  # (B, D)


class HeadOnly(nn.Module):
    """The head's part of the forward pass: cached features (B, D) → logits (B, K).

    It holds the model's own `head_drop` and `head` (and `head_dist`), so training it trains
    the model's heads; a distilled model's logits are the mean of its two heads, as DeiT's.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.head_drop = model.head_drop
        self.head = model.head
        self.head_dist = model.head_dist if _distilled(model) else None

    def forward(self, features: Tensor) -> Tensor:
        if self.head_dist is None:
            return self.head(self.head_drop(features))
        x, x_dist = features.chunk(2, dim=-1)  # (B, D) each: class and distillation token
        return (self.head(self.head_drop(x)) + self.head_dist(self.head_drop(x_dist))) / 2


HEAD_WEIGHTS = {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}


def trainable_head_only(model: nn.Module) -> bool:
    """True when the only weights that train are the classification head's (a linear probe)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return bool(names) and names <= HEAD_WEIGHTS


def extract_features(model: nn.Module, pixels: np.ndarray, *, mean: Sequence[float],
                     std: Sequence[float], device: torch.device, precision: str = "fp32",
                     batch_size: int = 256, progress: Progress | None = None) -> Tensor:
    """Pooled features (N, D) float32 of uint8 pixels (N, S, S, C), normalised as eval does.

    The model runs in eval mode without gradients (predict_logits) and is put back in the
    mode it was in.
    """
    from vitcli.evaluation.evaluate import predict_logits

    wrapper = PreLogits(model).train(model.training)
    out = predict_logits(wrapper, pixels, mean=mean, std=std, batch_size=batch_size,
                         device=device, precision=precision, progress=progress)
    return torch.from_numpy(out)  # (N, D)


def head_matches(model: nn.Module, pixels: np.ndarray, features: Tensor, *,
                 mean: Sequence[float], std: Sequence[float], device: torch.device,
                 precision: str = "fp32") -> bool:
    """Whether the head on cached features gives the full model's logits on a few images.

    A model whose head also reads something else (a second token, a side branch) fails
    here, and the probe then runs the backbone every step instead of training a head on
    features it never sees at prediction time.
    """
    from vitcli.evaluation.evaluate import predict_logits

    n = min(CHECK_IMAGES, len(pixels))
    full = predict_logits(model, pixels[:n], mean=mean, std=std, device=device,
                          precision=precision)
    head = head_logits(model, features[:n], device=device)
    if full.shape != head.shape:
        return False
    scale = max(1.0, float(np.abs(full).max(initial=0.0)))
    # bf16 autocast rounds the features (and the full model's head input) differently
    tolerance = CHECK_TOLERANCE if precision == "fp32" else 2e-2
    return float(np.abs(full - head).max(initial=0.0)) <= tolerance * scale


def head_logits(model: nn.Module, features: Tensor, *, device: torch.device,
                batch_size: int = 4096) -> np.ndarray:
    """Logits (N, K) float32 of the model's head on cached features (N, D), in eval mode."""
    head = HeadOnly(model)
    was_training = head.training
    head.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(features), batch_size):
                x = features[start:start + batch_size].to(device)
                out.append(head(x).float().cpu().numpy())
    finally:
        head.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out)


class FeatureTargets:
    """The trainer's `augment` for cached features: the features as they are, and the
    uncached path's own soft targets (label smoothing), from the same BatchAugment."""

    def __init__(self, augment: BatchAugment) -> None:
        self.augment = augment

    def __call__(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(B, D) float + int64 (B,) → the same (B, D) and soft targets (B, K)."""
        return features, self.augment.soft_targets(labels)


def describe(mode: str | None, *, level: str, images: int = 0, seconds: float = 0.0) -> str:
    """One line for the user: how this linear probe ran, and why.

    mode: "cached", "augmented" (the images change every epoch), "unmatched" (the head reads
    more than the pooled features) or "uncached" (caching turned off, as benchmarks do).
    """
    if mode == "cached":
        return (f"linear probe on cached features: one forward pass over {plural(images, 'image')} "
                f"({seconds:.1f} s), then the head alone each epoch")
    if mode == "augmented":
        return (f"linear probe with --augment {level}: each image changes every epoch, so the "
                "backbone runs every step (--augment none caches the features: much faster)")
    if mode == "unmatched":
        return ("linear probe: the head reads more than the pooled features, so the backbone "
                "runs every step")
    if mode == "uncached":
        return "linear probe without the feature cache: the backbone runs every step"
    return ""
