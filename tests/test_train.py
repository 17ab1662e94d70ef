"""`vit train`: the run folder, learning, exact resume, Ctrl-C, non-finite loss, time budget.

Every run is a 2-block, 32-px ViT on a few dozen generated grey images, a few steps long.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from vitcli.errors import UsageError
from vitcli.training.recipe import TrainOptions, epochs_for, model_config
from vitcli.training.runs import (
    MetricsLog,
    TrainState,
    flatten_optimizer,
    load_state,
    new_run_dir,
    read_metrics,
    save_state,
    unflatten_optimizer,
)
from vitcli.training.setup import is_grayscale, pixel_mean_std
from vitcli.training.trainer import NonFiniteLoss, resume, train

CLASSES = ["left", "middle", "right"]


def bar_folder(root: Path, per_class: int, seed: int = 0, size: int = 32) -> Path:
    """Grey images: noise plus a bright vertical bar whose position is the class."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (size, size), dtype=np.uint8)
            x0 = k * size * 3 // 8 + int(rng.integers(0, size // 8))  # thirds, a little jitter
            img[:, x0:x0 + size // 4] = rng.integers(180, 256)
            Image.fromarray(img, mode="L").save(root / name / f"{i:03d}.png")
    return root


def options(tmp_path: Path, data: Path, **kw) -> TrainOptions:
    base = {"data": str(data), "project": str(tmp_path / "runs"), "patch": 8, "depth": 2,
            "embed_dim": 32, "heads": 2, "mlp_ratio": 2.0, "batch_size": 12, "epochs": 2,
            "warmup": 0.5, "device": "cpu", "cache_dir": str(tmp_path / "cache"), "threads": 1}
    return TrainOptions(**{**base, **kw})


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is fastest, and the CI cores are shared."""
    torch.set_num_threads(1)


def ctrl_c_after_epoch_1(kind: str, **f) -> None:
    """on_event that stops a run after its first epoch, as Ctrl-C would: a run --resume
    continues (the resume of a run that ended reads nothing: trainer._ended)."""
    if kind == "epoch_start" and f["epoch"] == 2:
        raise KeyboardInterrupt


@pytest.fixture
def bars(tmp_path: Path) -> Path:
    return bar_folder(tmp_path / "bars", per_class=10)  # default 10 % val: 27 train, 3 val


# ------------------------------------------------------------------------ decisions


def test_recipe_picks_size_preset_and_grey_mode():
    small = model_config(TrainOptions(data="x", patch=4), typical_size=28, num_classes=10,
                         in_channels=1)
    assert (small.image_size, small.patch_size, small.in_channels) == (28, 4, 1)
    assert model_config(TrainOptions(data="x", patch=16), typical_size=28, num_classes=2,
                        in_channels=3).image_size == 32  # rounded up to the patch
    big = model_config(TrainOptions(data="x"), typical_size=500, num_classes=5, in_channels=3)
    assert (big.image_size, big.patch_size, big.embed_dim) == (224, 16, 192)  # vit-ti16
    grey = np.repeat(np.arange(48, dtype=np.uint8).reshape(3, 4, 4, 1), 3, axis=-1)
    assert is_grayscale(grey)
    grey[1, 0, 0, 2] += 1
    assert not is_grayscale(grey)
    mean, std = pixel_mean_std(np.full((2, 4, 4, 1), 51, np.uint8))
    assert mean == (0.2,) and std == (0.001,)  # constant channel: no division by zero


@pytest.mark.parametrize("typical, size, patch", [(28, 28, 4), (32, 35, 5), (20, 21, 3)])
def test_tiny_images_get_vit_picos_7x7_grid_and_the_tiny_recipe(typical, size, patch):
    """The grid's patch is rounded up, so 32-px images train at 35 px: still 'tiny' (the
    recipe, the shift-only augmentation and no drop-path follow the training size)."""
    from vitcli.data.augment import make_policy

    options = TrainOptions(data="x")
    config = model_config(options, typical_size=typical, num_classes=5, in_channels=1)
    assert (config.image_size, config.patch_size, config.grid_size) == (size, patch, 7)
    assert (config.embed_dim, config.patch_embed, config.drop_path) == (64, "shifted", 0.0)
    assert config.patch_drop == 0.5 and config.train_tokens == 1 + 24  # 24 of 49 patches
    assert options.with_defaults_for(config.image_size).schedule == "linear"
    policy = make_policy("light", hflip=False, image_size=config.image_size)
    assert policy.crop_scale is None and policy.translate > 0


def test_patch_drop_option_sets_the_models_rate_from_scratch_and_for_init(tmp_path: Path):
    """--patch-drop overrides the preset's rate (0 = every patch in training), and with
    --init the source file's; not given, a from-scratch model keeps its preset's."""
    from vitcli.model.checkpoint import save_model
    from vitcli.model.vit import create_model
    from vitcli.training.finetune import init_config

    def rate(**kw: object) -> float:
        return model_config(TrainOptions(data="x", **kw), typical_size=28, num_classes=5,
                            in_channels=1).patch_drop

    assert (rate(), rate(patch_drop=0.25), rate(patch_drop=0.0)) == (0.5, 0.25, 0.0)
    assert rate(model="vit-nano") == 0.0  # the other presets keep every patch
    source = tmp_path / "src.safetensors"
    save_model(source, create_model(num_classes=3, image_size=32, patch_size=8, embed_dim=32,
                                    depth=1, num_heads=2, patch_drop=0.5),
               class_names=["a", "b", "c"])
    assert init_config(source)[0].patch_drop == 0.5
    assert init_config(source, patch_drop=0.0)[0].patch_drop == 0.0


def test_images_just_above_32_px_keep_the_small_image_preset():
    """33-35 px data is not tiny: vit-mini at 40 px, the usual recipe (not vit-pico at 35)."""
    options = TrainOptions(data="x")
    config = model_config(options, typical_size=34, num_classes=5, in_channels=3)
    assert (config.image_size, config.patch_size, config.embed_dim) == (40, 8, 256)
    assert options.with_defaults_for(config.image_size).schedule == "cosine"


def test_tiny_images_from_scratch_get_their_own_optimizer_batch_lr_smoothing_and_schedule(
        monkeypatch):
    def resolved(o: TrainOptions) -> tuple:
        return o.optimizer, o.batch_size, o.lr, o.label_smoothing, o.schedule

    tiny = TrainOptions(data="x").with_defaults_for(28)
    assert resolved(tiny) == ("muon", 256, 4e-3, 0.2, "linear")  # 4e-3 at batch 256
    big = TrainOptions(data="x").with_defaults_for(224)
    assert resolved(big) == ("adamw", 128, 5e-4, 0.1, "cosine")
    pretrained = TrainOptions(data="x", init="m.safetensors").with_defaults_for(28)
    assert resolved(pretrained) == ("adamw", 128, 5e-4, 0.1, "cosine")  # the usual recipe
    given = TrainOptions(data="x", lr=1e-2, label_smoothing=0.0,
                         schedule="cosine").with_defaults_for(28)
    assert (given.lr, given.label_smoothing, given.schedule) == (1e-2, 0.0, "cosine")  # flags win
    adamw = TrainOptions(data="x", optimizer="adamw").with_defaults_for(28)
    assert resolved(adamw) == ("adamw", 128, 2e-3, 0.2, "linear")  # the AdamW recipe's batch, lr
    batch = TrainOptions(data="x", batch_size=64).with_defaults_for(28)
    assert resolved(batch) == ("muon", 64, 1e-3, 0.2, "linear")  # lr scales with the batch given
    monkeypatch.delattr(torch.optim, "Muon", raising=False)  # torch before 2.9
    assert resolved(TrainOptions(data="x").with_defaults_for(28)) == (
        "adamw", 128, 2e-3, 0.2, "linear")
    with pytest.raises(UsageError, match="--schedule must be cosine or linear, not 'step'"):
        TrainOptions(data="x", schedule="step").check()


def test_run_folders_are_numbered_never_reused(tmp_path: Path):
    names = [new_run_dir(tmp_path).name for _ in range(3)]
    assert names == ["exp", "exp2", "exp3"]
    assert [new_run_dir(tmp_path, "cat").name for _ in range(2)] == ["cat", "cat2"]
    assert (tmp_path / "exp2" / "weights").is_dir()
    (tmp_path / "file").write_text("x")
    from vitcli.errors import VitError

    with pytest.raises(VitError, match="cannot create a folder there"):
        new_run_dir(tmp_path / "file" / "runs")
    with pytest.raises(VitError, match="--project .*is a file"):  # before any data is read
        train(TrainOptions(data=str(tmp_path / "no-data"), project=str(tmp_path / "file")))


def test_state_round_trip_keeps_optimizer_exactly(tmp_path: Path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(2):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    info, tensors = flatten_optimizer(opt.state_dict())
    save_state(tmp_path, TrainState(info={"step": 2, "optimizer": info}, tensors=tensors))
    save_state(tmp_path, TrainState(info={"step": 3, "optimizer": info}, tensors=tensors))
    assert [p.name for p in tmp_path.glob("state-*.safetensors")] == ["state-3.safetensors"]
    loaded = load_state(tmp_path)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    fresh.load_state_dict(unflatten_optimizer(loaded.info["optimizer"], loaded.tensors))
    for a, b in zip(opt.state.values(), fresh.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert fresh.param_groups[0]["betas"] == opt.param_groups[0]["betas"]

    log = MetricsLog(tmp_path / "metrics.csv")
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "step": 2 * epoch, "train_loss": 1.0 / epoch})
    log.truncate(4)
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.csv")] == [1, 2]


def test_the_chosen_preset_is_named_with_why_and_recorded(tmp_path: Path):
    """Without --model, vit train never said which preset it picked (vit-pico for tiny images):
    the start event names it and why, from the recipe's own choice, and args.json keeps it."""
    from vitcli.training.recipe import preset_choice

    assert preset_choice(TrainOptions(data="x"), 28) == ("vit-pico", "chosen for 28-px images")
    assert preset_choice(TrainOptions(data="x"), 48)[0] == "vit-mini"
    assert preset_choice(TrainOptions(data="x", model="vit-s16"), 28) == ("vit-s16", "--model")
    data = bar_folder(tmp_path / "bars28", per_class=4, size=28)
    events: list[tuple[str, dict]] = []
    result = train(options(tmp_path, data, epochs=1, val_split=0.0),
                   on_event=lambda kind, **f: events.append((kind, f)))
    start = next(f for kind, f in events if kind == "start")
    assert (start["preset"], start["preset_reason"]) == ("vit-pico", "chosen for 28-px images")
    resolved = json.loads((result.run_dir / "args.json").read_text())["resolved"]
    assert (resolved["preset"], resolved["preset_reason"]) == ("vit-pico",
                                                               "chosen for 28-px images")
    given = train(options(tmp_path, data, epochs=1, val_split=0.0, model="vit-mini"))
    resolved = json.loads((given.run_dir / "args.json").read_text())["resolved"]
    assert (resolved["preset"], resolved["preset_reason"]) == ("vit-mini", "--model")


# ------------------------------------------------------------------------ real runs


@pytest.mark.slow
def test_run_learns_and_writes_the_whole_run_folder(tmp_path: Path):
    data = bar_folder(tmp_path / "train", per_class=16)
    val = bar_folder(tmp_path / "val", per_class=8, seed=1)
    (data / "left" / "broken.png").write_bytes(b"")  # a bad file never stops training
    result = train(options(tmp_path, data, val=str(val), epochs=8, lr=3e-3, augment="none",
                           drop_path=0.0, label_smoothing=0.0, batch_size=8, warmup=1.0))
    run = result.run_dir
    assert result.stopped == "completed" and result.epochs == 8
    assert result.best_top1 >= 0.7  # chance is 1/3
    for name in ("args.json", "metrics.csv", "state.json", "curves.png", "confusion_matrix.png",
                 "bad_files.txt", "weights/best.safetensors", "weights/last.safetensors"):
        assert (run / name).is_file(), name
    assert "broken.png" in (run / "bad_files.txt").read_text()
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert max(r["val_top1"] for r in rows) == pytest.approx(result.best_top1)

    from vitcli.evaluation.evaluate import evaluate
    from vitcli.model.checkpoint import load_model

    best = load_model(run / "weights" / "best.safetensors")
    assert best.class_names == CLASSES
    assert best.preprocessing.color_mode == "L" and best.config.in_channels == 1  # grey data
    args = json.loads((run / "args.json").read_text())
    assert args["options"]["epochs"] == 8 and args["resolved"]["config"]["in_channels"] == 1
    # `vit eval` on the validation data gives the figure training reported.
    report = evaluate(run / "weights" / "best.safetensors", val, device="cpu")
    best_row = next(r for r in rows if r["epoch"] == result.best_epoch)
    assert report.metrics.top1 == pytest.approx(result.best_top1) == best_row["val_top1"]
    assert report.metrics.loss == pytest.approx(best_row["val_loss"], rel=1e-5)
    assert report.metrics.top5 == pytest.approx(best_row["val_top5"])


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_after_ctrl_c_gives_the_same_weights(tmp_path: Path, bars: Path, optimizer):
    opts = {"epochs": 3, "ema": True, "augment": "light", "drop_path": 0.1, "seed": 3,
            "optimizer": optimizer}
    straight = train(options(tmp_path, bars, name="straight", **opts))
    assert straight.steps == 9  # 27 images, batch 12: 3 steps per epoch (the last topped up)

    def ctrl_c(kind: str, **f) -> None:
        if kind == "step" and f["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: stop at the next step

    stopped = train(options(tmp_path, bars, name="stopped", **opts), on_event=ctrl_c)
    assert stopped.stopped == "interrupted" and stopped.steps == 4
    assert json.loads((stopped.run_dir / "state.json").read_text())["step"] == 4
    resumed = resume(stopped.run_dir)
    assert resumed.stopped == "completed" and resumed.steps == 9

    for name in ("last", "best"):
        a = load_file(str(straight.run_dir / "weights" / f"{name}.safetensors"))
        b = load_file(str(resumed.run_dir / "weights" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    sa, sb = load_state(straight.run_dir).tensors, load_state(resumed.run_dir).tensors
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa
                                          if not k.startswith("rng."))
    rows_a = read_metrics(straight.run_dir / "metrics.csv")
    rows_b = read_metrics(resumed.run_dir / "metrics.csv")
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
        assert ra["val_top1"] == rb["val_top1"]


@pytest.mark.slow
def test_keyboard_interrupt_from_a_callback_saves_state(tmp_path: Path, bars: Path):
    def interrupt(kind: str, **f) -> None:
        if kind == "epoch_start" and f["epoch"] == 2:
            raise KeyboardInterrupt

    result = train(options(tmp_path, bars, epochs=3), on_event=interrupt)
    assert result.stopped == "interrupted" and result.steps == 3
    state = load_state(result.run_dir)
    assert state.info["step"] == 3 and state.info["epochs_done"] == 1
    assert any(k.startswith("optim.") for k in state.tensors)
    assert len(read_metrics(result.run_dir / "metrics.csv")) == 1


@pytest.mark.slow
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_model(
        tmp_path: Path, bars: Path, monkeypatch):
    import vitcli.training.loop

    real = vitcli.training.loop.F.cross_entropy
    calls = []

    def poisoned(logits, targets, *a, **kw):
        calls.append(1)
        loss = real(logits, targets, *a, **kw)
        return loss * float("nan") if len(calls) >= 4 else loss

    monkeypatch.setattr(vitcli.training.loop.F, "cross_entropy", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"step 4 \(epoch 2\)"):
        train(options(tmp_path, bars, epochs=3))
    run = tmp_path / "runs" / "exp"
    last = load_file(str(run / "weights" / "last.safetensors"))
    assert all(torch.isfinite(t).all() for t in last.values())
    assert load_state(run).info["step"] == 3  # the epoch-1 state is intact


@pytest.mark.slow
def test_time_budget_ends_the_schedule_near_the_budget(tmp_path: Path, bars: Path):
    budget_s = 6.0  # the set-up counts (alone, the first AdamW imports torch._dynamo: 3 s)
    events, steps = [], []
    result = train(options(tmp_path, bars, epochs=10_000, time_budget=budget_s / 60),
                   on_event=lambda kind, **f: (events.append(kind),
                                               steps.append(f) if kind == "step" else None))
    assert result.stopped == "time_budget"
    assert "schedule" in events  # the total was fitted after measuring the speed
    # The budget's time left is known from the first step, before the speed is measured.
    assert not steps[0]["budget_fitted"] and 0 < steps[0]["budget_left_s"] < budget_s
    lefts = [f["budget_left_s"] for f in steps]
    assert lefts == sorted(lefts, reverse=True)
    # the whole run, set-up (reading the data, building the model) included
    assert 0.5 * budget_s <= result.seconds + result.setup_seconds <= 1.5 * budget_s + 1.0
    state = load_state(result.run_dir)
    assert state.info["schedule"]["total_steps"] == result.steps  # warm-up + cosine finished


@pytest.mark.slow
def test_a_run_started_with_relative_paths_resumes_from_another_folder(tmp_path, bars,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = train(options(tmp_path, Path("bars"), epochs=2, cache_dir="cache"),
                  on_event=ctrl_c_after_epoch_1)
    assert first.stopped == "interrupted"
    args = json.loads((first.run_dir / "args.json").read_text())["options"]
    assert args["data"] == str(bars) and args["cache_dir"] == str(tmp_path / "cache")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = resume(first.run_dir)  # reads bars/ and cache/ by their recorded absolute paths
    assert again.stopped == "completed" and again.steps == 2 * first.steps


@pytest.mark.slow
def test_a_run_folder_from_before_the_optimizer_option_resumes_with_adamw_and_cosine(
        tmp_path, bars):
    first = train(options(tmp_path, bars, epochs=2, optimizer="adamw", schedule="cosine"),
                  on_event=ctrl_c_after_epoch_1)
    args_path, state_path = first.run_dir / "args.json", first.run_dir / "state.json"
    args = json.loads(args_path.read_text())
    # As vitcli wrote them before Muon and --schedule (tiny data: now Muon and linear).
    del args["options"]["optimizer"], args["options"]["schedule"]
    args_path.write_text(json.dumps(args))
    state = json.loads(state_path.read_text())
    del state["schedule"]["shape"]
    state_path.write_text(json.dumps(state))
    again = resume(first.run_dir)  # AdamW state loaded into AdamW, not into Muon + AdamW
    assert again.stopped == "completed" and again.steps == 2 * first.steps
    assert (again.options.optimizer, again.options.schedule) == ("adamw", "cosine")


@pytest.mark.slow
def test_precision_is_printed_recorded_used_and_kept_on_resume(tmp_path, bars, monkeypatch):
    """bf16 asked for on a model `auto` would run in fp32: the run records it, every training
    forward runs under bf16 autocast, and --resume keeps bf16 rather than re-deciding."""
    from vitcli.model.vit import VisionTransformer

    seen: list[tuple[bool, bool, torch.dtype]] = []
    forward = VisionTransformer.forward

    def spy(self, *a, **kw):
        seen.append((self.training, torch.is_autocast_enabled("cpu"),
                     torch.get_autocast_dtype("cpu")))
        return forward(self, *a, **kw)

    monkeypatch.setattr(VisionTransformer, "forward", spy)
    events = []

    def record_and_stop(kind: str, **f) -> None:
        events.append((kind, f))
        if kind == "epoch_start" and f["epoch"] == 2:
            raise KeyboardInterrupt  # stop after epoch 1, as Ctrl-C would

    first = train(options(tmp_path, bars, epochs=2, precision="bf16"), on_event=record_and_stop)
    assert first.stopped == "interrupted" and first.steps == 3  # 27 images: 3 steps an epoch
    start = next(f for kind, f in events if kind == "start")
    assert start["precision"].startswith("bf16")
    args = json.loads((first.run_dir / "args.json").read_text())
    assert args["options"]["precision"] == "bf16" and args["resolved"]["precision"] == "bf16"
    assert load_state(first.run_dir).info["precision"] == "bf16"
    training = [s for s in seen if s[0]]
    assert training and all(on and dtype == torch.bfloat16 for _, on, dtype in training)
    weights = load_file(str(first.run_dir / "weights" / "last.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values())  # fp32 master weights
    old = tmp_path / "before-the-option"
    shutil.copytree(first.run_dir, old)

    # The run said "bf16"; its options say "auto" as a later edit might: resume keeps bf16.
    args["options"]["precision"] = "auto"
    (first.run_dir / "args.json").write_text(json.dumps(args))
    seen.clear()
    events.clear()
    again = resume(first.run_dir, on_event=lambda kind, **f: events.append((kind, f)))
    assert again.stopped == "completed" and again.steps == 6
    assert next(f for kind, f in events if kind == "start")["precision"].startswith("bf16")
    assert seen and all(on for training, on, _ in seen if training)
    # Repeating the precision the run's `auto` chose is no change; another is refused in one
    # line that names both (it said "the run's: auto" as if bf16 were a change)
    assert resume(first.run_dir, given={"precision": "bf16"}).steps == 6
    with pytest.raises(UsageError, match=r"--precision fp32 \(the run's: auto, which chose "
                                         r"bf16\) cannot change"):
        resume(first.run_dir, given={"precision": "fp32"})

    # A run folder from before --precision resumes as it trained then: fp32 on a CPU. Such
    # a folder has no precision anywhere (test_resume: a damaged one is refused).
    del args["options"]["precision"], args["resolved"]["precision"]
    del args["resolved"]["precision_reason"]
    (old / "args.json").write_text(json.dumps(args))
    state = json.loads((old / "state.json").read_text())
    del state["precision"]
    (old / "state.json").write_text(json.dumps(state))
    seen.clear()
    assert resume(old).steps == 6
    assert seen and not any(on for training, on, _ in seen if training)


def test_auto_precision_is_fp32_for_the_tiny_test_model(tmp_path, bars):
    """The decision rule in a real run: the tiny model's training step is far below 1 GMAC,
    so it stays fp32 even on a bf16 CPU."""
    result = train(options(tmp_path, bars, epochs=1))
    resolved = json.loads((result.run_dir / "args.json").read_text())["resolved"]
    assert resolved["precision"] == "fp32" and resolved["precision_reason"].startswith("auto")


def test_an_unknown_precision_is_refused_before_any_data_is_read(tmp_path):
    with pytest.raises(UsageError, match="--precision must be one of"):
        train(options(tmp_path, tmp_path / "missing", precision="fp8"))


# ----------------------------------------------------------- real signals on real runs

ROOT = Path(__file__).resolve().parents[1]


def cli_flags(o: TrainOptions) -> list[str]:
    """`vit train` flags for the options `options()` builds (the tiny model, CPU, 1 thread)."""
    flags = ["--data", o.data, "--project", o.project, "--patch", str(o.patch),
             "--depth", str(o.depth), "--embed-dim", str(o.embed_dim), "--heads", str(o.heads),
             "--mlp-ratio", str(o.mlp_ratio), "--batch-size", str(o.batch_size),
             "--epochs", str(o.epochs), "--warmup", str(o.warmup), "--device", "cpu",
             "--cache-dir", o.cache_dir, "--seed", str(o.seed), "--threads", str(o.threads)]
    for key in ("name", "augment", "save_every"):
        if getattr(o, key):
            flags += [f"--{key.replace('_', '-')}", str(getattr(o, key))]
    return flags + (["--ema"] if o.ema else [])


def repo_env(**extra: str) -> dict[str, str]:
    """This environment for a child process, with the repository first on PYTHONPATH (added
    to, not replaced: the packages may be on it too)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def start_cli(o: TrainOptions) -> subprocess.Popen:
    env = {k: v for k, v in repo_env(OMP_NUM_THREADS="1").items()
           if k != "COLUMNS"}  # 80: hints must not wrap
    return subprocess.Popen([sys.executable, "-m", "vitcli", "train", *cli_flags(o)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_state(run_dir: Path, proc: subprocess.Popen, min_step: int = 1) -> int:
    """Poll until the run has saved a state at `min_step` or later; return that step."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be stopped"
        try:
            step = json.loads((run_dir / "state.json").read_text())["step"]
            if step >= min_step:
                return step
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    raise AssertionError("no training state was saved in time")


@pytest.mark.slow
def test_kill_9_mid_run_leaves_a_state_that_resumes_to_the_same_weights(tmp_path, bars):
    kw = {"epochs": 17, "ema": True, "augment": "light", "seed": 2, "save_every": 1,
          "threads": 1}
    straight = train(options(tmp_path, bars, name="straight", **kw))
    assert straight.steps == 51  # 17 epochs of 3 steps

    proc = start_cli(options(tmp_path, bars, name="killed", **kw))
    run = tmp_path / "runs" / "killed"
    try:
        wait_for_state(run, proc, min_step=3)
    finally:
        proc.kill()  # SIGKILL: no handler runs, whatever the run was doing
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    saved = load_state(run).info["step"]
    assert 3 <= saved < 51  # stopped mid-run, from a state that reads back whole

    resumed = resume(run)
    assert resumed.stopped == "completed" and resumed.steps == 51
    for name in ("last", "best"):
        a = load_file(str(straight.run_dir / "weights" / f"{name}.safetensors"))
        b = load_file(str(run / "weights" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == list(range(1, 18))  # no epoch twice, none missing


@pytest.mark.slow
def test_ctrl_c_on_the_cli_saves_state_and_says_how_to_resume(tmp_path, bars):
    o = options(tmp_path, bars, name="ctrlc", epochs=200, save_every=1, threads=1)
    proc = start_cli(o)
    run = tmp_path / "runs" / "ctrlc"
    try:
        wait_for_state(run, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    step = load_state(run).info["step"]
    assert f"state saved at step {step}" in out
    assert f"vit train --resume {run}" in " ".join(out.replace(" \\\n", " ").split())
    assert 1 <= step < 400  # stopped where it was, not at the end of the schedule


# ------------------------------------------------------------------------------ the CLI


@pytest.mark.slow
def test_cli_trains_with_only_data_and_patch(tmp_path: Path, bars: Path, monkeypatch):
    from vitcli.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VITCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("vitcli.training.recipe.MIN_STEPS", 40)  # the real 300: too slow here
    result = CliRunner().invoke(app, ["train", "--data", str(bars), "--patch", "16"])
    assert result.exit_code == 0, result.output
    assert "best model" in result.output and "schedule completed" in result.output
    run = tmp_path / "runs" / "train" / "exp"
    resolved = json.loads((run / "args.json").read_text())["resolved"]
    assert resolved["config"]["image_size"] == 32  # from the data, not the preset's
    assert resolved["config"]["patch_size"] == 16 and resolved["config"]["in_channels"] == 1
    rows = read_metrics(run / "metrics.csv")
    # 27 images are one batch: the default epochs make the recipe's minimum of steps.
    assert len(rows) == epochs_for(TrainOptions(), 27, 27)[0] == 40
    text = " ".join(result.output.split())
    assert "40 epochs make the 40 steps" in text
    # 16-px patches on 32-px images: a 2×2 grid of 4 tokens, warned about with a better patch
    assert "2×2 grid" in text and "--patch 4" in text
    assert (run / "weights" / "best.safetensors").is_file()
    # The summary names the `vit eval` that re-measures the default 10 % held out of --data;
    # run as printed, it gives the best epoch's validation figures.
    pasted = result.output.replace(" \\\n", " ")  # a long command's lines, as a shell joins them
    command = " ".join(re.search(r"vit eval (.+)$", pasted, re.MULTILINE).group(1).split())
    assert command.endswith(f"--data {bars} --val-split 0.1 --seed 0")
    evaluated = CliRunner().invoke(app, ["eval", *shlex.split(command), "--json", "e.json"])
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads((tmp_path / "e.json").read_text())
    best = max(rows, key=lambda r: r["val_top1"])  # the first epoch with the best top-1
    assert figures["num_images"] == 3
    assert figures["top1"] == pytest.approx(best["val_top1"])
    assert figures["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_cli_reports_mistakes_in_one_line(tmp_path: Path):
    from vitcli.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "nope: no such folder" in result.output  # mistyped
    (tmp_path / "plain").mkdir()
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "plain")])
    assert result.exit_code == 2 and "not a vitcli run folder" in result.output
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--freeze", "backbone"])
    assert result.exit_code == 2 and "--init" in result.output
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 2 and "--data is required" in result.output
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "nope")])
    assert result.exit_code == 1  # and nothing but the error: no blank line from the display
    assert result.output == f"error: {tmp_path / 'nope'}: no such folder\n"
    for flag in ("--lr", "--weight-decay", "--time-budget", "--warmup", "--patch-drop"):
        for value in ("nan", "inf"):
            result = runner.invoke(app, ["train", "--data", str(tmp_path), flag, value])
            assert result.exit_code == 2 and result.exception is not None, (flag, value)
            assert result.output.count("\n") == 1 and "error:" in result.output, result.output
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--patch-drop", "1"])
    assert result.exit_code == 2 and "--patch-drop must be in [0, 1), not 1 " in result.output
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--ema-decay", "2"])
    assert result.exit_code == 2 and "--ema-decay" in result.output  # would diverge
    run = new_run_dir(tmp_path / "runs")
    (run / "args.json").write_text(json.dumps(  # as a run records them: choices resolved
        {"options": TrainOptions(data=str(tmp_path), epochs=5).with_defaults_for(32).to_dict(),
         "resolved": {"precision": "fp32"}}))
    result = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "9", "--ema"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert ("--ema (the run's: off), --epochs 9 (the run's: 5) cannot change"
            in " ".join(result.output.split())), result.output


def test_device_mistakes_are_usage_errors(monkeypatch):
    from vitcli.devices import resolve_device
    from vitcli.errors import UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError, match="1 CUDA GPU.*cuda:0 to cuda:0"):
        resolve_device("cuda:3")
    with pytest.raises(UsageError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    assert resolve_device("CPU") == torch.device("cpu")


def test_an_option_refused_before_the_first_step_leaves_no_run_folder(tmp_path, bars,
                                                                     monkeypatch):
    import vitcli.training.loop
    from vitcli.errors import UsageError

    def refuse(*args, **kwargs):  # as the trainer refuses e.g. a batch that N ranks cannot split
        raise UsageError("--batch-size 12 must be a multiple of the 5 processes")

    monkeypatch.setattr(vitcli.training.loop, "build_optimizer", refuse)
    with pytest.raises(UsageError, match="multiple of the 5 processes"):
        train(options(tmp_path, bars))
    assert (tmp_path / "runs").is_dir() and not any((tmp_path / "runs").iterdir())


def test_library_callers_get_the_same_option_checks(tmp_path: Path):
    """The CLI refuses NaN and a diverging EMA decay; `TrainOptions.check` must as well."""
    from vitcli.errors import UsageError

    for bad, match in ((dict(lr=float("nan")), "--lr must be a finite number"),
                       (dict(time_budget=float("inf")), "--time-budget must be a finite"),
                       (dict(ema_decay=1.5), r"--ema-decay must be in \[0, 1\)")):
        with pytest.raises(UsageError, match=match):
            TrainOptions(data=str(tmp_path), **bad).check()


def test_resume_with_a_corrupt_args_json_is_one_line(tmp_path: Path, bars: Path):
    from vitcli.cli import app

    run = train(options(tmp_path, bars, epochs=1)).run_dir
    good = json.loads((run / "args.json").read_text())
    wrong_type = {**good, "options": {**good["options"], "epochs": "ten"}}
    bad_config = {**good, "resolved": {**good["resolved"], "config": {"image_size": "x"}}}
    for args in (wrong_type, bad_config):
        (run / "args.json").write_text(json.dumps(args))
        result = CliRunner().invoke(app, ["train", "--resume", str(run)])
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert "args.json" in result.output and result.output.count("\n") == 1, result.output


def test_summary_names_the_eval_of_the_runs_own_validation_set(tmp_path: Path):
    from types import SimpleNamespace

    from vitcli.commands._train_display import eval_command

    best = tmp_path / "my run" / "best.safetensors"
    best.parent.mkdir()
    best.write_bytes(b"")

    def result(val_split=None, num_val=5, **kw):
        opts = TrainOptions(data="imgs", seed=7, **kw)
        return SimpleNamespace(options=opts, num_val=num_val, best_path=best,
                               val_split=val_split)

    quoted = shlex.quote(str(best))
    assert eval_command(result(val_split=0.25)) == \
        f"vit eval --model {quoted} --data imgs --val-split 0.25 --seed 7"
    assert eval_command(result(val="held out")) == f"vit eval --model {quoted} --data 'held out'"
    assert eval_command(result()) == f"vit eval --model {quoted} --data imgs"  # its own val/
    assert eval_command(result(num_val=0)) is None  # no validation: nothing to re-measure


# ------------------------------------------------------------------ imbalanced classes


def imbalanced_bars(root: Path, counts: tuple[int, ...] = (24, 4, 4)) -> Path:
    """bar_folder with `counts` images in left, middle, right."""
    bar_folder(root, per_class=max(counts))
    for name, keep in zip(CLASSES, counts, strict=True):
        for f in sorted((root / name).iterdir())[keep:]:
            f.unlink()
    return root


def test_class_weights_are_inverse_effective_numbers_with_mean_one():
    from vitcli.data.balance import class_counts, class_weights, imbalance_ratio

    counts = class_counts(np.array([0] * 90 + [1] * 10 + [2] * 10), 4)
    assert counts.tolist() == [90, 10, 10, 0] and imbalance_ratio(counts) == float("inf")
    w = class_weights(counts)
    effective = (1 - 0.999 ** np.array([90, 10, 10])) / (1 - 0.999)  # Cui et al. 2019
    assert w[1] / w[0] == pytest.approx(effective[0] / effective[1])  # ≈ 90 / 10 at this size
    assert 8.6 < w[1] / w[0] < 9.0 and w[1] == w[2] and w[3] == 0.0
    assert float((w * counts).sum()) == pytest.approx(counts.sum())  # mean weight per image 1
    # Large classes level off: 50,000 against 5,000 is not weighted 10 to 1.
    big = class_weights(np.array([50_000, 5_000]))
    assert 1.0 < big[1] / big[0] < 1.01
    assert imbalance_ratio(np.array([50_000, 5_000])) == 10.0


def test_balanced_sampler_draws_every_class_about_equally_and_shards_like_a_shuffle():
    from vitcli.data.balance import balanced_order

    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    order = balanced_order(labels, np.random.default_rng([0, 0]))
    assert order.shape == (1000,)  # an epoch keeps its length
    share = np.bincount(labels[order], minlength=3) / len(order)
    assert np.all(np.abs(share - 1 / 3) < 0.05), share  # plain shuffling: 0.90 / 0.09 / 0.01
    assert len(np.unique(order[labels[order] == 2])) == 10  # every rare image is drawn
    # Every rank draws the same order from the same seed, so shards partition each batch.
    again = balanced_order(labels, np.random.default_rng([0, 0]))
    np.testing.assert_array_equal(order, again)
    batch = torch.from_numpy(order[:12])
    from vitcli.training.distributed import DistEnv, shard

    parts = [shard(batch, DistEnv(rank=r, world_size=2)) for r in range(2)]
    assert sorted(torch.cat(parts).tolist()) == sorted(batch.tolist())


def _capture_losses(monkeypatch) -> list[tuple]:
    """Record (logits, targets, weight, loss) of every training step's cross-entropy."""
    import vitcli.training.loop

    real = vitcli.training.loop.F.cross_entropy
    calls: list[tuple] = []

    def spy(logits, targets, *a, **kw):
        loss = real(logits, targets, *a, **kw)
        calls.append((logits.detach(), targets.detach(), kw.get("weight"), loss.detach()))
        return loss

    monkeypatch.setattr(vitcli.training.loop.F, "cross_entropy", spy)
    return calls


def test_class_weights_auto_weights_the_loss_and_is_kept_on_resume(tmp_path, monkeypatch):
    from vitcli.data.balance import class_weights

    data = imbalanced_bars(tmp_path / "skewed")
    calls = _capture_losses(monkeypatch)
    events: list[tuple] = []

    def stop_after_epoch_1(kind: str, **f) -> None:
        events.append((kind, f.get("level"), f.get("text")))
        if kind == "epoch_start" and f["epoch"] == 2:
            raise KeyboardInterrupt

    opts = options(tmp_path, data, epochs=2, class_weights="auto", augment="none")
    stopped = train(opts, on_event=stop_after_epoch_1)
    assert stopped.stopped == "interrupted"
    expected = class_weights(np.array([24, 4, 4]))
    logits, targets, weight, loss = calls[0]
    np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-6)
    # The loss is Σ_k w_k t_k (−log p_k), averaged over the batch: hand-computed here.
    by_hand = -(weight * targets * torch.log_softmax(logits, 1)).sum(1).mean()
    unweighted = -(targets * torch.log_softmax(logits, 1)).sum(1).mean()
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-5)
    assert abs(float(loss) - float(unweighted)) > 1e-3  # the weights do change the loss
    assert any(level == "info" and "effective number" in text
               for kind, level, text in events if kind == "message")
    args = json.loads((stopped.run_dir / "args.json").read_text())
    assert args["options"]["class_weights"] == "auto" and args["options"]["sampler"] == "random"
    assert args["resolved"]["class_counts"] == [24, 4, 4]
    assert args["resolved"]["class_weights"] == pytest.approx(expected.tolist(), rel=1e-5)

    calls.clear()
    resumed = resume(stopped.run_dir)  # the choice is the run's own, kept on resume
    assert resumed.options.class_weights == "auto" and calls[0][2] is not None


def test_balanced_sampler_trains_on_classes_about_equally(tmp_path, monkeypatch):
    data = imbalanced_bars(tmp_path / "skewed", counts=(40, 4, 4))
    calls = _capture_losses(monkeypatch)
    result = train(options(tmp_path, data, epochs=3, sampler="balanced", augment="none",
                           label_smoothing=0.0))
    seen = torch.cat([targets.argmax(1) for _, targets, _, _ in calls])
    share = np.bincount(seen.numpy(), minlength=3) / len(seen)
    assert len(seen) == 3 * 4 * 12  # 48 images: 4 steps of 12 an epoch, as a shuffle
    assert np.all(np.abs(share - 1 / 3) < 0.12), share  # a shuffle: 0.83 / 0.08 / 0.08
    args = json.loads((result.run_dir / "args.json").read_text())
    assert args["options"]["sampler"] == "balanced"


def test_large_imbalance_is_one_warning_naming_the_remedies(tmp_path):
    data = imbalanced_bars(tmp_path / "skewed", counts=(40, 4, 40))
    events: list[tuple] = []
    train(options(tmp_path, data, epochs=1),
          on_event=lambda kind, **f: events.append((kind, f.get("level"), f.get("text"))))
    warnings = [text for kind, level, text in events if level == "warning"]
    assert len(warnings) == 1, warnings
    assert "ratio 10:1" in warnings[0] and "--class-weights auto" in warnings[0] \
        and "--sampler balanced" in warnings[0]
    with pytest.raises(UsageError, match="not both"):
        train(options(tmp_path, data, class_weights="auto", sampler="balanced"))
    with pytest.raises(UsageError, match="--sampler must be random or balanced"):
        train(options(tmp_path, data, sampler="weighted"))


@pytest.mark.slow
def test_a_budget_that_fits_far_too_few_steps_says_so_with_what_to_do(tmp_path, bars,
                                                                      monkeypatch):
    """A busy machine once fitted 12 steps into the quick start's 45 s and said nothing."""
    import vitcli.training.loop as loop

    monkeypatch.setattr(loop.time, "perf_counter", _slow_clock(step_s=0.5))
    said = []
    train(options(tmp_path, bars, epochs=10_000, time_budget=0.2),
          on_event=lambda kind, **f: said.append(f.get("text", "")) if kind == "message"
          else None)
    warning = next((s for s in said if "optimizer steps fit" in s), None)
    assert warning is not None, said
    assert "--time-budget" in warning and "300 steps are needed" in warning


def _slow_clock(step_s: float):
    """perf_counter that advances `step_s` per call from the trainer: every step looks slow."""
    now = [0.0]

    def clock() -> float:
        now[0] += step_s / 4
        return now[0]

    return clock


@pytest.mark.slow
def test_a_busy_machine_halves_the_recipes_batch_once_and_keeps_the_run_consistent(
        tmp_path, monkeypatch):
    """When the budget fits far too few steps and the recipe chose the batch, the run goes on
    at a smaller batch (lr scaled with it): args.json, the saved state, metrics.csv and the
    result all say the new batch, and --resume continues it. A batch the user gave is kept."""
    import vitcli.training.loop as loop

    data = bar_folder(tmp_path / "many", per_class=40)  # 120 images: 108 train, 12 val
    monkeypatch.setattr(loop.time, "perf_counter", _slow_clock(step_s=0.1))
    events = []

    def ctrl_c_after_the_first_epoch_at_the_new_batch(kind: str, **f) -> None:
        events.append((kind, f))  # the run must still be going when --resume comes
        if kind == "epoch_start" and f["epoch"] == 2 and any(k == "batch" for k, _ in events):
            raise KeyboardInterrupt

    result = train(options(tmp_path, data, batch_size=None, epochs=None, time_budget=0.2),
                   on_event=ctrl_c_after_the_first_epoch_at_the_new_batch)
    assert result.stopped == "interrupted"
    said = [f for kind, f in events if kind == "batch"]
    assert len(said) == 1 and said[0]["batch"] == 54, said  # 108 → 54; 27 would be < 32
    assert "going on at batch 54" in said[0]["text"] and "steps of 108 images" in said[0]["text"]
    args = json.loads((result.run_dir / "args.json").read_text())
    first_lr = [f["lr"] for kind, f in events if kind == "start"][0]
    assert args["options"]["batch_size"] == 54
    assert args["options"]["lr"] == pytest.approx(first_lr / 2)
    assert result.options.batch_size == 54 and result.steps > 0
    state = load_state(result.run_dir)
    assert state.info["batch_size"] == 54 and state.info["steps_per_epoch"] == 2
    assert state.info["step"] == result.steps
    rows = read_metrics(result.run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    steps = [int(r["step"]) for r in rows]  # 2 a epoch; the budget may end the last early
    assert steps[:-1] == [2 * e for e in range(1, len(rows))] and steps[-1] in (
        2 * len(rows) - 1, 2 * len(rows))

    given = train(options(tmp_path, data, batch_size=108, epochs=None, time_budget=0.2,
                          name="given"), on_event=lambda kind, **f: events.append((kind, f)))
    assert given.options.batch_size == 108  # --batch-size given: kept, only warned about
    assert sum(kind == "batch" for kind, _ in events) == 1
    assert any("optimizer steps fit" in f.get("text", "") for kind, f in events
               if kind == "message")

    monkeypatch.undo()
    resumed = resume(result.run_dir, on_event=lambda kind, **f: events.append((kind, f)))
    assert not getattr(resumed, "already_ended", False)  # it trained: the resume was real
    assert resumed.options.batch_size == 54 and resumed.steps > result.steps  # no "data changed"
    assert sum(kind == "batch" for kind, _ in events) == 1  # a resumed run never shrinks


def test_resuming_a_run_that_ended_says_so_and_changes_nothing(tmp_path: Path, bars: Path):
    """--resume of a finished run once re-fitted the calibration silently and printed a
    0-step summary; it now says the run already ended and how to train further."""
    result = train(options(tmp_path, bars, epochs=1))
    best = result.run_dir / "weights" / "best.safetensors"
    before = best.read_bytes()
    said = []
    again = resume(result.run_dir, on_event=lambda kind, **f: said.append(
        f"{f.get('text', '')} {f.get('command', '')}"))
    assert again.steps == result.steps and again.stopped == "completed"
    assert any("already ended at step" in s and "--init" in s for s in said), said
    assert best.read_bytes() == before  # no new calibration, no rewrite


def test_a_run_stopped_by_patience_has_ended_too(tmp_path: Path):
    """An early-stopped run resumed trained again (one more epoch, new files, a new
    calibration); like a finished schedule, it has nothing to resume."""
    from types import SimpleNamespace

    from vitcli.training.trainer import _ended

    info = {"step": 40, "epochs_done": 10, "bad_epochs": 3, "seconds": 9.0, "best_top1": 0.9,
            "best_epoch": 7, "schedule": {"total_steps": 120, "warmup_steps": 4,
                                          "peak_lr": 1e-3}}
    patient = TrainOptions(data="imgs", patience=3)
    said, result, command = _ended(tmp_path, SimpleNamespace(info=info), patient)
    assert command.startswith("vit train --data imgs --init ")
    assert "already ended at step 40 (epoch 10, stopped early by --patience 3)" in said
    assert result.stopped == "early_stop" and result.already_ended
    assert _ended(tmp_path, SimpleNamespace(info={**info, "bad_epochs": 2}), patient) is None
    assert _ended(tmp_path, SimpleNamespace(info=info), TrainOptions(data="imgs")) is None
    done = _ended(tmp_path, SimpleNamespace(info={**info, "step": 120}), TrainOptions(data="x"))
    assert done is not None and done[1].stopped == "completed"


def test_cli_resume_of_an_ended_run_says_only_that(tmp_path: Path, bars: Path, monkeypatch):
    """`vit train --resume` of a finished run printed the run/data/model/training/schedule
    header and a summary around 'already ended': the one line comes first and alone, exit 0
    (nothing failed), naming the run's own --data in the command to train further."""
    from vitcli.cli import app

    result = train(options(tmp_path, bars, epochs=1))
    monkeypatch.setenv("COLUMNS", "300")
    run = CliRunner().invoke(app, ["train", "--resume", str(result.run_dir)])
    assert run.exit_code == 0, run.output
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert len(lines) == 2, lines  # the sentence, then the command to copy on its own line
    assert lines[0].startswith(f"{result.run_dir} already ended at step {result.steps}")
    assert lines[1] == f"  vit train --data {bars} --init {result.run_dir}/weights/best.safetensors"
    assert "training summary" not in run.output and "schedule" not in run.output


@pytest.mark.slow
def test_ctrl_c_at_the_measured_fit_stops_with_the_history_rather_than_a_smaller_batch(
        tmp_path, monkeypatch):
    """A Ctrl-C in the step whose flush finished the speed measurement once let the run start
    again at a smaller batch: metrics.csv lost its rows and the summary said 0 epochs."""
    from contextlib import contextmanager

    import vitcli.training.loop as loop
    import vitcli.training.trainer as trainer_module

    data = bar_folder(tmp_path / "many", per_class=40)  # 108 train images: 1 step an epoch
    monkeypatch.setattr(loop.time, "perf_counter", _slow_clock(step_s=0.1))
    steps = []

    @contextmanager
    def ctrl_c_at_step_12(on_first):
        yield lambda: len(steps) >= 11  # asked in the 12th step's flush, the measured fit's

    monkeypatch.setattr(trainer_module, "_graceful_interrupt", ctrl_c_at_step_12)
    kinds = []

    def on_event(kind, **f):
        kinds.append(kind)
        if kind == "step":
            steps.append(f["step"])

    result = train(options(tmp_path, data, batch_size=None, epochs=None, time_budget=0.2),
                   on_event=on_event)
    assert "batch" not in kinds and result.stopped == "interrupted"
    assert result.options.batch_size == 256 and result.epochs >= 11  # the recipe's, not halved
    assert len(read_metrics(result.run_dir / "metrics.csv")) == result.epochs


def test_the_class_balance_note_names_two_different_classes_or_none():
    """Balanced data once read "'circle' has 80 training images, 'circle' 80 (ratio 1:1)"."""
    from vitcli.training.setup import imbalance_note

    names = ["circle", "square", "ring"]
    weights = TrainOptions(data="x", class_weights="auto")
    level, line = imbalance_note(np.repeat([0, 1, 2], 80), names, weights)
    assert line.endswith("every class has 80 training images (ratio 1:1)") and "'" not in line
    level, line = imbalance_note(np.repeat([0, 1, 2], [80, 8, 40]), names, weights)
    assert "'circle' has 80 training images, 'square' 8 (ratio 10:1)" in line
    assert imbalance_note(np.repeat([0, 1, 2], 80), names, TrainOptions(data="x")) is None


# ------------------------------------------------- a time budget shorter than start-up


def test_a_budget_shorter_than_start_up_stops_at_the_first_step_and_says_so(
        tmp_path: Path, bars: Path, monkeypatch):
    """`vit train --time-budget 0.01` went on measuring the speed for steps past its budget
    and took 7.6 s without a word: it now stops at the first step, says in one line that the
    budget was shorter than start-up and how long the run took, and records it in state.json
    (with the calibration, which the model file and `vit info` also say)."""
    from vitcli.cli import app
    from vitcli.model.checkpoint import read_metadata

    monkeypatch.setenv("COLUMNS", "300")
    import vitcli.training.setup

    prepare = vitcli.training.setup.prepare

    def slow_prepare(*args, **kwargs):  # warm caches (earlier tests) set up in < 0.06 s
        time.sleep(0.1)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(vitcli.training.setup, "prepare", slow_prepare)
    o = options(tmp_path, bars, epochs=10_000, batch_size=6, time_budget=0.001)  # 0.06 s
    run = CliRunner().invoke(app, ["train", *cli_flags(o), "--time-budget", "0.001"])
    assert run.exit_code == 0 and "Traceback" not in run.output, run.output
    said = [line for line in run.output.splitlines() if "--time-budget 0.001 min" in line
            and "start-up" in line]
    assert len(said) == 1, run.output
    assert said[0].startswith("warning: --time-budget 0.001 min (0.1 s) was shorter than "
                              "start-up: the first step ended at ")
    assert re.search(r"ended at [\d.]+ s \(set-up [\d.]+ s\) and the run took [\d.]+ s$",
                     said[0]), said[0]
    state = json.loads((tmp_path / "runs" / "exp" / "state.json").read_text())
    assert state["step"] == 1  # the budget was spent: no step past the first one
    budget = state["time_budget"]
    assert budget["kept"] is False and budget["note"] == said[0].removeprefix("warning: ")
    assert budget["budget_s"] == pytest.approx(0.06)
    assert budget["spent_s"] >= budget["setup_s"] + budget["first_step_s"] > 0.06
    assert budget["spent_s"] == pytest.approx(budget["setup_s"] + budget["end_s"], abs=2e-3)
    # The calibration's record agrees with the model file: 3 validation images fit no T.
    meta = read_metadata(tmp_path / "runs" / "exp" / "weights" / "best.safetensors")
    calibration = state["calibration"]
    assert meta["calibration"] == calibration["summary"] and float(meta["temperature"]) == 1.0
    assert "3 validation images are too few to fit one" in calibration["reason"]
    assert "temperature 1 kept (ECE" in " ".join(run.output.split())


def test_a_budget_the_run_keeps_is_recorded_and_not_warned_about(tmp_path: Path, bars: Path):
    said = []
    result = train(options(tmp_path, bars, epochs=1, time_budget=5.0),
                   on_event=lambda kind, **f: said.append(f.get("text", "")))
    assert result.budget_note is None and not any("--time-budget" in s for s in said), said
    budget = load_state(result.run_dir).info["time_budget"]
    assert budget["kept"] is True and budget["note"] is None
    assert budget["spent_s"] < 60 and budget["first_step_s"] <= budget["training_s"]


def test_the_end_of_a_run_writes_state_json_once_with_all_it_found(tmp_path: Path, bars: Path,
                                                                   monkeypatch):
    """The calibration and the time budget's record each rewrote state.json after the last
    epoch's save: the end of a run now adds both in one write, to the same content."""
    replace, log = os.replace, []

    def spy(src, dst, *a, **kw):
        if Path(dst).name == "state.json":
            log.append(("write", json.loads(Path(src).read_text())))
        return replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", spy)
    result = train(options(tmp_path, bars, epochs=1, time_budget=5.0),
                   on_event=lambda kind, **f: log.append((kind, None)))
    last_epoch = max(i for i, (kind, _) in enumerate(log) if kind == "epoch_end")
    saved = [info for kind, info in log[:last_epoch] if kind == "write"][-1]
    after = [info for kind, info in log[last_epoch:] if kind == "write"]
    assert len(after) == 1, [sorted(set(info) - set(saved)) for info in after]
    final = json.loads((result.run_dir / "state.json").read_text())
    assert after[0] == final
    assert final == {**saved, "calibration": final["calibration"],
                     "time_budget": final["time_budget"]}
    assert final["time_budget"]["kept"] is True and "summary" in final["calibration"]


# ------------------------------------------------------------ --resume repeating options


def test_resume_accepts_the_runs_own_data_however_it_is_named(tmp_path: Path, bars: Path,
                                                              monkeypatch):
    """`vit train --resume RUN --data SAME` was refused although --data named the folder the
    run recorded: an option repeated with its own value is accepted (paths compared
    resolved), and a different one is refused in one line naming what the run used."""
    from vitcli.cli import app

    first = train(options(tmp_path, bars, epochs=2), on_event=ctrl_c_after_epoch_1)
    assert first.stopped == "interrupted"
    monkeypatch.chdir(bars.parent)
    other = bar_folder(tmp_path / "other", per_class=4)
    refused = CliRunner().invoke(app, ["train", "--resume", str(first.run_dir), "--data",
                                       str(other), "--epochs", "2", "--ema"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert refused.output.count("\n") == 1 and refused.output.startswith("error:")
    assert (f"--data {other} (the run's: bars), --ema (the run's: off) cannot change"
            in " ".join(refused.output.split())), refused.output  # --epochs 2 is the run's
    again = CliRunner().invoke(app, ["train", "--resume", str(first.run_dir), "--data",
                                     "./bars/", "--epochs", "2", "--threads", "1"])
    assert again.exit_code == 0, again.output
    assert load_state(first.run_dir).info["step"] == first.steps * 2  # it trained on


def test_resume_compares_paths_resolved_and_names_the_runs_folder(tmp_path: Path):
    from vitcli.training.resume import check_unchanged

    data = tmp_path / "data"
    data.mkdir()
    run = tmp_path / "runs" / "exp3"
    saved = TrainOptions(data=str(data), epochs=5, project=str(tmp_path / "runs"), lr=0.004)
    check_unchanged(saved, {"data": str(tmp_path / "x" / ".." / "data"), "epochs": 5,
                            "project": str(tmp_path / "runs"), "name": "exp3", "lr": 0.004},
                    run)
    with pytest.raises(UsageError, match=re.escape(
            f"--data {tmp_path} (the run's: {data}) cannot change")):
        check_unchanged(saved, {"data": str(tmp_path)}, run)
    with pytest.raises(UsageError, match=r"--name exp4 \(the run's: not set\)"):
        check_unchanged(saved, {"name": "exp4"}, run)


def test_patch_drop_help_names_the_init_models_rate_as_default():
    """With --init and no --patch-drop the source model's rate is kept (setup.prepare passes
    None through init_config), so the help must not promise the preset's; the option is
    documented in docs/training.md's table."""
    import typer.main

    from vitcli.cli import app

    command = typer.main.get_command(app).commands["train"]
    option = next(p for p in command.params if "--patch-drop" in p.opts)
    assert "--init keeps its model's rate" in (option.help or "")
    docs = (Path(__file__).parent.parent / "docs" / "training.md").read_text()
    assert "| `--patch-drop F` |" in docs and "`--init` the source model's" in docs


def test_a_negative_zero_rate_is_recorded_as_zero():
    """`--patch-drop=-0` passes the [0, 1) check; it must reach args.json and the model
    file's config as 0.0, not -0.0 (which `vit info` would show as "-0.0")."""
    import math

    opts = TrainOptions(data="x", patch_drop=-0.0, drop_path=-0.0, label_smoothing=-0.0)
    for value in (opts.patch_drop, opts.drop_path, opts.label_smoothing):
        assert value == 0.0 and math.copysign(1.0, value) == 1.0
    config = model_config(opts, typical_size=28, num_classes=3, in_channels=1)
    assert math.copysign(1.0, config.patch_drop) == 1.0
