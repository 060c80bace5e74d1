"""Where the shipped schemas/ and engines/ folders are.

In a wheel they are package data under ``hts/_data``; in a source checkout
(editable install, tests) they are the top-level ``schemas/`` and ``engines/``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PKG = Path(__file__).resolve().parent


@cache
def data_dir(name: str) -> Path:
    """Absolute path of a shipped data folder: ``"schemas"`` or ``"engines"``."""
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"hts installation is missing its {name}/ folder (looked in {_PKG})")


def schema_path(*parts: str) -> Path:
    """A file under schemas/, e.g. ``schema_path("platemap.schema.json")``."""
    return data_dir("schemas").joinpath(*parts)
