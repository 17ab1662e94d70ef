"""What the Trainer scores at epoch ends: validation (loss, top-1, top-5) with each rank
predicting its share, which epochs validate (every one, every --val-every, or under a time
budget as many as a tenth of the time allows), how the validation images were chosen (stored
in the model file), and a linear probe's features, computed once, that its head then trains
and is validated on.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from vitcli.training.distributed import broadcast, gather_rows

VAL_BATCH = 256
# Under --time-budget without --val-every, validation may take this share of the training
# time: on 4,000 small images with 2,000 to validate, every epoch's validation took a fifth of
# a 2-minute run, time the model did not train (docs/small-data.md).
VAL_SHARE = 0.10
ENDING_EPOCHS = 2  # the plan's last epochs always validate: a budget's refit may end it there


def validation_spacing(val_seconds: float, train_seconds: float,
                       share: float = VAL_SHARE) -> int:
    """Epochs between validations so that validating takes at most `share` of the time spent
    training: 1 when a validation costs under `share` of an epoch's training (seconds)."""
    if train_seconds <= 0 or val_seconds <= 0:
        return 1
    return max(1, math.ceil(val_seconds / (share * train_seconds) - 1e-9))


class Validation:
    """The validation and feature-cache methods of Trainer (mixed into it; they use its state)."""

    def _validation_due(self, epoch: int) -> bool:
        """Whether this epoch end validates: without validation images always (nothing to
        skip); else every `val_every` epochs, the run's last epoch and, under a time budget,
        the plan's last ENDING_EPOCHS (a refit at an epoch end may end the run there)."""
        if self.data.val_pixels is None or epoch - self.last_val_epoch >= self.val_every:
            return True
        left = self.schedule.total_steps - self.step  # steps the plan has after this epoch
        if left <= 0:
            return True
        return bool(self.options.time_budget) and left <= ENDING_EPOCHS * self.steps_per_epoch

    def _space_validation(self, epoch: int, val_seconds: float, train_seconds: float) -> None:
        """Under a time budget without --val-every or --patience: after the second validated
        epoch (the first carries the warm-up), fix the spacing so that validation takes at most
        VAL_SHARE of the training time; say it once when epochs are skipped."""
        if not self.auto_val_every or epoch - self.session_start_epoch < 2:
            return
        self.auto_val_every = False  # decided once: a spacing that moves would read as noise
        every = broadcast(validation_spacing(val_seconds, train_seconds), self.env)
        if every > 1:
            self.val_every = every
            self.emit("message", level="info", text=(
                f"validating every {every} epochs and the last: {val_seconds:.2g} s a "
                f"validation, {train_seconds:.2g} s an epoch (--val-every)"))

    def _cache_features(self) -> None:
        """Compute the probe's features once; train and validate the head on them from now on.

        If the head on the features does not reproduce the model's logits (a head that reads
        more than the pooled features), the probe runs the backbone every step instead.
        """
        from vitcli.training.probe import (
            FeatureTargets,
            HeadOnly,
            extract_features,
            head_matches,
        )

        pre, data, precision = self.data.preprocessing, self.data, self.precision.name
        n_train, n_val = len(data.train_labels), self.num_val
        clock = time.perf_counter()

        def features(pixels: np.ndarray, offset: int) -> torch.Tensor:
            return extract_features(
                self.model, pixels, mean=pre.mean, std=pre.std, device=self.device,
                precision=precision,
                batch_size=VAL_BATCH, progress=lambda done, _: self.emit(
                    "features", done=offset + done, total=n_train + n_val))

        train = features(data.train_pixels, 0)
        if not head_matches(self.model, data.train_pixels, train, mean=pre.mean, std=pre.std,
                            device=self.device, precision=precision):
            self.probe_mode = "unmatched"
            return
        if data.val_pixels is not None:
            self.val_features = features(data.val_pixels, n_train)
        self.pixels = train.to(self.pixels.device)  # (N, D): what `_step` indexes now
        self.augment = FeatureTargets(self.augment)
        self.net = self._wrap(HeadOnly(self.model))
        self.features_cached, self.feature_seconds = True, time.perf_counter() - clock

    def _validation_source(self) -> str:
        """How the validation images were chosen, as JSON for the model file: `vit eval
        --val-split` warns when it would score other (training) images."""
        import json

        if self.data.val_labels is None:
            how: dict[str, Any] = {"source": "none"}
        elif self.options.val:
            how = {"source": "val"}
        elif self.data.val_split is not None:
            how = {"source": "val_split", "fraction": self.data.val_split,
                   "seed": self.options.seed}
        else:
            how = {"source": "split"}
        return json.dumps(how)

    def _validate(self) -> tuple[float, float, float] | None:
        """(loss, top-1, top-5) on the validation set, each rank predicting its share."""
        if self.data.val_pixels is None:
            return None
        from vitcli.evaluation.evaluate import predict_logits
        from vitcli.evaluation.metrics import compute_metrics

        model = self.ema.module if self.ema is not None else self.model
        pre = self.data.preprocessing
        part = slice(self.env.rank, None, self.env.world_size)
        if self.val_features is not None:  # a linear probe: the head on cached features
            from vitcli.training.probe import head_logits

            logits = head_logits(model, self.val_features[part], device=self.device)
        else:
            logits = predict_logits(model, self.data.val_pixels[part], mean=pre.mean,
                                    std=pre.std, batch_size=VAL_BATCH, device=self.device,
                                    precision=self.precision.name)
        full = gather_rows(logits, self.env)
        values = None
        if self.env.is_main:
            m = compute_metrics(full, self.data.val_labels, self.data.class_names)
            values = (m.loss, m.top1, m.top5)
        return broadcast(values, self.env)
