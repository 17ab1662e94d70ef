"""vitcli.data.augment: batched augmentation keeps shapes and targets sane and is reproducible."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vitcli.data.augment import (
    ALL_OPS,
    AUGMENT_LEVELS,
    AugmentPolicy,
    BatchAugment,
    default_level,
    make_policy,
    normalize_batch,
    soft_cross_entropy,
)
from vitcli.errors import UsageError
from vitcli.model.preprocess import Preprocessing

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def batch(b: int = 8, size: int = 16, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (b, size, size, channels), dtype=torch.uint8, generator=g)
    return pixels, torch.arange(b) % 4


def augment(policy: AugmentPolicy, smoothing: float = 0.0, channels: int = 3) -> BatchAugment:
    return BatchAugment(policy, image_size=16, mean=MEAN[:channels], std=STD[:channels],
                        num_classes=4, label_smoothing=smoothing)


@pytest.mark.parametrize("pre", [Preprocessing(image_size=16),
                                 Preprocessing(image_size=16, mean=(0.3,), std=(0.7,),
                                               color_mode="L")])
def test_normalize_batch_equals_preprocessing(pre: Preprocessing) -> None:
    pixels, _ = batch(channels=pre.channels)
    ours = normalize_batch(pixels, pre.mean, pre.std)
    assert ours.dtype == torch.float32 and ours.shape == (8, pre.channels, 16, 16)
    assert torch.equal(ours, torch.from_numpy(pre.normalize(pixels.numpy())))


@pytest.mark.parametrize("level", AUGMENT_LEVELS)
def test_levels_give_sane_batches(level: str) -> None:
    pixels, labels = batch()
    x, targets = augment(make_policy(level), smoothing=0.1)(pixels, labels)
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.isfinite(x).all()
    assert targets.shape == (8, 4) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(8)) and (targets >= 0).all()


def test_none_is_the_eval_normalisation() -> None:
    pixels, labels = batch()
    x, targets = augment(make_policy("none"))(pixels, labels)
    assert torch.equal(x, normalize_batch(pixels, MEAN, STD))
    assert torch.equal(targets, torch.nn.functional.one_hot(labels, 4).float())


def test_label_smoothing() -> None:
    pixels, labels = batch()
    _, targets = augment(make_policy("none"), smoothing=0.2)(pixels, labels)
    assert torch.allclose(targets.max(1).values, torch.full((8,), 0.85))
    assert torch.allclose(targets.min(1).values, torch.full((8,), 0.05))


@pytest.mark.parametrize("level", ["light", "strong"])
def test_same_seed_same_output(level: str) -> None:
    pixels, labels = batch()
    aug = augment(make_policy(level), smoothing=0.1)
    torch.manual_seed(5)
    a = aug(pixels, labels)
    torch.manual_seed(5)
    b = aug(pixels, labels)
    c = aug(pixels, labels)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("op", ALL_OPS)
def test_each_op_keeps_pixels_in_range(op: str) -> None:
    pixels, labels = batch()
    policy = AugmentPolicy(ops=(op,), num_ops=1, magnitude=1.0)
    x, _ = augment(policy, channels=3)(pixels, labels)
    lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    per_channel = x.transpose(0, 1).reshape(3, -1)  # (C, B·H·W)
    assert torch.isfinite(x).all()
    assert (per_channel.min(1).values >= lo - 1e-4).all()
    assert (per_channel.max(1).values <= hi + 1e-4).all()
    if op != "identity":
        assert not torch.equal(x, normalize_batch(pixels, MEAN, STD))


def test_ops_work_on_grey_images() -> None:
    pixels, labels = batch(channels=1)
    x, _ = augment(make_policy("strong"), channels=1)(pixels, labels)
    assert x.shape == (8, 1, 16, 16) and torch.isfinite(x).all()


def test_flip_only_mirrors_some_images_exactly() -> None:
    pixels, labels = batch(b=32)
    x, _ = augment(AugmentPolicy(hflip=True))(pixels, labels)
    plain = normalize_batch(pixels, MEAN, STD)
    same = torch.isclose(x, plain, atol=1e-4).flatten(1).all(1)
    mirrored = torch.isclose(x, plain.flip(-1), atol=1e-4).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_random_resized_crop_zooms_in() -> None:
    # Left half black, right half white: a crop of the middle shows both; zoomed crops
    # with scale ≤ 0.3 often show only one of them.
    pixels = torch.zeros(16, 16, 16, 3, dtype=torch.uint8)
    pixels[:, :, 8:] = 255
    policy = AugmentPolicy(crop_scale=(0.1, 0.3))
    x, _ = augment(policy)(pixels, torch.zeros(16, dtype=torch.long))
    red = x[:, 0].flatten(1)  # (B, H·W), one channel: one mean/std
    spread = red.max(1).values - red.min(1).values
    assert (spread < 0.5).any() and (spread > 4.0).any()  # some inside one half, some not


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mixing_gives_two_class_soft_targets(mix: str) -> None:
    pixels, labels = batch()
    policy = AugmentPolicy(mixup_alpha=1.0 if mix == "mixup" else 0.0,
                           cutmix_alpha=1.0 if mix == "cutmix" else 0.0)
    torch.manual_seed(0)
    x, targets = augment(policy)(pixels, labels)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert ((targets > 0).sum(1) <= 2).all()
    lam = targets[torch.arange(8), labels]
    partner = targets[torch.arange(8), labels.flip(0)]
    assert torch.allclose(lam + partner, torch.ones(8)) or (labels == labels.flip(0)).any()
    if mix == "cutmix":  # every pixel comes from the image itself or its partner
        plain = normalize_batch(pixels, MEAN, STD)
        own = torch.isclose(x, plain) | torch.isclose(x, plain.flip(0))
        assert own.all()


def test_random_erasing_changes_a_box() -> None:
    pixels, labels = batch()
    x, _ = augment(AugmentPolicy(erase_prob=1.0))(pixels, labels)
    changed = ~torch.isclose(x, normalize_batch(pixels, MEAN, STD))
    assert changed.flatten(1).any(1).all()
    assert (changed.flatten(1).float().mean(1) <= 0.5).all()


def test_soft_cross_entropy_matches_hard_labels() -> None:
    logits = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    one_hot = torch.nn.functional.one_hot(labels, 4).float()
    assert torch.allclose(soft_cross_entropy(logits, one_hot),
                          torch.nn.functional.cross_entropy(logits, labels))


def test_levels_and_policies() -> None:
    assert {default_level(n) for n in (10, 4_000, 50_000, 1_000_000)} <= set(AUGMENT_LEVELS)
    assert default_level(4_000) == "light" and default_level(100_000) == "strong"
    assert make_policy("strong", hflip=False).hflip is False
    assert not make_policy("none").geometric and make_policy("strong").mixes
    with pytest.raises(UsageError, match="none, light, strong"):
        make_policy("medium")
    with pytest.raises(UsageError, match="unknown augmentation op"):
        dataclasses.replace(make_policy("light"), ops=("invert_everything",))


def test_augment_runs_on_numpy_cached_pixels() -> None:
    cached = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    x, t = augment(make_policy("light"))(torch.from_numpy(cached), torch.tensor([0, 1, 2, 3]))
    assert x.shape == (4, 3, 16, 16) and t.shape == (4, 4)


def test_translate_shifts_every_image_within_the_limit_in_both_axes():
    from vitcli.data.augment import AugmentPolicy, BatchAugment

    torch.manual_seed(0)
    size, limit = 32, 0.1
    pixels = torch.zeros(64, size, size, 1, dtype=torch.uint8)
    pixels[:, 14:18, 14:18] = 255  # a bright 4×4 spot in the middle
    aug = BatchAugment(AugmentPolicy(level="light", translate=limit), image_size=size,
                       mean=(0.0,), std=(1.0,), num_classes=2)
    x, _ = aug(pixels, torch.zeros(64, dtype=torch.long))
    weight = (x[:, 0] - 0.5).clamp(min=0)  # (B, H, W): above the mid-grey fill at the edges
    rows = torch.arange(size, dtype=torch.float32)
    cy = (weight.sum(2) * rows).sum(1) / weight.sum((1, 2))
    cx = (weight.sum(1) * rows).sum(1) / weight.sum((1, 2))
    dy, dx = cy - 15.5, cx - 15.5  # the spot's centre was at 15.5
    assert dy.abs().max() <= limit * size + 0.5 and dx.abs().max() <= limit * size + 0.5
    assert dy.abs().mean() > 0.5 and dx.abs().mean() > 0.5  # both axes really move
    # a pure shift: a 4×4 spot keeps fully bright pixels (no zoom, blur or colour change)
    assert (x[:, 0].amax(dim=(1, 2)) > 0.99).all()


def test_light_for_small_images_is_shift_and_erase_only():
    from vitcli.data.augment import make_policy

    small = make_policy("light", hflip=False, image_size=28)
    assert small.translate > 0 and small.crop_scale is None and not small.hflip
    assert small.num_ops == 0 and not small.mixes and small.fill == "edge"
    assert small.erase_prob == 0.25
    big = make_policy("light", image_size=224)
    assert big.crop_scale is not None and big.hflip


@pytest.mark.parametrize("fill", ["edge", "grey"])
def test_what_fills_the_area_a_shift_brings_in(fill: str):
    """A dark-background digit shifted with "edge" fill keeps a black background; RandAugment's
    mid-grey fill paints a border that no test image has."""
    from vitcli.data.augment import AugmentPolicy, BatchAugment

    torch.manual_seed(0)
    size = 28
    pixels = torch.zeros(32, size, size, 1, dtype=torch.uint8)
    pixels[:, 10:18, 10:18] = 255  # a white square on black, away from every edge
    aug = BatchAugment(AugmentPolicy(level="light", translate=0.1, fill=fill), image_size=size,
                       mean=(0.0,), std=(1.0,), num_classes=2)
    x, _ = aug(pixels, torch.zeros(32, dtype=torch.long))
    corners = x[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]  # (B, 4): brought in by most shifts
    if fill == "edge":
        assert corners.abs().max() < 1e-6
    else:  # most images show grey in a corner (the one the shift moved away from)
        assert (corners > 0.2).any(dim=1).float().mean() > 0.8
    assert (x[:, 0].amax(dim=(1, 2)) > 0.99).all()  # the square itself is still there
