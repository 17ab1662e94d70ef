"""`vit info MODEL`: what a model file holds, read from its header (or ONNX metadata) alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer


def info(
    model: Annotated[Path, typer.Argument(help="A vitcli model file (.safetensors) or an "
                                          "ONNX file written by `vit export`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show a model file's architecture, classes, preprocessing and parameter count.

    --json prints one object: file, format_version (a number), vitcli_version, parameters,
    gflops, config and preprocessing (objects), class_names (a list), extra (the other
    stored metadata, each value typed: numbers, booleans, objects, null where empty, text
    otherwise) and, for an ONNX file, onnx_opset, onnx_ir_version and int8 (a boolean).
    """
    from vitcli.commands._common import console, safe
    from vitcli.deploy.backends import is_onnx_path
    from vitcli.errors import VitError
    from vitcli.model.checkpoint import (
        check_model_file,
        count_file_params,
        parse_metadata,
        typed_metadata,
    )
    from vitcli.model.config import count_params, gflops
    from vitcli.model.validate import check_finite_file

    onnx_facts: dict[str, object] = {}
    if is_onnx_path(model):
        from vitcli.deploy.backends import read_onnx_info

        found = read_onnx_info(model)
        metadata = found.metadata
        config, names, pre = parse_metadata(model, metadata)
        params = count_params(config)  # the graph stores some as int8, or folded: count the model
        onnx_facts = {"onnx_opset": found.opset, "onnx_ir_version": found.ir_version,
                      "int8": found.quantized}
    else:
        # The checks every loader makes (header, layout, config ranges, tensors against the
        # config), so that info never calls fine a file that predict or eval refuses.
        checked = check_model_file(model)
        check_finite_file(model)
        metadata, header = checked.metadata, checked.header
        config, names, pre = checked.config, checked.class_names, checked.preprocessing
        params = count_file_params({k: v for k, v in header.items() if k != "pos_embed"
                                    or config.pos_embed == "learned"})
        if params != count_params(config):
            raise VitError(f"{model}: the stored weights ({params:,} values) do not match the "
                           f"stored config ({count_params(config):,} parameters); the file is "
                           "corrupt")
    typed = typed_metadata(metadata)  # numbers, booleans and objects as JSON has them
    shown = {"format", "format_version", "vitcli_version", "config", "class_names",
             "preprocessing"}  # their own fields below; the rest is `extra`
    summary = {
        "file": str(model),
        "format_version": typed.get("format_version"),
        "vitcli_version": typed.get("vitcli_version"),
        "parameters": params,
        "gflops": round(gflops(config), 3),
        "config": config.to_dict(),
        "class_names": names,
        "preprocessing": pre.to_dict(),
        "extra": {k: v for k, v in typed.items() if k not in shown},
        **onnx_facts,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return

    from rich.table import Table

    top = Table(show_header=False, title=safe(model), title_justify="left")
    top.add_row("parameters", f"{params:,}")
    top.add_row("GFLOPs / image", f"{summary['gflops']:.3f} (2 × MACs)")
    extra = [f"{n} {what}" for n, what in ((int(config.class_token), "class token"),
                                           (int(config.distilled), "distillation token"),
                                           (config.reg_tokens, "register tokens")) if n]
    cls = " + " + " + ".join(extra) if extra else " (no class token)"
    dropout = (f"; {config.train_tokens} in training (patch dropout {config.patch_drop:g})"
               if config.patch_drop else "")
    top.add_row("tokens", f"{config.grid_size}×{config.grid_size} patches{cls}"
                f" = {config.num_tokens}{dropout}")
    if onnx_facts:
        kind = "int8 " if onnx_facts["int8"] else ""
        top.add_row("format", f"{kind}ONNX, opset {onnx_facts['onnx_opset']}, with vitcli "
                    f"metadata v{summary['format_version']} (written by vitcli "
                    f"{summary['vitcli_version']})")
    else:
        top.add_row("format", f"vitcli model file v{summary['format_version']}"
                    f" (written by vitcli {summary['vitcli_version']})")
    known = list(LABELS) + ["temperature", "ood"]  # a fixed order, whatever the file's
    stored = {k: v for k, v in metadata.items() if k not in shown}  # the text, for _readable
    for key, value in sorted(stored.items(),
                             key=lambda kv: (known.index(kv[0]) if kv[0] in known
                                             else len(known), kv[0])):
        top.add_row(safe(LABELS.get(key, key)), safe(_readable(key, value)))
    arch = Table(title="architecture", title_justify="left", show_header=False)
    for key, value in config.to_dict().items():
        arch.add_row(key, safe(value))
    prep = Table(title="preprocessing", title_justify="left", show_header=False)
    for key, value in pre.to_dict().items():
        prep.add_row(key, ", ".join(f"{v:g}" for v in value) if isinstance(value, tuple)
                     else safe(value))
    console.print(top, arch, prep)
    listed = ", ".join(safe(n) for n in names[:20]) + (f", … ({len(names)} in all)" if len(names) > 20 else "")
    console.print(f"[bold]classes ({len(names)}):[/] {listed}")


# The metadata keys `vit train` and `vit convert` write, named for people (--json keeps the keys).
LABELS = {"epoch": "saved at epoch", "val_top1": "validation top-1",
          "validation": "validation images", "source": "converted from",
          "ood": "unknown rule", "train_precision": "trained in"}


def _readable(key: str, value: str) -> str:
    """A metadata value as a line for people: the calibration and the validation in words,
    any other JSON as `key value` pairs (never raw braces), long text cut."""
    try:
        if key == "temperature":
            return f"{float(value):.3g} (probabilities are softmax(logits / T))"
        if key == "ood":
            from vitcli.model.ood import describe_rule, parse_rule

            return describe_rule(parse_rule(value))
        if key == "val_top1":
            return f"{float(value):.2%}" if value else "none (no validation images)"
        if key == "validation":
            return validation_words(json.loads(value))
        if value.lstrip()[:1] in "{[":
            return _pairs(json.loads(value))
    except (ValueError, TypeError, KeyError, AttributeError):
        pass  # shown as stored
    return value if len(value) < 120 else value[:117] + "..."


def validation_words(how: dict[str, Any]) -> str:
    """How training chose its validation images (the model file's `validation`, written by
    vitcli.training.validation), in words."""
    source = how["source"]
    if source == "split":
        return "its data's own validation split (val/ or test/)"
    if source == "val":
        return "a separate folder (--val)"
    if source == "val_split":
        fraction = float(how["fraction"])
        return (f"{fraction:.0%} held out of the training images (stratified, "
                f"--val-split {fraction:g} --seed {int(how.get('seed', 0))})")
    if source == "none":
        return "none (the best model is the last epoch's)"
    return _pairs(how)


def _pairs(value: object) -> str:
    """Other JSON metadata as people read it: 'a 1, b x' for an object, 'x, y' for a list."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_pairs(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_pairs(v) for v in value)
    return str(value)

