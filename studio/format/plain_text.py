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


# What a study team's instructions may use: emphasis, headings, lists and paragraphs. Links,
# images, raw HTML, code and tables are shown as typed (a link or image in the reader's
# page would load or lead somewhere the study did not vet).
_STUDY_MD_ESCAPE = frozenset("\\`[]()<>!&|~:=\"'{}")


def study_markdown(text: object) -> str:
    """A study team's text (instructions, consent) as Markdown that renders its emphasis,
    headings, lists and paragraphs, and shows everything else as typed."""
    lines = str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join("".join(f"\\{c}" if c in _STUDY_MD_ESCAPE else c for c in line.rstrip())
                     for line in lines).strip("\n")
