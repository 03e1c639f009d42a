"""The report's document model: headings, paragraphs, lists, tables, preformatted text and
figures (`Doc`), written once and rendered as Markdown (`to_markdown`) and as one offline HTML page
(`to_html`). User text is escaped in both: `html.escape` in the page, `plain_markdown` in Markdown
table cells."""
from __future__ import annotations

import dataclasses
import html
import re

from studio.format.plain_text import plain_markdown

NOT_REPORTED = "not reported"


@dataclasses.dataclass
class Doc:
    blocks: list = dataclasses.field(default_factory=list)

    def h(self, level: int, text: str, anchor: str = "") -> None:
        self.blocks.append(("h", level, text, anchor))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list], caption: str = "") -> None:
        self.blocks.append(("table", header, [[cell(c) for c in r] for r in rows], caption))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def raw_html(self, markup: str) -> None:
        """Markup built here from escaped parts (figures, thumbnails); left out of the Markdown."""
        self.blocks.append(("html", markup))


def cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:  # NaN: a statistic that is undefined here (e.g. one repeat)
            return "n/a"
        return f"{v:.3f}" if abs(v) >= 0.001 or v == 0 else f"{v:.2e}"
    return str(v)


_SECTION_LINK = re.compile(r"\[([^\]]+)\]\(#([a-z0-9-]+)\)")


def _md_cell(text: str) -> str:
    """A table cell as Markdown that shows exactly its text, on one line; a link to a section of
    this report, [text](#anchor), stays a link."""
    parts = _SECTION_LINK.split(text)  # text, link text, anchor, text, ...
    return "".join(plain_markdown(p) if i % 3 == 0 else f"[{plain_markdown(p)}](#{parts[i + 1]})" if i % 3 == 1 else ""
                   for i, p in enumerate(parts))


def to_markdown(doc: Doc) -> str:
    out = []
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + b[2])
        elif kind == "p":
            out.append(b[1])
        elif kind == "ul":
            out.append("\n".join(f"- {i}" for i in b[1]))
        elif kind == "table":
            _, header, rows, caption = b
            lines = ([f"*{caption}*", ""] if caption else [])
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
            out.append("\n".join(lines))
        elif kind == "pre":
            fence = "~~~~" if "```" in b[1] else "```"
            out.append(f"{fence}\n{b[1]}\n{fence}")
    return "\n\n".join(out) + "\n"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:0 auto;padding:1rem 1.5rem;
color:#1b1b1b;line-height:1.45}
h1{font-size:1.7rem}h2{border-bottom:1px solid #ccd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem;display:block;overflow-x:auto}
th,td{border:1px solid #ccd;padding:.25rem .5rem;text-align:left;vertical-align:top}th{background:#eef}
caption{caption-side:top;text-align:left;font-style:italic;padding:.2rem 0}
pre{background:#f6f6f8;padding:.6rem;overflow-x:auto;font-size:.82rem;white-space:pre-wrap;word-break:break-all}
.pairs{display:flex;flex-wrap:wrap;gap:.8rem}.pair{border:1px solid #ccd;padding:.4rem;font-size:.78rem;max-width:220px}
.pair img{width:96px;height:96px;image-rendering:pixelated;margin-right:2px}.flag{color:#a00;font-weight:600}
.nr{color:#a00}.svg-hist{margin:.3rem 1rem .3rem 0}.hists{display:flex;flex-wrap:wrap}
@media (max-width:600px){body{padding:.5rem}.pair{max-width:100%}}
"""


def to_html(doc: Doc, title: str) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width,initial-scale=1">',
           # offline and inert: nothing is fetched, no forms; plotly's inline script is the only script
           "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
           "style-src 'unsafe-inline'; script-src 'unsafe-inline' 'unsafe-eval'\">",
           f"<title>{e(title)}</title><style>{CSS}</style></head><body>"]
    for b in doc.blocks:
        kind = b[0]
        if kind == "h":
            anchor = f' id="{e(b[3])}"' if b[3] else ""
            out.append(f"<h{b[1]}{anchor}>{e(b[2])}</h{b[1]}>")
        elif kind == "p":
            out.append(f"<p>{_inline(b[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            _, header, rows, caption = b
            cap = f"<caption>{e(caption)}</caption>" if caption else ""
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            body = "".join("<tr>" + "".join(f"<td{' class=nr' if c == NOT_REPORTED else ''}>{_inline(c)}</td>"
                                            for c in r) + "</tr>" for r in rows)
            out.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "pre":
            out.append(f"<pre>{e(b[1])}</pre>")
        elif kind == "html":
            out.append(b[1])
    out.append("</body></html>")
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escaped text; a Markdown link to a section of this report, [text](#anchor), becomes a link."""
    parts = _SECTION_LINK.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 3 == 0:
            out.append(html.escape(part))
        elif i % 3 == 1:
            out.append(f'<a href="#{html.escape(parts[i + 1])}">{html.escape(part)}</a>')
    return "".join(out)
