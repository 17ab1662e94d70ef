"""`--time-budget`: how many steps fit, and what the epochs so far really cost.

Pure arithmetic, apart from the trainer, so that it can be tested without training.
"""

from __future__ import annotations

from dataclasses import dataclass

from vitcli.errors import format_duration

FINISH_SECONDS = 2.0  # the least a budget keeps back for the final plots
SMALLEST_BATCH = 32  # a busy machine's time budget halves the batch down to this, no further
# A run that ends more than this fraction of its budget, and OVERRUN_SECONDS, past it says so.
OVERRUN_FRACTION = 0.1
OVERRUN_SECONDS = 1.0


def steps_in_budget(*, budget_s: float, elapsed_s: float, step: int, epoch_start: int,
                    steps_per_epoch: int, sec_per_step: float, end_seconds: float) -> int:
    """The schedule's total steps so that training plus epoch ends finish within the budget.

    `end_seconds` is the work at each epoch end (validation, saving). Kept back for the end
    of the run: the best model's validation pass for the confusion matrix, and the plots
    (about a second each on 2 CPU cores). The run stops at an epoch end when it can, so the
    last epoch is validated; a budget too short for that stops mid-epoch.
    """
    left = budget_s - max(0.03 * budget_s, FINISH_SECONDS) - end_seconds - elapsed_s
    per_epoch = steps_per_epoch * sec_per_step + end_seconds
    to_epoch_end = (epoch_start + steps_per_epoch - step) * sec_per_step + end_seconds
    if left < to_epoch_end:
        total = step + int((left - end_seconds) / sec_per_step)
    else:
        rest = left - to_epoch_end
        full = int(rest // per_epoch)
        partial = int(max(rest - full * per_epoch - end_seconds, 0) / sec_per_step)
        total = epoch_start + (1 + full) * steps_per_epoch + partial
    return max(total, step + 1)


def batch_for_steps(batch: int, steps: int, needed: int, smallest: int = SMALLEST_BATCH) -> int:
    """The batch at which about `needed` steps fit where `steps` fit at `batch`.

    Halves `batch` until the steps would fit, assuming an image costs the same at any batch
    (smaller batches cost a little more per image on a CPU, so the estimate is a ceiling), and
    never below `smallest` nor above `batch`. The quick start on two cores shared with two
    busy processes fitted 66-82 steps of 256 images in its 45 seconds (30-39 % validation
    top-1); going on at batch 32 it made 353-383 steps and reached 95-96 % (2-core Xeon,
    2026-12-01; docs/benchmarks.md).
    """
    while steps < needed and batch // 2 >= smallest:
        batch, steps = batch // 2, steps * 2
    return batch


@dataclass
class EpochTimes:
    """Training and epoch-end seconds of this session's epochs, for refitting the budget.

    The first epoch counts only until a second one ends: it carries the warm-up (first steps,
    first saves), which would make the estimate pessimistic and end the run well before its
    budget (the quick start once stopped at 0.4 of its 0.75 minutes).
    """

    steps: int = 0
    train_seconds: float = 0.0
    epochs: int = 0
    end_seconds: float = 0.0
    first_dropped: bool = False

    def add(self, steps: int, train_seconds: float, end_seconds: float) -> None:
        """Count one more epoch (forgetting the session's first once a second one ends)."""
        if self.epochs == 1 and not self.first_dropped:
            self.steps, self.train_seconds, self.epochs, self.end_seconds = 0, 0.0, 0, 0.0
            self.first_dropped = True
        self.steps += steps
        self.train_seconds += train_seconds
        self.epochs += 1
        self.end_seconds += end_seconds

    @property
    def sec_per_step(self) -> float:
        return self.train_seconds / max(self.steps, 1)

    @property
    def mean_end_seconds(self) -> float:
        return self.end_seconds / max(self.epochs, 1)


def overrun_line(*, minutes: float, setup_s: float, first_step_s: float | None,
                 training_s: float, total_s: float) -> str | None:
    """One line when a run did not keep its --time-budget of `minutes`, else None.

    A budget is a promise about when the run ends; one it cannot keep is said, not hidden
    behind "time budget reached". `setup_s` is the set-up before training (reading the data,
    building the model), which the budget counts; `first_step_s`, `training_s` (the last
    epoch end done) and `total_s` (the final plots and calibration done) count from the start
    of training. A budget spent by a new run's first step (`first_step_s`; None for a resumed
    run) was shorter than start-up itself, which no schedule can fit (`vit train
    --time-budget 0.01` once took 7.6 s without a word); any run that ends more than
    OVERRUN_FRACTION and OVERRUN_SECONDS past its budget says where the time went.
    """
    budget_s = minutes * 60
    given = f"--time-budget {minutes:g} min ({format_duration(budget_s)})"
    took = format_duration(setup_s + total_s)
    if first_step_s is not None and setup_s + first_step_s >= budget_s:
        return (f"{given} was shorter than start-up: the first step ended at "
                f"{format_duration(setup_s + first_step_s)} (set-up "
                f"{format_duration(setup_s)}) and the run took {took}")
    if setup_s + total_s > budget_s * (1 + OVERRUN_FRACTION) + OVERRUN_SECONDS:
        return (f"the run took {took}, well past {given}: set-up {format_duration(setup_s)}, "
                f"training {format_duration(training_s)}, final plots and calibration "
                f"{format_duration(total_s - training_s)}")
    return None
