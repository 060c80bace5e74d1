"""Segmentation engines: a registry fed by the ``hts.engines`` entry-point group.

An engine is a subclass of :class:`~hts.compute.segment.engines.base.Engine`
registered under its ``name`` as an entry point of group ``hts.engines``
(``name = "module:Class"``). hts declares its own engines that way in its
``pyproject.toml``, so a third-party package adds one exactly as hts does
(``examples/hts-engine-example/`` is one); see :mod:`hts.plugins` for what
happens to a plug-in that does not load. An engine class may define a
classmethod ``unavailable()`` returning why it cannot run here (a missing
optional dependency) or None: it is still listed, marked unavailable.

An engine is referred to by an :class:`EngineRef`: a registered name, or the
path of an *engine folder* (what ``hts train`` writes: ``config.json`` naming a
registered deep engine, ``model.safetensors``, ``CARD.md``), whose class is that
engine with the folder's weights (see
:meth:`~hts.compute.segment.engines._deep.DeepEngine.from_folder`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hts.compute.segment.engines.base import Engine, EngineParams, Role, SegmentResult, segment_field
from hts.errors import EngineError
from hts.plugins import PluginError, Registry, entry_specs, load_group, load_named

__all__ = [
    "Engine",
    "EngineError",
    "EngineParams",
    "EngineRef",
    "GROUP",
    "PluginError",
    "Role",
    "SegmentResult",
    "engine_class",
    "engine_package",
    "engines",
    "plugin_errors",
    "segment_field",
]

GROUP = "hts.engines"

# hts's own engines, as its pyproject.toml declares them: used when the installed metadata does not (a source tree
# never installed, or installed before an engine was added). tests/compute/test_plugins.py keeps the two equal.
BUILTIN_ENGINES: dict[str, str] = {
    "brightfield-unet": "hts.compute.segment.engines.brightfield_unet:BrightfieldUNetEngine",
    "cellpose": "hts.compute.segment.engines.cellpose:CellposeEngine",
    "classic": "hts.compute.segment.engines.classic:ClassicEngine",
    "cytoplasm": "hts.compute.segment.engines.cytoplasm:CytoplasmEngine",
    "foci": "hts.compute.segment.engines.foci:FociEngine",
    "fpf": "hts.compute.segment.engines.fpf:FPFEngine",
    "nuclei": "hts.compute.segment.engines.nuclei:NucleiEngine",
}


@cache
def _registry() -> Registry:
    return load_group(GROUP, BUILTIN_ENGINES, base=Engine, key="name")


@cache
def _declared() -> dict[str, str]:
    """Engine name -> package, of every usable declaration (nothing imported)."""
    return {name: package for name, _, package, reason in entry_specs(GROUP, BUILTIN_ENGINES) if reason is None}


def reload_plugins() -> None:
    """Forget what was read of the entry points (after installing a plug-in into a running process)."""
    for f in (_registry, _declared, _load):
        f.cache_clear()


def _left_out() -> list[PluginError]:
    """Declarations left out without importing anything (a name already taken)."""
    return [PluginError(GROUP, n, pkg, why) for n, _, pkg, why in entry_specs(GROUP, BUILTIN_ENGINES) if why]


@cache
def _load(name: str) -> type[Engine]:
    """The class of one registered engine, importing only its module."""
    cls, error = load_named(GROUP, BUILTIN_ENGINES, name, base=Engine, key="name")
    if cls is None:
        why = f" (it did not load: {error.reason})" if error is not None else ""
        raise EngineError(
            f"unknown engine {name!r}{why}; engines: {', '.join(_declared())} (or the path of an engine folder)"
        )
    return cls


def engines() -> dict[str, type[Engine]]:
    """Every registered engine by name: the built-ins (by name), then the plug-ins (by name)."""
    return dict(_registry().classes)


def engine_package(name: str | EngineRef | os.PathLike[str]) -> str:
    """The distribution that provides an engine: ``"hts"`` for the built-ins, the plug-in's package name otherwise.

    An engine folder belongs to the package of the deep engine it was trained from.
    """
    ref = EngineRef.parse(name)
    base = getattr(ref.resolve(), "base_engine", None) if ref.is_folder else ref.name
    return _declared()[base]


def plugin_errors() -> list[PluginError]:
    """The ``hts.engines`` entry points that were left out, each with its one-line reason."""
    return list(_registry().errors)


@dataclass(frozen=True)
class EngineRef:
    """What names an engine: a registered ``name`` or an engine ``folder`` (an absolute path), never both.

    ``str(ref)`` is what a Dask worker receives and parses back to the same engine.
    """

    name: str | None = None
    folder: Path | None = None

    def __post_init__(self) -> None:
        if (self.name is None) == (self.folder is None):
            raise EngineError("an engine reference is a registered name or an engine folder, exactly one of them")

    @classmethod
    def parse(cls, value: EngineRef | str | os.PathLike[str]) -> EngineRef:
        """An engine reference from what a user or a worker gives.

        A path object is always a folder. A string is a registered name if it is
        one, else the path of an existing folder (a folder named like an engine
        is reached as ``./name``). Anything else is an :class:`EngineError`.
        """
        if isinstance(value, EngineRef):
            return value
        if isinstance(value, os.PathLike):
            return cls(folder=_existing_folder(Path(value), str(value)))
        if not isinstance(value, str):
            raise EngineError(f"an engine is a registered name or the path of an engine folder, not {value!r}")
        known = _declared()
        if value in known:
            return cls(name=value)
        path = Path(value).expanduser()
        if path.is_dir():
            return cls(folder=path.resolve())
        if os.sep in value or "/" in value or value.startswith((".", "~")):
            _existing_folder(path, value)  # raises: "no such engine folder"
        why = next((f" (it did not load: {e.reason})" for e in _left_out() if e.name == value), "")
        raise EngineError(
            f"unknown engine {value!r}{why}; engines: {', '.join(known)} (or the path of an engine folder)"
        )

    @property
    def is_folder(self) -> bool:
        return self.folder is not None

    def resolve(self) -> type[Engine]:
        """The engine class: the registered one, or the deep engine of the folder with the folder's weights."""
        if self.folder is not None:
            from hts.compute.segment.engines._deep import DeepEngine

            return DeepEngine.from_folder(self.folder)
        return _load(self.name)

    def __str__(self) -> str:
        return str(self.folder) if self.folder is not None else str(self.name)


def _existing_folder(path: Path, given: str) -> Path:
    folder = path.expanduser().resolve()
    if not folder.is_dir():
        raise EngineError(f"{given}: no such engine folder ({folder} does not exist or is not a folder)")
    return folder


def engine_class(name: str | EngineRef | os.PathLike[str]) -> type[Engine]:
    """The engine class of a registered name or an engine folder (see :meth:`EngineRef.parse`).

    A folder engine is named by the folder's absolute path (so Dask workers,
    which get the name, resolve it the same way); its model checksum and card
    come from the folder.
    """
    return EngineRef.parse(name).resolve()
