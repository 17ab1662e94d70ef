"""Which epoch ends validate: every one by default, every --val-every, and under a time budget
as many as a tenth of the time allows (vitcli/training/validation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_train import bar_folder, options
from vitcli.errors import UsageError
from vitcli.model.checkpoint import load_model
from vitcli.training.runs import read_metrics
from vitcli.training.trainer import train
from vitcli.training.validation import VAL_SHARE, validation_spacing


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def bars(tmp_path: Path) -> Path:
    return bar_folder(tmp_path / "bars", per_class=10)  # 27 train, 3 val


def test_spacing_keeps_validation_within_its_share_of_the_training_time():
    assert VAL_SHARE == 0.10
    # 2-minute small-data run: 0.8 s to validate 2,000 images, 3.1 s to train an epoch
    every = validation_spacing(0.8, 3.1)
    assert every == 3 and 0.8 / (every * 3.1) <= VAL_SHARE < 0.8 / ((every - 1) * 3.1)
    assert validation_spacing(0.3, 3.0) == 1  # exactly a tenth: every epoch
    assert validation_spacing(0.05, 3.0) == 1
    assert validation_spacing(30.0, 3.0) == 100
    assert validation_spacing(0.0, 0.0) == validation_spacing(1.0, 0.0) == 1  # unmeasured


def val_epochs(run_dir: Path) -> list[int]:
    return [int(r["epoch"]) for r in read_metrics(run_dir / "metrics.csv")
            if r["val_top1"] is not None]


@pytest.mark.slow
def test_val_every_validates_every_nth_epoch_and_the_last(tmp_path: Path, bars: Path):
    events: list[dict] = []
    saved: dict[int, dict[str, str]] = {}  # last.safetensors' metadata at each epoch end

    def on_event(kind: str, **f) -> None:
        if kind == "epoch_end":
            events.append(f)
            last = f["row"]["epoch"]
            saved[last] = load_model(tmp_path / "runs" / "exp" / "weights"
                                     / "last.safetensors").metadata

    result = train(options(tmp_path, bars, epochs=5, val_every=2), on_event=on_event)
    assert val_epochs(result.run_dir) == [2, 4, 5]
    # a skipped epoch's file records no figure ("" would read "no validation images")
    assert "val_top1" not in saved[3] and float(saved[4]["val_top1"]) >= 0
    assert saved[3]["epoch"] == "3" and saved[3]["train_precision"] == "fp32"
    # an epoch that did not validate is never "best"; the best file is a validated epoch's
    assert {f["row"]["epoch"] for f in events if f["best"]} <= {2, 4, 5}
    assert result.best_epoch in (2, 4, 5) and result.last_row["val_top1"] is not None
    best = load_model(result.run_dir / "weights" / "best.safetensors")
    assert best.metadata["epoch"] == str(result.best_epoch) and best.metadata["val_top1"]


@pytest.mark.slow
def test_without_val_every_every_epoch_validates(tmp_path: Path, bars: Path):
    result = train(options(tmp_path, bars, epochs=3))
    assert val_epochs(result.run_dir) == [1, 2, 3]


@pytest.mark.slow
def test_a_time_budget_spaces_validation_and_says_so(tmp_path: Path, bars: Path,
                                                     monkeypatch):
    """Under --time-budget the spacing is measured after the second epoch (here forced to
    3), skipped epochs are said once, and the run's last epochs still validate."""
    import vitcli.training.validation as validation

    measured: list[tuple[float, float]] = []

    def spacing(val_s: float, train_s: float) -> int:
        measured.append((val_s, train_s))
        return 3

    monkeypatch.setattr(validation, "validation_spacing", spacing)
    messages: list[str] = []
    result = train(options(tmp_path, bars, epochs=10_000, time_budget=0.2, batch_size=3),
                   on_event=lambda kind, **f: messages.append(f["text"])
                   if kind == "message" else None)
    assert len(measured) == 1 and all(s > 0 for s in measured[0])  # decided once, measured
    said = [m for m in messages if m.startswith("validating every 3 epochs")]
    assert len(said) == 1 and "--val-every" in said[0]
    done = val_epochs(result.run_dir)
    assert result.epochs >= 8, result.epochs  # enough epochs to see the spacing
    assert done[:2] == [1, 2] and done[-1] == result.epochs
    skipped = set(range(1, result.epochs + 1)) - set(done)
    assert skipped and all(e > 2 for e in skipped)
    assert result.last_row["val_top1"] is not None  # the final model is scored


@pytest.mark.slow
def test_patience_counts_epochs_across_skipped_validations(tmp_path: Path, bars: Path,
                                                           monkeypatch):
    import vitcli.training.validation as validation

    scores = iter([0.5, 0.4, 0.4, 0.4, 0.4])  # best at epoch 2, then no better
    monkeypatch.setattr(validation.Validation, "_validate",
                        lambda self: (1.0, next(scores), 1.0))
    result = train(options(tmp_path, bars, epochs=20, val_every=2, patience=4))
    assert result.stopped == "early_stop"
    assert result.best_epoch == 2 and result.epochs == 6  # 4 epochs without a better one


def test_val_every_out_of_range_is_one_line(tmp_path: Path):
    with pytest.raises(UsageError, match=r"--val-every must be in \[1, 100,000\], not 0"):
        train(options(tmp_path, tmp_path, val_every=0))


def test_a_model_files_training_precision_is_checked():
    from vitcli.model.validate import check_metadata_keys

    check_metadata_keys({"train_precision": "bf16"})
    with pytest.raises(ValueError, match="train_precision 'fp16' is not fp32 or bf16"):
        check_metadata_keys({"train_precision": "fp16"})


def test_val_every_needs_validation_and_a_patience_at_least_as_long(tmp_path: Path):
    """--patience counts epochs: with --val-every longer, one validation stopped the run."""
    with pytest.raises(UsageError, match="--val-every needs validation, and --val-split 0"):
        train(options(tmp_path, tmp_path, val_every=2, val_split=0.0))
    with pytest.raises(UsageError, match=r"--patience 2 counts epochs .* --val-every 3 "
                                         r"validates less often"):
        train(options(tmp_path, tmp_path, val_every=3, patience=2))


@pytest.mark.slow
def test_patience_under_a_time_budget_validates_every_epoch(tmp_path: Path, bars: Path):
    """Automatic spacing of 4 with --patience 3 stopped a run after one bad validation."""
    import vitcli.training.validation as validation

    called: list[int] = []
    real = validation.validation_spacing
    validation.validation_spacing = lambda *a: called.append(1) or 5  # type: ignore
    try:
        result = train(options(tmp_path, bars, epochs=10_000, time_budget=0.1, batch_size=3,
                               patience=100))
    finally:
        validation.validation_spacing = real
    assert not called and val_epochs(result.run_dir) == list(range(1, result.epochs + 1))


@pytest.mark.slow
def test_resume_keeps_the_spacing_counted_from_the_last_validation(tmp_path: Path,
                                                                    bars: Path):
    from vitcli.training.trainer import resume

    def stop_after_epoch_5(kind: str, **f) -> None:
        if kind == "epoch_start" and f["epoch"] == 6:
            raise KeyboardInterrupt

    first = train(options(tmp_path, bars, epochs=12, val_every=3),
                  on_event=stop_after_epoch_5)
    assert first.stopped == "interrupted" and val_epochs(first.run_dir) == [3]
    again = resume(first.run_dir)
    assert val_epochs(again.run_dir) == [3, 6, 9, 12]  # not 3, 8, 11, 12
