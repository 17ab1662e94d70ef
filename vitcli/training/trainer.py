"""The training loop: `train(options)` for a new run, `resume(run_dir)` to continue one.

One step: uint8 batch → device → batched augmentation there → forward (bf16 autocast on
CUDA) → soft-target cross-entropy → backward → gradient clipping → AdamW (and Muon for the
blocks' matrices) at the scheduled lr → EMA. Each epoch ends with validation, the model
files and the training state (vitcli/training/runs.py).

The library never prints: it reports through `on_event(kind, **fields)` on rank 0
(kinds: message, load, start, features, schedule, epoch_start, step, epoch_end, end)
and returns a TrainResult; a linear probe's one pass over the images sends `features`.
Under torchrun every rank runs this same code (vitcli/training/distributed.py).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vitcli.errors import VitError
from vitcli.training.loop import NonFiniteLoss as NonFiniteLoss  # re-exported
from vitcli.training.recipe import TrainOptions
from vitcli.training.runs import TrainResult

EventCallback = Callable[..., None]


def train(options: TrainOptions, *, on_event: EventCallback | None = None) -> TrainResult:
    """Train a new run in a fresh, auto-numbered folder under options.project."""
    options.check()
    project = Path(options.project).expanduser()
    if project.exists() and not project.is_dir():  # found now, not after decoding the data
        raise VitError(f"--project {project}: is a file; run folders go in a folder")
    return _run(options, run_dir=None, on_event=on_event)


def resume(run_dir: str | Path, *, device: str | None = None, threads: int | None = None,
           given: dict[str, Any] | None = None,
           on_event: EventCallback | None = None) -> TrainResult:
    """Continue the run in `run_dir` from its saved state, with its own options.

    `given` holds other TrainOptions fields named again with --resume (the run's command
    line repeated, say): accepted when each names what the run already has (paths compared
    resolved), refused in one line naming the run's own value when one differs.
    """
    import dataclasses

    from vitcli.errors import UsageError
    from vitcli.training.resume import (
        check_unchanged,
        paths_from_here,
        recorded_precision,
        saved_options,
        saved_state_info,
    )

    run_dir = Path(run_dir)
    # In the order a user reads them: the folder, its files, then the options given with it
    # (a value no run could have, then one that differs from the run's).
    if not (run_dir / "args.json").exists():
        if not run_dir.is_dir():
            raise UsageError(f"--resume {run_dir}: no such folder")
        raise UsageError(f"--resume {run_dir}: not a vitcli run folder (no args.json)")
    options, args = saved_options(run_dir)
    kept = recorded_precision(run_dir, args, saved_state_info(run_dir))
    given = dict(given or {})
    unknown = sorted(set(given) - set(TrainOptions.__dataclass_fields__))
    if unknown:
        raise UsageError(f"--resume: no such option: {', '.join(unknown)}")
    merged = dataclasses.replace(options, **given)  # given values in their canonical form
    merged.check()  # an impossible value is said as such, not as a change
    compared = {key: getattr(merged, key) for key in given}
    shown: dict[str, str] = {}
    if kept is not None and options.precision == "auto":
        if compared.get("precision") == kept[0]:
            del compared["precision"]  # what the run trains at: its `auto` chose it
        shown["precision"] = f"auto, which chose {kept[0]}"
    check_unchanged(options, compared, run_dir, shown=shown)
    options = paths_from_here(options)
    options.device = (device or options.device).lower()
    options.threads = options.threads if threads is None else threads
    return _run(options, run_dir=run_dir, on_event=on_event, kept=kept)


def _run(options: TrainOptions, *, run_dir: Path | None, on_event: EventCallback | None,
         kept: tuple[str, str] | None = None) -> TrainResult:
    from vitcli.model.config import call_macs
    from vitcli.training.distributed import (
        broadcast,
        init_distributed,
        process_batch,
        shutdown_distributed,
    )
    from vitcli.training.loop import Trainer, augment_level
    from vitcli.training.runs import (
        load_state,
        new_run_dir,
        read_json,
        write_bad_files,
        write_json,
    )
    from vitcli.training.setup import imbalance_note, prepare, resolved_summary

    started = time.perf_counter()
    env = init_distributed(options.device)

    def emit(kind: str, **fields: Any) -> None:
        if on_event is not None and env.is_main:
            on_event(kind, **fields)

    finished = False  # every rank got through: wait for the others before leaving the group
    try:
        state = resumed = None
        if run_dir is not None:
            from vitcli.model.config import ViTConfig
            from vitcli.model.preprocess import Preprocessing

            state = load_state(run_dir)
            args = read_json(run_dir / "args.json")
            try:
                resumed = (ViTConfig.from_dict(args["resolved"]["config"]),
                           Preprocessing.from_dict(args["resolved"]["preprocessing"]))
            except (KeyError, TypeError, ValueError, AttributeError, VitError) as exc:
                from vitcli.training.resume import damage

                raise VitError(f"{run_dir / 'args.json'}: corrupt run settings: "
                               f"{damage(exc)}") from None
            ended = _ended(run_dir, state, options)
            if ended is not None:  # said alone, before any data is read or header printed
                emit("message", level="info", text=ended[0], command=ended[2])
                finished = True
                return ended[1]
        prepared = prepare(options, env, emit, resumed=resumed)
        if run_dir is not None:  # a resumed run names the preset it was built from
            prepared.preset = args["resolved"].get("preset")
            prepared.preset_reason = args["resolved"].get("preset_reason", "")
        # What the recipe picks rather than the user (a new run only: a resumed one keeps it).
        chosen = frozenset(name for name in ("batch_size", "lr")
                           if run_dir is None and getattr(options, name) is None)
        options = options.with_defaults_for(prepared.config.image_size)
        # a training step of one process's batch: what decides `auto` (devices.choose_precision)
        batch = process_batch(options.batch_size, len(prepared.train_labels), env)
        # a linear probe's backbone only runs forward (no gradients reach it): that is its work
        probe = options.freeze == "backbone"
        step_macs = call_macs(prepared.config, batch, training=not probe)
        precision = _precision(options, env.device, step_macs,
                               resumed=run_dir is not None, kept=kept,
                               call="backbone forward pass" if probe else "training step")
        level = augment_level(options, len(prepared.train_labels))
        created = run_dir is None
        if run_dir is None:
            run_dir = Path(broadcast(str(new_run_dir(options.project, options.name))
                                     if env.is_main else None, env))
            if env.is_main:
                write_json(run_dir / "args.json", {
                    "options": _absolute_paths(options).to_dict(),
                    "resolved": {**resolved_summary(prepared, options, env, level),
                                 "precision": precision.name,
                                 "precision_reason": precision.reason}})
                write_bad_files(run_dir, prepared.bad_files)
        try:
            trainer = Trainer(options, prepared, env, run_dir, emit, augment=level,
                              precision=precision, chosen=chosen)
        except VitError:  # an impossible option met before the first step: leave no husk
            if created and env.is_main:
                _remove_unstarted(run_dir)
            raise
        trainer.setup_seconds = time.perf_counter() - started  # recorded with a --time-budget
        if state is not None:
            try:
                trainer.load_state(state)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                from vitcli.training.resume import damage

                raise VitError(f"{run_dir / 'state.json'}: corrupt training state: "
                               f"{damage(exc)}") from None
            then = args["resolved"].get("data_fingerprint")
            if then and then != prepared.data_fingerprint:
                emit("message", level="warning", text=(
                    f"the data changed since this run started (was: {args['resolved'].get('data', '?')}; "
                    f"now: {prepared.description}): files were added, removed or modified; "
                    "training continues on the data as it is now"))
        for line in prepared.notes:
            emit("message", text=line, level="info")
        for line in prepared.warnings:
            emit("message", text=line, level="warning")
        balance = imbalance_note(prepared.train_labels, prepared.class_names, options)
        if balance is not None:
            emit("message", level=balance[0], text=balance[1])
        if prepared.bad_files:
            from vitcli.data.discovery import skipped_words

            skipped = skipped_words(reason for _, reason in prepared.bad_files)
            emit("message", level="warning",
                 text=f"skipped {skipped}; listed in {run_dir / 'bad_files.txt'}")
        with _graceful_interrupt(lambda: emit("interrupt")) as stop_requested:
            result = trainer.fit(stop_requested)
        finished = True
        return result
    finally:
        shutdown_distributed(env, wait_for_all=finished)


def _ended(run_dir: Path, state: Any,
           options: TrainOptions) -> tuple[str, TrainResult, str] | None:
    """(what to say, the run's result, the command that trains further) when the saved
    state is at the end of its schedule, or was stopped early by --patience: --resume then
    has nothing to do, and rewrites nothing (no new calibration)."""
    import shlex

    from vitcli.training.optim import WarmupDecay

    info = state.info
    try:
        step, total = int(info["step"]), WarmupDecay.from_dict(info["schedule"]).total_steps
        early = bool(options.patience) and int(info.get("bad_epochs", 0)) >= options.patience
    except (KeyError, TypeError, ValueError):
        return None  # damaged counters: the trainer's own checks say so when it loads them
    if step <= 0 or (step < total and not early):
        return None
    best = run_dir / "weights" / "best.safetensors"
    again = shlex.join(["vit", "train", "--data", options.data or "DATA", "--init", str(best)])
    why = f", stopped early by --patience {options.patience}" if step < total else ""
    line = (f"{run_dir} already ended at step {step:,} (epoch {info.get('epochs_done', '?')}"
            f"{why}): nothing to resume. To train further, start a new run from its weights:")
    result = TrainResult(
        run_dir=run_dir, stopped="early_stop" if why else "completed",
        epochs=int(info.get("epochs_done", 0)), steps=step, seconds=float(info.get("seconds", 0.0)), best_top1=info.get("best_top1"),
        best_epoch=info.get("best_epoch"), best_path=best,
        last_path=run_dir / "weights" / "last.safetensors", last_row=None, num_train=0,
        num_val=0, options=options, already_ended=True)
    return line, result, again


def _precision(options: TrainOptions, device: Any, step_macs: int, *, resumed: bool,
               kept: tuple[str, str] | None, call: str = "training step") -> Any:
    """The run's precision: chosen now for a new run, the recorded one for a resumed run.

    A resumed run keeps what it trained at (`kept`, checked by resume.recorded_precision),
    whatever `auto` would pick on this machine: the optimiser state and the loss curve
    continue as they were. Runs saved before --precision (kept is None) trained as
    `autocast_dtype` did then: bf16 on CUDA, fp32 elsewhere.
    """
    from vitcli.devices import Precision, autocast_dtype, choose_precision

    if not resumed:
        return choose_precision(options.precision, device, macs=step_macs, call=call)
    if kept is not None:
        from vitcli.training.resume import kept_reason

        return Precision(kept[0], kept_reason(kept[1]))
    legacy = "bf16" if autocast_dtype(device) is not None else "fp32"
    return Precision(legacy, "run saved before --precision: as it trained then")


def _absolute_paths(options: TrainOptions) -> TrainOptions:
    """The options with local paths made absolute, so `--resume` works from any folder."""
    import dataclasses

    paths = {key: str(Path(value).expanduser().absolute())
             for key in ("data", "val", "init", "cache_dir")
             if (value := getattr(options, key)) and Path(value).expanduser().exists()}
    return dataclasses.replace(options, **paths)


def _remove_unstarted(run_dir: Path) -> None:
    """Delete a run folder this call created, if it holds nothing but its set-up files."""
    import shutil

    setup = {"args.json", "bad_files.txt", "weights"}
    weights = run_dir / "weights"
    if {p.name for p in run_dir.iterdir()} <= setup and not (weights.is_dir()
                                                           and any(weights.iterdir())):
        shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def _graceful_interrupt(on_first: Callable[[], None]) -> Iterator[Callable[[], bool]]:
    """The first Ctrl-C asks the loop to stop at the next step boundary (so the saved state is
    consistent) and calls `on_first` at once (the command says what happens next); a second
    one interrupts at once, leaving the last saved state to resume from.
    """
    requested = [False]
    if threading.current_thread() is not threading.main_thread():
        yield lambda: requested[0]
        return

    def handler(signum: int, frame: Any) -> None:
        if requested[0]:
            raise KeyboardInterrupt
        requested[0] = True
        on_first()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: requested[0]
    finally:
        signal.signal(signal.SIGINT, previous)
