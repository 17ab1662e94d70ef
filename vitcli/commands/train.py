"""`vit train`: train a ViT on a folder of images (or continue a run with --resume)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from vitcli.commands._common import BF16_MIN_GMAC, DeviceOpt, ranged
from vitcli.training.recipe import (
    BASE_BATCH,
    BASE_LR,
    BATCH_SIZE,
    DROP_PATH,
    EPOCHS,
    LABEL_SMOOTHING,
    MIN_STEPS,
    RANGES,
    TINY_BASE_LR,
    TINY_BATCH_SIZE,
    TINY_LABEL_SMOOTHING,
    TrainOptions,
)

_D = TrainOptions()  # the defaults shown in --help are the recipe's own (vitcli/training/recipe.py)

ADVANCED = "Advanced: architecture and optimiser details"
FINETUNE = "Start from pretrained weights"


def _opt(*names: str, help: str, panel: str | None = None, **kw: Any) -> Any:
    """A train option; a number takes the range TrainOptions checks (recipe.RANGES), which
    its help shows."""
    option = typer.Option(*names, help=help, show_default=False, rich_help_panel=panel, **kw)
    field = names[0].removeprefix("--").replace("-", "_")
    return ranged(option, RANGES[field]) if field in RANGES else option


def train(
    data: Annotated[str | None, _opt("--data", "-d", help="Training images: a folder of class "
                                     "sub-folders (optionally with train/ and val/), a saved "
                                     "dataset, or a Hub dataset name.")] = None,
    model: Annotated[str | None, _opt("--model", "-m", help="The preset to train, as `vit "
                                      "models` lists them. [default: by image size]")] = None,
    img_size: Annotated[int | None, _opt("--img-size", help="Input size in px. Small images "
                                         "keep their own size, rounded up to the patch. "
                                         "[default: the preset's]")] = None,
    patch: Annotated[int | None, _opt("--patch", help="Patch size in px: the image is "
                                      "cut into squares. [default: the preset's]")] = None,
    epochs: Annotated[int | None, _opt("--epochs", "-e", help=(
        f"Epochs; small data gets more, to reach at least {MIN_STEPS} steps. "
        f"[default: {EPOCHS}]"))] = None,
    batch_size: Annotated[int | None, _opt("--batch-size", "-b",
                                           help="Global batch, all processes together; "
                                           f"tiny images get {TINY_BATCH_SIZE}. "
                                           f"[default: {BATCH_SIZE}]")]
    = None,
    lr: Annotated[float | None, _opt("--lr", help=(
        f"Peak learning rate; without it {BASE_LR:g} × batch / {BASE_BATCH} (tiny images: "
        f"{TINY_BASE_LR:g} × batch / {BASE_BATCH})."))] = None,
    weight_decay: Annotated[float | None, _opt("--weight-decay",
                                               help=f"AdamW weight decay. [default: {_D.weight_decay}]")] = None,
    optimizer: Annotated[str | None, _opt("--optimizer", help=(
        "adamw, or muon: Muon for the blocks' matrices, AdamW for the rest (torch ≥ 2.9). "
        "[default: adamw; tiny: muon]"))] = None,
    warmup: Annotated[float | None, _opt("--warmup",
                                         help=f"Warm-up epochs. [default: {_D.warmup:g}]")] = None,
    label_smoothing: Annotated[float | None, _opt("--label-smoothing", help=(
        f"Label smoothing; tiny images from scratch get {TINY_LABEL_SMOOTHING}. "
        f"[default: {LABEL_SMOOTHING}]"))] = None,
    drop_path: Annotated[float | None, _opt("--drop-path", help=(
        f"Stochastic depth; tiny images from scratch get none. [default: {DROP_PATH}]"))]
    = None,
    patch_drop: Annotated[float | None, _opt("--patch-drop", help=(
        "Patch dropout: the share of a training image's patches left out, the preset's "
        "by default; --init keeps its model's rate."),
        panel=ADVANCED)] = None,
    seed: Annotated[int | None, _opt("--seed", help="Seed for init, data order and "
                                     f"augmentation. [default: {_D.seed}]")] = None,
    device: DeviceOpt = "auto",
    precision: Annotated[str | None, _opt("--precision", help=(
        "auto, fp32 or bf16 (bf16 autocast; weights and optimiser state stay fp32). auto: "
        "bf16 on a CUDA GPU, and on a CPU with bf16 matrix units (AMX, AVX512-BF16) "
        f"from {BF16_MIN_GMAC} GMAC a training step (an image's multiply-accumulates × the "
        "batch × 3); fp32 below. --resume keeps the run's. "
        "[default: auto]"))]
    = None,
    threads: Annotated[int | None, _opt("--threads", help=(
        "CPU threads for the maths; 0 = from the cores free, measured at the start and when "
        "steps slow down. [default: 0]"))] = None,
    # The old name of --threads, still accepted; hidden, so that help shows one name.
    workers: Annotated[int | None, ranged(typer.Option("--workers", hidden=True),
                                                     RANGES["threads"])] = None,
    augment: Annotated[str | None, _opt("--augment", help="Training augmentation: none, "
                                        "light or strong. [default: by data size]")] = None,
    val: Annotated[str | None, _opt("--val", help="Validation images (same forms as "
                                    "--data).")] = None,
    val_split: Annotated[float | None, _opt("--val-split", help=(
        "Hold out this fraction (stratified) for validation; 0 = none. The default applies "
        "when the data has no validation split and every class has at least 10 images. "
        "[default: 0.1]"))] = None,
    class_weights: Annotated[str | None, _opt("--class-weights", help=(
        "none, or auto: weight the loss by 1 / effective number of samples per class "
        "(Cui et al. 2019) for imbalanced classes. [default: none]"))] = None,
    sampler: Annotated[str | None, _opt("--sampler", help=(
        "random, or balanced: draw each class as often as the others (with replacement). "
        "[default: random]"))] = None,
    ema: Annotated[bool, _opt("--ema", help="Keep an EMA of the weights; validate and save "
                              "it.")] = False,
    compile: Annotated[bool, _opt("--compile", help="torch.compile the model.")] = False,
    time_budget: Annotated[float | None, _opt("--time-budget", help="Minutes for the whole "
                                              "run; the schedule is fitted to end "
                                              "then (overrides --epochs). [default: none]")] = None,
    patience: Annotated[int | None, _opt("--patience", help="Stop after N epochs "
                                         "without a better val top-1. [default: never]")] = None,
    val_every: Annotated[int | None, _opt("--val-every", help=(
        "Validate every N epochs, and the last; by default every epoch, or with "
        "--time-budget as often as a tenth of the time allows."))] = None,
    name: Annotated[str | None, _opt("--name", help="Name of the run folder (numbered if "
                                    "taken). [default: exp, exp2, …]")] = None,
    project: Annotated[str | None, _opt("--project", help="Where run folders are made: one "
                                        f"folder for each run. [default: {_D.project}]")] = None,
    resume: Annotated[Path | None, _opt("--resume", help="Continue the run in this folder "
                                        "(its own options, which may be repeated; "
                                        "--device and --threads may change).")] = None,
    init: Annotated[str | None, _opt("--init", help="Start from pretrained weights: a vitcli "
                                     "model file, a Hub id (transformers or timm/ repository) "
                                     "or a name from `vit models --pretrained`.",
                                     panel=FINETUNE)] = None,
    freeze: Annotated[str | None, _opt("--freeze", help="'backbone': train the head only (a "
                                       "linear probe; features computed once unless "
                                       "--augment is on).",
                                       panel=FINETUNE)] = None,
    layer_decay: Annotated[float | None, _opt("--layer-decay", help="Layer-wise lr decay, "
                                              "e.g. 0.75. [default: none]", panel=FINETUNE)] = None,
    depth: Annotated[int | None, _opt("--depth", help="Encoder blocks. [default: preset's]",
                                      panel=ADVANCED)] = None,
    embed_dim: Annotated[int | None, _opt("--embed-dim", help="Token width. [default: the preset's]",
                                          panel=ADVANCED)] = None,
    heads: Annotated[int | None, _opt("--heads", help="Attention heads. [default: preset's]",
                                      panel=ADVANCED)] = None,
    mlp_ratio: Annotated[float | None, _opt("--mlp-ratio", help="How many times wider the MLP is "
                                            "than a token. [default: the preset's]",
                                            panel=ADVANCED)] = None,
    patch_embed: Annotated[str | None, _opt("--patch-embed", help="Patch embedding: linear, "
                                            "overlap or shifted. [default: the preset's]", panel=ADVANCED)] = None,
    locality_attention: Annotated[bool | None, _opt(
        "--locality-attention", help="Locality self-attention (Lee et al. 2021). [default: the preset's]",
        panel=ADVANCED)] = None,
    pooling: Annotated[str | None, _opt("--pooling", help=(
        "The head's input: cls (class token), mean (mean of the patches), map (attention "
        "pooling) or cls_mean (both). [default: the preset's]"), panel=ADVANCED)]
    = None,
    pos_embed: Annotated[str | None, _opt("--pos-embed", help="Position embedding: learned or "
                                          "fixed sincos. [default: the preset's]",
                                          panel=ADVANCED)] = None,
    schedule: Annotated[str | None, _opt("--schedule", help=(
        "How the lr falls after warm-up: cosine (the default), or linear (the default for tiny images)."),
        panel=ADVANCED)] = None,
    clip_grad: Annotated[float | None, _opt("--clip-grad", help="Gradients are clipped to this "
                                            f"norm; 0 = off. [default: {_D.clip_grad}]", panel=ADVANCED)] = None,
    ema_decay: Annotated[float | None, _opt("--ema-decay",
                                            help=f"EMA decay per step. [default: {_D.ema_decay}]",
                                            panel=ADVANCED)] = None,
    save_every: Annotated[int | None, _opt("--save-every", help="Also save the state "
                                           "every N steps, 0 = at epoch ends only. "
                                           "[default: 0]", panel=ADVANCED)] = None,
    cache_dir: Annotated[str | None, _opt("--cache-dir", help="Decoded-image cache; also set "
                                          "by $VITCLI_CACHE (default ~/.cache/vitcli).", panel=ADVANCED)] = None,
) -> None:
    """Train a Vision Transformer; writes a run folder with weights, metrics and plots.

    "Tiny" means images of at most 32 px (trained at up to 35 px) from scratch, which get the
    small-data recipe (docs/small-data.md).

    Ctrl-C saves the state; `vit train --resume runs/train/NAME` continues it. Under
    `torchrun --nproc_per_node N -m vitcli train ...` it trains on N processes.
    """
    from vitcli.commands._train_display import Display, print_command, print_summary
    from vitcli.errors import VitError
    from vitcli.training.trainer import resume as resume_run
    from vitcli.training.trainer import train as train_run

    if threads is None:
        threads = workers  # --workers: the old name
    given = {k: v for k, v in locals().items() if k in TrainOptions.__dataclass_fields__
             and v is not None}
    main = int(os.environ.get("RANK", "0")) == 0
    display = Display(enabled=main)
    try:
        with display:
            if resume is not None:
                # Options repeated with --resume must be the run's own (checked there);
                # --ema and --compile read False when not given.
                again = {k: v for k, v in given.items() if k not in ("device", "threads")
                         and not (k in ("ema", "compile") and v is False)}
                result = resume_run(resume, device=device, threads=threads, given=again,
                                    on_event=display)
            else:
                result = train_run(TrainOptions(**given), on_event=display)
    except KeyboardInterrupt:
        if main:
            if display.run_dir is None:
                display.console.print("[yellow]interrupted[/] before training started; "
                                      "nothing was saved")
            else:
                display.console.print("[yellow]interrupted.[/] Resume from the last saved "
                                      "state with:")
                print_command(display.console, f"vit train --resume {display.run_dir}")
        raise typer.Exit(130) from None
    except VitError as exc:
        if not main:  # under torchrun every rank meets the same error: rank 0 alone says it
            raise typer.Exit(exc.exit_code) from None
        raise
    if not main or result.already_ended:  # an ended run: its one line was all there was to say
        return
    print_summary(display.console, result)
    if result.stopped == "interrupted":
        display.console.print(f"[yellow]interrupted:[/] state saved at step {result.steps:,}. "
                              "Resume with:")
        print_command(display.console, f"vit train --resume {result.run_dir}")
        raise typer.Exit(130)

