"""How `vit train` looks: Rich progress bars fed by the trainer's events, and the summary."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from vitcli.commands._common import console as out_console
from vitcli.commands._common import safe as escape


class Display:
    """The `on_event` callback: one bar while images are decoded, one per epoch."""

    def __init__(self, *, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or out_console
        self.run_dir: Path | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console,
            transient=True)
        self.task: Any = None
        self.bar_name = ""
        self.budget_shown = False

    def __enter__(self) -> Display:  # noqa: PYI034 - typing.Self needs Python 3.11
        if self.enabled and self.console.is_terminal:  # a bar in a log file is only noise
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress.live.is_started:  # stopping a bar never started prints a blank line
            self.progress.stop()

    def _bar(self, description: str, total: int | None, completed: int = 0) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total, completed=completed,
                                           info="")
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
        elif kind == "message":
            style = "[yellow]warning:[/] " if f.get("level") == "warning" else ""
            print_(style + escape(f["text"]), highlight=False, soft_wrap=True)  # paths unbroken
        elif kind == "start":
            self.run_dir = f["run_dir"]
            c = f["config"]
            resumed = f" (resumed at step {f['resumed_step']})" if f["resumed_step"] else ""
            print_(f"[bold]run[/] {escape(str(f['run_dir']))}{resumed}")
            print_(f"[bold]data[/] {escape(f['description'])}", highlight=False,
                   soft_wrap=True)  # one line in a log, however long the folder name
            print_(f"[bold]model[/] {c.image_size} px, patch {c.patch_size}, "
                   f"{c.depth}×{c.embed_dim} ({c.num_heads} heads), {c.in_channels} channel(s), "
                   f"{c.num_classes} classes", highlight=False)
            procs = f" × {f['world_size']} processes" if f["world_size"] > 1 else ""
            print_(f"[bold]training[/] {f['epochs']} epochs × {f['steps_per_epoch']} steps, "
                   f"batch {f['batch_size']}, {f['optimizer']} lr {f['lr']:.3g} "
                   f"({f['schedule']} decay), "
                   f"{f['device']}{procs}, precision {f['precision']}",
                   highlight=False)
        elif kind == "schedule" and not self.budget_shown:  # refitted each epoch: say it once
            self.budget_shown = True
            print_(f"time budget: {f['total_steps']:,} steps (~{f['epochs']} epochs) at "
                   f"{f['seconds_per_step'] * 1000:.0f} ms/step", highlight=False)
        elif kind == "calibrated":
            t = f["trust"]
            if t is None:
                print_("no validation images: probabilities left uncalibrated (T = 1) and no "
                       "unknown rule", highlight=False, soft_wrap=True)
            else:
                c = t.calibration
                print_(f"calibrated on {t.val_images:,} validation images: temperature "
                       f"{t.temperature:.3g} (ECE {c.ece_before:.1%} → {c.ece_after:.1%}); "
                       f"unknown beyond score {t.ood.threshold:.3g} "
                       f"({t.ood.quantile:.1%} of them pass)", highlight=False, soft_wrap=True)
        elif kind == "epoch_start":
            self._bar(f"epoch {f['epoch']}/{f['epochs']}", f["steps"], f["done"])
        elif kind == "step":
            self.progress.update(self.task, completed=f["done"],
                                 info=f"{f['images_per_s']:,.0f} img/s  loss {f['loss']:.4f}")
        elif kind == "epoch_end":
            r = f["row"]
            val = "" if r["val_top1"] is None else (
                f"  val {r['val_loss']:.3f}  top-1 {r['val_top1']:.2%}  "
                f"top-5 {r['val_top5']:.1%}")
            best = "  [green]best[/]" if f["best"] else ""
            # One short line per epoch (under 80 columns): logs stay readable, never wrapped.
            print_(f"epoch {r['epoch']:>3}  loss {r['train_loss']:.3f}{val}  "
                   f"{r['images_per_s']:,.0f} img/s{best}", highlight=False, soft_wrap=True)


def print_summary(console: Console, result: Any) -> None:
    """The closing table: how the run ended, best accuracy, where the files are."""
    table = Table(title="training summary", show_header=False, title_justify="left")
    table.add_row("stopped", {"completed": "schedule completed",
                              "early_stop": "early stop (no better val top-1)",
                              "time_budget": "time budget reached",
                              "interrupted": "interrupted (state saved)"}[result.stopped])
    table.add_row("epochs / steps", f"{result.epochs} / {result.steps:,}")
    table.add_row("time", f"{result.seconds / 60:.1f} min")
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
        console.print(f"re-measure the best model on its validation images: "
                      f"[bold]{escape(command)}[/]", highlight=False,
                      soft_wrap=True)  # a command to copy: never wrapped


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
