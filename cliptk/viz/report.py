"""One self-contained HTML report: sections of text, tables and plotly figures in a single file.

plotly.js is inlined once, with the first figure, so the file opens anywhere without network or
Jupyter; every figure after that reuses it. Images travel as data URIs (e.g. the fragments of
:func:`cliptk.viz.html_fragment` and :func:`cliptk.diagnose.worst_queries_html`).

A report is written in the order the story runs; a summary known only at the end (the metrics
table of a run) goes above everything else with ``first=True``.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .._util import atomic_write_text

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

    Each section method (:meth:`text`, :meth:`table`, :meth:`figure`, :meth:`raw`) appends a
    heading (optional) and a body. :meth:`text`, :meth:`table` and :meth:`raw` take
    ``first=True`` to put the section above all sections added without it (sections added with
    ``first=True`` keep their own order): the way to put a summary computed at the end on top.

    Attributes:
        title: the page's ``<title>`` and ``<h1>``.
        parts: the HTML pieces of the body, in page order (read them; add through the methods).

    Example:
        >>> r = Report("cliptk demo")
        >>> r.text("Hello", "what this run did")
        >>> r.table("Metrics", pd.DataFrame({"mAP": [0.5]}), first=True)
        >>> page = r.html()
        >>> page.index("Metrics") < page.index("Hello")
        True
    """

    title: str
    parts: list[str] = field(default_factory=list)
    _plotly_inlined: bool = False
    _n_first: int = field(default=0, init=False, repr=False)  # parts at the top, added with first=True

    def _add(self, heading: str | None, body: str, first: bool) -> None:
        pieces = ([f"<h2>{html.escape(heading)}</h2>"] if heading else []) + [body]
        if first:
            self.parts[self._n_first:self._n_first] = pieces
            self._n_first += len(pieces)
        else:
            self.parts.extend(pieces)

    def text(self, heading: str | None, body: str, *, first: bool = False) -> None:
        """A heading (optional) and a paragraph of plain text (escaped)."""
        self._add(heading, f"<p class='note'>{html.escape(body)}</p>", first)

    def table(self, heading: str | None, frame: pd.DataFrame, float_format: str = "{:.3f}", *,
              na_rep: str = "NaN", first: bool = False) -> None:
        """A pandas table; floats written with ``float_format``, missing values as ``na_rep``."""
        self._add(heading, frame.to_html(float_format=lambda v: float_format.format(v), border=0, na_rep=na_rep),
                  first)

    def figure(self, heading: str | None, fig, *, note: str | None = None, **html_options) -> None:
        """A plotly figure (plotly.js inlined with the first one, so figures always append), with
        an optional ``note`` line under it; ``html_options`` go to ``fig.to_html`` (e.g.
        ``auto_play=False``: an animated figure waits for its play button)."""
        body = fig.to_html(full_html=False, include_plotlyjs=not self._plotly_inlined, **html_options)
        self._add(heading, body + (f"<p class='note'>{html.escape(note)}</p>" if note else ""), False)
        self._plotly_inlined = True

    def raw(self, heading: str | None, fragment: str, *, first: bool = False) -> None:
        """An HTML fragment, inserted as it is (e.g. the projection with hover thumbnails, or a
        note with markup)."""
        self._add(heading, fragment, first)

    def html(self) -> str:
        """The whole page as a string."""
        body = "\n".join(self.parts)
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the page atomically (a reader never sees half a file; parent folders are
        created) and return the path."""
        return atomic_write_text(path, self.html())
