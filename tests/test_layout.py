"""The package layout: sub-packages per stage, imports that point one way, no import circles."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vitcli"

# Lower layers never import higher ones. Sub-packages of one layer do not import each other.
LAYERS = [
    {"errors", "vitcli"},  # the one error type, and the package's face (lazy names only)
    {"files", "devices", "images"},  # writing files, choosing a device, opening any image
    {"model"},
    {"data", "convert"},
    {"evaluation"},
    {"training", "deploy"},
    {"commands"},
    {"cli"},
    {"__main__"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("vitcli", *path.relative_to(PACKAGE).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every vitcli module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vitcli"):
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if f"{node.module}.{a.name}" in modules}
            if node.module in modules:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(part: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def test_at_most_eight_modules_sit_directly_in_the_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top


def test_every_sub_package_and_top_module_has_a_layer():
    parts = {_part(m) for m in _modules()}
    unplaced = [p for p in parts if not any(p in layer for layer in LAYERS)]
    assert not unplaced, f"place these in LAYERS: {unplaced}"


def test_imports_point_down_the_layers():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        for target in _imports(path, modules):
            a, b = _part(name), _part(target)
            if a != b and _layer(b) >= _layer(a) and b != "vitcli":
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle in `graph` (module -> modules it imports) as a path, or []."""
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> list[str]:
        for nxt in sorted(graph.get(node, set())):
            if nxt in stack:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in done:
                found = visit(nxt, [*stack, nxt])
                if found:
                    return found
        done.add(node)
        return []

    for name in sorted(graph):
        if name not in done and (found := visit(name, [name])):
            return found
    return []


def test_no_import_circles_even_through_other_modules():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert _find_cycle(graph) == []


def test_the_circle_check_finds_the_circles_this_layout_broke():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # The old train <-> train_loop circle, planted back: loop imports the trainer again.
    graph["vitcli.training.loop"] = graph["vitcli.training.loop"] | {"vitcli.training.trainer"}
    cycle = _find_cycle(graph)
    assert {"vitcli.training.loop", "vitcli.training.trainer"} <= set(cycle), cycle


def test_public_api_stays_at_the_top():
    import vitcli

    for name in ("create_model", "load_model", "save_model", "ViTConfig", "Preprocessing",
                 "VitError", "VisionTransformer", "ModelFile"):
        assert callable(getattr(vitcli, name)), name


@pytest.mark.parametrize("old, new, attr", [
    ("vitcli.train", "vitcli.training.trainer", "train"),
    ("vitcli.evaluate", "vitcli.evaluation.evaluate", "evaluate"),
    ("vitcli.predict", "vitcli.deploy.predict", "predict"),
    ("vitcli.export", "vitcli.deploy.export", "export_onnx"),
])
def test_module_paths_the_readme_documented_still_import_with_a_warning(old, new, attr):
    code = (f"import warnings, importlib\nwarnings.simplefilter('always')\n"
            f"with warnings.catch_warnings(record=True) as w:\n"
            f"    old = importlib.import_module({old!r})\n"
            f"new = importlib.import_module({new!r})\n"
            f"assert old is new and callable(old.{attr})\n"
            f"assert any({new!r} in str(x.message) for x in w), [str(x.message) for x in w]\n")
    with warnings.catch_warnings():
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=PACKAGE.parent)
    assert run.returncode == 0, run.stderr
