"""Segmentation engines: a registry. Adding an engine is adding one module here.

Every module in this package that defines an :class:`~hts.compute.segment.engines.base.Engine`
subclass with a ``name`` is registered under that name.

:func:`engine_class` also accepts the path of an *engine folder* (what ``hts train``
writes: ``config.json`` naming a registered deep engine, ``model.safetensors``,
``CARD.md``): it returns that engine's class with its weights taken from the
folder (see :meth:`~hts.compute.segment.engines._deep.DeepEngine.from_folder`).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from functools import cache
from pathlib import Path

from hts.compute.segment.engines.base import Engine, EngineParams, Role, SegmentResult, segment_field
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


def engine_class(name: str | os.PathLike[str]) -> type[Engine]:
    """The engine registered as ``name``, or the engine of the engine folder at path ``name``.

    A folder engine is named by the folder's absolute path (so Dask workers,
    which get the name, resolve it the same way); its model checksum and card
    come from the folder.
    """
    known = engines()
    if isinstance(name, str) and name in known:
        return known[name]
    if isinstance(name, os.PathLike) or _looks_like_path(name):
        from hts.compute.segment.engines._deep import DeepEngine

        return DeepEngine.from_folder(name)
    raise EngineError(f"unknown engine {name!r}; engines: {', '.join(known)} (or the path of an engine folder)")


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.startswith(".") or name.startswith("~") or Path(name).is_dir()
