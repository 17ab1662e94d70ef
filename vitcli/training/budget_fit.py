"""The Trainer's side of `--time-budget`: timing the first steps, fitting the schedule to the
minutes left, going on at a smaller batch when far too few steps fit, and saying (and
recording) when a run did not keep its budget.

The arithmetic is in vitcli/training/budget.py; this mixin applies it to a running Trainer
(vitcli/training/loop.py), whose counters, schedule and options it reads and resets.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from vitcli.errors import plural
from vitcli.training.budget import EpochTimes, batch_for_steps, steps_in_budget
from vitcli.training.distributed import broadcast
from vitcli.training.optim import ModelEma, warmup_steps_for
from vitcli.training.recipe import epochs_for, steps_per_epoch

PROBE_STEPS = 10  # steps timed (after 2 warm-up steps) before a time budget sets the schedule


class SmallerBatch(Exception):  # noqa: N818 - control flow inside the loop, never raised out
    """The time budget fits too few steps: the epoch ends here and the run goes on at a
    smaller batch (Trainer._shrink_batch)."""


def _busy_clause() -> str:
    """'; the machine is busy (load 2.4 on 2 cores)' when other work holds the cores, else ''."""
    from vitcli.devices import load_average, usable_cores

    load = load_average()
    return (f"; the machine is busy (load {load:.1f} on {plural(usable_cores(), 'core')})"
            if load is not None and load > usable_cores() * 0.75 else "")


class BudgetFit:
    """The time-budget methods of Trainer (mixed into it; they use its state)."""

    def budget_spent(self) -> float:
        """Seconds of the --time-budget used: this session's set-up and all training so far."""
        return self.setup_seconds + self.elapsed()

    def _account_for_budget(self, stopped: str,
                            training_s: float) -> tuple[str | None, dict[str, Any]]:
        """(the line, the record for state.json) when the run had a --time-budget.

        The record (state.json `time_budget`) holds the budget and where the time went, kept
        or not; the line is said only when it was not (vitcli.training.budget.overrun_line).
        An interrupted run, or one without a budget, has neither.
        """
        if not self.options.time_budget or stopped == "interrupted":
            return None, {}
        from vitcli.training.budget import overrun_line

        total_s = self.elapsed()
        first = self.first_step_s if self.session_start_step == 0 else None  # a new run's
        note = overrun_line(minutes=self.options.time_budget, setup_s=self.setup_seconds,
                            first_step_s=first, training_s=training_s, total_s=total_s)
        if note:
            self.emit("message", level="warning", text=note)
        # seconds from the start of training; set-up came before it
        return note, {"time_budget": {
            "minutes": self.options.time_budget, "budget_s": self.options.time_budget * 60,
            "setup_s": round(self.setup_seconds, 3),
            "first_step_s": None if first is None else round(first, 3),
            "training_s": round(training_s, 3), "end_s": round(total_s, 3),
            "spent_s": round(self.setup_seconds + total_s, 3),
            "kept": note is None, "note": note}}

    def _probe(self) -> None:
        """Time PROBE_STEPS steps (after 2 warm-up steps), then fit the schedule to the budget."""
        done = self.step - self.session_start_step
        if self.probe is None and done >= 2 and (self.tuner is None or self.tuner.steady):
            self.probe = (self.step, time.perf_counter())
        elif self.probe is not None and self.step - self.probe[0] >= PROBE_STEPS:
            self.sec_per_step = (time.perf_counter() - self.probe[1]) / (self.step - self.probe[0])
            end_seconds = self.num_val * self.sec_per_step / self.batch / 3
            if self._shrink_batch(self.sec_per_step, end_seconds):
                raise SmallerBatch
            self._fit_budget(self.sec_per_step, end_seconds)

    def _steps_fitting(self, sec_per_step: float, end_seconds: float) -> int:
        """The schedule's total steps that end this run within its --time-budget."""
        return steps_in_budget(
            budget_s=self.options.time_budget * 60, elapsed_s=self.budget_spent(), step=self.step,
            epoch_start=self.epochs_done * self.steps_per_epoch,
            steps_per_epoch=self.steps_per_epoch, sec_per_step=sec_per_step,
            end_seconds=end_seconds)

    def _fit_budget(self, sec_per_step: float, end_seconds: float) -> None:
        """Set the schedule's total steps so that the run ends within the budget."""
        total = broadcast(self._steps_fitting(sec_per_step, end_seconds), self.env)
        self.schedule.total_steps = total
        self.schedule.warmup_steps = warmup_steps_for(self.options.warmup,
                                                      self.steps_per_epoch, total)
        self.budget_fitted = True
        self.emit("schedule", total_steps=total, epochs=self.planned_epochs,
                  seconds_per_step=sec_per_step)
        few = self._few_steps_warning(total, sec_per_step)
        if few:
            self.emit("message", text=few, level="warning")

    def _shrink_batch(self, sec_per_step: float, end_seconds: float) -> bool:
        """When far fewer steps than a model needs fit the budget, go on at a smaller batch.

        Only at the measured fit of a new run in one process whose batch the recipe chose. The
        weights trained so far are kept; the optimiser, the schedule (the lr scaled with the
        batch, as the recipe scales it, unless --lr was given), the counters and metrics.csv
        start again, and the time spent so far still counts against the budget.
        """
        from vitcli.training.recipe import FEW_STEPS, MIN_STEPS
        from vitcli.training.runs import read_json, write_json

        if ("batch_size" not in self.chosen or self.env.world_size > 1
                or self.session_start_step or self.probe_mode is not None
                or self.stop_requested()):  # Ctrl-C: stop with the history, do not start again
            return False
        total = self._steps_fitting(sec_per_step, end_seconds)  # one process: no broadcast
        left = total - self.step
        if total >= FEW_STEPS:
            return False
        old = self.batch
        new = batch_for_steps(old, left, MIN_STEPS)
        if new == old:
            return False
        lr = self.options.lr * new / old if "lr" in self.chosen else self.options.lr
        self.chosen = frozenset()  # once
        self.options = dataclasses.replace(self.options, batch_size=new, lr=lr)
        n = len(self.data.train_labels)
        self.batch = new
        self.steps_per_epoch = steps_per_epoch(n, new)
        self.epochs, self.epochs_reason = epochs_for(self.options, n, new)
        self._new_optimizer_and_schedule()
        if self.ema is not None:
            self.ema = ModelEma(self.model, self.options.ema_decay)
        now = time.perf_counter()
        self.seconds_before += now - self.clock  # the budget still counts the time spent
        self.clock = now
        self.step = self.epochs_done = self.bad_epochs = self.session_start_step = 0
        self.best_top1 = self.best_epoch = self.last_row = None
        self.loss_sum, self.loss_count = 0.0, 0
        self.pending.clear()
        self.budget_fitted, self.probe, self.sec_per_step = False, None, None
        self.epoch_times = EpochTimes()
        if self.env.is_main:
            args = read_json(self.run_dir / "args.json")  # what --resume continues with
            args["options"].update(batch_size=new, lr=lr)
            write_json(self.run_dir / "args.json", args)
            if self.metrics is not None:
                self.metrics.truncate(0)
            self._save_state()
        busy = _busy_clause()
        self.emit("batch", batch=new, lr=self.options.peak_lr, text=(
            f"only {total:,} steps of {old} images fit in --time-budget "
            f"{self.options.time_budget:g} min ({sec_per_step * 1000:,.0f} ms a step{busy}), "
            f"and a model needs about {MIN_STEPS} to learn: going on at batch {new} "
            f"(lr {self.options.peak_lr:.3g}), up to {old // new}× as many steps, from the "
            f"weights trained so far; epochs, steps and metrics.csv count again from here"))
        self.first_fit = -1  # said: the few-steps warning speaks only if it gets slower still
        return True

    def _few_steps_warning(self, total: int, sec_per_step: float) -> str | None:
        """A loud sentence when far fewer steps fit the budget than the run needs, once for the
        first fit and once more if a refit halves it (the machine got busier)."""
        from vitcli.training.recipe import FEW_STEPS, MIN_STEPS

        first = self.first_fit is None
        if first and "batch_size" in self.chosen and self.sec_per_step is None:
            return None  # not measured yet, and a smaller batch may still come (_shrink_batch)
        if self.first_fit == -1:  # the smaller batch's first fit, after its own warning
            self.first_fit = total
            return None
        if first:
            self.first_fit = total
            if total >= FEW_STEPS:
                return None
            why = f"only {total:,} optimizer steps fit"
        elif total < self.first_fit / 2 and self.first_fit > 0:
            why = (f"the machine got slower: {total:,} steps fit now, "
                   f"{self.first_fit:,} at the start")
            self.first_fit = 0  # say it once
        else:
            return None
        need = MIN_STEPS * sec_per_step / 60 + (self.budget_spent() / 60 if first else 0)
        busy = _busy_clause()
        return (f"{why} in --time-budget {self.options.time_budget:g} min "
                f"({sec_per_step * 1000:,.0f} ms a step{busy}). About {MIN_STEPS} steps are "
                f"needed to learn: give --time-budget {math.ceil(need * 1.2 * 4) / 4:g} "
                "or more, --epochs instead of a budget, or stop other work on this machine")
