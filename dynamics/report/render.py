"""Writers: one :class:`Document` (title, lead, findings, tables, figures) to Markdown and to self-contained HTML.

Every string that comes from a run is escaped here, once, by the writer of each format: names are data, never
markup. In Markdown: HTML-significant characters become entities, backslashes, backticks, pipes, ``#``, ``*``,
``!``, ``_`` (where it could emphasise) and brackets (where they could link) are backslash-escaped and newlines
become spaces, so no name can start a heading, a link, an image, code, emphasis or a table cell.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["Document", "FigureFile", "to_markdown", "to_html", "md_text", "md_code"]


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


_MD_SPECIAL = "\\`*#|!"
_LINK = re.compile(r"\]\s*[(\[]")  # what makes brackets a link or an image: "](" or "]["


def md_text(text: Any) -> str:
    """``text`` as literal Markdown: entities for ``& < >``, a backslash before each Markdown-significant
    character, newlines (and carriage returns) as spaces. ``_`` is escaped only where it could delimit emphasis
    (not between two letters or digits); brackets only when the text holds ``](`` or ``][`` (else they cannot
    link: no line of the report starts with a bracket, so no link definition can be made), which keeps
    intervals such as ``2.4 [1.1, 5.0]`` readable."""
    out = html.escape(str(text), quote=False).replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    special = _MD_SPECIAL + ("[]" if _LINK.search(out) else "")
    chars = []
    for i, c in enumerate(out):
        inner = c == "_" and 0 < i < len(out) - 1 and out[i - 1].isalnum() and out[i + 1].isalnum()
        chars.append("\\" + c if c in special or (c == "_" and not inner) else c)
    return "".join(chars)


def md_code(text: Any) -> str:
    """``text`` as a Markdown code span that no backtick inside it can close (newlines as spaces)."""
    t = str(text).replace("\r", " ").replace("\n", " ")
    longest = max((len(run) for run in "".join(c if c == "`" else " " for c in t).split()), default=0)
    fence = "`" * (longest + 1)
    pad = " " if t.startswith("`") or t.endswith("`") or longest else ""
    return f"{fence}{pad}{t}{pad}{fence}"


def _md_table(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return md_text(v)
    if df.empty:
        return "_(none)_\n"
    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _html_table(df: pd.DataFrame) -> str:
    """The table in a box of the page's width that scrolls sideways itself when the table is wider (the page
    never does)."""
    if df.empty:
        return "<p><em>(none)</em></p>"
    table = df.to_html(index=False, escape=True, border=0, classes="t", na_rep="–")
    return f'<div class="wide" role="region" tabindex="0">{table}</div>'


#: the page is never wider than the window: wide tables scroll inside their box, long names and code break,
#: images shrink to the text width
_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;"
        "overflow-wrap:break-word}code{overflow-wrap:anywhere}"
        "div.wide{max-width:100%;overflow-x:auto;margin:1em 0}"
        "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{border-bottom:1px "
        "solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}table.t td{min-width:4em}"
        "figure{margin:1.5em 0}img{max-width:100%;height:auto}"
        "figcaption{font-size:13px;color:#555}")


def to_markdown(doc: Document) -> str:
    """The report as Markdown; figures are linked from ``figures/`` beside the file."""
    lead = "".join(md_code(t) if code else md_text(t) for t, code in doc.lead)
    lines = [f"# {md_text(doc.title)}", "", lead, "", "## Findings", ""]
    lines += [f"- {md_text(s)}" for s in doc.findings]
    first, *rest = doc.sections
    lines += ["", f"## {md_text(first[0])}", "", _md_table(first[1])]
    for heading, table in rest:
        lines += [f"## {md_text(heading)}", "", _md_table(table)]
    lines += ["## Figures", ""]
    for f in doc.figures:
        lines += [f"![{f.name}](figures/{f.png.name})", "", f"*{md_text(f.caption)}* "
                  f"([PDF](figures/{f.name}.pdf))", ""]
    lines += ["## Runs", "", _md_table(doc.runs)]
    return "\n".join(lines)


def to_html(doc: Document) -> str:
    """The report as one self-contained HTML file (figures base64-embedded)."""
    lead = "".join(f"<code>{html.escape(t)}</code>" if code else html.escape(t) for t, code in doc.lead)
    body = [f"<h1>{html.escape(doc.title)}</h1>", f"<p>{lead}</p>", "<h2>Findings</h2><ul>"]
    body += [f"<li>{html.escape(s)}</li>" for s in doc.findings] + ["</ul>"]
    for heading, table in doc.sections:
        body += [f"<h2>{html.escape(heading)}</h2>", _html_table(table)]
    body.append("<h2>Figures</h2>")
    for f in doc.figures:
        data64 = base64.b64encode(f.png.read_bytes()).decode("ascii")
        body.append(f'<figure><img alt="{html.escape(f.name)}" src="data:image/png;base64,{data64}">'
                    f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
    body += ["<h2>Runs</h2>", _html_table(doc.runs)]
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{html.escape(doc.title)}</title>'
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>")
