"""The Trainer's loop: steps, epochs, the epoch end and stopping.

Everything that decides what happens next (the step counter, the schedule, the best metric,
the RNG states) is saved at every epoch end, so that a resumed run on CPU with a fixed seed
reproduces the uninterrupted one exactly (tests/test_train.py proves it).

The Trainer's other concerns are mixed in from their own modules: fitting the schedule to
--time-budget (budget_fit.py), validation and a linear probe's cached features
(validation.py), and the files and state it saves and loads (run_state.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vitcli.devices import Precision
from vitcli.errors import UsageError, VitError, check_choice
from vitcli.training.budget import EpochTimes
from vitcli.training.budget_fit import BudgetFit, SmallerBatch
from vitcli.training.distributed import DistEnv, all_reduce_mean, shard
from vitcli.training.optim import ModelEma, WarmupDecay, build_optimizer, warmup_steps_for
from vitcli.training.recipe import TrainOptions, epochs_for, steps_per_epoch
from vitcli.training.run_state import RunState
from vitcli.training.runs import MetricsLog, TrainResult
from vitcli.training.setup import Emit, Prepared
from vitcli.training.threads import ThreadTuner
from vitcli.training.validation import Validation


class NonFiniteLoss(VitError):
    """The loss became NaN or infinite; the run stopped, the last good files are kept."""


def augment_level(options: TrainOptions, num_train: int) -> str:
    """--augment, or the default: none for a linear probe (its features are then computed
    once, vitcli/training/probe.py), else the augmentation module's for this many images."""
    from vitcli.data.augment import AUGMENT_LEVELS, default_level

    probe = options.freeze == "backbone"
    level = options.augment or ("none" if probe else default_level(num_train))
    return check_choice("--augment", level, AUGMENT_LEVELS)


class Trainer(BudgetFit, Validation, RunState):
    """Owns the model, optimiser, schedule and counters of one run on one rank."""

    def __init__(self, options: TrainOptions, prepared: Prepared, env: DistEnv,
                 run_dir: Path, emit: Emit, *, augment: str, precision: Precision,
                 chosen: frozenset[str] = frozenset()) -> None:
        from vitcli.data.augment import BatchAugment, make_policy

        self.options, self.data, self.env, self.run_dir, self.emit = (
            options, prepared, env, Path(run_dir), emit)
        # Which of "batch_size" and "lr" the recipe chose (not the user): a time budget on a
        # busy machine may then halve the batch (and the lr with it) once, at its first fit.
        self.chosen = chosen
        self.device = env.device
        self.model = prepared.model
        # bf16 autocast around the forward pass; weights and optimiser state stay fp32.
        self.precision = precision
        self.amp_dtype = precision.dtype
        n = len(prepared.train_labels)
        self.batch = min(options.batch_size, n) // env.world_size * env.world_size
        if self.batch < env.world_size or options.batch_size % env.world_size:
            raise UsageError(f"--batch-size {options.batch_size} must be a multiple of the "
                             f"{env.world_size} processes (and at most {n}, the images)")
        # Every image every epoch: the last batch is filled up with images from the start of
        # the epoch's order rather than dropped (500 images at batch 256 used to lose 244).
        self.fill_last = True
        self.steps_per_epoch = steps_per_epoch(n, self.batch)
        self.epochs, self.epochs_reason = epochs_for(options, n, self.batch)
        pixels = torch.from_numpy(prepared.train_pixels)
        # Small data sets live on the GPU whole: no host→device copy per step.
        on_device = self.device.type == "cuda" and pixels.nbytes < 2**31
        self.pixels = pixels.to(self.device) if on_device else pixels
        self.labels = torch.from_numpy(prepared.train_labels).to(self.pixels.device)
        self.loss_weights = None  # (K,) float32 with --class-weights auto
        if options.class_weights == "auto":
            from vitcli.data.balance import class_counts, class_weights

            counts = class_counts(prepared.train_labels, prepared.config.num_classes)
            self.loss_weights = torch.tensor(class_weights(counts), dtype=torch.float32,
                                             device=self.device)
        pre = prepared.preprocessing
        # Mirroring changes the class of digits and letters, the usual grey small images; colour
        # photos are mirror-invariant, so they get flips.
        policy = make_policy(augment, hflip=pre.color_mode == "RGB", image_size=pre.image_size)
        self.augment = BatchAugment(policy, image_size=pre.image_size,
                                    mean=pre.mean, std=pre.std,
                                    num_classes=prepared.config.num_classes,
                                    label_smoothing=options.label_smoothing)
        self._new_optimizer_and_schedule()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = ModelEma(self.model, options.ema_decay) if options.ema else None
        # A linear probe without augmentation trains its head on features computed once
        # (vitcli/training/probe.py); `fit` computes them, `_step` then feeds them to the head.
        from vitcli.training.probe import trainable_head_only

        self.level = augment
        self.probe_mode = (None if not trainable_head_only(self.model)
                           else "augmented" if augment != "none"
                           else "cached" if options.cache_features else "uncached")
        self.val_features: torch.Tensor | None = None
        self.features_cached, self.feature_seconds = False, 0.0
        self.net = self._wrap(self.model)
        torch.manual_seed(options.seed + env.rank)  # augmentation differs between ranks
        self.metrics = MetricsLog(self.run_dir / "metrics.csv") if env.is_main else None
        self.log_every = 1 if self.device.type == "cpu" else 10  # CUDA: fewer host syncs
        # Counters: all of them are in the saved state.
        self.step = self.epochs_done = self.bad_epochs = 0
        self.best_top1: float | None = None
        self.best_epoch: int | None = None
        self.seconds_before = 0.0
        self.loss_sum, self.loss_count = 0.0, 0
        self.budget_fitted = options.time_budget is None
        self.last_row: dict[str, Any] | None = None
        self.pending: list[torch.Tensor] = []
        self.mutating = False
        self.probe: tuple[int, float] | None = None  # (step, time) the speed probe started
        self.sec_per_step: float | None = None
        self.epoch_times = EpochTimes()  # this session's, for refitting a time budget
        # Which epoch ends validate (validation.py): every val_every-th, counted from the last
        # that did; under a time budget without --val-every, spaced after the second epoch.
        self.val_every = options.val_every or 1
        # (not with --patience, which counts epochs without a better validation)
        self.auto_val_every = (options.val_every is None and options.time_budget is not None
                               and options.patience is None)
        self.last_val_epoch = self.session_start_epoch = 0
        self.first_fit: int | None = None  # steps the budget's first fit allowed
        self.first_step_s: float | None = None  # elapsed() when the run's first step ended
        # Before fit: reading the data, building the model (set by trainer._run). The budget
        # counts it: --time-budget is minutes for the whole run, as the user's clock sees it.
        self.setup_seconds = 0.0
        # CPU threads: chosen from the free cores and re-measured (vitcli/training/threads.py);
        # under torchrun each process keeps the count it was started with unless --threads.
        self.tuner: ThreadTuner | None = None
        if self.device.type == "cpu" and not (env.distributed and not options.threads):
            self.tuner = ThreadTuner(torch.set_num_threads, fixed=options.threads)
        elif options.threads:
            torch.set_num_threads(options.threads)

    def _new_optimizer_and_schedule(self) -> None:
        """A fresh optimiser and warm-up + decay schedule for the options, batch and epochs."""
        o = self.options
        self.optimizer = build_optimizer(self.model, lr=o.peak_lr, weight_decay=o.weight_decay,
                                         layer_decay=o.layer_decay, kind=o.optimizer)
        total = self.epochs * self.steps_per_epoch
        self.schedule = WarmupDecay(o.peak_lr,
                                    warmup_steps_for(o.warmup, self.steps_per_epoch, total),
                                    total, o.min_lr_ratio, o.schedule)

    def _wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module each step calls: `module` under DDP and/or torch.compile as asked."""
        if self.env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return torch.compile(module) if self.options.compile else module

    # ------------------------------------------------------------------ the public loop

    def fit(self, stop_requested: Callable[[], bool]) -> Any:
        """Train until the schedule, the patience or the time budget ends, or Ctrl-C."""

        self.clock = time.perf_counter()
        self.session_start_step = self.step
        self.session_start_epoch = self.epochs_done  # last_val_epoch: from the saved state
        self.emit("start", run_dir=self.run_dir, config=self.data.config,
                  preset=self.data.preset, preset_reason=self.data.preset_reason,
                  init=self.options.init, preprocessing=self.data.preprocessing, description=self.data.description,
                  num_train=len(self.data.train_labels), num_val=self.num_val,
                  epochs=self.planned_epochs, steps_per_epoch=self.steps_per_epoch,
                  batch_size=self.batch, optimizer=self.options.optimizer,
                  lr=self.options.peak_lr, schedule=self.schedule.shape, device=str(self.device),
                  world_size=self.env.world_size, precision=str(self.precision),
                  resumed_step=self.step,
                  total_steps=self.schedule.total_steps, epochs_reason=self.epochs_reason,
                  time_budget=self.options.time_budget,
                  threads=None if self.tuner is None else self.tuner.threads,
                  threads_reason=None if self.tuner is None else self.tuner.reason)
        self.stop_requested = stop_requested
        if self.probe_mode == "cached" and not self.features_cached:
            self._cache_features()
        from vitcli.training.probe import describe

        probe = describe(self.probe_mode, level=self.level, images=len(self.data.train_labels)
                         + self.num_val, seconds=self.feature_seconds)
        if probe:
            self.emit("message", text=probe, level="info")
        stopped = None  # (--resume of a run that had ended never gets here: trainer._ended)
        try:
            while stopped is None:
                steps = min(self.steps_per_epoch,
                            self.schedule.total_steps - self.epochs_done * self.steps_per_epoch)
                if steps <= 0:
                    stopped = "completed"
                    break
                try:
                    self._train_epoch(steps)
                except SmallerBatch:
                    continue  # the next epoch starts the run again at the smaller batch
                stopped = self._end_epoch()
        except KeyboardInterrupt:
            if self.mutating:  # a second Ctrl-C inside the update: the saved state stands
                raise
            if self.pending:  # finished steps whose losses were not counted yet
                self.loss_sum += float(torch.stack(self.pending).float().sum())
                self.loss_count += len(self.pending)
                self.pending.clear()
            if self.env.is_main:
                self._save_state()
            stopped = "interrupted"
        training_s = self.elapsed()
        found: dict[str, Any] = {}  # what the end of the run adds to state.json
        if self.env.is_main:
            self._finish_files()
            if stopped != "interrupted":  # a resumed run calibrates when it ends
                found.update(self._calibrate())
        note, budget = self._account_for_budget(stopped, training_s)
        if self.env.is_main:
            self._record_end({**found, **budget})
        result = TrainResult(
            run_dir=self.run_dir, stopped=stopped, epochs=self.epochs_done, steps=self.step,
            seconds=self.elapsed(), best_top1=self.best_top1, best_epoch=self.best_epoch,
            best_path=self.run_dir / "weights" / "best.safetensors",
            last_path=self.run_dir / "weights" / "last.safetensors", last_row=self.last_row,
            num_train=len(self.data.train_labels), num_val=self.num_val,
            val_split=self.data.val_split, options=self.options, probe=probe,
            budget_note=note, setup_seconds=self.setup_seconds)
        self.emit("end", result=result)
        return result

    @property
    def num_val(self) -> int:
        return 0 if self.data.val_labels is None else len(self.data.val_labels)

    @property
    def planned_epochs(self) -> int:
        return math.ceil(self.schedule.total_steps / self.steps_per_epoch)

    def elapsed(self) -> float:
        """Seconds of training so far, earlier sessions of a resumed run included."""
        return self.seconds_before + time.perf_counter() - self.clock

    # ------------------------------------------------------------------------ one epoch

    def _train_epoch(self, steps: int) -> None:
        epoch = self.epochs_done
        # Every rank draws the same seeded order; `shard` gives each its part of each batch.
        rng = np.random.default_rng([self.options.seed, epoch])
        if self.options.sampler == "balanced":
            from vitcli.data.balance import balanced_order

            drawn = balanced_order(self.data.train_labels, rng)  # (N,), with replacement
        else:
            drawn = rng.permutation(len(self.labels))
        order = torch.from_numpy(drawn).to(self.labels.device)
        short = self.steps_per_epoch * self.batch - len(order)
        if self.fill_last and short > 0:  # (steps · batch,): the last batch topped up
            order = torch.cat([order, order[:short]])
        first = self.step - epoch * self.steps_per_epoch
        self.emit("epoch_start", epoch=epoch + 1, epochs=self.planned_epochs, steps=steps,
                  done=first)
        self.net.train()
        self.epoch_clock, self.epoch_images = time.perf_counter(), 0
        self.epoch_start_step = self.step
        for i in range(first, steps):
            if self.step >= self.schedule.total_steps:
                break  # the time budget ended the schedule early
            batch = shard(order[i * self.batch:(i + 1) * self.batch], self.env)
            self._step(batch)
            last = i == steps - 1 or self.step >= self.schedule.total_steps
            save = self.options.save_every and self.step % self.options.save_every == 0
            if last or save or self.step % self.log_every == 0:
                self._flush(epoch, i + 1)
                if save and not last and self.env.is_main:
                    self._save_state()

    def _step(self, batch: torch.Tensor) -> None:
        clock = time.perf_counter()
        pixels = self.pixels[batch].to(self.device, non_blocking=True)  # uint8 (b, S, S, C)
        # (or, for a linear probe on cached features, float (b, D))
        labels = self.labels[batch].to(self.device, non_blocking=True)
        x, targets = self.augment(pixels, labels)  # (b, C, S, S) float, (b, K) soft targets
        self.schedule.apply(self.optimizer, self.step)
        with torch.autocast(self.device.type, dtype=self.amp_dtype,
                            enabled=self.amp_dtype is not None):
            logits = self.net(x)  # (b, K)
        # With soft targets, weight scales each class's share of the target: Σ_k w_k t_k log p_k.
        loss = F.cross_entropy(logits.float(), targets, weight=self.loss_weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.options.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.params, self.options.clip_grad, foreach=True)
        self.mutating = True
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        self.mutating = False
        if self.step == 1 and self.first_step_s is None:  # start-up: what no budget can fit
            self.first_step_s = self.elapsed()
        self.pending.append(loss.detach())
        self.epoch_images += len(batch) * self.env.world_size
        if self.tuner is not None:  # CPU: the step is done when its ops return
            said = self.tuner.after_step(time.perf_counter() - clock)
            if said:
                self.emit("message", text=said, level="info")

    def _flush(self, epoch: int, done: int) -> None:
        """Check and count the losses of the last steps; agree with the other ranks on stopping."""
        losses = torch.stack(self.pending).float().cpu()
        # A spent budget stops the run, fitted or not: a budget shorter than start-up once
        # went on measuring the speed for a dozen steps past it.
        over = bool(self.options.time_budget
                    and self.budget_spent() > self.options.time_budget * 60)
        total, interrupt, over_any = all_reduce_mean(
            [float(losses.sum()), float(self.stop_requested()), float(over)], self.env)
        if not math.isfinite(total):
            bad = np.flatnonzero(~np.isfinite(losses.numpy()))
            at = self.step - len(losses) + (int(bad[0]) if len(bad) else len(losses) - 1) + 1
            self._non_finite(at, epoch)
        self.loss_sum += total
        self.loss_count += len(losses)
        self.pending.clear()
        now = time.perf_counter()
        seconds = now - self.epoch_clock
        # The whole run's remaining time from this session's pace (epoch ends included).
        session_steps = self.step - self.session_start_step
        per_step = (now - self.clock) / max(session_steps, 1)
        total_steps = max(self.schedule.total_steps, self.step)
        self.emit("step", epoch=epoch + 1, epochs=self.planned_epochs, step=self.step,
                  total_steps=total_steps, done=done, loss=total / len(losses),
                  lr=self.schedule.lr(self.step - 1),
                  images_per_s=self.epoch_images / max(seconds, 1e-9),
                  eta_s=per_step * (total_steps - self.step),
                  budget_fitted=self.budget_fitted,
                  # known from the first step: the minutes given less the time spent so far
                  budget_left_s=(max(0.0, self.options.time_budget * 60 - self.budget_spent())
                                 if self.options.time_budget else None))
        if self.options.time_budget and self.sec_per_step is None:
            self._probe()  # (epoch ends may have fitted the budget already, less exactly)
        if interrupt > 0:
            raise KeyboardInterrupt
        if over_any > 0:  # slower than measured: end the schedule here
            self.schedule.total_steps = self.step

    def _non_finite(self, at: int, epoch: int) -> None:

        last = self.run_dir / "weights" / "last.safetensors"
        kept = (f"the last good model is {last} (epoch {self.epochs_done})"
                if self.epochs_done else "no epoch finished, so no model file was written")
        raise NonFiniteLoss(
            f"loss is not finite at step {at} (epoch {epoch + 1}); training stopped and {kept}. "
            f"Try a lower --lr (now {self.options.peak_lr:g}) or --clip-grad")

    # ----------------------------------------------------------------------- epoch end

    def _end_epoch(self) -> str | None:
        """Validate, write metrics, weights and state; say whether to stop and why."""
        epoch = self.epochs_done + 1
        val_clock = time.perf_counter()
        validated = self._validation_due(epoch)
        val = self._validate() if validated else None
        val_seconds = time.perf_counter() - val_clock
        seconds = val_clock - self.epoch_clock
        row = {"epoch": epoch, "step": self.step,
               "train_loss": self.loss_sum / max(self.loss_count, 1),
               "val_loss": val[0] if val else None, "val_top1": val[1] if val else None,
               "val_top5": val[2] if val else None, "lr": self.schedule.lr(self.step - 1),
               # None when this session trained no step of the epoch (a resume at its end)
               "images_per_s": (self.epoch_images / max(seconds, 1e-9)
                                if self.epoch_images else None),
               "seconds": self.elapsed()}
        # An epoch that skipped validation is never the best; without validation images
        # every epoch is (best = last).
        improved = validated and (val is None or self.best_top1 is None
                                  or val[1] > self.best_top1)
        # Counters, files and state change together: a second Ctrl-C in here leaves the
        # previous epoch's saved state standing rather than one that counts a missing epoch.
        self.mutating = True
        if improved:
            self.best_top1, self.best_epoch, self.bad_epochs = (
                val[1] if val else None), epoch, 0
        elif validated:  # --patience counts epochs, validated or not
            self.bad_epochs += epoch - self.last_val_epoch
        if validated:
            self.last_val_epoch = epoch
        self.epochs_done = epoch
        self.loss_sum, self.loss_count = 0.0, 0
        self.last_row = row
        if self.env.is_main:
            self._save_epoch(epoch, val, row, improved)
        self.mutating = False
        self.emit("epoch_end", row=row, best=improved, best_top1=self.best_top1,
                  epochs=self.planned_epochs)
        if self.step >= self.schedule.total_steps:
            return "time_budget" if self.options.time_budget else "completed"
        if validated:
            self._space_validation(epoch, val_seconds, seconds)
        if self.options.time_budget:  # refit with what the epochs so far really cost
            self.epoch_times.add(self.step - self.epoch_start_step, seconds,
                                 time.perf_counter() - val_clock)
            self._fit_budget(self.epoch_times.sec_per_step, self.epoch_times.mean_end_seconds)
            if self.step >= self.schedule.total_steps and not validated:
                # the refit ended the run on an epoch that skipped validation (the machine
                # slowed sharply): one more step, whose epoch end then validates the model
                self.schedule.total_steps = self.step + 1
        if self.options.patience and val is not None and self.bad_epochs >= self.options.patience:
            return "early_stop"
        return None
