"""What `vit train` shows: progress from the first step, Ctrl-C at once, readable times."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from vitcli.commands._train_display import Display, format_duration
from vitcli.model.config import ViTConfig


def display() -> tuple[Display, io.StringIO]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=False)
    return Display(console=console), buffer


def start(d: Display, **kw) -> None:
    fields = dict(run_dir=Path("runs/train/exp"), config=ViTConfig(image_size=32, patch_size=8,
                  embed_dim=16, depth=1, num_heads=2, num_classes=5),
                  description="folder x: 500 train / 100 val", num_train=500, num_val=100,
                  epochs=150, steps_per_epoch=2, batch_size=256, optimizer="muon", lr=4e-3,
                  schedule="linear", device="cpu", world_size=1, amp="None", resumed_step=0,
                  total_steps=300, epochs_reason="500 images at batch 256 are 2 steps an "
                  "epoch: 150 epochs make the 300 steps a model needs to learn",
                  time_budget=None, threads=1, threads_reason="1 of 2 cores free, load 3.0")
    fields.update(kw)
    d("start", **fields)


def test_durations_use_seconds_for_short_runs():
    assert format_duration(0.4) == "0.4 s" and format_duration(42) == "42 s"
    assert format_duration(185) == "3 min 05 s" and format_duration(7620) == "2 h 07 min"


def test_the_start_says_the_schedule_and_why_and_the_threads():
    d, out = display()
    start(d)
    text = " ".join(out.getvalue().split())
    assert "150 epochs × 2 steps = 300 steps" in text and "make the 300 steps" in text
    assert "1 CPU thread (1 of 2 cores free" in text and "(4×4 grid)" in text
    assert "3 channels, 5 classes" in text
    d, out = display()  # patch dropout: how many patches a training step sees
    start(d, config=ViTConfig(image_size=28, patch_size=4, embed_dim=16, depth=1, num_heads=2,
                              num_classes=5, patch_drop=0.5))
    assert "(7×7 grid, 24 of 49 patches a training step)" in " ".join(out.getvalue().split())


def test_the_start_names_the_preset_and_why():
    d, out = display()
    start(d, preset="vit-pico", preset_reason="chosen for 28-px images")
    text = " ".join(out.getvalue().split())
    assert "model vit-pico (chosen for 28-px images), 32 px, patch 8" in text
    d, out = display()
    start(d, preset="vit-s16", preset_reason="--model")  # given: named, no reason needed
    assert "model vit-s16, 32 px" in " ".join(out.getvalue().split())
    d, out = display()
    start(d, preset=None, preset_reason="")  # no preset and no --init (an older event)
    assert "model 32 px, patch 8" in " ".join(out.getvalue().split())
    d, out = display()
    start(d, preset=None, preset_reason="", init="runs/a/weights/best.safetensors")
    assert "model from runs/a/weights/best.safetensors, 32 px" in " ".join(out.getvalue().split())


def test_a_log_gets_progress_with_time_left_from_the_first_step():
    d, out = display()
    start(d)
    d("step", epoch=1, epochs=150, step=1, total_steps=300, done=1, loss=1.6, lr=1e-3,
      images_per_s=196.0, eta_s=397.0, budget_fitted=True)
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("step 1/300") and "196 img/s" in line and "6 min 37 s left" in line


def test_a_time_budget_shows_its_time_left_from_the_first_step():
    """--time-budget once printed 'step 1/300  epoch 1/150 ... measuring speed': totals it had
    not fitted yet, and no time left although the budget gives it from the start."""
    d, out = display()
    start(d, time_budget=0.75)
    d("step", epoch=1, epochs=150, step=1, total_steps=300, done=1, loss=1.6, lr=1e-3,
      images_per_s=804.0, eta_s=397.0, budget_fitted=False, budget_left_s=43.6)
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("step 1  epoch 1  804 img/s") and "44 s of the budget left" in line
    assert "measuring" not in line and "/300" not in line and "/150" not in line
    d.last_log = -1e9  # the next log line now, not in 30 s
    d("step", epoch=3, epochs=55, step=20, total_steps=435, done=2, loss=1.5, lr=1e-3,
      images_per_s=900.0, eta_s=31.0, budget_fitted=True, budget_left_s=32.0)
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("step 20/435  epoch 3/55") and line.endswith("31 s left")


def test_first_ctrl_c_says_what_happens_next_at_once():
    d, out = display()
    start(d)
    d("interrupt")
    text = " ".join(out.getvalue().split())
    assert "stopping after the current step" in text and "--resume" in text
    assert "Ctrl-C again" in text


def test_a_resumed_epoch_without_steps_shows_no_zero_images_per_second():
    d, out = display()
    start(d, resumed_step=2)
    row = {"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_top1": 0.5, "val_top5": 1.0,
           "images_per_s": None}
    d("epoch_end", row=row, best=True, best_top1=0.5, epochs=150)
    text = out.getvalue()
    assert "resumed at step 2" in text and "img/s" not in text.splitlines()[-1]
    assert "top-5" not in text.splitlines()[-1]  # 5 classes: top-5 is always 100 %


def test_summary_time_is_in_seconds_for_a_short_run(tmp_path):
    from vitcli.commands._train_display import print_summary

    buffer = io.StringIO()
    result = SimpleNamespace(stopped="completed", epochs=3, steps=9, seconds=2.5,
                             best_top1=0.9, best_epoch=3, num_val=0,
                             best_path=tmp_path / "b", last_path=tmp_path / "l",
                             run_dir=tmp_path, options=None)
    print_summary(Console(file=buffer, width=100), result)
    assert "2.5 s" in buffer.getvalue() and "0.0 min" not in buffer.getvalue()


def test_one_epoch_of_one_step_is_singular():
    from vitcli.commands._common import plural

    assert plural(1, "step") == "1 step" and plural(1_024, "step") == "1,024 steps"
    assert plural(1, "class", "classes") == "1 class" and plural(3, "class", "classes") == "3 classes"
    d, out = display()
    start(d, epochs=1, steps_per_epoch=1, total_steps=1,
          config=ViTConfig(image_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=1,
                           num_classes=1))
    d("schedule", total_steps=1, epochs=1, seconds_per_step=0.2)
    text = " ".join(out.getvalue().split())
    assert "1 epoch × 1 step = 1 step (" in text and "time budget: 1 step (~1 epoch)" in text
    assert not re.search(r"\b1 (epochs|steps|heads|classes)\b", text), text
