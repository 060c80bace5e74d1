"""The ``>>>`` examples in hts's docstrings run, so the docs cannot drift from the code.

Every module under ``hts/`` whose source contains ``>>>`` is found by walking the package
folder (a new module with examples is picked up without touching this file) and its
doctests run as one test case, with ``ELLIPSIS | NORMALIZE_WHITESPACE``. A failure shows
doctest's own report. Examples run in the test's empty working folder (the autouse
``workspace`` fixture) and must leave it empty: an example that writes a file writes it
under :mod:`tempfile`. ``# doctest: +SKIP`` is for examples that need a user's own file.
"""

from __future__ import annotations

import doctest
import importlib
import io
from pathlib import Path

import pytest

import hts

PACKAGE_DIR = Path(hts.__file__).resolve().parent
OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def modules_with_examples() -> list[str]:
    """Dotted names of the modules under ``hts/`` whose source contains ``>>>``, sorted."""
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        rel = path.relative_to(PACKAGE_DIR.parent)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if ">>>" not in path.read_text(encoding="utf-8"):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


MODULES = modules_with_examples()


def test_discovery_finds_the_documented_modules():
    # A sanity check of the walk itself: these modules have had examples for a long time.
    for name in ("hts.wells", "hts.synth", "hts.formats.tiff", "hts.compute.analysis.doseresponse"):
        assert name in MODULES, f"{name} not discovered among {MODULES}"


@pytest.mark.parametrize("module_name", MODULES)
def test_doctests(module_name: str, workspace: Path):
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:  # an optional dependency of that module is not installed here
        if (e.name or "").split(".")[0] == "hts":
            raise
        pytest.skip(f"{module_name} needs {e.name}, which is not installed")
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, module_name)
    n_examples = sum(len(t.examples) for t in tests)
    assert n_examples, (
        f"{module_name}: its source contains '>>>' but doctest finds no example "
        "(an example outside a docstring doctest collects, e.g. in a comment or a nested function?)"
    )
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS, verbose=False)
    for test in sorted(tests, key=lambda t: t.name):
        runner.run(test, out=report.write)
    if runner.failures:
        pytest.fail(
            f"{runner.failures} of {runner.tries} examples failed in {module_name}:\n{report.getvalue()}",
            pytrace=False,
        )
    left = sorted(p.name for p in workspace.iterdir())
    assert not left, f"{module_name}: examples left files in the working folder: {left} (write under tempfile)"
