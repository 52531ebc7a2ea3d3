"""The agent's Markdown as HTML a page can show: made and cleaned here, on the server.

Hermes answers in Markdown (lists, bold, code, tables, links). Its text is the model's, so it is
untrusted: markdown-it-py writes CommonMark with tables and strikethrough, with raw HTML off
(it comes out as text) and images off (`![x](url)` is a link to the image: a page that fetched
any address the model wrote would tell that address who reads it). nh3 (ammonia) then keeps only
the tags below, no attribute but a link's address and title and a list's start, links only to
absolute http, https and mailto addresses, each with rel="noopener noreferrer" and opening apart.
The pages' script sets innerHTML from this alone; a member's own words are always plain text.
"""

from __future__ import annotations

import functools
import html

import nh3
from markdown_it import MarkdownIt

_parser = (
    MarkdownIt("commonmark", {"html": False, "breaks": True})
    .enable(["table", "strikethrough"])
    .disable("image")
)
"""`breaks`: a newline in a chat answer is a new line, as the model meant it."""

TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "s", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
_cleaner = nh3.Cleaner(
    tags=TAGS,
    clean_content_tags={"script", "style"},
    attributes={"a": {"href", "title"}, "ol": {"start"}},
    url_schemes={"http", "https", "mailto"},
    url_relative="deny",
    link_rel="noopener noreferrer",
    set_tag_attribute_values={"a": {"target": "_blank"}},
    strip_comments=True,
)


@functools.lru_cache(maxsize=512)
def to_html(text: str) -> str:
    """The Markdown `text` as clean HTML (a history page renders the same answers again and again)."""
    return _cleaner.clean(_parser.render(text)).strip()


def to_text(text: str) -> str:
    """The Markdown `text` as plain text, its markup dropped (a notification's body)."""
    return html.unescape(nh3.clean(_parser.render(text), tags=set()))
