"""Descriptions of the registered engines (for `hts engines`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hts.compute.segment.engines import EngineRef, engine_package, engines

__all__ = ["EngineInfo", "describe_engines"]


@dataclass(frozen=True)
class EngineInfo:
    """What an engine is: its package, whether it can run here, the channel roles it reads
    (``{role: {"description", "required"}}``), outputs, backends, parameters
    (``{name: {"default", "description", "type"}}``, µm units) and model card."""

    name: str
    package: str
    available: bool
    unavailable: str | None
    summary: str
    version: str
    channels: dict[str, dict[str, Any]]
    outputs: list[str]
    backends: list[str]
    parameters: dict[str, dict[str, Any]]
    card: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def describe_engines(name: str | None = None) -> list[EngineInfo]:
    """Every engine (or just ``name``): package, availability, roles, outputs, backends, parameters with defaults, card.

    ``package`` is the distribution that provides the engine (``"hts"`` for the
    built-ins, a plug-in's package otherwise). ``available`` is False for an
    engine listed without its optional dependency (``unavailable`` says what
    to install), so a missing extra is visible instead of the engine vanishing.
    """
    refs = [EngineRef.parse(name)] if name else [EngineRef(name=n) for n in engines()]
    out = []
    for ref in refs:
        cls = ref.resolve()
        schema = cls.Params.model_json_schema()
        missing = _unavailable(cls)
        out.append(
            EngineInfo(
                name=cls.name,
                package=engine_package(ref),
                available=missing is None,
                unavailable=missing,
                summary=cls.summary,
                version=cls.version,
                channels={
                    role: {"description": r.description, "required": r.required} for role, r in cls.roles.items()
                },
                outputs=list(cls.outputs),
                backends=list(cls.backends),
                parameters={
                    k: {
                        "default": v.get("default"),
                        "description": v.get("description", ""),
                        "type": v.get("type") or v.get("enum"),
                    }
                    for k, v in schema.get("properties", {}).items()
                },
                card=cls.card(),
            )
        )
    return out


def _unavailable(cls: type) -> str | None:
    """The engine's own word on why it cannot run here (its optional ``unavailable()`` classmethod), or None."""
    check = getattr(cls, "unavailable", None)
    if not callable(check):
        return None
    try:
        reason = check()
    except Exception as e:  # noqa: BLE001 - a plug-in's failing check marks it unavailable, it does not stop the listing
        return f"its availability check failed ({type(e).__name__}: {e})"
    return None if reason is None else " ".join(str(reason).split())
