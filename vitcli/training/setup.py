"""Before the first step: decode the data, decide the architecture and preprocessing, build
the model (fresh, or started from `--init` weights).

The decisions themselves live in vitcli/training/recipe.py; this module applies them to real data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitcli.errors import UsageError
from vitcli.model.config import ViTConfig
from vitcli.model.preprocess import Preprocessing
from vitcli.model.vit import VisionTransformer
from vitcli.training.distributed import DistEnv, rank0_first
from vitcli.training.recipe import TrainOptions, grid_warning, model_config, preset_choice

Emit = Callable[..., None]  # emit(kind, **fields): progress events for the command to draw


@dataclass
class Prepared:
    """The decoded data and the model, ready for the trainer."""

    train_pixels: np.ndarray  # uint8 (N, S, S, C)
    train_labels: np.ndarray  # int64 (N,)
    val_pixels: np.ndarray | None  # uint8 (M, S, S, C)
    val_labels: np.ndarray | None
    val_paths: list[str] | None
    class_names: list[str]
    bad_files: list[tuple[str, str]]
    description: str
    config: ViTConfig
    preprocessing: Preprocessing
    model: VisionTransformer
    notes: list[str] = field(default_factory=list)  # lines worth telling the user
    warnings: list[str] = field(default_factory=list)  # lines the user should act on
    val_split: float | None = None  # validation carved from --data with this fraction
    data_fingerprint: str = ""  # DataBundle.fingerprint: --resume says when the data changed
    preset: str | None = None  # the preset the model was built from; None after --init
    preset_reason: str = ""  # "--model" or "chosen for 28-px images" (recipe.preset_choice)


def prepare(options: TrainOptions, env: DistEnv, emit: Emit, *,
            resumed: tuple[ViTConfig, Preprocessing] | None = None) -> Prepared:
    """Decode --data and build the model the options (or a resumed run's args) describe.

    Rank 0 decodes first and fills the cache; the other ranks then read the cache instead of
    decoding the same files at the same time.
    """
    from vitcli.data.image_set import load_data, typical_image_size

    notes: list[str] = []
    init_pre: Preprocessing | None = None
    preset: tuple[str | None, str] = (None, "")
    init = resolve_init(options.init, env, notes) if resumed is None else None
    init_file = None  # --init's model file, checked once for the config and the weights
    if resumed is not None:
        config, pre = resumed
        load_pre = pre  # grey runs decode straight to L: the same pixels as RGB's first channel
    elif init:
        from vitcli.training.finetune import checked_source, init_config

        init_file = checked_source(init)
        config, init_pre, _ = init_config(init_file, image_size=options.img_size,
                                          patch_size=options.patch,
                                          drop_path=options.drop_path_for(options.img_size or 224),
                                          patch_drop=options.patch_drop)
        load_pre = init_pre
    else:
        typical = typical_image_size(options.data)
        preset = preset_choice(options, typical)
        # The image size does not depend on the class count or channels: decide it first.
        config = model_config(options, typical_size=typical, num_classes=1, in_channels=3)
        load_pre = Preprocessing(image_size=config.image_size, mean=(0.5,) * 3, std=(0.5,) * 3,
                                 color_mode="RGB")

    from vitcli.model.config import check_fits

    # Before a single image is decoded: would a step at this size and batch fit at all?
    per_process = -(-options.with_defaults_for(config.image_size).batch_size // env.world_size)
    check_fits(config, per_process, device_type=env.device.type, index=env.device.index or 0)

    def progress(done: int, total: int) -> None:
        emit("load", done=done, total=total)

    # Rank 0 fills the cache first; its user errors stop every rank with the same one line.
    bundle = rank0_first(lambda: load_data(
        options.data, preprocessing=load_pre, val=options.val, val_split=options.val_split,
        seed=options.seed, cache_dir=Path(options.cache_dir) if options.cache_dir else None,
        progress=progress if env.is_main else None, check_copies=env.is_main), env)
    train_px, val_px = bundle.train.pixels, bundle.val.pixels if bundle.val else None
    if options.patience and bundle.val is None:
        raise UsageError(f"--patience {options.patience} needs validation images, and "
                         f"{bundle.description.split(':')[0]} gives none; pass --val or "
                         "--val-split, or drop --patience")
    names = list(bundle.class_names)

    if resumed is not None:
        config = config.replace(num_classes=len(names))
    elif init:
        pre = init_pre
        config = config.replace(num_classes=len(names))
        if options.freeze == "backbone" and config.patch_drop:
            # a probe learns on the features inference gives: every patch (and the file
            # then says the model trained on them all)
            config = config.replace(patch_drop=0.0)
            notes.append("patch dropout off: the frozen backbone sees every patch, as in "
                         "inference")
    else:
        grey = is_grayscale(train_px) and (val_px is None or is_grayscale(val_px))
        if grey:
            train_px, val_px = _first_channel(train_px), _first_channel(val_px)
            notes.append("all images are grey: the model takes 1 channel (colour mode L)")
        mean, std = pixel_mean_std(train_px)
        pre = Preprocessing(image_size=config.image_size, mean=mean, std=std,
                            interpolation=load_pre.interpolation, color_mode="L" if grey
                            else "RGB")
        config = model_config(options, typical_size=typical, num_classes=len(names),
                              in_channels=pre.channels)

    torch.manual_seed(options.seed)  # the same initial weights on every rank and every resume
    model = VisionTransformer(config)
    if init:
        from vitcli.training.finetune import init_from

        notes.extend(init_from(model, init_file or init).lines)
    if options.freeze == "backbone":
        from vitcli.training.finetune import freeze_backbone

        frozen = freeze_backbone(model)
        notes.append(f"backbone frozen: {frozen:,} weights fixed, only the head trains")
    model.to(env.device)
    return Prepared(
        train_pixels=train_px, train_labels=bundle.train.labels, val_pixels=val_px,
        val_labels=bundle.val.labels if bundle.val else None,
        val_paths=bundle.val.paths if bundle.val else None, class_names=names,
        bad_files=list(bundle.bad_files), description=bundle.description, config=config,
        preprocessing=pre, model=model, notes=notes, val_split=bundle.val_split,
        warnings=[w for w in [bundle.copies, grid_warning(config.image_size,
                                                          config.patch_size)] if w],
        data_fingerprint=bundle.fingerprint, preset=preset[0], preset_reason=preset[1])


def resolve_init(init: str | None, env: DistEnv, notes: list[str]) -> str | None:
    """The model file --init names: a local file as it is; a Hub id (transformers or timm/
    repository) or a short name of `vit models --pretrained` downloaded and converted once
    (vitcli/convert/catalog.py), rank 0 first so that the other ranks find it converted."""
    if not init or Path(init).expanduser().exists():
        return init
    from vitcli.convert.catalog import looks_like_hub_id

    if not looks_like_hub_id(init):
        from vitcli.errors import UsageError

        raise UsageError(f"--init {init}: no such file, nor a Hub id (owner/name) or a name "
                         "from `vit models --pretrained`")
    from vitcli.convert import pretrained_file
    from vitcli.data.cache import default_cache_dir

    path, line = rank0_first(lambda: pretrained_file(init, default_cache_dir() / "pretrained"),
                             env)
    notes.append(f"--init {line}")
    return str(path)


def _first_channel(pixels: np.ndarray | None) -> np.ndarray | None:
    """(N, S, S, 3) grey-as-RGB → (N, S, S, 1), contiguous."""
    if pixels is None or pixels.shape[-1] == 1:
        return pixels
    return np.ascontiguousarray(pixels[..., :1])


def resolved_summary(prepared: Prepared, options: TrainOptions, env: DistEnv,
                     augment: str) -> dict[str, Any]:
    """What the defaults turned into, saved beside the options in args.json."""
    from vitcli.data.balance import class_counts, class_weights

    counts = class_counts(prepared.train_labels, len(prepared.class_names))
    return {
        "preset": prepared.preset,  # None when --init gave the model
        "preset_reason": prepared.preset_reason,
        "config": prepared.config.to_dict(),
        "preprocessing": prepared.preprocessing.to_dict(),
        "class_names": prepared.class_names,
        "augment": augment,
        "lr": options.peak_lr,
        "device": str(env.device),
        "world_size": env.world_size,
        "data": prepared.description,
        "class_counts": counts.tolist(),  # training images per class, in class_names order
        "class_weights": (class_weights(counts).round(6).tolist()
                          if options.class_weights == "auto" else None),
        "data_fingerprint": prepared.data_fingerprint,
    }


def imbalance_note(labels: np.ndarray, class_names: list[str],
                   options: TrainOptions) -> tuple[str, str] | None:
    """(level, line) about the class balance worth telling the user, or None.

    A warning when the largest class has IMBALANCE_WARN times the images of the smallest and
    no remedy is on; a note saying which remedy is on otherwise.
    """
    from vitcli.data.balance import class_counts, imbalance_ratio
    from vitcli.training.recipe import IMBALANCE_WARN

    counts = class_counts(labels, len(class_names))
    ratio = imbalance_ratio(counts)
    big, small = int(np.argmax(counts)), int(np.argmin(counts))
    if counts[big] == counts[small]:  # balanced: there is no largest and smallest to name
        sizes = f"every class has {counts[big]:,} training images (ratio 1:1)"
    else:
        sizes = (f"{class_names[big]!r} has {counts[big]:,} training images, "
                 f"{class_names[small]!r} {counts[small]:,} (ratio {ratio:.3g}:1)")
    if options.class_weights == "auto":
        return "info", f"class weights by effective number of samples: {sizes}"
    if options.sampler == "balanced":
        return "info", f"balanced sampler: every class drawn equally often; {sizes}"
    if ratio >= IMBALANCE_WARN:
        return "warning", (f"imbalanced classes: {sizes}. --class-weights auto or --sampler "
                           "balanced helps the small classes; vit eval reports balanced "
                           "accuracy")
    return None


def is_grayscale(pixels: np.ndarray, chunk: int = 4096) -> bool:
    """True when every image in (N, S, S, 3) uint8 pixels has R = G = B everywhere."""
    if pixels.shape[-1] == 1:
        return True
    for start in range(0, len(pixels), chunk):
        part = pixels[start:start + chunk]
        if not (np.array_equal(part[..., 0], part[..., 1])
                and np.array_equal(part[..., 0], part[..., 2])):
            return False
    return True


def pixel_mean_std(pixels: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...],
                                                                     tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, S, S, C) pixels on the 0-1 scale, 4 decimals."""
    channels = pixels.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    for start in range(0, len(pixels), chunk):
        part = pixels[start:start + chunk].reshape(-1, channels).astype(np.float64) / 255.0
        total += part.sum(axis=0)
        total_sq += (part**2).sum(axis=0)
        count += len(part)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 0.0))
    std = np.maximum(std, 1e-3)  # a constant channel must not divide by zero
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
