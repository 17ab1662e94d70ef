"""The named architectures `--model` accepts: the ViT paper's and DeiT's sizes, and the
small presets vitcli measured for tiny images and CPUs (`vit models` lists them).

Each preset is a ViTConfig plus where its figures come from; `get_preset` looks one up by
name ("ViT-B/16", "vit_b16" and "vit-b16" are the same model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vitcli.errors import UsageError
from vitcli.model.config import ViTConfig


@dataclass(frozen=True)
class Preset:
    """A named architecture: the config plus where its figures come from."""

    name: str
    config: ViTConfig
    source: str
    description: str = ""


VIT_PAPER = "Dosovitskiy et al. 2021, Table 1"
DEIT_PAPER = "Touvron et al. 2021 (DeiT), Table 1"


def _paper(name: str, patch: int, dim: int, depth: int, heads: int, mlp: int, desc: str,
           source: str = VIT_PAPER) -> Preset:
    return Preset(
        name=name,
        config=ViTConfig(
            image_size=224, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
            mlp_ratio=mlp / dim,
        ),
        source=source,
        description=desc,
    )


def _small(name: str, size: int, patch: int, dim: int, depth: int, heads: int, mlp_ratio: float,
           desc: str, **extra: Any) -> Preset:
    return Preset(
        name=name,
        config=ViTConfig(
            image_size=size, patch_size=patch, in_channels=3, num_classes=10, embed_dim=dim,
            depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, **extra,
        ),
        source="vitcli small-image preset (see docs/small-data.md)",
        description=desc,
    )


# Width, depth, MLP size and heads: ViT paper Table 1 (B, L, H); DeiT Table 1 (Ti, S).
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _paper("vit-ti16", 16, 192, 12, 3, 768, "ViT-Ti/16", DEIT_PAPER),
        _paper("vit-s16", 16, 384, 12, 6, 1536, "ViT-S/16", DEIT_PAPER),
        _paper("vit-s32", 32, 384, 12, 6, 1536, "ViT-S/32", DEIT_PAPER),
        _paper("vit-b16", 16, 768, 12, 12, 3072, "ViT-B/16"),
        _paper("vit-b32", 32, 768, 12, 12, 3072, "ViT-B/32"),
        _paper("vit-l16", 16, 1024, 24, 16, 4096, "ViT-L/16"),
        _paper("vit-l32", 32, 1024, 24, 16, 4096, "ViT-L/32"),
        _paper("vit-h14", 14, 1280, 32, 16, 5120, "ViT-H/14"),
        # Small images (28-64 px): small patches so there are enough tokens, few layers so
        # that a few thousand images are enough.
        # 28-32 px (MNIST-like) from scratch in minutes: a 7×7 grid of patches (4 px at 28
        # px) with shifted patch tokenisation, 4 blocks of width 64, 2 heads, and patch
        # dropout of half the patches in training (Liu et al. 2022), so that a step costs
        # about what the earlier 5×5 grid's did while the model sees a finer grid: in the
        # same 2 minutes it scored higher on clothing (docs/small-data.md,
        # benchmarks/small_data.py).
        _small("vit-pico", 28, 4, 64, 4, 2, 2.0,
               "small images, 28 px, 4 px patches, shifted, patch dropout 0.5",
               patch_embed="shifted", patch_drop=0.5),
        _small("vit-nano", 32, 4, 128, 6, 4, 2.0, "small images, 32 px, 4 px patches"),
        _small("vit-micro", 32, 4, 192, 8, 3, 2.0, "small images, 32 px, 4 px patches"),
        _small("vit-mini", 64, 8, 256, 8, 4, 2.0, "small images, 64 px, 8 px patches"),
    )
}

# The largest training size of "tiny" images: vit-pico's 7×7 grid trains 32-px data at 35 px
# (5-px patches). The tiny-image training recipe (training/recipe.py) and the shift-only
# augmentation (data/augment.py) both apply up to this size; it lives here, below both.
TINY_IMAGE_MAX = 35


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called `name`, or a UsageError listing the valid names."""
    key = name.lower().replace("_", "-").replace("/", "")
    if key in PRESETS:
        return PRESETS[key]
    raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(PRESETS)}")
