"""Starting from pre-trained weights: init_from, kernel and grid resizing, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import CLASSES, TINY
from vitcli.model.checkpoint import save_model
from vitcli.model.vit import create_model
from vitcli.training.finetune import (
    adapt_channels,
    adapt_shifted_patch_embed,
    freeze_backbone,
    init_config,
    init_from,
    resize_patch_embed,
)


def _fresh(**changes):
    return create_model(**{**TINY, "num_classes": len(CLASSES), **changes}).eval()


def test_same_config_loads_everything_and_gives_same_logits(tiny_model, tiny_model_file):
    model = _fresh()
    report = init_from(model, tiny_model_file)
    assert not report.head_replaced and not report.skipped
    assert sorted(report.loaded) == sorted(tiny_model.state_dict())
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), tiny_model(x))


def test_head_replaced_when_classes_differ(tiny_model, tiny_model_file):
    model = _fresh(num_classes=5)
    head_before = model.head.weight.clone()
    report = init_from(model, tiny_model_file)
    assert report.head_replaced
    assert any("new head: 5 classes" in line for line in report.lines)
    assert torch.equal(model.head.weight, head_before)  # fresh, not the source's
    assert torch.equal(model.blocks[1].mlp.fc2.weight, tiny_model.blocks[1].mlp.fc2.weight)
    assert "head.weight" not in report.loaded


def test_pos_embed_resampled_for_new_image_size(tiny_model, tiny_model_file):
    model = _fresh(image_size=48)  # grid 4×4 → 6×6
    report = init_from(model, tiny_model_file)
    assert model.pos_embed.shape == (1, 1 + 36, 32)
    assert torch.equal(model.pos_embed[:, 0], tiny_model.pos_embed[:, 0])  # class token kept
    assert any("resampled 4×4 → 6×6" in line for line in report.lines)
    # Resampling back to the old grid lands near the original (smooth bicubic round trip).
    from vitcli.model.vit import resample_pos_embed

    back = resample_pos_embed(model.pos_embed.detach(), (4, 4), (6, 6), 1)
    assert torch.allclose(back[:, 0], tiny_model.pos_embed[:, 0])
    assert (back - tiny_model.pos_embed).abs().mean() < tiny_model.pos_embed.abs().mean()


def test_resample_is_identity_at_same_size(tiny_model, tiny_model_file):
    model = _fresh()
    init_from(model, tiny_model_file)
    assert torch.equal(model.pos_embed, tiny_model.pos_embed)


def test_patch_kernel_pi_resize_keeps_each_token():
    """FlexiViT: <x, w> = <resize(x), resize_pi(w)> exactly for an upsampled patch."""
    w = torch.randn(6, 3, 4, 4)
    new = resize_patch_embed(w, 8)
    assert new.shape == (6, 3, 8, 8)
    patch = torch.randn(5, 3, 4, 4)
    big = F.interpolate(patch, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(F.conv2d(big, new, stride=8), F.conv2d(patch, w, stride=4),
                               atol=1e-4, rtol=1e-4)
    # Nearly the same on a whole smooth image resized by P'/P (patch edges see neighbours).
    image = F.interpolate(torch.randn(1, 3, 3, 3), size=(32, 32), mode="bicubic",
                          align_corners=False)
    tokens = F.conv2d(image, w, stride=4)
    image2 = F.interpolate(image, size=(64, 64), mode="bilinear", align_corners=False)
    tokens2 = F.conv2d(image2, new, stride=8)
    assert ((tokens2 - tokens).norm() / tokens.norm()) < 0.1
    # A naive kernel resize without the PI correction is far off (scale by area is missing).
    naive = F.interpolate(w, size=(8, 8), mode="bilinear", align_corners=False)
    assert ((F.conv2d(image2, naive, stride=8) - tokens).norm() / tokens.norm()) > 0.5


def test_patch_size_change_through_init_from(tiny_model, tiny_model_file):
    model = _fresh(patch_size=16)  # 8 → 16 px: grid 4×4 → 2×2
    report = init_from(model, tiny_model_file)
    assert any("kernel resized 8 → 16" in line for line in report.lines)
    assert any("resampled 4×4 → 2×2" in line for line in report.lines)
    expected = resize_patch_embed(tiny_model.patch_embed.proj.weight.detach(), 16)
    torch.testing.assert_close(model.patch_embed.proj.weight, expected)
    assert torch.equal(model.patch_embed.proj.bias, tiny_model.patch_embed.proj.bias)


def _shifted_source(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    """A vitcli-style small-image model (shifted patch tokens) with non-trivial norm weights."""
    model = _fresh(patch_embed="shifted")
    with torch.no_grad():
        for p in model.patch_embed.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model, save_model(tmp_path / "shifted.safetensors", model, class_names=CLASSES)


def _smooth(size: int) -> torch.Tensor:
    """Smooth images, so that resizing them loses little."""
    return F.interpolate(torch.rand(2, 3, 4, 4), size=(size, size), mode="bicubic",
                         align_corners=False)


def test_shifted_patch_embed_fold_is_exact_and_resize_keeps_tokens(tmp_path: Path):
    source, path = _shifted_source(tmp_path)
    state = source.state_dict()
    image = _smooth(32)
    tokens = source.patch_embed(image)[0]  # (B, 16, D)
    # Same size and channels: folding the norm into the projection changes nothing.
    same = _fresh(patch_embed="shifted")
    same.load_state_dict({**state, **adapt_shifted_patch_embed(
        state, patch=8, channels=3, new_patch=8, new_channels=3)})
    torch.testing.assert_close(same.patch_embed(image)[0], tokens, atol=1e-4, rtol=1e-4)
    # 8 → 16 px patches on the image resized 2×: the same tokens up to the norm's scale.
    big = _fresh(patch_embed="shifted", patch_size=16, image_size=64)
    report = init_from(big, path)
    assert any("shifted patch embedding: norm folded into the projection, kernel resized "
               "8 → 16 px" in line for line in report.lines), report.lines
    assert "patch_embed.proj.weight" in report.loaded and not report.skipped
    image2 = F.interpolate(image, size=(64, 64), mode="bilinear", align_corners=False)
    error = (big.patch_embed(image2)[0] - tokens).norm() / tokens.norm()
    fresh = _fresh(patch_embed="shifted", patch_size=16, image_size=64)
    fresh_error = (fresh.patch_embed(image2)[0] - tokens).norm() / tokens.norm()
    assert error < 0.2 and fresh_error > 0.8, (error, fresh_error)
    # 3 → 1 channels: a grey picture gives exactly the token the RGB model gave.
    grey_model = _fresh(patch_embed="shifted", in_channels=1)
    init_from(grey_model, path)
    grey = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(grey_model.patch_embed(grey)[0],
                               source.patch_embed(grey.expand(-1, 3, -1, -1))[0],
                               atol=1e-4, rtol=1e-4)


def test_channels_one_from_three_is_exact_on_grey(tiny_model, tiny_model_file):
    model = _fresh(in_channels=1)
    report = init_from(model, tiny_model_file)
    assert any("3 → 1 channels" in line for line in report.lines)
    grey = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(model(grey), tiny_model(grey.expand(-1, 3, -1, -1)),
                               atol=1e-5, rtol=1e-5)
    w = torch.randn(4, 1, 2, 2)
    assert adapt_channels(w, 3).shape == (4, 3, 2, 2)
    torch.testing.assert_close(adapt_channels(adapt_channels(w, 3), 1), w)


def test_width_mismatch_is_a_clear_error(tiny_model_file):
    from vitcli.errors import VitError

    with pytest.raises(VitError, match="width 32 does not match the model's 64"):
        init_from(_fresh(embed_dim=64), tiny_model_file)


def test_freeze_backbone_leaves_only_head_trainable(tiny_model):
    tiny_model = create_model(num_classes=3, drop_path=0.3, dropout=0.2, attn_dropout=0.2,
                              patch_drop=0.5, **TINY).train()
    frozen = freeze_backbone(tiny_model)
    x = torch.randn(2, 3, 32, 32)
    # No random drops in the frozen features, patches included (the head's dropout stays).
    features = tiny_model.forward_features(x)
    assert features.shape[1] == tiny_model.config.num_tokens  # all 16 patches + the class token
    torch.testing.assert_close(features, tiny_model.forward_features(x))
    assert tiny_model.head_drop.p == 0.2
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
    head = tiny_model.head.weight.numel() + tiny_model.head.bias.numel()
    assert frozen == sum(p.numel() for p in tiny_model.parameters()) - head
    tiny_model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert tiny_model.head.weight.grad is not None
    assert tiny_model.blocks[0].attn.qkv.weight.grad is None


def test_init_config_keeps_source_architecture(tmp_path: Path, tiny_model):
    from vitcli.model.preprocess import Preprocessing

    pre = Preprocessing(image_size=32, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    path = save_model(tmp_path / "m.safetensors", tiny_model, class_names=CLASSES,
                      preprocessing=pre)
    config, pre2, names = init_config(path, image_size=None)
    assert config == tiny_model.config and names == CLASSES and pre2 == pre
    config, pre2, names = init_config(path, image_size=48, num_classes=5, in_channels=1)
    assert (config.image_size, config.num_classes, config.depth) == (48, 5, 2)
    assert pre2.image_size == 48 and pre2.color_mode == "L"
    assert pre2.mean == pytest.approx((0.2,)) and len(names) == 5


# ------------------------------------------------------------------- end to end, with the trainer

ANGLES = {"horizontal": 0, "vertical": 90, "diagonal": 45, "antidiagonal": 135}


def _bars(root: Path, classes: list[str], per_class: int, seed: int,
          width: tuple[int, int] = (2, 4)) -> Path:
    """root/<orientation>/<i>.png: one or two bright lines at that angle on a noisy background."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        t = np.deg2rad(ANGLES[name])
        along, across = np.array([np.cos(t), np.sin(t)]), np.array([np.sin(t), -np.cos(t)])
        for i in range(per_class):
            noise = rng.integers(0, 90, 3) + rng.normal(0, 20, (32, 32, 3))
            image = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
            draw = ImageDraw.Draw(image)
            centre = 16 + rng.uniform(-8, 8) * across
            for k in ((-1, 1) if rng.random() < 0.5 else (0,)):
                a, b = centre + 6 * k * across - 30 * along, centre + 6 * k * across + 30 * along
                draw.line([tuple(a), tuple(b)], width=int(rng.integers(*width)),
                          fill=tuple(int(v) for v in rng.integers(150, 256, 3)))
            image.save(root / name / f"{i:03d}.png")
    return root


@pytest.mark.slow
def test_finetuning_reaches_target_in_fewer_steps_than_scratch(tmp_path: Path):
    """Pre-train on 4 line orientations; fine-tune on 2 of them, thinner, from 12 images."""
    from vitcli.training.recipe import TrainOptions
    from vitcli.training.trainer import train

    source = _bars(tmp_path / "four", list(ANGLES), 40, seed=0)
    target = ["diagonal", "antidiagonal"]
    small = _bars(tmp_path / "two", target, 6, seed=1, width=(1, 3))
    val = _bars(tmp_path / "two-val", target, 25, seed=2, width=(1, 3))
    # The architecture of the runs from scratch; the --init run takes it from its source.
    arch = {"model": "vit-nano", "depth": 2, "embed_dim": 32, "heads": 2, "mlp_ratio": 2.0}
    # AdamW throughout: the fine-tune (AdamW, as every --init run) against scratch, same optimiser.
    common = {"patch": 8, "drop_path": 0.0, "augment": "none", "label_smoothing": 0.0,
              "optimizer": "adamw", "device": "cpu", "threads": 1, "seed": 1,
              "project": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")}
    pre = train(TrainOptions(data=str(source), epochs=25, batch_size=32, lr=3e-3, warmup=1,
                             val_split=0.2, **arch, **common))
    assert pre.best_top1 is not None and pre.best_top1 > 0.6

    def steps_to(target_top1: float, **extra) -> tuple[float, list]:
        rows: list[dict] = []
        train(TrainOptions(data=str(small), val=str(val), epochs=10, batch_size=8, lr=1e-3,
                           warmup=0, **{**common, **extra}),
              on_event=lambda kind, **f: rows.append(f["row"]) if kind == "epoch_end" else None)
        hit = [r["step"] for r in rows if r["val_top1"] >= target_top1]
        return (hit[0] if hit else float("inf")), [round(r["val_top1"], 2) for r in rows]

    finetuned, curve_ft = steps_to(0.8, init=str(pre.last_path))
    scratch, curve_scratch = steps_to(0.8, **arch)
    assert finetuned < float("inf"), curve_ft
    assert finetuned < scratch, (curve_ft, curve_scratch)


# ---------------------------------------------------------------- end to end, through the CLI


def _cli_train(tmp_path: Path, init: Path, data: Path, name: str, *extra: str) -> tuple[str, Path]:
    from typer.testing import CliRunner

    from vitcli.cli import app

    result = CliRunner().invoke(app, [
        "train", "--init", str(init), "--data", str(data), "--epochs", "1", "--batch-size", "8",
        "--device", "cpu", "--project", str(tmp_path / "runs"), "--name", name,
        "--cache-dir", str(tmp_path / "cache"), *extra])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split()), tmp_path / "runs" / name / "weights"


@pytest.mark.slow
def test_cli_init_new_classes_patch_and_image_size(tmp_path: Path):
    from tests.conftest import make_image_folder
    from vitcli.model.checkpoint import load_model

    _, source = _shifted_source(tmp_path)
    data = make_image_folder(tmp_path / "two", per_class=6, classes=["circle", "square"])
    out, weights = _cli_train(tmp_path, source, data, "ft", "--patch", "4", "--img-size", "48")
    assert "loaded" in out and "new head: 2 classes instead of 3" in out
    assert "kernel resized 8 → 4 px" in out and "resampled 4×4 → 12×12" in out
    assert "fresh init" not in out  # everything but the head was carried over
    trained = load_model(weights / "last.safetensors")
    c = trained.config
    assert (c.image_size, c.patch_size, c.num_classes, c.patch_embed) == (48, 4, 2, "shifted")
    assert trained.class_names == ["circle", "square"]
    assert trained.model(torch.rand(1, 3, 48, 48)).shape == (1, 2)


@pytest.mark.slow
def test_cli_freeze_backbone_trains_only_the_head(tmp_path: Path, tiny_model, image_folder):
    from safetensors.torch import load_file

    source = save_model(tmp_path / "src.safetensors", tiny_model, class_names=CLASSES)
    out, weights = _cli_train(tmp_path, source, image_folder, "probe", "--freeze", "backbone",
                              "--lr", "0.01")
    head = tiny_model.head.weight.numel() + tiny_model.head.bias.numel()
    frozen = sum(p.numel() for p in tiny_model.parameters()) - head
    assert f"backbone frozen: {frozen:,} weights fixed, only the head trains" in out
    # No augmentation by default for a probe: its features are computed once (test_probe.py).
    assert "linear probe on cached features: one forward pass over 24 images" in out
    before, after = load_file(str(source)), load_file(str(weights / "last.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}


@pytest.mark.slow
def test_cli_probe_without_cached_features_trains_on_every_patch(tmp_path: Path, image_folder):
    """A source trained with patch dropout, probed with augmentation (so the backbone runs at
    every step): the probe's backbone keeps every patch, and its file says so."""
    from vitcli.model.checkpoint import load_model

    dropping = create_model(num_classes=len(CLASSES), patch_drop=0.5, **TINY).eval()
    source = save_model(tmp_path / "src.safetensors", dropping, class_names=CLASSES)
    out, weights = _cli_train(tmp_path, source, image_folder, "probe", "--freeze", "backbone",
                              "--augment", "light")
    assert "patch dropout off: the frozen backbone sees every patch" in out
    assert "cached features" not in out  # the augmented probe runs the backbone each step
    assert load_model(weights / "last.safetensors").config.patch_drop == 0.0
    assert load_model(source).config.patch_drop == 0.5  # the source is untouched


@pytest.mark.slow
def test_cli_layer_decay_reaches_the_optimizer(tmp_path: Path, tiny_model, image_folder,
                                               monkeypatch):
    import vitcli.training.loop as train_loop

    built: list[torch.optim.Optimizer] = []
    real = train_loop.build_optimizer

    def recording(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(train_loop, "build_optimizer", recording)
    source = save_model(tmp_path / "src.safetensors", tiny_model, class_names=CLASSES)
    _cli_train(tmp_path, source, image_folder, "ld", "--layer-decay", "0.75")
    groups = built[0].param_groups
    # depth 2: embeddings 0.75³, block 0 0.75², block 1 0.75, final norm and head 1.
    assert sorted({round(g["lr_scale"], 6) for g in groups}) == [0.421875, 0.5625, 0.75, 1.0]
    top = max(g["lr"] for g in groups)
    assert {round(g["lr"] / top, 6) for g in groups} == {0.421875, 0.5625, 0.75, 1.0}


@pytest.mark.parametrize("flags, named", [
    (["--depth", "6"], "--depth"),
    (["--model", "vit-b16", "--pooling", "mean"], "--model, --pooling"),
    (["--layer-decay", "1.5"], "--layer-decay must be in (0, 1], not 1.5"),
])
def test_cli_init_refuses_architecture_flags_before_reading_data(tmp_path: Path, tiny_model,
                                                                 flags, named):
    """Flags that --init would silently ignore are refused up front, with no run folder."""
    from typer.testing import CliRunner

    from vitcli.cli import app

    source = save_model(tmp_path / "src.safetensors", tiny_model, class_names=CLASSES)
    result = CliRunner().invoke(app, ["train", "--init", str(source), "--data",
                                      str(tmp_path / "does-not-exist"), "--project",
                                      str(tmp_path / "runs"), *flags])
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_init_checks_the_source_file_once(tiny_model, tiny_model_file, monkeypatch):
    """`vit train --init`: the config and the weights come from one check of the file
    (checkpoint.check_model_file, then load_checked), not a second read of its header."""
    import vitcli.model.checkpoint as checkpoint
    from vitcli.training.finetune import checked_source

    reads = []
    real = checkpoint.read_header
    monkeypatch.setattr(checkpoint, "read_header", lambda p: reads.append(p) or real(p))
    checked = checked_source(tiny_model_file)
    config, _, _ = init_config(checked, image_size=None)
    report = init_from(_fresh(), checked)
    assert len(reads) == 1 and config == tiny_model.config
    assert report.lines[0].endswith(f"from {tiny_model_file}")
    assert len(report.loaded) == len(tiny_model.state_dict())
