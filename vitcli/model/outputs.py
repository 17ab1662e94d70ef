"""What every consumer of a model file computes: calibrated logits and the unknown score.

`ModelOutputs` wraps the ViT with the two things the model file adds to its weights:
the softmax temperature T (Guo et al. 2017, "On Calibration of Modern Neural Networks":
probabilities = softmax(logits / T)) and the out-of-distribution score (vitcli.model.ood).
`vit predict` and `vit eval` run it on PyTorch, and `vit export` exports it, so the ONNX
graph divides by T and gives the score as its second output: one set of probabilities and
one `unknown` rule, whichever runtime answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vitcli.model.validate import TEMPERATURE_KEY, parse_temperature  # noqa: F401 (re-export)

if TYPE_CHECKING:
    from vitcli.model.ood import OodStats

def logits_and_features(model: nn.Module, x: Tensor, blocks: tuple[int, ...] | None = None
                        ) -> tuple[Tensor, Tensor]:
    """Raw logits (B, K) and the features the unknown score reads, in one pass.

    With `blocks` (vitcli.model.ood.score_blocks): the tokens after each of those blocks,
    pooled by `block_features`, side by side (B, n·D). Every block's tokens before any
    LayerNorm: normalised ones lose the tokens' scale, and with it much of what sets noise
    and unrelated images apart (on generated shapes the normalised class token rejected 95 %
    of noise and 75 % of stripes, the un-normalised 100 % and 87 %); and the early blocks
    keep what the last one, trained only to tell the classes apart, drops (a photo's texture
    and shading: with vit train's recipe on shapes, 67 % of photo crops were caught by the
    last block's features alone, 84 % with every block's; benchmarks/ood_scores.py,
    docs/evaluation.md).

    Without `blocks` (files of the earlier rule): the last block's tokens pooled as the head
    pools them (B, D) (the class token, the patch mean, or both); models whose pooling is
    learned on normalised tokens (attention pool, distillation token) use the head's input.
    """
    tokens = model.embed(x)  # (B, T, D), as model.forward_features
    wanted = set(blocks or ())
    features = []
    for i, block in enumerate(model.blocks):
        tokens, _ = block(tokens)
        if i in wanted:
            features.append(block_features(model, tokens))  # (B, D)
    normed = model.norm(tokens)  # (B, T, D)
    logits = model.forward_head(normed)  # (B, K)
    if blocks is not None:
        if len(features) != len(blocks):
            raise ValueError(f"the unknown rule reads blocks {list(blocks)}; the model has "
                             f"{len(model.blocks)}")
        return logits, torch.cat(features, dim=-1)  # (B, n·D)
    if model.config.pooling == "map" or getattr(model, "dist_token", None) is not None:
        return logits, model.forward_head(normed, pre_logits=True)
    return logits, model.pool(tokens)  # (B, D) or (B, 2D) for cls_mean


def block_features(model: nn.Module, tokens: Tensor) -> Tensor:
    """One block's tokens (B, T, D) → the vector the unknown score reads from it: pooled as
    the head pools (class token, patch mean, or both (B, 2·D)); with a distillation token
    the mean of it and the class token (what the head averages); with an attention-pool
    head, learned on the last block's normalised tokens only, the patch mean."""
    if getattr(model, "dist_token", None) is not None:
        return (tokens[:, 0] + tokens[:, 1]) / 2  # (B, D)
    if model.config.pooling == "map":
        return tokens[:, model.num_prefix_tokens:].mean(dim=1)  # (B, D)
    return model.pool(tokens)  # (B, D) or (B, 2·D) for cls_mean


class MahalanobisScore(nn.Module):
    """min_k |(f - mu_k) L| for features f (B, F): the distance to the nearest class mean."""

    def __init__(self, stats: OodStats) -> None:
        super().__init__()
        chol = torch.from_numpy(stats.precision_cholesky).float()  # (F, F)
        means = torch.from_numpy(stats.class_means).float() @ chol  # (K, F), whitened
        self.blocks = stats.blocks  # whose features it reads (None: the last block's)
        self.register_buffer("chol", chol)
        self.register_buffer("means", means)
        self.register_buffer("means_sq", means.pow(2).sum(-1))  # (K,)

    def forward(self, features: Tensor) -> Tensor:
        # float32 even under bf16 autocast: a distance compared with a threshold, as the
        # ONNX graph computes it (the check runs at trace time: an export sees no autocast)
        if torch.is_autocast_enabled(features.device.type):
            with torch.autocast(features.device.type, enabled=False):
                return self._distance(features.float())
        return self._distance(features.float())

    def _distance(self, features: Tensor) -> Tensor:
        z = features @ self.chol  # (B, F), whitened
        # |z - m|^2 = |z|^2 - 2 z.m + |m|^2: one (B, F) x (F, K) matmul, no (B, K, F) tensor
        d2 = z.pow(2).sum(-1, keepdim=True) - 2 * z @ self.means.t() + self.means_sq  # (B, K)
        return d2.min(dim=-1).values.clamp_min(0).sqrt()  # (B,)


class ModelOutputs(nn.Module):
    """ViT → (logits / T, unknown score) — or logits / T alone when there are no statistics."""

    def __init__(self, model: nn.Module, temperature: float = 1.0,
                 ood: OodStats | None = None) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)
        self.score = MahalanobisScore(ood) if ood is not None else None

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.score is None:
            logits = self.model(x)  # (B, K)
            return logits if self.temperature == 1.0 else logits.float() / self.temperature
        logits, features = logits_and_features(self.model, x, self.score.blocks)  # (B, K), (B, nD)
        if self.temperature != 1.0:
            logits = logits.float() / self.temperature
        return logits, self.score(features)


class LogitsAndScore(nn.Module):
    """(B, K + 1): the raw logits, then the unknown score, as one tensor (for `vit eval`)."""

    def __init__(self, model: nn.Module, stats: OodStats) -> None:
        super().__init__()
        self.model, self.score = model, MahalanobisScore(stats)

    def forward(self, x: Tensor) -> Tensor:
        logits, features = logits_and_features(self.model, x, self.score.blocks)  # (B, K), (B, nD)
        return torch.cat([logits, self.score(features)[:, None]], dim=1)


def model_outputs(mf: Any, model: nn.Module | None = None,
                  unknown: bool = True) -> ModelOutputs:
    """The wrapper for a loaded checkpoint.ModelFile (optionally around a copy of its model).

    (`mf` is untyped here: checkpoint imports this module, and imports point one way.)
    """
    return ModelOutputs(mf.model if model is None else model, mf.temperature,
                        mf.ood if unknown else None).eval()
