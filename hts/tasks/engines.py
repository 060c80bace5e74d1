"""Descriptions of the registered engines (for `hts engines`)."""

from __future__ import annotations

from typing import Any

from hts.compute.segment.engines import engine_class, engines

__all__ = ["describe_engines"]


def describe_engines(name: str | None = None) -> list[dict[str, Any]]:
    """One dict per engine (or just ``name``): roles, outputs, backends, parameters with defaults, card."""
    classes = [engine_class(name)] if name else list(engines().values())
    out = []
    for cls in classes:
        schema = cls.Params.model_json_schema()
        out.append(
            {
                "name": cls.name,
                "summary": cls.summary,
                "version": cls.version,
                "channels": {
                    role: {"description": r.description, "required": r.required} for role, r in cls.roles.items()
                },
                "outputs": list(cls.outputs),
                "backends": list(cls.backends),
                "parameters": {
                    k: {"default": v.get("default"), "description": v.get("description", ""), "type": v.get("type") or v.get("enum")}
                    for k, v in schema.get("properties", {}).items()
                },
                "card": cls.card(),
            }
        )
    return out
