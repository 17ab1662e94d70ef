"""The time-budget arithmetic: the planned steps fit the budget, and the estimate forgets the
first epoch's warm-up."""

from __future__ import annotations

import pytest

from vitcli.training.budget import (
    FINISH_SECONDS,
    EpochTimes,
    batch_for_steps,
    overrun_line,
    steps_in_budget,
)


def _seconds_used(total: int, *, step: int, epoch_start: int, steps_per_epoch: int,
                  sec_per_step: float, end_seconds: float) -> float:
    """What running from `step` to `total` costs: its steps, and an epoch end after each
    finished epoch and after the last (partial) one."""
    ends = (total - epoch_start) // steps_per_epoch + ((total - epoch_start) % steps_per_epoch > 0)
    return (total - step) * sec_per_step + ends * end_seconds


@pytest.mark.parametrize("budget_s, elapsed_s, step, sec_per_step, end_seconds", [
    (100.0, 0.0, 0, 1.0, 1.0),     # many epochs
    (120.0, 30.0, 40, 0.06, 0.4),  # the small-data case: 31 steps an epoch, short steps
    (20.0, 0.0, 5, 1.0, 0.5),      # less than an epoch left: stops mid-epoch
])
def test_the_planned_steps_fit_the_budget_and_use_it(budget_s, elapsed_s, step, sec_per_step,
                                                     end_seconds):
    spe = 31 if sec_per_step < 0.1 else 10
    epoch_start = step - step % spe
    total = steps_in_budget(budget_s=budget_s, elapsed_s=elapsed_s, step=step,
                            epoch_start=epoch_start, steps_per_epoch=spe,
                            sec_per_step=sec_per_step, end_seconds=end_seconds)
    left = budget_s - elapsed_s - max(0.03 * budget_s, FINISH_SECONDS)
    used = _seconds_used(total, step=step, epoch_start=epoch_start, steps_per_epoch=spe,
                         sec_per_step=sec_per_step, end_seconds=end_seconds)
    assert total > step
    assert used <= left  # the final validation and plots still fit
    assert used > left - 2 * (spe * sec_per_step + end_seconds)  # and little time is wasted


def test_a_spent_budget_still_takes_one_more_step():
    assert steps_in_budget(budget_s=10, elapsed_s=60, step=7, epoch_start=0, steps_per_epoch=10,
                           sec_per_step=1.0, end_seconds=1.0) == 8


def test_a_longer_budget_never_plans_fewer_steps():
    totals = [steps_in_budget(budget_s=b, elapsed_s=0, step=0, epoch_start=0,
                              steps_per_epoch=10, sec_per_step=0.5, end_seconds=2.0)
              for b in range(10, 300, 7)]
    assert totals == sorted(totals)


def test_epoch_times_forget_the_first_epoch_once_a_second_one_ends():
    times = EpochTimes()
    times.add(10, 20.0, 5.0)  # epoch 1: warm-up, slow
    assert (times.sec_per_step, times.mean_end_seconds) == (2.0, 5.0)
    times.add(10, 10.0, 1.0)  # epoch 2 replaces it
    assert (times.sec_per_step, times.mean_end_seconds) == (1.0, 1.0)
    times.add(10, 12.0, 3.0)  # later epochs are averaged in
    assert times.sec_per_step == pytest.approx(1.1) and times.mean_end_seconds == 2.0


@pytest.mark.parametrize("batch, steps, expected", [
    (256, 60, 32),    # 60 → 480 steps would need batch 32
    (256, 100, 64),   # 100 → 400 at 64
    (256, 300, 256),  # enough steps: unchanged
    (256, 10, 32),    # never below the smallest batch
    (40, 10, 40),     # 20 < 32: a small batch is not halved
    (108, 40, 54),
])
def test_batch_for_steps_halves_until_enough_steps_would_fit(batch, steps, expected):
    assert batch_for_steps(batch, steps, 300) == expected


# ------------------------------------------------------- a budget the run could not keep


def test_a_budget_spent_by_the_first_step_is_said_with_what_the_run_really_took():
    line = overrun_line(minutes=0.01, setup_s=1.2, first_step_s=0.5, training_s=0.9,
                        total_s=6.4)
    assert line == ("--time-budget 0.01 min (0.6 s) was shorter than start-up: the first "
                    "step ended at 1.7 s (set-up 1.2 s) and the run took 7.6 s")


def test_a_run_well_past_its_budget_says_where_the_time_went():
    line = overrun_line(minutes=0.5, setup_s=8.0, first_step_s=0.3, training_s=38.0,
                        total_s=44.0)
    assert line == ("the run took 52 s, well past --time-budget 0.5 min (30 s): set-up "
                    "8.0 s, training 38 s, final plots and calibration 6.0 s")
    # a resumed run has no start-up of its own to blame: only the overrun is said
    resumed = overrun_line(minutes=0.01, setup_s=1.0, first_step_s=None, training_s=5.0,
                           total_s=6.0)
    assert resumed is not None and resumed.startswith("the run took 7.0 s, well past")


@pytest.mark.parametrize("total_s", [29.0, 30.0, 33.0])
def test_a_budget_kept_within_a_tenth_and_a_second_says_nothing(total_s):
    assert overrun_line(minutes=0.5, setup_s=1.0, first_step_s=0.2, training_s=total_s - 2,
                        total_s=total_s) is None
