"""Segmentation engines: a registry. Adding an engine is adding one module here.

Every module in this package that defines an :class:`~hts.compute.engines.base.Engine`
subclass with a ``name`` is registered under that name.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from hts.compute.engines.base import Engine, EngineParams, Role, SegmentResult, segment_field
from hts.errors import EngineError

__all__ = ["Engine", "EngineParams", "Role", "SegmentResult", "engine_class", "engines", "segment_field", "EngineError"]


@cache
def engines() -> dict[str, type[Engine]]:
    """Every registered engine by name."""
    found: dict[str, type[Engine]] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("_") or mod.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Engine) and obj is not Engine and getattr(obj, "name", None):
                if obj.__module__ == module.__name__:
                    found[obj.name] = obj
    return dict(sorted(found.items()))


def engine_class(name: str) -> type[Engine]:
    try:
        return engines()[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r}; engines: {', '.join(engines())}") from None
