"""A card's ``detail`` (CDS Hooks: GitHub-flavoured Markdown) as safe HTML for the trend page.

Why on the server: the page must show the detail as an EHR shows it (bold facts, the
``| Fact | Value | Date | Why it counts |`` table, lists), and the detail quotes record text (a
diagnosis, a lab's comment) that may hold markup. A maintained CommonMark parser (markdown-it-py,
with GFM tables and strikethrough) never passes raw HTML through, and the nh3 sanitiser (ammonia)
then keeps only the tags and attributes below, whatever the parser let by: no script, no style,
no event handlers, links only to http(s) with ``rel="noopener noreferrer"``. The page inserts
this HTML as it is and relies on nothing else; its Content-Security-Policy stays strict (no
inline script or style, which the sanitiser strips anyway).
"""

from __future__ import annotations

import logging
from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

#: What a card detail may use. No images: the page loads nothing from outside the service.
TAGS = frozenset({
    "p", "br", "hr", "strong", "em", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "a", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td",
})
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
SCHEMES = frozenset({"http", "https"})
LINK_REL = "noopener noreferrer"

# markdown-it-py narrates every parsing rule at DEBUG: with IVIG_CDS_LOG_LEVEL=DEBUG, hundreds of
# lines per page view that say nothing about the service
logging.getLogger("markdown_it").setLevel(logging.INFO)


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    # 'html': False — raw HTML in the text is shown as text, never parsed as markup
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def _only_web_links(tag: str, attribute: str, value: str) -> str | None:
    """Drop an href that is not absolute http(s): a relative link would open inside the EHR's frame."""
    if tag == "a" and attribute == "href" and not value.lower().startswith(("http://", "https://")):
        return None
    return value


def detail_html(markdown: str) -> str:
    """The sanitised HTML of one card detail."""
    html = _parser().render(markdown or "")
    # links open a new window: inside an EHR's frame, following one in place would replace the app
    return nh3.clean(html, tags=set(TAGS), attributes={k: set(v) for k, v in ATTRIBUTES.items()},
                     url_schemes=set(SCHEMES), link_rel=LINK_REL, attribute_filter=_only_web_links,
                     set_tag_attribute_values={"a": {"target": "_blank"}}, strip_comments=True)
