"""What `vit train --resume` reads from a run folder, checked before anything is written.

A run folder holds what its run trained with: args.json's `options` (what was asked, with
the recipe's choices filled in) and `resolved` (what was decided: the architecture, the
preprocessing, the precision). A resumed run continues with exactly those, so a value that
is damaged there (hand-edited, truncated) is refused in one line naming the file, never
replaced by a default that would quietly train the rest of the run differently. The one
fallback is for run folders written before an option existed: they lack its keys entirely.

The precision has one source of truth, args.json's `resolved.precision`; state.json repeats
it beside the tensors it describes, and the two must agree. state.json's counters are
checked for their types before the run starts, not met mid-run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vitcli.devices import PRECISIONS
from vitcli.errors import UsageError, VitError
from vitcli.training.recipe import TrainOptions

# Options the recipe fills in when a run starts (TrainOptions.with_defaults_for) and
# args.json records resolved: null there would let the recipe decide again, perhaps otherwise.
RECORDED = ("optimizer", "schedule", "batch_size", "lr", "label_smoothing")
# Options a run folder may lack because it was written before the option existed, and the
# value such a run trained with.
BEFORE_THE_OPTION = {"optimizer": "adamw", "schedule": "cosine"}
PRECISION_NAMES = tuple(p for p in PRECISIONS if p != "auto")  # what a run trains at
_LOCAL_PATHS = ("data", "val", "init", "cache_dir")  # recorded absolute, shown from here
MAY_CHANGE = ("device", "threads")  # what --resume may change; every other option is the run's
_PATHS = (*_LOCAL_PATHS, "project")  # compared resolved by check_unchanged


def damage(exc: BaseException) -> str:
    """An exception met while reading a file, as words (never a Python repr)."""
    if isinstance(exc, KeyError) and exc.args:
        return f"no {exc.args[0]!r} entry"
    text = str(exc).strip()
    return text or type(exc).__name__


def saved_options(run_dir: Path) -> tuple[TrainOptions, dict[str, Any]]:
    """(the run's options, args.json as read): checked as a new run's are, or a VitError
    'RUN/args.json: corrupt run options: …'."""
    from vitcli.training.runs import read_json

    path = run_dir / "args.json"
    args = read_json(path)
    try:
        if not isinstance(args, dict) or not isinstance(args.get("options"), dict):
            raise ValueError("no options object")
        saved = dict(args["options"])
        for key in RECORDED:
            if key in saved and saved[key] is None:
                raise ValueError(f"{key} is null; a run records the value it trains with")
        for key, value in BEFORE_THE_OPTION.items():
            saved.setdefault(key, value)
        saved.setdefault("precision", "auto")  # before --precision: see recorded_precision
        options = TrainOptions.from_dict(saved)
        options.check()  # a hand-edited value of the wrong type fails here, as one line
    except (KeyError, TypeError, ValueError, AttributeError, VitError) as exc:
        # A stored value out of range is a damaged file here, not a command-line mistake.
        raise VitError(f"{path}: corrupt run options: {damage(exc)}") from None
    resolved = args.get("resolved")
    if not isinstance(resolved, dict):
        raise VitError(f"{path}: corrupt run settings: no resolved object")
    for key in ("data_fingerprint", "preset", "preset_reason"):  # compared or shown
        if resolved.get(key) is not None and not isinstance(resolved[key], str):
            raise VitError(f"{path}: corrupt run settings: resolved.{key} is "
                           f"{_quoted(resolved[key])}, not text")
    return options, args


# state.json's counters and the type each must have when present (a missing one is said
# where it is read); a hand-edited "seconds": "abc" failed mid-run with a TypeError.
_WHOLE, _NUMBER = (int,), (int, float)
STATE_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {  # name: (types, may be null)
    "version": (_WHOLE, False), "step": (_WHOLE, False), "epochs_done": (_WHOLE, False),
    "bad_epochs": (_WHOLE, False), "loss_count": (_WHOLE, False),
    "batch_size": (_WHOLE, False), "steps_per_epoch": (_WHOLE, False),
    "ema_updates": (_WHOLE, False), "best_epoch": (_WHOLE, True),
    "last_val_epoch": (_WHOLE, False),
    "seconds": (_NUMBER, False), "loss_sum": (_NUMBER, False), "best_top1": (_NUMBER, True),
    "budget_fitted": ((bool,), False), "fill_last": ((bool,), False),
    "schedule": ((dict,), False), "optimizer": ((dict,), False), "rng": ((dict,), False),
}


def saved_state_info(run_dir: Path) -> dict[str, Any] | None:
    """state.json's facts with each counter of the right type, or None when the run has not
    saved one yet (said later, where the state is loaded); a VitError naming the file."""
    import math

    from vitcli.training.runs import STATE_FILE, read_json

    path = run_dir / STATE_FILE
    if not path.is_file():
        return None
    info = read_json(path)
    if not isinstance(info, dict):
        raise VitError(f"{path}: corrupt training state: not a JSON object")
    for key, (types, nullable) in STATE_FIELDS.items():
        if key not in info or (nullable and info[key] is None):
            continue
        value = info[key]
        wrong = (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
                 or (isinstance(value, (int, float)) and not isinstance(value, bool)
                     and (not math.isfinite(value) or value < 0)))
        if wrong:
            kind = {_WHOLE: "a whole number of 0 or more", _NUMBER: "a number of 0 or more",
                    (bool,): "true or false", (dict,): "an object"}[types]
            raise VitError(f"{path}: corrupt training state: {key} is {_quoted(value)}, "
                           f"not {kind}")
    return info


def recorded_precision(run_dir: Path, args: dict[str, Any],
                       state: dict[str, Any] | None) -> tuple[str, str] | None:
    """(name, why it was chosen) that the run trained at, from args.json; None for a run
    saved before --precision (no precision anywhere in its folder).

    A value other than fp32 or bf16 (bf17, BF16, null, "") is a damaged file, and so is a
    state.json whose precision differs from args.json's: either is one VitError naming the
    file, before anything is rewritten.
    """
    from vitcli.training.runs import STATE_FILE

    path, resolved = run_dir / "args.json", args["resolved"]
    state_path = run_dir / STATE_FILE
    state = state or {}
    in_state = "precision" in state
    if not (in_state or "precision" in resolved or "precision_reason" in resolved
            or "precision" in args["options"]):
        return None  # written before --precision existed
    if "precision" not in resolved:
        raise VitError(f"{path}: corrupt run settings: no recorded precision (resolved."
                       "precision), though the run was saved with --precision")
    name = resolved["precision"]
    if name not in PRECISION_NAMES:
        raise VitError(f"{path}: corrupt run settings: the recorded precision "
                       f"(resolved.precision) is {_quoted(name)}, not fp32 or bf16")
    reason = resolved.get("precision_reason", "")
    if not isinstance(reason, str):
        raise VitError(f"{path}: corrupt run settings: resolved.precision_reason is "
                       f"{_quoted(reason)}, not text")
    if in_state and state["precision"] != name:
        raise VitError(f"{state_path}: corrupt training state: its precision is "
                       f"{_quoted(state['precision'])}, but args.json records {name}")
    return name, reason


def kept_reason(reason: str) -> str:
    """Why a resumed run runs at the precision it recorded, in the words of its start:
    'kept from the run, where auto chose it: AMX-BF16, 6.4 GMAC a training step'."""
    if reason.startswith("auto: "):
        return f"kept from the run, where auto chose it: {reason.removeprefix('auto: ')}"
    if reason.startswith("asked for"):
        return "kept from the run, which asked for it"
    return "kept from the run"


def paths_from_here(options: TrainOptions) -> TrainOptions:
    """The options with the run's recorded absolute paths shown relative to the current
    folder when they lie inside it (files.shown_path's rule), as the user would type them:
    `folder shapes/`, not `folder /home/me/project/shapes/`. The same places: reading
    them from here is the same as reading the absolute paths."""
    import dataclasses

    paths = {key: path_from_here(value) for key in _LOCAL_PATHS
             if isinstance(value := getattr(options, key), str)}
    return dataclasses.replace(options, **paths)


def path_from_here(path: str) -> str:
    """A recorded absolute path relative to the current folder when it lies inside it
    (files.shown_path's rule); any other path as it is."""
    from vitcli.files import shown_path

    return shown_path(path, os.getcwd()) if os.path.isabs(path) else path


def check_unchanged(saved: TrainOptions, given: dict[str, Any], run_dir: Path, *,
                    shown: dict[str, str] | None = None) -> None:
    """Refuse options given with --resume that differ from the run's own, in one line.

    A resumed run continues exactly as it began (its data, schedule and optimiser state go
    together), so an option may be repeated but not changed. Paths count as the same when
    they resolve to the same place (`--data ./shapes` for a run that recorded
    /home/me/shapes); --name and --project may also name the run folder being resumed.
    `shown` words a run's value where its option alone would mislead ("auto, which chose
    bf16").
    """
    shown = shown or {}
    changed = [(key, value) for key, value in sorted(given.items())
               if key not in MAY_CHANGE and not _same(key, value, getattr(saved, key), run_dir)]
    if not changed:
        return
    listed = ", ".join(f"{_flag(key, value)} (the run's: "
                       f"{shown.get(key) or _shown(key, getattr(saved, key))})"
                       for key, value in changed)
    raise UsageError(f"--resume {run_dir} keeps the run's own options: {listed} cannot "
                     "change; only --device and --threads may (start a new run to change "
                     "the others)")


def _same(key: str, value: Any, saved: Any, run_dir: Path) -> bool:
    if value == saved:
        return True
    if key == "name":
        return value == run_dir.name
    if key in _PATHS and isinstance(value, str):
        here = Path(value).expanduser().resolve()
        if key == "project" and here == run_dir.resolve().parent:
            return True
        return isinstance(saved, str) and Path(saved).expanduser().resolve() == here
    return False


def _flag(key: str, value: Any) -> str:
    flag = "--" + key.replace("_", "-")
    return flag if value is True else f"{flag} {value}"


def _shown(key: str, value: Any) -> str:
    """The run's value as a user would type it: a recorded path relative to the current
    folder when it lies inside it (path_from_here)."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "on" if value else "off"
    if key in _PATHS and isinstance(value, str):
        return path_from_here(value)
    return str(value)


def _quoted(value: Any) -> str:
    if value is None:
        return "null"
    return f"{value!r}" if isinstance(value, str) else str(value)
