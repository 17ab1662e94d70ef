"""One module per command. Each module imports only typer/rich at top level (no torch)."""

# (command name, module in vitcli.commands, function) in the order `vit --help` lists them.
COMMANDS: list[tuple[str, str, str]] = [
    ("patchify", "patchify", "patchify"),
    ("audit", "audit", "audit"),
    ("train", "train", "train"),
    ("eval", "evaluate", "evaluate"),
    ("predict", "predict", "predict"),
    ("export", "export", "export"),
    ("convert", "convert", "convert"),
    ("models", "models", "models"),
    ("info", "info", "info"),
]
