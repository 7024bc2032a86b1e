"""Writers: one :class:`Document` (title, lead, findings, tables, figures) to Markdown and to self-contained HTML.

Every string that comes from a run is escaped here, once, by the writer of each format.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["Document", "FigureFile", "to_markdown", "to_html"]


@dataclass
class FigureFile:
    """A saved figure: its name, caption and the PNG shown (a PDF of the same name lies beside it)."""
    name: str
    caption: str
    png: Path


@dataclass
class Document:
    """The report's content in reading order. ``lead`` is a list of (text, is_code) pieces, so that each
    format marks code its own way; ``sections`` are (heading, table) shown after the findings, ``runs`` last."""
    title: str
    lead: list[tuple[str, bool]]
    findings: list[str]
    sections: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[FigureFile] = field(default_factory=list)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)


def _md_table(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return html.escape(str(v), quote=False).replace("|", "\\|").replace("\n", " ")
    if df.empty:
        return "_(none)_\n"
    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>(none)</em></p>"
    return df.to_html(index=False, escape=True, border=0, classes="t", na_rep="–")


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table.t{border-collapse:collapse;font-size:13px;margin:1em 0}table.t td,table.t th{border-bottom:1px "
        "solid #ddd;padding:3px 8px;text-align:left}figure{margin:1.5em 0}img{max-width:100%}"
        "figcaption{font-size:13px;color:#555}")


def to_markdown(doc: Document) -> str:
    """The report as Markdown; figures are linked from ``figures/`` beside the file."""
    lead = "".join(f"`{html.escape(t)}`" if code else html.escape(t) for t, code in doc.lead)
    lines = [f"# {html.escape(doc.title)}", "", lead, "", "## Findings", ""]
    lines += [f"- {html.escape(s, quote=False)}" for s in doc.findings]
    first, *rest = doc.sections
    lines += ["", f"## {first[0]}", "", _md_table(first[1])]
    for heading, table in rest:
        lines += [f"## {heading}", "", _md_table(table)]
    lines += ["## Figures", ""]
    for f in doc.figures:
        lines += [f"![{f.name}](figures/{f.png.name})", "", f"*{html.escape(f.caption, quote=False)}* "
                  f"([PDF](figures/{f.name}.pdf))", ""]
    lines += ["## Runs", "", _md_table(doc.runs)]
    return "\n".join(lines)


def to_html(doc: Document) -> str:
    """The report as one self-contained HTML file (figures base64-embedded)."""
    lead = "".join(f"<code>{html.escape(t)}</code>" if code else html.escape(t) for t, code in doc.lead)
    body = [f"<h1>{html.escape(doc.title)}</h1>", f"<p>{lead}</p>", "<h2>Findings</h2><ul>"]
    body += [f"<li>{html.escape(s)}</li>" for s in doc.findings] + ["</ul>"]
    for heading, table in doc.sections:
        body += [f"<h2>{heading}</h2>", _html_table(table)]
    body.append("<h2>Figures</h2>")
    for f in doc.figures:
        data64 = base64.b64encode(f.png.read_bytes()).decode("ascii")
        body.append(f'<figure><img alt="{html.escape(f.name)}" src="data:image/png;base64,{data64}">'
                    f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
    body += ["<h2>Runs</h2>", _html_table(doc.runs)]
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(doc.title)}</title>'
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
