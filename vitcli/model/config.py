"""ViT architecture config, the named presets, and their cost.

Pure Python (no torch) so that `vit models` and `vit --help` stay instant.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from vitcli.errors import Range, UsageError, plural

Pooling = Literal["cls", "mean", "map", "cls_mean"]
Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]
POOLINGS = ("cls", "mean", "map", "cls_mean")
POS_EMBEDS = ("learned", "sincos")
PATCH_EMBEDS = ("linear", "overlap", "shifted")
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
# timm's `global_pool` names → ours (what an importer of timm's config.json needs).
TIMM_GLOBAL_POOL = {"token": "cls", "avg": "mean", "map": "map", "token_avg": "cls_mean"}
PosEmbed = Literal["learned", "sincos"]
PatchEmbedKind = Literal["linear", "overlap", "shifted"]


@dataclass
class ViTConfig:
    """Everything needed to rebuild a VisionTransformer; stored in every model file."""

    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    pooling: Pooling = "cls"
    class_token: bool = True
    pos_embed: PosEmbed = "learned"
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    layer_norm_eps: float = 1e-6
    # Small-data options (all off for the paper's ViT): how patches become tokens, and
    # locality self-attention (learned temperature, no attention to self).
    patch_embed: PatchEmbedKind = "linear"
    locality_attention: bool = False
    # Patch dropout (Liu et al. 2022; timm's patch_drop_rate): the fraction of each training
    # image's patch tokens dropped at random after the position embedding; none at inference.
    patch_drop: float = 0.0
    # Options of the pretrained families (timm's VisionTransformer arguments in brackets).
    # Each default is the plain ViT, so files written before them load unchanged.
    # pooling: "cls" (timm 'token'), "mean" of the patch tokens ('avg'), "map" an
    # attention-pool head (SigLIP), "cls_mean" the class token concatenated with the mean
    # patch token (DINOv2's classifier; the head reads 2·D values).
    reg_tokens: int = 0  # register tokens after the class token (DINOv2 with registers)
    distilled: bool = False  # DeiT's distillation token + head_dist; logits = mean of 2 heads
    no_embed_class: bool = False  # position embedding for patches only, none for prefix tokens
    patch_bias: bool = True  # bias in the patch projection (CLIP has none)
    pre_norm: bool = False  # LayerNorm before the encoder (norm_pre; CLIP)
    init_values: float = 0.0  # layer scale γ initial value; 0 = no layer scale (ls1/ls2)
    qk_norm: bool = False  # LayerNorm on queries and keys per head (q_norm/k_norm)
    mlp_act: Activation = "gelu"  # gelu | gelu_tanh (SigLIP) | quick_gelu (OpenAI CLIP)
    final_norm: bool = True  # the LayerNorm after the encoder (CLIP's classifier skips it)
    fc_norm: bool = False  # LayerNorm after pooling instead of before it (MAE/BEiT fine-tunes)
    # Resampling the position embedding to another grid: bicubic with antialiasing (timm) or
    # without (transformers' DINOv2 interpolate_pos_encoding); it differs only when shrinking.
    pos_embed_antialias: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise UsageError for an impossible architecture, naming the valid choices.

        Every number is checked to be finite and in FIELD_RANGES first (model files come
        from strangers: 1,000,000 blocks or a NaN MLP ratio must not reach the allocator),
        then the parameter memory is estimated from the config alone and refused above
        MAX_PARAM_BYTES.
        """
        self._check_finite()
        if self.patch_size <= 0 or self.image_size <= 0:
            raise UsageError("image size and patch size must be positive")
        for name in ("in_channels", "embed_dim", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.num_classes < 0:
            raise UsageError(f"num_classes must be 0 (no head) or more, not {self.num_classes}")
        if self.mlp_ratio <= 0 or self.layer_norm_eps <= 0:
            raise UsageError("mlp_ratio and layer_norm_eps must be positive")
        for name in ("dropout", "attn_dropout", "drop_path", "patch_drop"):
            FIELD_RANGES[name].check(name, getattr(self, name))  # [0, 1)
        if self.image_size % self.patch_size:
            raise UsageError(size_mismatch(self.image_size, self.patch_size))
        if self.embed_dim % self.num_heads:
            raise UsageError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.pooling not in POOLINGS:
            raise UsageError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        if self.pooling in ("cls", "cls_mean") and not self.class_token:
            raise UsageError(f"pooling {self.pooling!r} needs class_token=True")
        if self.mlp_act not in ACTIVATIONS:
            raise UsageError(f"mlp_act must be one of {', '.join(ACTIVATIONS)}, "
                             f"not {self.mlp_act!r}")
        if not 0 <= self.reg_tokens <= 64:
            raise UsageError(f"reg_tokens must be in [0, 64], not {self.reg_tokens}")
        if not (self.init_values >= 0 and math.isfinite(self.init_values)):
            raise UsageError(f"init_values (layer scale) must be 0 (off) or positive, "
                             f"not {self.init_values}")
        if self.distilled and not (self.class_token and self.pooling == "cls"):
            raise UsageError("a distillation token needs a class token and pooling 'cls'")
        if self.distilled and self.fc_norm:
            raise UsageError("fc_norm is not supported with a distillation token")
        if self.fc_norm and self.pooling == "cls_mean":
            raise UsageError("fc_norm is not supported with pooling 'cls_mean'")
        if self.pos_embed not in POS_EMBEDS:
            raise UsageError(f"pos_embed must be 'learned' or 'sincos', not {self.pos_embed!r}")
        if self.patch_embed not in PATCH_EMBEDS:
            raise UsageError(
                f"patch_embed must be 'linear', 'overlap' or 'shifted', not {self.patch_embed!r}"
            )
        self._check_ranges()

    def _numbers(self) -> list[tuple[str, type, Any]]:
        return [(f.name, type(f.default), getattr(self, f.name))
                for f in dataclasses.fields(self) if type(f.default) in (int, float)]

    def _check_finite(self) -> None:
        """Every number field holds a finite number of its type (checked first)."""
        for name, kind, value in self._numbers():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"{name} must be a number, not {value!r}")
            if not math.isfinite(value):
                raise UsageError(f"{name} must be a finite number, not {value}")
            if kind is int and not float(value).is_integer():
                raise UsageError(f"{name} must be a whole number, not {value!r}")

    def _check_ranges(self) -> None:
        """Every number within FIELD_RANGES, the token count and parameter memory bounded."""
        for name, _, value in self._numbers():
            problem = FIELD_RANGES[name].problem(value) if name in FIELD_RANGES else None
            if problem:
                raise UsageError(f"{name} {problem}")
        if self.patch_size > self.image_size:
            raise UsageError(f"patch size {self.patch_size} is larger than the image size "
                             f"{self.image_size}")
        if self.num_heads > self.embed_dim:
            raise UsageError(f"num_heads {self.num_heads} is more than embed_dim {self.embed_dim}")
        if int(self.embed_dim * self.mlp_ratio) < 1:
            raise UsageError(f"mlp_ratio {self.mlp_ratio:g} leaves no MLP units at embed_dim "
                             f"{self.embed_dim}")
        tokens = (self.image_size // self.patch_size) ** 2
        if tokens > MAX_TOKENS:
            raise UsageError(f"image size {self.image_size} with {self.patch_size}-px patches "
                             f"is {tokens:,} tokens; at most {MAX_TOKENS:,} (attention cost "
                             "grows with the square of the tokens)")
        size = 4 * count_params(self)
        if size > MAX_PARAM_BYTES:
            raise UsageError(f"this architecture has {size // 4:,} parameters "
                             f"({size / 2**30:.1f} GiB in float32); at most "
                             f"{MAX_PARAM_BYTES / 2**30:.0f} GiB")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens in front of the patches: [class, distillation, registers…], in that order."""
        return int(self.class_token) + int(self.distilled) + self.reg_tokens

    @property
    def pos_prefix_tokens(self) -> int:
        """Prefix tokens that have a slot in the position embedding (none: no_embed_class)."""
        return 0 if self.no_embed_class else self.num_prefix_tokens

    @property
    def num_tokens(self) -> int:
        """Sequence length the encoder sees: patches plus the prefix tokens."""
        return self.num_patches + self.num_prefix_tokens

    @property
    def train_patches(self) -> int:
        """Patch tokens a training step sees: fewer than num_patches with patch dropout."""
        return kept_patches(self.num_patches, self.patch_drop)

    @property
    def train_tokens(self) -> int:
        """Sequence length in training: fewer than num_tokens with patch dropout."""
        return self.train_patches + self.num_prefix_tokens

    @property
    def head_in_dim(self) -> int:
        """Values the classifier reads: D, or 2·D for 'cls_mean' (DINOv2)."""
        return 2 * self.embed_dim if self.pooling == "cls_mean" else self.embed_dim

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch vector, P·P·C."""
        return self.patch_size * self.patch_size * self.in_channels

    @property
    def token_input_dim(self) -> int:
        """Values each token is projected from: P·P·C, or more for the small-data embeddings
        (overlap: a (P+2)² window; shifted: the patch and four half-patch-shifted copies)."""
        if self.patch_embed == "overlap":
            return (self.patch_size + 2) ** 2 * self.in_channels
        if self.patch_embed == "shifted":
            return 5 * self.patch_dim
        return self.patch_dim

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def replace(self, **changes: Any) -> ViTConfig:
        """A copy with some fields changed (validated)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UsageError(f"{plural(len(unknown), 'unknown model option')}: "
                             f"{', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        """Build from a dict, ignoring keys from newer versions we do not know."""
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        for key, value in values.items():
            expected = type(fields[key])  # every field has a plain default of its own type
            if not fits_json_type(value, expected):
                raise ValueError(f"config field {key!r} should be {expected.__name__}, "
                                 f"not {value!r}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> ViTConfig:
        return cls.from_dict(json.loads(text))


# The range of every number in a config (ViT-H/14 and ViT-22B sit well inside). Fields not
# named here are still checked to be finite.
FIELD_RANGES: dict[str, Range] = {
    "image_size": Range(1, 8192),
    "patch_size": Range(1, 1024),
    "in_channels": Range(1, 64),
    "num_classes": Range(0, 1_000_000),
    "embed_dim": Range(1, 32_768),
    "depth": Range(1, 256),
    "num_heads": Range(1, 1024),
    "mlp_ratio": Range(0.01, 64.0),
    "dropout": Range(0.0, 1.0, high_open=True),
    "attn_dropout": Range(0.0, 1.0, high_open=True),
    "drop_path": Range(0.0, 1.0, high_open=True),
    "patch_drop": Range(0.0, 1.0, high_open=True),
    "layer_norm_eps": Range(1e-12, 1.0),
    "reg_tokens": Range(0, 64),
    "init_values": Range(0.0, 1e3),
}
MAX_TOKENS = 16_384  # patches per image (a 128×128 grid: 1024 px in 8-px patches)
MAX_PARAM_BYTES = 64 * 2**30  # float32 parameters: ViT-22B is 88 GB, ViT-G/14 7.5 GB


def fits_json_type(value: Any, expected: type) -> bool:
    """JSON-typed check: bools are not ints, and an int is a fine float."""
    if expected is bool or isinstance(value, bool):
        return expected is bool and isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def size_mismatch(size: int, patch: int) -> str:
    """What is wrong when `size` px cannot be cut into `patch` px patches, and what to use."""
    if patch > size:  # no multiple of the patch is near: the patch is what is wrong
        return (f"patch size {patch} is larger than the {size} px input; use a patch of at "
                f"most {size} px (16 is the usual)")
    near = " or ".join(map(str, nearest_sizes(size, patch)))
    return f"image size {size} is not divisible by patch size {patch}; nearest valid sizes: {near}"


def nearest_sizes(size: int, patch: int) -> list[int]:
    """The multiples of `patch` just below and above `size` (positive ones only)."""
    below = (size // patch) * patch
    return [s for s in (below, below + patch) if s > 0]


def count_params(config: ViTConfig) -> int:
    """Trainable parameter count, computed from the config alone (no torch needed)."""
    d, p, c = config.embed_dim, config.patch_size, config.in_channels
    kernel = p + 2 if config.patch_embed == "overlap" else p
    in_ch = c * 5 if config.patch_embed == "shifted" else c
    n = in_ch * kernel * kernel * d + (d if config.patch_bias else 0)  # patch projection
    if config.patch_embed == "shifted":
        n += 2 * in_ch * p * p  # LayerNorm over the shifted patch vector
    n += d * (config.num_prefix_tokens)  # class, distillation and register tokens
    if config.pos_embed == "learned":
        n += (config.num_patches + config.pos_prefix_tokens) * d
    n += 2 * d if config.pre_norm else 0
    m = config.mlp_dim
    block = (d * 3 * d + (3 * d if config.qkv_bias else 0)) + (d * d + d)  # qkv, proj
    block += (d * m + m) + (m * d + d) + 4 * d  # fc1, fc2, two norms
    block += 1 if config.locality_attention else 0  # learned temperature
    block += 2 * d if config.init_values else 0  # layer scale γ on both branches
    block += 4 * (d // config.num_heads) if config.qk_norm else 0  # q and k norms
    n += config.depth * block
    n += 2 * d if config.final_norm or config.fc_norm else 0  # final norm or fc_norm
    if config.pooling == "map":  # latent, q, kv, proj, norm, MLP
        bias = d if config.qkv_bias else 0
        n += d + (d * d + bias) + (2 * d * d + 2 * bias) + (d * d + d) + 2 * d
        n += (d * m + m) + (m * d + d)
    heads = 2 if config.distilled else 1
    c = config.num_classes
    n += heads * (config.head_in_dim * c + c) if c else 0
    return n


def kept_patches(num_patches: int, rate: float) -> int:
    """How many of `num_patches` patch tokens patch dropout keeps at `rate` (at least one)."""
    return max(1, round(num_patches * (1.0 - rate)))


def activation_bytes(config: ViTConfig, batch: int, *, training: bool = True) -> int:
    """Estimated float32 bytes of activations for one step at `batch` images (an upper-bound
    style estimate, within about 2x of what torch keeps): training keeps every block's
    inputs, attention and MLP outputs for the backward pass; inference about one block's.
    In training the blocks see only the tokens patch dropout keeps (config.train_tokens);
    the embedding still holds every patch.
    """
    n, d, m, h = config.num_tokens, config.embed_dim, config.mlp_dim, config.num_heads
    t = config.train_tokens if training else n  # tokens each block holds
    per_block = t * (10 * d + 3 * m) + 2 * h * t * t  # norms, q/k/v, proj, residuals; MLP; attn
    blocks = config.depth if training else 2
    return 4 * batch * (blocks * per_block + 4 * n * d)


def machine_memory(device_type: str = "cpu", index: int = 0) -> int | None:
    """Bytes of memory on the device (physical RAM for the CPU), or None if unknown."""
    if device_type == "cuda":
        try:
            import torch

            return int(torch.cuda.get_device_properties(index).total_memory)
        except Exception:  # noqa: BLE001 - no CUDA: unknown
            return None
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(config: ViTConfig, batch: int, *, device_type: str = "cpu", index: int = 0,
               training: bool = True, what: str = "--batch-size") -> None:
    """UsageError when weights (+ gradients and AdamW state) and activations at `batch`
    clearly cannot fit in the device's memory: said before anything is allocated."""
    weights = 4 * count_params(config) * (4 if training else 1)
    need = weights + activation_bytes(config, batch, training=training)
    have = machine_memory(device_type, index)
    # Refused only when clearly impossible (over twice the memory): the estimate is rough,
    # and a run that might just fit is the user's to try.
    if have is not None and need > 2 * have:
        raise UsageError(
            f"{config.image_size}-px images in {config.patch_size}-px patches "
            f"({config.num_tokens:,} tokens) at {what} {batch:,} need about {need / 2**30:,.1f} "
            f"GiB for a {'training step' if training else 'forward pass'}; this "
            f"{device_type.upper() if device_type == 'cpu' else 'GPU'} has "
            f"{have / 2**30:,.1f} GiB. Use a smaller image size, a larger patch or a smaller "
            "batch")


def count_macs(config: ViTConfig, image_size: int | None = None, *,
               training: bool = False) -> int:
    """Multiply-accumulates of one image's forward pass (matmuls only; norms/softmax are
    negligible); in training the encoder sees only the tokens patch dropout keeps."""
    size = image_size or config.image_size
    grid = size // config.patch_size
    n_patches = grid * grid
    kept = kept_patches(n_patches, config.patch_drop) if training else n_patches
    n = kept + config.num_prefix_tokens
    d, m = config.embed_dim, config.mlp_dim
    kernel = config.patch_size + 2 if config.patch_embed == "overlap" else config.patch_size
    in_ch = config.in_channels * (5 if config.patch_embed == "shifted" else 1)
    macs = n_patches * in_ch * kernel * kernel * d  # patch embedding
    per_block = n * d * 3 * d  # qkv
    per_block += 2 * n * n * d  # q·kᵀ and attn·v over all heads
    per_block += n * d * d  # output projection
    per_block += 2 * n * d * m  # MLP
    macs += config.depth * per_block
    if config.pooling == "map":  # one latent query: q, kv over n tokens, proj, MLP
        macs += d * d + n * 2 * d * d + 2 * n * d + d * d + 2 * d * m
    macs += config.head_in_dim * config.num_classes * (2 if config.distilled else 1)
    return macs


# A training step's backward pass does about twice the forward's multiply-accumulates (the
# gradients of the inputs and of the weights), so a step is about three forward passes.
TRAINING_STEP_PASSES = 3


def call_macs(config: ViTConfig, batch: int, *, image_size: int | None = None,
              training: bool = False) -> int:
    """Multiply-adds of one call on `batch` images: a forward pass, or a training step
    (TRAINING_STEP_PASSES forward passes' worth). What devices.choose_precision weighs."""
    return (count_macs(config, image_size, training=training) * batch
            * (TRAINING_STEP_PASSES if training else 1))


def gflops(config: ViTConfig, image_size: int | None = None) -> float:
    """GFLOPs for one image, counted as 2 × MACs."""
    return 2 * count_macs(config, image_size) / 1e9
