"""How `vit train` looks: Rich progress bars fed by the trainer's events, and the summary."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from vitcli.commands._common import console as out_console
from vitcli.commands._common import per_second, plural, warn
from vitcli.commands._common import safe as escape
from vitcli.errors import format_duration, format_score

LOG_EVERY_S = 30.0  # without a terminal (a log file), a progress line at most this often
EPOCH_LINES_EVERY_S = 5.0  # runs of many short epochs: at most one epoch line this often


class Display:
    """The `on_event` callback: a bar while images are decoded, then one bar for the whole run
    (steps, images/s, loss and the time left, from the first step on)."""

    def __init__(self, *, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or out_console
        self.run_dir: Path | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
            transient=True)
        self.task: Any = None
        self.bar_name = ""
        self.budget_shown = False
        self.live = False
        self.last_log = -1e9  # monotonic time of the last progress line written to a log
        self.last_epoch_line = -1e9
        self.num_classes = 0

    def __enter__(self) -> Display:  # noqa: PYI034 - typing.Self needs Python 3.11
        if self.enabled and self.console.is_terminal:  # a bar in a log file is only noise
            self.progress.start()
            self.live = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress.live.is_started:  # stopping a bar never started prints a blank line
            self.progress.stop()

    def _bar(self, description: str, total: int | None, completed: int = 0,
             info: str = "") -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total, completed=completed,
                                           info=info)
        self.bar_name = description

    def __call__(self, kind: str, **f: Any) -> None:
        if not self.enabled:
            return
        print_ = self.progress.console.print
        if kind == "load":
            if self.task is None:
                self._bar("reading images", f["total"])
            self.progress.update(self.task, completed=f["done"], total=f["total"])
        elif kind == "features":  # a linear probe's one forward pass over the images
            if self.bar_name != "features":
                self._bar("features", f["total"])
            self.progress.update(self.task, completed=f["done"], total=f["total"])
        elif kind == "message":  # wrapped at words to the terminal; a command on its own line
            if f.get("level") == "warning":
                warn(escape(f["text"]), to=self.progress.console, soft_wrap=False)
            else:
                print_(escape(f["text"]), highlight=False)
            if f.get("command"):
                print_command(self.console, f["command"])
        elif kind == "start":
            self._start(f)
        elif kind == "batch":  # a busy machine's time budget: the run goes on at a smaller batch
            warn(escape(f["text"]), to=self.progress.console, soft_wrap=False)
            self.budget_shown = False  # the new batch's schedule is said again
        elif kind == "schedule" and not self.budget_shown:  # refitted each epoch: say it once
            self.budget_shown = True
            print_(f"time budget: {plural(f['total_steps'], 'step')} "
                   f"(~{plural(f['epochs'], 'epoch')}) at "
                   f"{f['seconds_per_step'] * 1000:.0f} ms/step", highlight=False)
        elif kind == "calibrated":
            t = f["trust"]
            if t is None:
                print_("no validation images: probabilities left uncalibrated (T = 1) and no "
                       "unknown rule", highlight=False)
            else:
                from vitcli.model.ood import describe_promise

                print_(f"calibrated on {plural(t.val_images, 'validation image')}: "
                       f"{_temperature_words(t)}; "
                       f"unknown beyond score {format_score(t.ood.threshold)} "
                       + describe_promise(t.val_images, t.ood.quantile), highlight=False)
        elif kind == "step":
            self._step(f)
        elif kind == "interrupt":
            print_("[yellow]Ctrl-C:[/] stopping after the current step; the state is saved so "
                   "that `vit train --resume` continues it. Press Ctrl-C again to stop at once "
                   "(the last saved state stays).", highlight=False)
        elif kind == "epoch_end":
            self._epoch_end(f)

    def _start(self, f: dict[str, Any]) -> None:
        print_ = self.progress.console.print
        self.run_dir = f["run_dir"]
        c = f["config"]
        self.num_classes = c.num_classes
        resumed = f" (resumed at step {f['resumed_step']:,})" if f["resumed_step"] else ""
        print_(f"[bold]run[/] {escape(str(f['run_dir']))}{resumed}")
        print_(f"[bold]data[/] {escape(f['description'])}", highlight=False)
        grid = c.image_size // c.patch_size
        # Patch dropout: how many of the grid's patches a training step sees.
        kept = (f", {c.train_patches} of {c.num_patches} patches a training step"
                if c.patch_drop else "")
        preset = f.get("preset")  # which preset and why: "vit-pico (chosen for 28-px images)"
        why = f.get("preset_reason") or ""
        named = (f"{escape(preset)}{f' ({escape(why)})' if why and why != '--model' else ''}, "
                 if preset else f"from {escape(str(f['init']))}, " if f.get("init") else "")
        print_(f"[bold]model[/] {named}{c.image_size} px, patch {c.patch_size} ({grid}×{grid} grid{kept}), "
               f"{c.depth}×{c.embed_dim} ({plural(c.num_heads, 'head')}), {plural(c.in_channels, 'channel')}, "
               f"{plural(c.num_classes, 'class', 'classes')}", highlight=False)
        procs = f" × {f['world_size']} processes" if f["world_size"] > 1 else ""
        precision = f", precision {escape(f['precision'])}" if f.get("precision") else ""
        threads = (f", {plural(f['threads'], 'CPU thread')} ({escape(f['threads_reason'])})"
                   if f.get("threads") else "")
        print_(f"[bold]training[/] batch {f['batch_size']}, {f['optimizer']} lr {f['lr']:.3g} "
               f"({f['schedule']} decay), {f['device']}{procs}{precision}{threads}",
               highlight=False)
        if f.get("time_budget"):
            plan = (f"{plural(f['steps_per_epoch'], 'step')} an epoch; the number of steps is fitted "
                    f"to --time-budget {f['time_budget']:g} min once the speed is measured")
        else:
            plan = (f"{plural(f['epochs'], 'epoch')} × {plural(f['steps_per_epoch'], 'step')} = "
                    f"{plural(f['total_steps'], 'step')} ({escape(f['epochs_reason'])})")
        print_(f"[bold]schedule[/] {plan}", highlight=False)
        self._bar("training", None if f.get("time_budget") else f["total_steps"],
                  f["resumed_step"], info="first step running…")  # a budget fits its total later

    def _step(self, f: dict[str, Any]) -> None:
        ips = f"{per_second(f['images_per_s'])} img/s"
        fitted = f.get("budget_fitted", True)
        if fitted:
            eta = f"{format_duration(f['eta_s'])} left"
        else:  # --time-budget before the speed is measured: the steps and epochs are not
            # known yet (no made-up totals), but the budget's time left is, from the first step
            eta = f"{format_duration(f.get('budget_left_s') or 0.0)} of the budget left"
        epochs = f"/{f['epochs']}" if fitted else ""
        info = f"epoch {f['epoch']}{epochs}  {ips}  loss {f['loss']:.4f}  {eta}"
        if self.live:
            self.progress.update(self.task, completed=f["step"],
                                 total=f["total_steps"] if fitted else None, info=info)
            return
        now = time.monotonic()
        if now - self.last_log >= LOG_EVERY_S:  # a log gets a line now and then, not a bar
            self.last_log = now
            steps = f"/{f['total_steps']:,}" if fitted else ""
            self.progress.console.print(f"step {f['step']:,}{steps}  {info}", highlight=False)

    def _epoch_end(self, f: dict[str, Any]) -> None:
        r = f["row"]
        top5 = f"  top-5 {r['val_top5']:.1%}" if self.num_classes > 5 else ""  # else 100 %
        val = "" if r["val_top1"] is None else (
            f"  val {r['val_loss']:.3f}  top-1 {r['val_top1']:.2%}{top5}")
        best = "  [green]best[/]" if f["best"] else ""
        ips = "" if r["images_per_s"] is None else f"  {per_second(r['images_per_s'])} img/s"
        # One short line per epoch (under 80 columns): logs stay readable, never wrapped. Runs
        # of many short epochs print one every few seconds (and the last), not hundreds.
        line = f"epoch {r['epoch']:>3}  loss {r['train_loss']:.3f}{val}{ips}{best}"
        now = time.monotonic()
        shown_best = f["best"] and r["val_top1"] is not None  # the summary names its epoch
        if (f.get("epochs", 0) <= 60 or shown_best
                or now - self.last_epoch_line >= EPOCH_LINES_EVERY_S
                or r["epoch"] >= f.get("epochs", 0)):
            self.last_epoch_line = now
            self.progress.console.print(line, highlight=False, soft_wrap=True)


def _temperature_words(trust: Any) -> str:
    """'temperature 2.31 (ECE 8.1% → 2.0%)', or 'temperature 1 kept, since ...' with the
    reason the fitted one was not stored (vitcli.evaluation.calibration.choose_temperature)."""
    c, choice = trust.calibration, getattr(trust, "choice", None)
    if choice is None or choice.kept_fit:
        return f"temperature {trust.temperature:.3g} (ECE {c.ece_before:.1%} → {c.ece_after:.1%})"
    # the ECE is in the reason when it is the reason; otherwise it is given here
    ece = "" if choice.ece_fitted > choice.ece_at_1 else f" (ECE {c.ece_before:.1%})"
    return f"temperature 1 kept{ece}, since {choice.reason}"


def print_summary(console: Console, result: Any) -> None:
    """The closing table: how the run ended, best accuracy, where the files are."""
    table = Table(title="training summary", show_header=False, title_justify="left")
    table.add_row("stopped", {"completed": "schedule completed",
                              "early_stop": "early stop (no better val top-1)",
                              "time_budget": "time budget reached",
                              "interrupted": "interrupted (state saved)"}[result.stopped])
    table.add_row("epochs / steps", f"{result.epochs} / {result.steps:,}")
    setup = getattr(result, "setup_seconds", 0.0)  # reading the data, building the model
    table.add_row("time", format_duration(result.seconds + setup) + (
        f" ({format_duration(setup)} of it set-up)" if setup >= 0.05 else ""))
    if getattr(result, "probe", ""):
        table.add_row("linear probe", result.probe)
    if result.best_top1 is not None:
        table.add_row("best val top-1", f"{result.best_top1:.2%} (epoch {result.best_epoch})")
    elif result.num_val == 0:
        table.add_row("validation", "none (best = last); pass --val or --val-split")
    if result.best_path.exists():
        table.add_row("best model", escape(result.best_path))
    if result.last_path.exists():
        table.add_row("last model", escape(result.last_path))
    table.add_row("run folder", escape(result.run_dir))
    console.print(table)
    command = eval_command(result)
    if command:
        console.print("re-measure the best model on its validation images:", highlight=False)
        print_command(console, command)


def print_command(console: Console, command: str) -> None:
    """A command to copy, on lines of its own below the sentence that introduces it: broken
    only before an option, with the shell's ` \\` continuation, so that it fits the terminal
    and still runs as one command when pasted (a terminal breaks a long line mid-word)."""
    for line in command_lines(command, console.width):
        console.print(f"[bold]{escape(line)}[/]", highlight=False, soft_wrap=True)


def command_lines(command: str, width: int, indent: str = "  ") -> list[str]:
    """`command` (shell words) as indented lines of at most `width` columns where it can be:
    each option stays with its value; every line but the last ends in ` \\`."""
    units: list[str] = []
    for word in shlex.split(command):
        if word.startswith("-") or not units:
            units.append(shlex.quote(word))
        else:
            units[-1] += " " + shlex.quote(word)
    # an option whose value fills a line alone goes on the line before it
    units = [part for unit in units for part in (
        unit.split(" ", 1) if len(indent * 3 + unit) + 2 > width and unit.startswith("-")
        else [unit])]
    lines, line = [], indent + units[0]
    for unit in units[1:]:
        if len(line) + 1 + len(unit) + 2 > width:  # room for " \\"
            lines.append(line + " \\")
            line = indent * 3 + unit
        else:
            line += " " + unit
    return [*lines, line]


def eval_command(result: Any) -> str | None:
    """The `vit eval` that re-measures the best model on exactly the run's validation set."""
    options = result.options
    if options is None or result.num_val == 0 or not result.best_path.exists():
        return None
    words = ["vit", "eval", "--model", str(result.best_path)]
    if options.val:
        words += ["--data", options.val]
    else:
        words += ["--data", options.data]
        if result.val_split is not None:
            words += ["--val-split", f"{result.val_split:g}", "--seed", str(options.seed)]
    return shlex.join(words)
