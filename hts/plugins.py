"""Plug-ins through Python entry points: the shared loader of the engine and reader registries.

A package extends hts by declaring entry points in its ``pyproject.toml``::

    [project.entry-points."hts.engines"]
    local-threshold = "hts_engine_example.engine:LocalThresholdEngine"

    [project.entry-points."hts.readers"]
    myformat = "my_package.reader:MyReader"

The entry point's name is the engine name (the reader's format); its value is
``module:Class``. hts registers its own engines and readers the same way (its
``pyproject.toml``); a source tree whose installed metadata lacks them (hts run
from a checkout that was never installed, or installed before a built-in was
added) falls back to the list in code, so the built-ins never depend on how hts
was installed.

A plug-in can never break hts: one that fails to import, is not a subclass of
the expected base class, names itself differently from its entry point, or
takes a name already registered (a built-in's above all) is left out, and the
reason is kept as a :class:`PluginError` (``hts engines`` shows them).
"""

from __future__ import annotations

import importlib.metadata as md
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BUILTIN_PACKAGE", "PluginError", "Registry", "entry_specs", "load_group", "load_named"]

BUILTIN_PACKAGE = "hts"


@dataclass(frozen=True)
class PluginError:
    """Why one entry point was left out of a registry."""

    group: str  # "hts.engines" or "hts.readers"
    name: str  # the entry point's name
    package: str  # the distribution that declared it
    reason: str  # one line

    def __str__(self) -> str:
        return f"{self.group} plug-in {self.name!r} from {self.package}: {self.reason}"


@dataclass(frozen=True)
class Registry:
    """The classes of one entry-point group by name, the distribution of each, and the entry points left out."""

    classes: dict[str, type] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)
    errors: tuple[PluginError, ...] = ()

    def builtin(self, name: str) -> bool:
        return self.packages.get(name) == BUILTIN_PACKAGE


def _normalized(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def _dist_name(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None and dist.name else "an unknown package"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def entry_specs(group: str, builtins: Mapping[str, str]) -> list[tuple[str, str, str, str | None]]:
    """What ``group`` declares, without importing anything: ``(name, "module:Class", package, why_left_out)``.

    Built-ins first (in ``builtins`` order), then plug-ins by name; ``why_left_out`` is set
    for a plug-in whose name a built-in or an earlier plug-in already took.
    """
    try:
        eps = list(md.entry_points(group=group))
    except Exception:  # noqa: BLE001 - unreadable metadata of some installed package: the built-ins still work
        eps = []
    # a package's name is read from its METADATA (parsed whole, README included: ~5 ms each time):
    # once per package, not once per entry point and use
    names: dict[int, str] = {}
    named = []
    for ep in eps:
        key = id(getattr(ep, "dist", None))
        if key not in names:
            names[key] = _dist_name(ep)
        named.append((ep, names[key]))
    ours = {ep.name: ep.value for ep, package in named if _normalized(package) == BUILTIN_PACKAGE}
    theirs = sorted(((ep, p) for ep, p in named if _normalized(p) != BUILTIN_PACKAGE), key=lambda e: (e[0].name, e[1]))
    specs = [(name, ours.get(name, value), BUILTIN_PACKAGE) for name, value in builtins.items()]
    specs += [(name, value, BUILTIN_PACKAGE) for name, value in ours.items() if name not in builtins]
    specs += [(ep.name, ep.value, package) for ep, package in theirs]
    reserved = {name for name, _, package in specs if package == BUILTIN_PACKAGE}
    taken: dict[str, str] = {}
    out = []
    for name, value, package in specs:
        if package != BUILTIN_PACKAGE and name in reserved:
            reason: str | None = "the name is taken by a built-in"
        elif name in taken:
            reason = f"the name is taken by package {taken[name]}"
        else:
            reason = None
            taken[name] = package
        out.append((name, value, package, reason))
    return out


def load_group(group: str, builtins: Mapping[str, str], *, base: type, key: str) -> Registry:
    """Load every class registered in entry-point ``group``: the built-ins first (in ``builtins`` order), then plug-ins by name.

    Parameters
    ----------
    group
        The entry-point group, e.g. ``"hts.engines"``.
    builtins
        hts's own entries, ``name -> "module:Class"``: used when the installed
        hts metadata does not declare ``group`` (or lacks some of them).
    base
        Every class must be a subclass of it.
    key
        The class attribute that must equal the entry point's name (``name`` of
        an engine, ``format`` of a reader): a worker that gets the name back
        must find the same class.
    """
    classes: dict[str, type] = {}
    packages: dict[str, str] = {}
    errors: list[PluginError] = []
    for name, value, package, reason in entry_specs(group, builtins):
        obj = None
        if reason is None:
            obj, reason = _load_one(name, value, group, base=base, key=key)
        if reason is not None:
            errors.append(PluginError(group, name, package, reason))
            continue
        classes[name] = obj
        packages[name] = package
    return Registry(classes, packages, tuple(errors))


def load_named(
    group: str, builtins: Mapping[str, str], name: str, *, base: type, key: str
) -> tuple[type | None, PluginError | None]:
    """The one class registered as ``name`` in ``group``, importing only its module (a Dask worker that
    runs one engine does not import every engine's dependencies); None and why when it cannot be had."""
    for n, value, package, reason in entry_specs(group, builtins):
        if n != name or reason is not None:
            continue
        obj, reason = _load_one(name, value, group, base=base, key=key)
        return (obj, None) if reason is None else (None, PluginError(group, name, package, reason))
    return None, None


def _load_one(name: str, value: str, group: str, *, base: type, key: str) -> tuple[Any, str | None]:
    """The class of one entry point, or None and why it cannot be registered."""
    try:
        obj = md.EntryPoint(name=name, value=value, group=group).load()
    except Exception as e:  # noqa: BLE001 - any failure of a plug-in's import leaves that plug-in out, nothing else
        return None, f"cannot load {value} ({_one_line(e)})"
    if not (isinstance(obj, type) and issubclass(obj, base) and obj is not base):
        return None, f"{value} is not a subclass of {base.__module__}.{base.__qualname__}"
    if getattr(obj, key, None) != name:
        return None, f"{value} has {key} {getattr(obj, key, None)!r}; it must equal the entry point name"
    return obj, None
