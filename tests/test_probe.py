"""The linear probe on cached features (vitcli/training/probe.py) against the uncached path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import CLASSES, make_image_folder
from vitcli.model.checkpoint import save_model


def _probe(tmp_path: Path, source: Path, data: Path, val: Path, name: str, **extra):
    from vitcli.training.recipe import TrainOptions
    from vitcli.training.trainer import train

    events: list[tuple[str, dict]] = []
    options = dict(data=str(data), val=str(val), init=str(source), freeze="backbone",
                   epochs=3, batch_size=8, lr=0.05, warmup=0, device="cpu", threads=1, seed=3,
                   project=str(tmp_path / "runs"), name=name,
                   cache_dir=str(tmp_path / "cache"))
    result = train(TrainOptions(**{**options, **extra}),
                   on_event=lambda kind, **f: events.append((kind, f)))
    return result, events


@pytest.fixture
def probe_setup(tmp_path: Path, tiny_model):
    source = save_model(tmp_path / "src.safetensors", tiny_model, class_names=CLASSES)
    data = make_image_folder(tmp_path / "train", per_class=8, seed=0)
    val = make_image_folder(tmp_path / "val", per_class=4, seed=1)
    return source, data, val


@pytest.mark.slow
def test_cached_probe_trains_the_same_head_as_a_forward_pass_every_step(tmp_path: Path,
                                                                         probe_setup):
    from vitcli.evaluation.evaluate import evaluate

    source, data, val = probe_setup
    cached, events = _probe(tmp_path, source, data, val, "cached")
    uncached, _ = _probe(tmp_path, source, data, val, "uncached", cache_features=False)
    assert cached.probe.startswith("linear probe on cached features: one forward pass over 36")
    assert uncached.probe.endswith("without the feature cache: the backbone runs every step")

    # One progress bar over train + validation images, ending complete.
    done = [f for kind, f in events if kind == "features"]
    assert done and done[-1]["done"] == done[-1]["total"] == 36

    a, b = load_file(str(cached.last_path)), load_file(str(uncached.last_path))
    src = load_file(str(source))
    assert set(a) == set(src)  # a complete model file: backbone and head
    for name in src:
        if name.startswith("head."):
            assert not torch.equal(a[name], src[name]), f"{name} did not train"
            torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
        else:  # the backbone is untouched, bit for bit
            assert torch.equal(a[name], src[name]), name
    assert cached.best_top1 == pytest.approx(uncached.best_top1)
    assert cached.last_row["val_loss"] == pytest.approx(uncached.last_row["val_loss"], abs=1e-5)

    # The saved best model predicts what the probe measured on the validation images.
    report = evaluate(cached.best_path, val, device="cpu")
    assert report.metrics.top1 == pytest.approx(cached.best_top1)


@pytest.mark.slow
def test_probe_with_augmentation_runs_the_backbone_every_step_and_says_so(tmp_path: Path,
                                                                          probe_setup):
    source, data, val = probe_setup
    result, events = _probe(tmp_path, source, data, val, "aug", augment="light", epochs=1)
    assert "--augment light" in result.probe and "every step" in result.probe
    assert not [f for kind, f in events if kind == "features"]
    messages = [f["text"] for kind, f in events if kind == "message"]
    assert result.probe in messages
    after = load_file(str(result.last_path))
    before = load_file(str(source))
    assert {k for k in before if not torch.equal(before[k], after[k])} == {"head.weight",
                                                                           "head.bias"}


def test_probe_defaults_to_no_augmentation():
    from vitcli.training.loop import augment_level
    from vitcli.training.recipe import TrainOptions

    assert augment_level(TrainOptions(data="x", freeze="backbone"), 500) == "none"
    assert augment_level(TrainOptions(data="x", freeze="backbone", augment="light"),
                         500) == "light"
    assert augment_level(TrainOptions(data="x"), 500) == "light"


@pytest.mark.parametrize("family", ["plain", "distilled", "map", "registers_mean"])
def test_head_on_features_equals_the_model_and_a_mismatch_is_caught(family):
    from tests.conftest import TINY
    from vitcli.model.vit import create_model
    from vitcli.training.probe import extract_features, head_logits, head_matches

    extra = {"plain": {}, "distilled": {"distilled": True}, "map": {"pooling": "map",
             "class_token": False}, "registers_mean": {"reg_tokens": 2, "pooling": "mean",
                                                       "fc_norm": True, "init_values": 0.1}}
    tiny_model = create_model(num_classes=3, **TINY, **extra[family]).eval()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    stats = dict(mean=(0.5,) * 3, std=(0.25,) * 3, device=torch.device("cpu"), precision="fp32")
    seen: list[tuple[int, int]] = []
    feats = extract_features(tiny_model, pixels, batch_size=2,
                             progress=lambda d, t: seen.append((d, t)), **stats)
    width = tiny_model.config.embed_dim * (2 if family == "distilled" else 1)
    assert feats.shape == (5, width) and seen[-1] == (5, 5)
    assert head_matches(tiny_model, pixels, feats, **stats)
    x = torch.from_numpy(((pixels / 255.0 - 0.5) / 0.25).astype(np.float32)).permute(0, 3, 1, 2)
    np.testing.assert_allclose(head_logits(tiny_model, feats, device=torch.device("cpu")),
                               tiny_model(x).detach().numpy(), atol=1e-5)
    # A head that reads something besides the pooled features: the check refuses the cache.
    assert not head_matches(tiny_model, pixels, feats + 1.0, **stats)


def test_freeze_backbone_probe_needs_only_the_head_trainable(tiny_model):
    from vitcli.training.finetune import freeze_backbone
    from vitcli.training.probe import trainable_head_only

    assert not trainable_head_only(tiny_model)
    freeze_backbone(tiny_model)
    assert trainable_head_only(tiny_model)


def test_probe_precision_weighs_the_backbones_forward_pass_not_a_training_step(
        tmp_path: Path, probe_setup, monkeypatch):
    """A probe's backbone runs forward only; `auto` said "4.2 GMAC a training step", three
    times the work (a training step counts the backward passes too)."""
    import json

    import vitcli.devices as devices
    from vitcli.model.checkpoint import load_model
    from vitcli.model.config import call_macs

    monkeypatch.setattr(devices, "cpu_bf16_units", lambda: "AMX-BF16")
    source, data, val = probe_setup
    result, _ = _probe(tmp_path, source, data, val, "prec", epochs=1)
    reason = json.loads((result.run_dir / "args.json").read_text())["resolved"][
        "precision_reason"]
    config = load_model(source).config
    assert reason.startswith("auto") and "a backbone forward pass" in reason, reason
    assert devices.gmac(call_macs(config, 8)) in reason  # batch 8, forward only
