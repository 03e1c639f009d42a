"""User text (prompts, study, reader and generator names) shown verbatim in Markdown.

`html.escape` alone is not enough inside gr.Markdown: `![x](http://host/track.png)` has no
HTML in it and renders as a remote image the browser fetches. Where the text must sit in
Markdown, every character Markdown or HTML acts on is backslash-escaped; where it can, the
page shows user text in a gr.HTML with `html.escape` (no Markdown is parsed there).
"""
from __future__ import annotations

_MD_SPECIAL = frozenset("\\`*_{}[]()<>#+-.!|~&:=\"'")


def plain_markdown(text: object) -> str:
    """`text` as Markdown that renders as exactly that text (one line)."""
    s = " ".join(str(text).split())
    return "".join(f"\\{c}" if c in _MD_SPECIAL else c for c in s)
