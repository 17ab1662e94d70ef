"""The training recipe: every default of `vit train`, and how the choices that depend on the
data (image size, preset, colour mode, normalisation) are made. Change defaults here only.

Decisions (measured in docs/small-data.md):
- Image size: small images (≤ SMALL_IMAGE_MAX px, the typical size in the data) are trained at
  their own size rounded up to a multiple of the patch; larger ones at the preset's size.
- Preset: a small-image preset for small images, a paper preset otherwise.
- Colour: when every training image is grey (R = G = B everywhere), the model takes one channel
  (color mode "L"): a third of the patch-embedding weights and no colour to learn to ignore.
- Normalisation: per-channel mean/std measured on the training pixels (so inputs are centred
  whatever the data), rounded to 4 decimals and stored in the model file, which is what
  `vit eval` / `vit predict` then use. Fine-tuning keeps the source model's normalisation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from vitcli.data import VAL_SPLIT
from vitcli.devices import PRECISIONS, THREADS, check_threads
from vitcli.errors import Range, UsageError, canonical_choice, check_choice, plural
from vitcli.model.config import FIELD_RANGES, PATCH_EMBEDS, POOLINGS, POS_EMBEDS, ViTConfig
from vitcli.model.patches import grid_warning as grid_warning  # re-exported for the trainer
from vitcli.model.presets import TINY_IMAGE_MAX, get_preset

SMALL_IMAGE_MAX = 64  # px; at or below this, images are trained at (about) their own size
# Model options layered over the preset for small images trained from scratch (the small-data
# recipe: see docs/small-data.md). Empty = the preset as it is.
SMALL_DATA_MODEL: dict[str, Any] = {}
BASE_BATCH = 256  # --lr default is BASE_LR at this batch, scaled linearly with the batch
BASE_LR = 1e-3
# Tiny images trained from scratch (≤ TINY_IMAGE_MAX px): a few-layer ViT that underfits in a
# few minutes wants a higher learning rate and no stochastic depth (benchmarks/small_data.py).
# Tiny data is images up to TINY_DATA_MAX px (their typical size); the recipe follows the size
# they are trained at, which vit-pico's 7×7 grid makes up to 35 px (5-px patches at 32 px).
TINY_DATA_MAX = 32
# Which preset when --model is not given, by typical image size.
PRESET_FOR_SIZE = [(TINY_DATA_MAX, "vit-pico"), (SMALL_IMAGE_MAX, "vit-mini"), (10**9, "vit-ti16")]
TINY_BASE_LR = 4e-3  # at BASE_BATCH, i.e. 2e-3 at the default batch of 128
DROP_PATH = 0.1  # default stochastic depth, except for tiny images from scratch (0)
# Label smoothing; tiny images from scratch get more: the small ViT fits its few thousand
# images well before the end of a minutes-long run (docs/small-data.md: +0.5 points).
LABEL_SMOOTHING = 0.1
TINY_LABEL_SMOOTHING = 0.2
# Tiny images from scratch train the blocks' matrices with Muon at batch 256 (AdamW for the
# rest): +0.9 points over AdamW at batch 128 in the same 2 minutes (docs/small-data.md).
# Where torch has no Muon (before 2.9), they keep AdamW at batch 128.
OPTIMIZERS = ("adamw", "muon")
OPTIMIZER = "adamw"
TINY_OPTIMIZER = "muon"
BATCH_SIZE = 128
TINY_BATCH_SIZE = 256  # with Muon
# The lr falls from its peak along a cosine, or for tiny images from scratch along a straight
# line (Bergsma et al. 2025): +0.3 points on average over 4 samples (docs/small-data.md).
SCHEDULES = ("cosine", "linear")
SCHEDULE = "cosine"
TINY_SCHEDULE = "linear"
# Imbalanced classes (README "Imbalanced classes"): off by default, since a data set whose
# imbalance mirrors the real world is often meant to be learnt as it is. vit train says so
# when the largest class has IMBALANCE_WARN times the images of the smallest.
CLASS_WEIGHTS = ("none", "auto")
SAMPLERS = ("random", "balanced")
IMBALANCE_WARN = 10.0
# Epochs when --epochs is not given: EPOCHS, or more when the data is small, so that the run
# makes at least MIN_STEPS optimizer steps. An epoch of 500 images at batch 256 is 2 steps:
# 30 epochs would be 60 steps, and the bundled shapes stopped at 30 % validation top-1; 100
# steps reached 98 % and 300 give room for harder small folders (2026-12-01, 2 CPU cores).
EPOCHS = 30
MIN_STEPS = 300
FEW_STEPS = MIN_STEPS // 2  # a --time-budget that fits fewer is warned about, with what to do


EMA_DECAY = 0.999  # TrainOptions.ema_decay: a different value without --ema is refused
AUGMENTS = ("none", "light", "strong")  # = vitcli.data.augment.AUGMENT_LEVELS (a test checks)


# The range of every number `vit train` takes, by TrainOptions field: TrainOptions.check
# refuses what lies outside, and `vit train --help` shows each as its option's value type
# (N 1–100,000), read from here (vitcli.commands.train), so the two cannot disagree. The
# architecture's ranges are the model config's own; --threads is checked against the
# machine's cores as well.
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1),  # numpy's seeds are 32-bit
    "threads": THREADS,
    "epochs": Range(1, 100_000),
    "batch_size": Range(1, 65_536),
    "lr": Range(0.0, 10.0, low_open=True),
    "weight_decay": Range(0.0, 10.0),
    "warmup": Range(0.0, 100_000),
    "min_lr_ratio": Range(0.0, 1.0),
    "label_smoothing": Range(0.0, 1.0, high_open=True),
    "drop_path": FIELD_RANGES["drop_path"],
    "patch_drop": FIELD_RANGES["patch_drop"],
    "clip_grad": Range(0.0, 1e6),
    "val_split": VAL_SPLIT,
    "ema_decay": Range(0.0, 1.0, high_open=True),
    "time_budget": Range(0.0, 100_000, low_open=True),  # minutes: up to about ten weeks
    "patience": Range(1, 100_000),
    "val_every": Range(1, 100_000),
    "layer_decay": Range(0.0, 1.0, low_open=True),
    "save_every": Range(0, 10**9),
    "img_size": Range(8, FIELD_RANGES["image_size"].high),
    "patch": FIELD_RANGES["patch_size"],
    "depth": FIELD_RANGES["depth"],
    "embed_dim": FIELD_RANGES["embed_dim"],
    "heads": FIELD_RANGES["num_heads"],
    "mlp_ratio": FIELD_RANGES["mlp_ratio"],
}


def choice_fields() -> dict[str, tuple[str, ...]]:
    """Every TrainOptions field with a fixed set of values, and the values: case is ignored
    and the lower-case name kept (errors.canonical_choice), checked in TrainOptions.check."""
    return {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "augment": AUGMENTS,
            "class_weights": CLASS_WEIGHTS, "sampler": SAMPLERS, "precision": PRECISIONS,
            "freeze": ("backbone",), "patch_embed": PATCH_EMBEDS, "pooling": POOLINGS,
            "pos_embed": POS_EMBEDS}


@dataclass
class TrainOptions:
    """Everything `vit train` accepts; the field defaults ARE the recipe's defaults."""

    data: str = ""
    model: str | None = None  # preset name; None = chosen by image size
    img_size: int | None = None
    patch: int | None = None
    epochs: int | None = None  # None = epochs_for(): EPOCHS, more for small data (MIN_STEPS)
    batch_size: int | None = None  # None = (TINY_)BATCH_SIZE: with_defaults_for
    lr: float | None = None  # None = (TINY_)BASE_LR · batch / BASE_BATCH: with_defaults_for
    weight_decay: float = 0.05
    optimizer: str | None = None  # adamw | muon; None = by the recipe: with_defaults_for
    warmup: float = 3.0  # epochs of linear warm-up (at most a quarter of the run)
    schedule: str | None = None  # cosine | linear decay after warm-up; None = by the recipe
    min_lr_ratio: float = 0.01  # the decay ends at this fraction of the peak lr
    label_smoothing: float | None = None  # None = (TINY_)LABEL_SMOOTHING: with_defaults_for
    drop_path: float | None = None  # None = DROP_PATH, or 0 for tiny images from scratch
    patch_drop: float | None = None  # None = the preset's (vit-pico 0.5), or the --init model's
    clip_grad: float = 1.0  # max global gradient norm; 0 = no clipping
    class_weights: str = "none"  # none | auto: loss weights by effective number of samples
    sampler: str = "random"  # random (a shuffle) | balanced: every class drawn equally often
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # CPU threads for the maths; 0 = chosen from the free cores, re-measured
    augment: str | None = None  # none | light | strong; None = by dataset size
    val: str | None = None
    val_split: float | None = None
    ema: bool = False
    ema_decay: float = 0.999  # = EMA_DECAY
    compile: bool = False
    precision: str = "auto"  # auto | fp32 | bf16 (autocast; fp32 weights): devices.choose_precision
    time_budget: float | None = None  # minutes for the whole run, validation included
    patience: int | None = None  # epochs without a better val top-1 before stopping
    # Validate every N epochs and the last; None = every epoch, or under --time-budget spaced
    # so that validation takes at most a tenth of the time (training/validation.py).
    val_every: int | None = None
    name: str | None = None
    project: str = "runs/train"
    init: str | None = None
    freeze: str | None = None  # "backbone"
    # A linear probe without augmentation computes its features once (training/probe.py);
    # False runs the backbone every step, as benchmarks/linear_probe.py compares. No flag.
    cache_features: bool = True
    layer_decay: float | None = None
    save_every: int = 0  # also save the training state every N steps (0 = epoch ends only)
    cache_dir: str | None = None
    # Architecture overrides (advanced; None = the preset's value).
    depth: int | None = None
    embed_dim: int | None = None
    heads: int | None = None
    mlp_ratio: float | None = None
    patch_embed: str | None = None
    locality_attention: bool | None = None
    pooling: str | None = None
    pos_embed: str | None = None

    def __post_init__(self) -> None:
        # One rule for case in every choice (--optimizer AdamW, --precision BF16, --device
        # CPU): the canonical lower-case name is what the run uses and args.json records.
        for name, choices in choice_fields().items():
            setattr(self, name, canonical_choice(getattr(self, name), choices))
        if isinstance(self.device, str):
            self.device = self.device.strip().lower()
        # --patch-drop=-0 (or --drop-path -0) is a valid 0; record it as 0.0, not -0.0,
        # which would otherwise reach args.json and the model file's config.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and value == 0.0:
                setattr(self, f.name, 0.0)
        if isinstance(self.model, str):
            from vitcli.model.presets import PRESETS

            key = self.model.lower().replace("_", "-").replace("/", "")
            self.model = key if key in PRESETS else self.model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainOptions:
        data = dict(data)
        if "workers" in data and "threads" not in data:  # run folders from before --threads
            data["threads"] = data.pop("workers")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def check(self) -> None:
        """Refuse impossible values before any data is read."""
        if not self.data:
            raise UsageError("--data is required (a folder of class sub-folders, or a dataset)")
        for f in dataclasses.fields(self):  # NaN slips past every range check below
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"--{f.name.replace('_', '-')} must be a finite number, "
                                 f"not {value}")
        self._check_ranges()
        self._check_contradictions()
        for name, choices in choice_fields().items():  # None: not given, chosen by the recipe
            if getattr(self, name) is not None or name in ("precision", "class_weights",
                                                           "sampler"):
                check_choice("--" + name.replace("_", "-"), getattr(self, name), choices)
        if self.freeze and not self.init:
            raise UsageError("--freeze backbone needs --init MODEL (a frozen random backbone "
                             "learns nothing)")
        if self.init:
            # The architecture comes from the --init file; only size and patch can change.
            ignored = [flag for flag, value in (("--model", self.model), *_arch_flags(self))
                       if value is not None]
            if ignored:
                raise UsageError(f"{', '.join(ignored)} cannot change the architecture of "
                                 f"--init {self.init}; only --img-size and --patch can")
        if self.val and self.val_split is not None:
            raise UsageError("give either --val or --val-split, not both (--val-split 0 "
                             "with --val says both 'no validation' and 'validate on --val')")
        if self.class_weights == "auto" and self.sampler == "balanced":
            raise UsageError("give --class-weights auto or --sampler balanced, not both: "
                             "together they correct the imbalance twice")

    def _check_ranges(self) -> None:
        """Every number within its RANGES entry, and --threads within the machine's means."""
        for name, allowed in RANGES.items():
            allowed.check("--" + name.replace("_", "-"), getattr(self, name))
        check_threads(self.threads)  # the machine's own limit (vitcli.devices)
        if self.patch and self.img_size and self.patch > self.img_size:
            raise UsageError(f"--patch {self.patch} is larger than --img-size {self.img_size}")
        if not isinstance(self.device, str) or \
                self.device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
            raise UsageError(f"--device {self.device!r}: use auto, cpu, cuda, cuda:N or mps")

    def _check_contradictions(self) -> None:
        """Options that make no sense together: an error, never one silently ignored."""
        if self.ema_decay != EMA_DECAY and not self.ema:
            raise UsageError(f"--ema-decay {self.ema_decay:g} has no effect without --ema")
        if self.patience is not None and self.val_split == 0 and not self.val:
            raise UsageError("--patience needs validation, and --val-split 0 turns it off")
        if self.val_every is not None and self.val_split == 0 and not self.val:
            raise UsageError("--val-every needs validation, and --val-split 0 turns it off")
        if self.val_every is not None and self.patience is not None \
                and self.val_every > self.patience:
            raise UsageError(f"--patience {self.patience} counts epochs without a better "
                             f"val top-1, but --val-every {self.val_every} validates less "
                             "often: one validation would stop the run; give --patience at "
                             "least --val-every")
        if self.freeze and self.layer_decay is not None:
            raise UsageError("--layer-decay scales the learning rate of the blocks, which "
                             "--freeze backbone does not train; give one of them")

    @property
    def peak_lr(self) -> float:
        batch = self.batch_size or BATCH_SIZE
        return self.lr if self.lr is not None else BASE_LR * batch / BASE_BATCH

    def tiny_from_scratch(self, image_size: int) -> bool:
        """Whether the tiny-image recipe applies: small inputs and no pretrained weights."""
        return image_size <= TINY_IMAGE_MAX and not self.init

    def with_defaults_for(self, image_size: int) -> TrainOptions:
        """A copy with the defaults that depend on the image size filled in where not given.

        --optimizer, --batch-size, --lr, --label-smoothing and --schedule are options of the run;
        --drop-path is resolved into the model config instead (drop_path_for)."""
        tiny = self.tiny_from_scratch(image_size)
        optimizer = self.optimizer or (TINY_OPTIMIZER if tiny and has_muon() else OPTIMIZER)
        batch = self.batch_size or (TINY_BATCH_SIZE if tiny and optimizer == "muon"
                                    else BATCH_SIZE)
        lr = self.lr
        if lr is None:
            lr = (TINY_BASE_LR if tiny else BASE_LR) * batch / BASE_BATCH
        smoothing = self.label_smoothing
        if smoothing is None:
            smoothing = TINY_LABEL_SMOOTHING if tiny else LABEL_SMOOTHING
        schedule = self.schedule or (TINY_SCHEDULE if tiny else SCHEDULE)
        return dataclasses.replace(self, lr=lr, label_smoothing=smoothing, optimizer=optimizer,
                                   batch_size=batch, schedule=schedule)

    def drop_path_for(self, image_size: int) -> float:
        """--drop-path, or the default for this image size."""
        if self.drop_path is not None:
            return self.drop_path
        return 0.0 if self.tiny_from_scratch(image_size) else DROP_PATH


def steps_per_epoch(num_images: int, batch: int) -> int:
    """Optimizer steps in one epoch: every image once, the last batch filled up (not dropped)."""
    return max(1, math.ceil(num_images / batch))


def epochs_for(options: TrainOptions, num_images: int, batch: int) -> tuple[int, str]:
    """--epochs, or the default for this much data, and why, in words for the run summary.

    The default is EPOCHS, or enough epochs for MIN_STEPS optimizer steps when an epoch is
    only a few steps (a small folder): 500 images at batch 256 get 150 epochs of 2 steps.
    """
    per_epoch = steps_per_epoch(num_images, batch)
    if options.epochs is not None:
        return options.epochs, "--epochs"
    needed = math.ceil(MIN_STEPS / per_epoch)
    if needed <= EPOCHS:
        return EPOCHS, f"the default for {plural(num_images, 'image')}"
    return needed, (f"{plural(num_images, 'image')} at batch {batch} "
                    f"{'is' if num_images == 1 else 'are'} {plural(per_epoch, 'step')} an epoch: "
                    f"{needed} epochs make the {MIN_STEPS} steps a model needs to learn")


def check_optimizer(name: str) -> str:
    """The --optimizer named (any case), or a one-line UsageError if vitcli has no such one."""
    return check_choice("--optimizer", name, OPTIMIZERS)


def has_muon() -> bool:
    """Whether this torch has Muon (torch.optim.Muon arrived in 2.9)."""
    import torch

    return hasattr(torch.optim, "Muon")


def round_up(size: int, multiple: int) -> int:
    return math.ceil(size / multiple) * multiple


def preset_for(typical_size: int) -> str:
    """The default preset for images of about `typical_size` px."""
    return next(name for limit, name in PRESET_FOR_SIZE if typical_size <= limit)


def preset_choice(options: TrainOptions, typical_size: int) -> tuple[str, str]:
    """(preset name, why): --model as given, else the preset for the images' typical size
    (their median shorter side), e.g. ("vit-pico", "chosen for 28-px images")."""
    if options.model:
        return options.model, "--model"
    return preset_for(typical_size), f"chosen for {typical_size}-px images"


def image_size_for(options: TrainOptions, typical_size: int, patch: int,
                   preset_size: int) -> int:
    """--img-size, or the data's own size (small images), or the preset's (large ones)."""
    if options.img_size:
        return options.img_size
    if typical_size <= SMALL_IMAGE_MAX:
        return round_up(typical_size, patch)
    return round_up(preset_size, patch)


# The architecture flags: (flag, TrainOptions field, ViTConfig field).
ARCH_FLAGS = [("--depth", "depth", "depth"), ("--embed-dim", "embed_dim", "embed_dim"),
              ("--heads", "heads", "num_heads"), ("--mlp-ratio", "mlp_ratio", "mlp_ratio"),
              ("--patch-embed", "patch_embed", "patch_embed"),
              ("--locality-attention", "locality_attention", "locality_attention"),
              ("--pooling", "pooling", "pooling"), ("--pos-embed", "pos_embed", "pos_embed")]


def _arch_flags(options: TrainOptions) -> list[tuple[str, Any]]:
    return [(flag, getattr(options, field)) for flag, field, _ in ARCH_FLAGS]


def architecture_overrides(options: TrainOptions) -> dict[str, Any]:
    """The --depth/--embed-dim/... flags as ViTConfig fields (only those given)."""
    changes = {key: getattr(options, field) for _, field, key in ARCH_FLAGS
               if getattr(options, field) is not None}
    if changes.get("pooling") == "mean":
        changes.setdefault("class_token", False)
    return changes


def default_patch(options: TrainOptions, base: ViTConfig, typical_size: int) -> int:
    """The preset's patch size; tiny images with the automatic preset keep its token grid.

    vit-pico is a 7×7 grid of patches: 4 px at 28 px, 5 px at 32 px (trained at 35),
    so that any tiny image gets the grid the recipe was measured with; the patch is rounded
    up, so the image is scaled up a little, never down.
    """
    if options.model is None and options.img_size is None and typical_size <= TINY_DATA_MAX:
        return max(1, math.ceil(typical_size / base.grid_size))
    return base.patch_size


def model_config(options: TrainOptions, *, typical_size: int, num_classes: int,
                 in_channels: int) -> ViTConfig:
    """The architecture to train from scratch, from the preset, the data and the flags."""
    name, _ = preset_choice(options, typical_size)
    base = get_preset(name).config
    patch = options.patch or default_patch(options, base, typical_size)
    size = image_size_for(options, typical_size, patch, base.image_size)
    extra = dict(SMALL_DATA_MODEL) if not options.model and typical_size <= SMALL_IMAGE_MAX \
        else {}
    extra.update(architecture_overrides(options))
    if options.patch_drop is not None:
        extra["patch_drop"] = options.patch_drop
    return base.replace(image_size=size, patch_size=patch, num_classes=num_classes,
                        in_channels=in_channels, drop_path=options.drop_path_for(size), **extra)
