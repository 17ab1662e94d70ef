"""vitcli: train, inspect, explain and ship Vision Transformers from the command line.

The Python API mirrors the CLI. Torch is imported on first use, so `import vitcli` is cheap:

    import vitcli
    model = vitcli.create_model("vit-b16", num_classes=10)
    vitcli.save_model("model.safetensors", model, class_names=[...])
    loaded = vitcli.load_model("model.safetensors")  # .model, .class_names, .preprocessing
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_model": "vitcli.model.vit",
    "VisionTransformer": "vitcli.model.vit",
    "load_model": "vitcli.model.checkpoint",
    "save_model": "vitcli.model.checkpoint",
    "ModelFile": "vitcli.model.checkpoint",
    "ViTConfig": "vitcli.model.config",
    "Preprocessing": "vitcli.model.preprocess",
    "VitError": "vitcli.errors",
}

__all__ = ["__version__", *_LAZY]

# Module paths the README documented before the package was split into sub-packages; importing
# one still works, with a DeprecationWarning naming the new path.
_MOVED = {
    "vitcli.train": "vitcli.training.trainer",
    "vitcli.evaluate": "vitcli.evaluation.evaluate",
    "vitcli.predict": "vitcli.deploy.predict",
    "vitcli.export": "vitcli.deploy.export",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import `vitcli.train` and the like as the module that now holds their code."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> Any:
        new = _MOVED[spec.name]
        warnings.warn(f"{spec.name} is deprecated; import {new}", DeprecationWarning,
                      stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: Any) -> None:
        pass  # the module is already executed: it is the new one


sys.meta_path.append(_MovedModules())


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vitcli' has no attribute {name!r}")
