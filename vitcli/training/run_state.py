"""What the Trainer keeps on disk: each epoch's model files and metrics row, the state that
resumes a run exactly (saved at every epoch end, loaded by --resume), and at the end of a run
the calibrated best model and the plots.
The file layout is vitcli/training/runs.py's.
"""

from __future__ import annotations

from typing import Any

import torch

from vitcli.errors import UsageError
from vitcli.model.checkpoint import save_model, unwrap_model
from vitcli.model.validate import TRAIN_PRECISION_KEY
from vitcli.training.optim import WarmupDecay
from vitcli.training.runs import (
    TrainState,
    flatten_optimizer,
    get_rng_states,
    record_in_state,
    save_state,
    set_rng_states,
    unflatten_optimizer,
    write_plots,
)


class RunState:
    """The saving, loading and finishing methods of Trainer (mixed into it; they use its state)."""

    def state(self) -> TrainState:
        """Everything needed to continue exactly: see vitcli/training/runs.py for the file layout."""
        optim_info, tensors = flatten_optimizer(self.optimizer.state_dict())
        rng_info, rng_tensors = get_rng_states()
        tensors.update(rng_tensors)
        tensors.update({f"model.{k}": v for k, v in unwrap_model(self.model).state_dict().items()})
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_tensors().items()})
        info = {
            "step": self.step, "epochs_done": self.epochs_done, "bad_epochs": self.bad_epochs,
            "best_top1": self.best_top1, "best_epoch": self.best_epoch,
            "seconds": self.elapsed(), "loss_sum": self.loss_sum, "loss_count": self.loss_count,
            "budget_fitted": self.budget_fitted, "schedule": self.schedule.to_dict(),
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "batch_size": self.batch, "steps_per_epoch": self.steps_per_epoch,
            "fill_last": self.fill_last,
            "optimizer": optim_info, "rng": rng_info, "world_size": self.env.world_size,
            "precision": self.precision.name, "last_val_epoch": self.last_val_epoch,
        }
        return TrainState(info=info, tensors=tensors)

    def _save_epoch(self, epoch: int, val: tuple[float, float, float] | None,
                    row: dict[str, Any], improved: bool) -> None:
        """Write the epoch's model files (last, and best when `improved`), its metrics row and
        the state."""
        weights = self.run_dir / "weights"
        model = self.ema.module if self.ema is not None else self.model
        extra = {"epoch": str(epoch), "validation": self._validation_source(),
                 TRAIN_PRECISION_KEY: self.precision.name}
        if val is not None:
            extra["val_top1"] = f"{val[1]:.6f}"
        elif self.data.val_pixels is None:
            extra["val_top1"] = ""  # a run without validation images
        # else the epoch skipped validation (--val-every): it has no figure to record
        meta = {"class_names": self.data.class_names,
                "preprocessing": self.data.preprocessing, "extra": extra}
        save_model(weights / "last.safetensors", model, **meta)
        if improved:
            save_model(weights / "best.safetensors", model, **meta)
        self.metrics.append(row)
        self._save_state()

    def _save_state(self) -> None:
        save_state(self.run_dir, self.state())

    def load_state(self, state: TrainState) -> None:
        """Put the model, optimiser, EMA, counters and RNGs back where `state` left them."""
        info, tensors = state.info, state.tensors
        n = len(self.data.train_labels)
        if not info.get("fill_last", False) and info["steps_per_epoch"] == n // self.batch:
            # A run saved before epochs kept every image: it continues as it began.
            self.fill_last, self.steps_per_epoch = False, n // self.batch
        if info["batch_size"] != self.batch or info["steps_per_epoch"] != self.steps_per_epoch:
            raise UsageError(f"{self.run_dir}: the data changed since the run started "
                             f"({self.steps_per_epoch} steps per epoch now, "
                             f"{info['steps_per_epoch']} then); start a new run")

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v.to(self.device) for k, v in tensors.items()
                    if k.startswith(prefix)}

        self.model.load_state_dict(part("model."))
        self.optimizer.load_state_dict(unflatten_optimizer(info["optimizer"], tensors))
        if self.ema is not None:
            self.ema.load_state_tensors(part("ema."), info["ema_updates"])
        self.schedule = WarmupDecay.from_dict(info["schedule"])
        for key in ("step", "epochs_done", "bad_epochs", "best_top1", "best_epoch",
                    "loss_sum", "loss_count", "budget_fitted"):
            setattr(self, key, info[key])
        self.seconds_before = info["seconds"]
        # the validation spacing (--val-every) counts from the last validated epoch (its type
        # checked with the other counters: resume.STATE_FIELDS); a state saved before it had
        # validated every epoch
        self.last_val_epoch = min(info.get("last_val_epoch", self.epochs_done), self.epochs_done)
        set_rng_states(info["rng"], tensors)
        if self.env.rank:  # only rank 0's RNG is saved; the others continue from a new seed
            torch.manual_seed(self.options.seed + 1000 * self.env.rank + self.step)
        if self.metrics is not None:
            self.metrics.truncate(self.step)  # rows written after the state was saved

    def _calibrate(self) -> dict[str, Any]:
        """Store the temperature and the unknown rule in best.safetensors (training/calibrate.py);
        give back what was fitted, for state.json (`calibration`), or {} when nothing was."""
        from vitcli.training.calibrate import calibrate_model_file

        trust = calibrate_model_file(self.run_dir / "weights" / "best.safetensors", self.data,
                                     self.device, seed=self.options.seed)
        self.emit("calibrated", trust=trust)
        if trust is None or trust.choice is None:
            return {}
        return {"calibration": {**trust.choice.to_dict(), "summary": trust.choice.summary()}}

    def _record_end(self, found: dict[str, Any]) -> None:
        """Add what the end of the run found (calibration, the time budget kept or not) to
        state.json, beside the last epoch's state: one write, whatever there is to add."""
        if found:
            record_in_state(self.run_dir, found)

    def _finish_files(self) -> None:
        from vitcli.files import data_label

        val = self.options.val or self.options.data
        write_plots(self.run_dir, self.metrics.rows if self.metrics else [], self.data,
                    device=self.device, best_epoch=self.best_epoch,
                    precision=self.precision.name,
                    data_name=f"{data_label(val)} (validation)")
