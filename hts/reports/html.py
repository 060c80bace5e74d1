"""Self-contained HTML reports: one file with its styles and images inside.

Everything a report shows is in the one file: the CSS is inline, every PNG is a base64
``data:`` URI, and there are no scripts, fonts or links to anything outside it, so the file
can be mailed, archived or opened offline. Every text that goes in is escaped with
:func:`html.escape`. The header names the time the report was generated and the hts
version; a table of contents links to the headings.

>>> report = HtmlReport("Plate P001")
>>> _ = report.heading("Counts").table(["well", "nuclei"], [["A01", 120], ["A02", 98.5]])
>>> "<td class=\\"num\\">98.5</td>" in report.render()
True
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime
from numbers import Integral, Real
from pathlib import Path

import hts
from hts.reports._render import PNG_SIGNATURE

__all__ = ["HtmlReport"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1d1d1f; background: #ffffff; margin: 0 auto; padding: 1.5rem 2rem 3rem; max-width: 1200px;
       line-height: 1.45; }
header { border-bottom: 2px solid #d0d7de; margin-bottom: 1.2rem; }
header h1 { margin: 0 0 0.2rem; font-size: 1.8rem; }
header .meta { color: #57606a; font-size: 0.85rem; margin: 0 0 0.8rem; }
nav.toc { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 0.6rem 1.2rem;
          margin-bottom: 1.5rem; font-size: 0.92rem; display: inline-block; min-width: 16rem; }
nav.toc strong { display: block; margin-bottom: 0.3rem; }
nav.toc ul { margin: 0; padding-left: 1.1rem; }
nav.toc li.level-3 { margin-left: 1rem; } nav.toc li.level-4 { margin-left: 2rem; }
nav.toc a { color: #0969da; text-decoration: none; } nav.toc a:hover { text-decoration: underline; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2rem; margin-top: 2rem; }
p { margin: 0.6rem 0; }
table { border-collapse: collapse; margin: 0.8rem 0 1.4rem; font-size: 0.88rem; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.6rem; }
th { background: #f6f8fa; text-align: left; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.more { color: #57606a; font-style: italic; text-align: center; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4e8; }
figcaption { color: #57606a; font-size: 0.88rem; margin-top: 0.3rem; }
"""


class HtmlReport:
    """A report built section by section, rendered to one self-contained HTML page.

    Every method but :meth:`render` and :meth:`write` returns the report, so calls chain.
    ``generated`` fixes the timestamp shown (default: when :meth:`render` runs).
    """

    def __init__(self, title: str, *, generated: datetime | None = None):
        self.title = str(title)
        self.generated = generated
        self._parts: list[str] = []
        self._toc: list[tuple[int, str, str]] = []  # (level, anchor, text)

    # ------------------------------------------------------------------ content
    def heading(self, text: str, level: int = 2) -> HtmlReport:
        """A section heading (level 2..4; level 1 is the report's title), listed in the contents."""
        level = min(max(int(level), 2), 4)
        anchor = f"s{len(self._toc) + 1}"
        self._toc.append((level, anchor, str(text)))
        self._parts.append(f'<h{level} id="{anchor}">{html.escape(str(text))}</h{level}>')
        return self

    def text(self, text: str) -> HtmlReport:
        """Paragraphs of plain text (a blank line starts a new one; other newlines are kept)."""
        for para in str(text).replace("\r\n", "\n").split("\n\n"):
            if para.strip():
                self._parts.append("<p>" + html.escape(para.strip()).replace("\n", "<br>") + "</p>")
        return self

    def table(
        self,
        columns: list[str],
        rows: list[list | tuple],
        *,
        caption: str = "",
        max_rows: int = 200,
        number_format: str = "{:.4g}",
    ) -> HtmlReport:
        """A table; floats are formatted with ``number_format``, numbers right-aligned.

        Only the first ``max_rows`` rows are shown, with a line saying how many were left out.
        ``None`` shows as an empty cell. Raises ``ValueError`` for a row of the wrong length.
        """
        columns = [str(c) for c in columns]
        rows = list(rows)
        out = ["<table>"]
        if caption:
            out.append(f"<caption>{html.escape(str(caption))}</caption>")
        out.append("<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr></thead>")
        out.append("<tbody>")
        shown = rows[: max(int(max_rows), 0)]
        for i, row in enumerate(shown):
            row = list(row)
            if len(row) != len(columns):
                raise ValueError(f"table row {i} has {len(row)} values for {len(columns)} columns")
            out.append("<tr>" + "".join(_cell(v, number_format) for v in row) + "</tr>")
        if len(rows) > len(shown):
            left = len(rows) - len(shown)
            out.append(
                f'<tr><td class="more" colspan="{max(len(columns), 1)}">… {left} more row{"s" if left != 1 else ""} '
                f"not shown ({len(rows)} in all)</td></tr>"
            )
        out.append("</tbody></table>")
        self._parts.append("\n".join(out))
        return self

    def image(self, png: bytes, caption: str = "", width: int | str | None = None) -> HtmlReport:
        """A PNG, embedded as a data URI; ``width`` in CSS pixels (int) or any CSS length (str)."""
        png = bytes(png)
        if not png.startswith(PNG_SIGNATURE):
            raise ValueError("HtmlReport.image needs PNG bytes")
        src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        style = ""
        if width is not None:
            w = f"{int(width)}px" if isinstance(width, Integral) else str(width)
            style = f' style="width: {html.escape(w, quote=True)}"'
        alt = html.escape(str(caption or "figure"), quote=True)
        fig = [f'<figure><img src="{src}" alt="{alt}"{style}>']
        if caption:
            fig.append(f"<figcaption>{html.escape(str(caption))}</figcaption>")
        fig.append("</figure>")
        self._parts.append("".join(fig))
        return self

    # ------------------------------------------------------------------ output
    def render(self) -> str:
        """The whole page as one HTML string."""
        when = (self.generated or datetime.now().astimezone()).isoformat(timespec="seconds")
        title = html.escape(self.title)
        head = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f'<meta name="generator" content="hts {html.escape(hts.__version__, quote=True)}">',
            f"<title>{title}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            "<header>",
            f"<h1>{title}</h1>",
            f'<p class="meta">Generated {html.escape(when)} by hts {html.escape(hts.__version__)}</p>',
            "</header>",
        ]
        toc = []
        if self._toc:
            toc.append('<nav class="toc"><strong>Contents</strong><ul>')
            for level, anchor, text in self._toc:
                toc.append(f'<li class="level-{level}"><a href="#{anchor}">{html.escape(text)}</a></li>')
            toc.append("</ul></nav>")
        return "\n".join(head + toc + ["<main>"] + self._parts + ["</main>", "</body>", "</html>", ""])

    def write(self, path: str | Path) -> Path:
        """Write :meth:`render` to ``path`` (UTF-8) and return the path."""
        path = Path(path)
        path.write_text(self.render(), encoding="utf-8")
        return path


def _cell(value: object, number_format: str) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, bool):
        return f"<td>{value}</td>"
    if isinstance(value, Integral):
        return f'<td class="num">{int(value)}</td>'
    if isinstance(value, Real):
        v = float(value)
        text = (
            ("NaN" if math.isnan(v) else ("∞" if v > 0 else "−∞")) if not math.isfinite(v) else number_format.format(v)
        )
        return f'<td class="num">{html.escape(text)}</td>'
    return f"<td>{html.escape(str(value))}</td>"
