"""Rich renderings of library results for the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hts.wells import PLATE_TYPES, row_name

_ROLE_STYLE = {"negative_control": "bold blue", "positive_control": "bold red", "empty": "dim", "sample": "green"}


def render_info(console: Console, data: dict[str, Any]) -> None:
    """Print a plate: header, well grid (fields per well), channels, acquisition metadata."""
    p = data["plate"]
    pt = PLATE_TYPES[p["plate_type"]]
    px = p["pixel_size_x_um"]
    console.print(
        f"[bold]{p['name']}[/]  ({p['plate_id']})  {p['plate_type']}-well, {p['status']}  "
        f"fields {data['fields_complete']}/{data['fields_total']} written\n"
        f"store {p['store_uri']}\nsource {p['source_uri']} ({p['source_format']})\n"
        f"field t×c×z×y×x = {p['size_t']}×{p['size_c']}×{p['size_z']}×{p['size_y']}×{p['size_x']} {p['dtype']}"
        + (f", pixel {px:.4g} µm" if px else ", pixel size unknown")
        + (" (Z max-projected)" if p["max_projected"] else "")
    )
    by_pos = {(w["row_index"], w["column_index"]): w for w in data["wells"]}
    grid = Table(
        title="fields per well" + (" (colour: platemap role)" if data["annotated_wells"] else ""),
        box=None,
        pad_edge=False,
    )
    grid.add_column("", style="bold")
    for c in range(pt.columns):
        grid.add_column(f"{c + 1:02d}", justify="right")
    for r in range(pt.rows):
        cells = []
        for c in range(pt.columns):
            w = by_pos.get((r, c))
            if w is None:
                cells.append("[dim]·[/]")
                continue
            text = (
                str(w["n_fields"])
                if w["fields_complete"] == w["n_fields"]
                else f"{w['fields_complete']}/{w['n_fields']}"
            )
            style = _ROLE_STYLE.get(w["role"] or "", "")
            cells.append(f"[{style}]{text}[/]" if style else text)
        grid.add_row(row_name(r), *cells)
    console.print(grid)
    ch = Table("#", "channel", "emission nm", "excitation nm", "colour", title="channels")
    for c in data["channels"]:
        ch.add_row(
            str(c["channel_index"]), c["name"], _num(c["emission_nm"]), _num(c["excitation_nm"]), c["color"] or ""
        )
    console.print(ch)
    if data.get("runs"):
        rt = Table(
            "run", "engine", "state", "fields", "cells", "flagged", "pixel µm", "labels", title="segmentation runs"
        )
        for r in data["runs"]:
            px = f"{r['pixel_size_um']:.3g}" + (" (est.)" if r.get("pixel_size_source") == "estimated" else "")
            state = r["state"] + (f": {r['error']}" if r.get("error") else "")
            rt.add_row(
                r["run_id"][:8],
                r["engine"],
                state,
                f"{r['fields_complete']}/{r['fields']}",
                str(r["cells"]),
                str(r["fields_flagged"]),
                px,
                ", ".join(r["labels"].values()),
            )
        console.print(rt)
    for a in data["acquisitions"]:
        meta = Table(show_header=False, box=None, title=f"acquisition {a['acquisition_id']}")
        meta.add_row("files", f"{a['n_files']} ({a['size_bytes'] / 1e6:.1f} MB)")
        meta.add_row("sha256", a["checksum"] or "(pending)")
        for k in ("objective", "magnification", "numerical_aperture"):
            if a.get(k) is not None:
                meta.add_row(k, str(a[k]))
        for k, v in a["instrument"].items():
            if k not in ("objective", "magnification", "numerical_aperture") and not str(k).startswith("text_"):
                meta.add_row(k, str(v))
        console.print(meta)


def _num(v: Any) -> str:
    return "" if v is None else f"{v:g}"


def render_engines(console: Console, rows: list[dict[str, Any]], *, full: bool, errors: Sequence[object] = ()) -> None:
    """A table of engines with the package of each, or one engine's card and parameters.

    ``errors``: plug-ins that did not load, one line each under the table (one line even when piped: soft wrap).
    """
    if not full:
        # fits 80 columns: name and package never wrap, channels and outputs share a column, backends go in a footnote
        t = Table("engine", "package", "reads → outputs", "what it does")
        t.columns[0].no_wrap = True
        t.columns[1].no_wrap = True
        t.columns[3].ratio = 1
        for r in rows:
            reads = ", ".join(role if c["required"] else escape(f"[{role}]") for role, c in r["channels"].items())
            name = f"[bold]{escape(r['name'])}[/]" if r.get("available", True) else f"[dim]{escape(r['name'])}[/]"
            t.add_row(name, escape(r.get("package", "")), f"{reads} → {', '.join(r['outputs'])}", r["summary"])
        console.print(t)
        by_backends: dict[str, list[str]] = {}
        for r in rows:
            by_backends.setdefault(", ".join(r["backends"]), []).append(r["name"])
        for backends, names in by_backends.items():
            console.print(f"[dim]{', '.join(names)}: {backends}[/]")
        for r in rows:
            if not r.get("available", True):
                console.print(f"[yellow]{escape(r['name'])} unavailable:[/] {escape(r.get('unavailable') or '')}")
        console.print(
            "[dim]\\[role] = optional channel. `hts engines --card NAME` shows a model card and parameters.[/]"
        )
        for e in errors:
            console.print(f"[red]not loaded:[/] {escape(str(e))}", soft_wrap=True)
        return
    for r in rows:
        package = f" ({escape(r['package'])})" if r.get("package") else ""
        console.print(f"[bold]{r['name']}[/] v{r['version']}{package} — {r['summary']}\n")
        if not r.get("available", True):
            console.print(f"[yellow]unavailable:[/] {escape(r.get('unavailable') or '')}\n")
        console.print(r["card"] + "\n")
        ch = Table("channel role", "required", "description", title="channels")
        for role, c in r["channels"].items():
            ch.add_row(role, "yes" if c["required"] else "no", c["description"])
        console.print(ch)
        pt = Table("parameter", "default", "description", title="parameters (-p NAME=VALUE)")
        for k, p in r["parameters"].items():
            pt.add_row(k, str(p["default"]), p["description"])
        console.print(pt)


def _cell_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def render_arrow_table(console: Console, table) -> None:
    """A query result as a rich table, every column whole: piped output is as wide as the data."""
    rows = [[_cell_text(v) for v in r.values()] for r in table.to_pylist()]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(table.column_names)]
    need = sum(w + 3 for w in widths) + 1
    if not console.is_terminal and need > console.width:
        console = Console(width=need, highlight=False, file=console.file)
    t = Table(*table.column_names)
    for r in rows:
        t.add_row(*(escape(c) for c in r))
    console.print(t)
    console.print(f"[dim]{table.num_rows} rows[/]")
