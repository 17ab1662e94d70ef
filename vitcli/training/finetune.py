"""Start training from a pre-trained vitcli model file: load what fits, adapt what almost fits.

A fine-tuned model rarely has the exact shape of its source: new classes (a new head), a new
input size (a new position grid), sometimes a new patch size or channel count. Everything that
can be carried over is carried over, and every change is reported in plain words so that the
`vit train --init` command can print it.

- position embedding: bicubic resampling over the grid, class-token slot kept
  (`vitcli.model.vit.resample_pos_embed`, the same as the original ViT fine-tuning recipe);
- patch embedding for a new patch size: FlexiViT's pseudo-inverse resize (Beyer et al. 2023,
  "FlexiViT", Sec. 3.4), which keeps each token the same when the image is resized with the
  patch: <x, w> = <resize(x), w'>;
- channels: 3 → 1 sums the kernel over colours (a grey image then gives exactly the token the
  RGB model gave for the same grey picture); 1 → 3 repeats it divided by 3;
- shifted patch tokens (vitcli's small-image default): the LayerNorm gain and bias are folded
  into the projection, which is then resized like a kernel over its 5·C stacked channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitcli.errors import VitError
from vitcli.model.checkpoint import CheckedFile, check_model_file, load_checked
from vitcli.model.config import ViTConfig
from vitcli.model.layers import PatchDropout
from vitcli.model.preprocess import Preprocessing
from vitcli.model.vit import DropPath, VisionTransformer, resample_pos_embed

HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


@dataclass
class InitReport:
    """What `init_from` did: names loaded as-is or adapted, names left at their fresh init."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    head_replaced: bool = False
    lines: list[str] = field(default_factory=list)  # human-readable, for the command to print


# ------------------------------------------------------------------------------ patch kernel


def _resize_matrix(old: int, new: int, mode: str) -> Tensor:
    """The linear map that resizes a flattened old×old patch to new×new: (new², old²).

    Built by resizing every basis image; float64 so the pseudo-inverse is accurate.
    """
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(new, new), mode=mode, align_corners=False,
                            antialias=new < old)  # (old², 1, new, new)
    return resized.reshape(old * old, new * new).T  # (new², old²)


def resize_patch_embed(weight: Tensor, new_patch: int, mode: str = "bilinear") -> Tensor:
    """The patch-embedding kernel for another patch size, FlexiViT pseudo-inverse resize.

    (D, C, P, P) -> (D, C, P', P'). With B the resize matrix (P'², P²), the new kernel w'
    solves Bᵀw' = w in the least-squares / minimum-norm sense, so a patch x resized with the
    same `mode` gives the same token: <Bx, w'> = <x, w>. Upsampling (P' > P) keeps tokens
    exactly; downsampling loses what a smaller patch cannot hold, as little as possible.
    """
    D, C, P, P2 = weight.shape
    if P != P2:
        raise VitError(f"patch-embedding kernel is not square ({P}×{P2})")
    if new_patch == P:
        return weight
    B = _resize_matrix(P, new_patch, mode)  # (P'², P²)
    pinv = torch.linalg.pinv(B.T)  # (P'², P²)
    flat = weight.reshape(D * C, P * P).to(torch.float64)  # (D·C, P²)
    new = flat @ pinv.T  # (D·C, P'²)
    return new.reshape(D, C, new_patch, new_patch).to(weight.dtype)  # (D, C, P', P')


def adapt_channels(weight: Tensor, channels: int) -> Tensor:
    """The patch kernel (D, C, ...) for another channel count (1 ↔ 3)."""
    C = weight.shape[1]
    if C == channels:
        return weight
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)  # (D, 1, ...): a grey image keeps its token
    if C == 1:
        return weight.repeat(1, channels, *([1] * (weight.ndim - 2))) / channels  # (D, C', ...)
    raise VitError(f"cannot adapt a {C}-channel patch embedding to {channels} channels")


def adapt_shifted_patch_embed(state: dict[str, Tensor], *, patch: int, channels: int,
                              new_patch: int, new_channels: int) -> dict[str, Tensor]:
    """The shifted patch embedding (norm + proj) for another patch size and/or channel count.

    It is a LayerNorm over the flattened (P, P, 5C) stack of the image and its four shifted
    copies, then a Linear. Folding the norm's gain and bias into the Linear (exact) leaves a
    kernel over 5C channels, resized and channel-adapted like a convolution's; the norm
    restarts at gain 1, bias 0. The shift is half a patch at either size, so a patch and its
    shifted copies resize together. The norm's statistics over a resized patch differ from
    the original's by about one scale per patch, which a short fine-tune absorbs.
    """
    gain, shift = state["patch_embed.norm.weight"], state["patch_embed.norm.bias"]
    weight, bias = state["patch_embed.proj.weight"], state["patch_embed.proj.bias"]
    D, P, C = weight.shape[0], patch, channels
    if weight.shape[1] != P * P * 5 * C:
        raise VitError(f"shifted patch embedding of {weight.shape[1]} inputs does not match "
                       f"{P} px patches of {C} channels")
    folded = weight * gain  # (D, P·P·5C): W·diag(g)
    new_bias = bias + weight @ shift  # W·b + c
    kernel = folded.reshape(D, P, P, 5 * C).permute(0, 3, 1, 2)  # (D, 5C, P, P)
    # (5D, C, P, P): each of the five stacked copies adapts its colours on its own
    kernel = adapt_channels(kernel.reshape(D * 5, C, P, P), new_channels)
    kernel = resize_patch_embed(kernel, new_patch)  # (5D, C', P', P')
    kernel = kernel.reshape(D, 5 * new_channels, new_patch, new_patch)  # (D, 5C', P', P')
    flat = kernel.permute(0, 2, 3, 1).reshape(D, -1)  # (D, P'·P'·5C'), patchify's order
    return {"patch_embed.proj.weight": flat.contiguous(), "patch_embed.proj.bias": new_bias,
            "patch_embed.norm.weight": torch.ones(flat.shape[1], dtype=gain.dtype),
            "patch_embed.norm.bias": torch.zeros(flat.shape[1], dtype=shift.dtype)}


# ------------------------------------------------------------------------------ loading


def checked_source(source: str | Path | CheckedFile) -> CheckedFile:
    """The source model file, checked once (checkpoint.check_model_file): `vit train --init`
    passes the same CheckedFile to init_config and init_from, so the file is read and
    validated once, as `vit export` and `vit predict` do (checkpoint.load_checked)."""
    return source if isinstance(source, CheckedFile) else check_model_file(source)


def _source(source: str | Path | CheckedFile
            ) -> tuple[ViTConfig, dict[str, Tensor], Preprocessing, list[str]]:
    """Config, weights, preprocessing and class names of a vitcli model file."""
    loaded = load_checked(checked_source(source))
    return loaded.config, loaded.model.state_dict(), loaded.preprocessing, loaded.class_names


def init_config(source: str | Path | CheckedFile,
                **overrides: Any) -> tuple[ViTConfig, Preprocessing, list[str]]:
    """The config, preprocessing and class names to train with when starting from `source`
    (a model file's path, or the CheckedFile of one: then nothing is read again).

    Keeps the source architecture and its normalisation (the weights expect those inputs)
    unless overridden: image_size, patch_size, num_classes, in_channels, dropout, ... .
    Overrides that are None are ignored, so a command can pass its options straight through.
    """
    checked = checked_source(source)
    config, names, pre = checked.config, checked.class_names, checked.preprocessing
    changes = {k: v for k, v in overrides.items() if v is not None}
    new = config.replace(**changes)
    mean, std = pre.mean, pre.std
    if new.in_channels != config.in_channels:
        if new.in_channels == 1:  # grey: the average normalisation of the colours
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        else:
            mean, std = mean * new.in_channels, std * new.in_channels
    pre = Preprocessing.from_dict({
        **pre.at_size(new.image_size).to_dict(), "mean": mean, "std": std,
        "color_mode": "L" if new.in_channels == 1 else "RGB"})
    if new.num_classes != config.num_classes:
        names = [f"class_{i}" for i in range(new.num_classes)]
    return new, pre, names


def init_from(model: VisionTransformer, source: str | Path | CheckedFile) -> InitReport:
    """Load every matching weight from a vitcli model file (a path, or its CheckedFile)
    into `model`; report what changed.

    `model` already has the config the trainer chose (new num_classes / image_size /
    patch_size / channels). The head is replaced when the class count differs, the position
    embedding resampled for a new grid, the patch kernel resized for a new patch size and
    adapted for a new channel count. Weights the source lacks keep their fresh init.
    """
    checked = checked_source(source)
    path = checked.path
    src_config, state, _, _ = _source(checked)
    config = model.config
    if src_config.embed_dim != config.embed_dim:
        raise VitError(f"{path}: width {src_config.embed_dim} does not match the model's "
                       f"{config.embed_dim}; keep the source architecture to start from it")
    report = InitReport()
    target = model.state_dict()
    if (src_config.patch_embed == config.patch_embed == "shifted"
            and (src_config.patch_size, src_config.in_channels)
            != (config.patch_size, config.in_channels)):
        state = {**state, **adapt_shifted_patch_embed(
            state, patch=src_config.patch_size, channels=src_config.in_channels,
            new_patch=config.patch_size, new_channels=config.in_channels)}
        report.lines.append(_shifted_line(src_config, config))
    new_state: dict[str, Tensor] = {}
    for name, value in state.items():
        if name not in target:
            report.skipped.append(name)
            continue
        if name in HEAD_KEYS and src_config.num_classes != config.num_classes:
            continue
        adapted = _adapt(name, value, target[name], src_config, config, report)
        if adapted is None:
            report.skipped.append(name)
        else:
            new_state[name] = adapted
            report.loaded.append(name)
    if src_config.num_classes != config.num_classes and config.num_classes:
        report.head_replaced = True
        report.lines.append(f"new head: {config.num_classes} classes instead of "
                            f"{src_config.num_classes} (trained from scratch)")
    model.load_state_dict(new_state, strict=False)
    fresh = [n for n in target if n not in new_state and n not in HEAD_KEYS]
    extra = [n for n in report.skipped if n not in target]
    if extra:
        report.lines.append(f"not used ({len(extra)}): {_short(extra)} (source is larger)")
    absent = [n for n in fresh if n not in state]
    unfit = [n for n in fresh if n in state]
    if absent:
        report.lines.append(f"fresh init ({len(absent)}): {_short(absent)} (not in the source)")
    if unfit:
        report.lines.append(f"fresh init ({len(unfit)}): {_short(unfit)} (could not be "
                            "carried over, see above)")
    report.lines.insert(0, f"loaded {len(report.loaded)} of {len(target)} tensors from {path}")
    return report


def _adapt(name: str, value: Tensor, like: Tensor, src: ViTConfig, dst: ViTConfig,
           report: InitReport) -> Tensor | None:
    """`value` shaped like `like`, or None when it cannot be carried over (said in lines)."""
    if name == "pos_embed":
        if dst.pos_embed != "learned":
            return None  # fixed sin-cos: recomputed by the model for its own grid
        if src.pos_prefix_tokens != dst.pos_prefix_tokens:
            report.lines.append("position embedding not loaded: class token added or removed")
            return None
        if src.grid_size != dst.grid_size:
            report.lines.append(
                f"position embedding resampled {src.grid_size}×{src.grid_size} → "
                f"{dst.grid_size}×{dst.grid_size} (bicubic, class token kept)")
        return resample_pos_embed(value, (dst.grid_size, dst.grid_size),
                                  (src.grid_size, src.grid_size), src.pos_prefix_tokens)
    if name == "patch_embed.proj.weight" and value.shape != like.shape:
        if src.patch_embed != "linear" or dst.patch_embed != "linear":
            how = (f"a {src.patch_embed!r} patch embedding cannot become {dst.patch_embed!r}"
                   if src.patch_embed != dst.patch_embed else
                   f"an {src.patch_embed!r} patch embedding cannot be resized")
            report.lines.append(f"patch embedding not loaded: {how}")
            return None
        if value.shape[1] != like.shape[1]:
            how = "summed over colours" if like.shape[1] == 1 else "repeated over channels / C"
            report.lines.append(f"patch embedding: {value.shape[1]} → {like.shape[1]} "
                                f"channels ({how})")
            value = adapt_channels(value, like.shape[1])
        if value.shape[-1] != like.shape[-1]:
            report.lines.append(f"patch embedding kernel resized {value.shape[-1]} → "
                                f"{like.shape[-1]} px (FlexiViT pseudo-inverse)")
            value = resize_patch_embed(value, like.shape[-1])
    if value.shape != like.shape:
        report.lines.append(f"{name} not loaded: shape {tuple(value.shape)} in the source, "
                            f"{tuple(like.shape)} in the model")
        return None
    return value.to(like.dtype)


def _shifted_line(src: ViTConfig, dst: ViTConfig) -> str:
    changes = []
    if src.patch_size != dst.patch_size:
        changes.append(f"kernel resized {src.patch_size} → {dst.patch_size} px "
                       "(FlexiViT pseudo-inverse)")
    if src.in_channels != dst.in_channels:
        changes.append(f"{src.in_channels} → {dst.in_channels} channels")
    return f"shifted patch embedding: norm folded into the projection, {', '.join(changes)}"


def _short(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def freeze_backbone(model: nn.Module) -> int:
    """Freeze everything but the head (a linear probe); return the number of frozen weights.

    The frozen backbone also loses its stochastic depth, dropout and patch dropout: a linear
    probe learns on fixed features, and random branch or token drops in a network that cannot
    adapt to them are noise (and features inference never gives). The dropout in front of
    the head (`head_drop`) stays: it regularises what does train.
    """
    frozen = 0
    for name, param in model.named_parameters():
        if name.startswith(("head.", "head_dist.")):
            param.requires_grad_(True)
        else:
            param.requires_grad_(False)
            frozen += param.numel()
    for name, module in model.named_modules():
        if name.startswith("head"):
            continue
        if isinstance(module, (nn.Dropout, DropPath)):
            module.p = 0.0
        if isinstance(module, PatchDropout):
            module.rate = 0.0
        if hasattr(module, "attn_dropout"):
            module.attn_dropout = 0.0
    return frozen
