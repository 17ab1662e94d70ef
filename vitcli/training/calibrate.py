"""The end of `vit train`: calibrate the best model and give it the `unknown` rule.

The best weights are read back from their file (they may be an earlier epoch's, or the
EMA's), the temperature and unknown statistics are fitted (vitcli.evaluation.ood), and the
file is rewritten with them, atomically, so that `vit predict`, `vit eval` and `vit export`
all use them from then on. The file's `calibration` entry says in one sentence what was fitted
and whether it was kept (`vit info` shows it): a fitted T that would make the validation
calibration worse is not stored (vitcli.evaluation.calibration.choose_temperature).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vitcli.evaluation.ood import Trust, fit_trust
from vitcli.model.checkpoint import load_model, save_model
from vitcli.training.setup import Prepared

# Keys save_model writes itself; every other stored key (epoch, val_top1, ...) is kept.
_OWN_KEYS = {"format", "format_version", "vitcli_version", "config", "class_names",
             "preprocessing", "temperature", "ood"}
CALIBRATION_KEY = "calibration"  # the sentence: what was fitted, and whether T was kept


def calibrate_model_file(path: Path, data: Prepared, device: torch.device,
                         seed: int = 0) -> Trust | None:
    """Fit T and the unknown rule for the model in `path` and store them there.

    Returns what was fitted, or None when there is nothing to fit on (no file, or no
    validation images: the file then keeps T = 1 and no unknown rule).
    """
    if not path.exists() or data.val_pixels is None or not len(data.val_labels):
        return None
    mf = load_model(path, device=str(device))
    pre = mf.preprocessing
    trust = fit_trust(mf.model, train_pixels=data.train_pixels, train_labels=data.train_labels,
                      val_pixels=data.val_pixels, val_labels=data.val_labels,
                      mean=pre.mean, std=pre.std, num_classes=mf.config.num_classes,
                      device=device, seed=seed)
    extra = {k: v for k, v in mf.metadata.items() if k not in _OWN_KEYS}
    if trust.choice is not None:
        extra[CALIBRATION_KEY] = trust.choice.summary()
    save_model(path, mf.model, class_names=mf.class_names, preprocessing=pre, extra=extra,
               temperature=trust.temperature, ood=trust.ood)
    return trust
