"""vitcli: train, inspect, explain and ship Vision Transformers from the command line.

The Python API mirrors the CLI. Torch is imported on first use, so `import vitcli` is cheap:

    import vitcli
    model = vitcli.create_model("vit-b16", num_classes=10)
    vitcli.save_model("model.safetensors", model, class_names=[...])
    loaded = vitcli.load_model("model.safetensors")  # .model, .class_names, .preprocessing
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_model": "vitcli.model",
    "VisionTransformer": "vitcli.model",
    "load_model": "vitcli.checkpoint",
    "save_model": "vitcli.checkpoint",
    "ModelFile": "vitcli.checkpoint",
    "ViTConfig": "vitcli.config",
    "Preprocessing": "vitcli.preprocess",
    "VitError": "vitcli.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vitcli' has no attribute {name!r}")
