"""The package's shape, checked: layers import only downwards, task functions stay short."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hts

PKG = Path(hts.__file__).parent

# Lower layers never import higher ones (imports inside functions count too).
LAYERS = {
    "hts.errors": 0, "hts.wells": 0, "hts.resources": 0, "hts.plugins": 0,
    "hts.store": 1, "hts.catalog": 1, "hts.formats": 1, "hts.config": 1,
    "hts.orchestrate": 2, "hts.compute": 2, "hts.synth": 2, "hts.reports": 2,
    "hts.tasks": 3,
    "hts.api": 4, "hts.web": 4,
    "hts.cli": 5,
}  # fmt: skip


def _layer(module: str) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return None


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, path


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("hts.")}


def test_layers_import_only_downwards():
    wrong = []
    for name, path in _modules():
        mine = _layer(name)
        if mine is None:
            continue
        for imported in _imports(path):
            theirs = _layer(imported)
            if theirs is not None and theirs > mine:
                wrong.append(f"{name} (layer {mine}) imports {imported} (layer {theirs})")
    assert not wrong, "\n".join(wrong)


def test_every_module_has_a_layer():
    assert [n for n, _ in _modules() if n != "hts" and _layer(n) is None] == []


@pytest.mark.parametrize("folder", ["tasks", "cli", "api.py"])
def test_no_long_functions(folder: str):
    """Plate jobs and commands read as a few steps: no function body over 80 lines (docstring included;
    a command's signature, one line per option, does not count)."""
    long = []
    root = PKG / folder
    for path in sorted(root.rglob("*.py") if root.is_dir() else [root]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.body[0].lineno + 1
                if n > 80:
                    long.append(f"{path.relative_to(PKG)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "\n".join(long)


def test_library_code_never_resolves_the_workspace_itself():
    """Only the CLI (and config.py, which defines it) calls load_workspace; library calls get a Workspace."""
    callers = []
    for name, path in _modules():
        if name.startswith(("hts.cli", "hts.config")):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "load_workspace"
            ):
                callers.append(f"{name}:{node.lineno}")
    assert not callers, callers
