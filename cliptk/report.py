"""One self-contained HTML report: sections of text, tables and plotly figures in a single file.

plotly.js is inlined once at the top, so the file opens anywhere without network or Jupyter;
every figure after that reuses it. Images travel as data URIs.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["Report"]

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4} p.note{color:#555}
"""


@dataclass
class Report:
    """Collect sections, then :meth:`save` one HTML file.

    Example:
        >>> r = Report("cliptk demo")
        >>> r.text("Hello", "what this run did")
        >>> r.table("Metrics", pd.DataFrame({"mAP": [0.5]}))
        >>> "Metrics" in r.html()
        True
    """

    title: str
    parts: list[str] = field(default_factory=list)
    _plotly_inlined: bool = False

    def text(self, heading: str | None, body: str) -> None:
        """A heading (optional) and a paragraph of plain text (escaped)."""
        if heading:
            self.parts.append(f"<h2>{html.escape(heading)}</h2>")
        self.parts.append(f"<p class='note'>{html.escape(body)}</p>")

    def table(self, heading: str | None, frame: pd.DataFrame, float_format: str = "{:.3f}") -> None:
        """A pandas table."""
        if heading:
            self.parts.append(f"<h2>{html.escape(heading)}</h2>")
        self.parts.append(frame.to_html(float_format=lambda v: float_format.format(v), border=0))

    def figure(self, heading: str | None, fig) -> None:
        """A plotly figure (plotly.js inlined with the first one)."""
        if heading:
            self.parts.append(f"<h2>{html.escape(heading)}</h2>")
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=not self._plotly_inlined))
        self._plotly_inlined = True

    def raw(self, heading: str | None, fragment: str) -> None:
        """An HTML fragment made by cliptk (e.g. the projection with hover thumbnails)."""
        if heading:
            self.parts.append(f"<h2>{html.escape(heading)}</h2>")
        self.parts.append(fragment)

    def html(self) -> str:
        body = "\n".join(self.parts)
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>")

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file + rename) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.html(), encoding="utf-8")
        os.replace(tmp, path)
        return path
