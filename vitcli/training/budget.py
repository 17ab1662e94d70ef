"""`--time-budget`: how many steps fit, and what the epochs so far really cost.

Pure arithmetic, apart from the trainer, so that it can be tested without training.
"""

from __future__ import annotations

from dataclasses import dataclass

FINISH_SECONDS = 2.0  # the least a budget keeps back for the final plots
SMALLEST_BATCH = 32  # a busy machine's time budget halves the batch down to this, no further


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
