"""The agent's Markdown as HTML (sudo_api/markdown.py): formatting kept, and an XSS corpus that
never yields markup able to run script, load anything, or link anywhere but http(s) and mailto.

The output is parsed back (html.parser) and every element and attribute checked against what a
chat answer may hold, so a payload that slipped through in any shape fails here."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from sudo_api.history import Message
from sudo_api.markdown import TAGS, to_html

ALLOWED_ATTRIBUTES = {"a": {"href", "title", "rel", "target"}, "ol": {"start"}}


class Elements(HTMLParser):
    """Every start tag of a fragment, with its attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Elements()
    parser.feed(html)
    parser.close()
    return parser.found


def assert_safe(html: str) -> None:
    for tag, attrs in elements(html):
        assert tag in TAGS, (tag, html)
        assert set(attrs) <= ALLOWED_ATTRIBUTES.get(tag, set()), (tag, attrs, html)
        if tag == "a":
            assert attrs["rel"] == "noopener noreferrer" and attrs["target"] == "_blank", html
            href = attrs.get("href")
            assert href is None or href.lower().startswith(("http://", "https://", "mailto:")), html


XSS = [
    "<script>window.__pwned = 1</script>",
    "<SCRIPT SRC=https://evil.example/x.js></SCRIPT>",
    "<img src=x onerror=window.__pwned=1>",
    "<svg onload=window.__pwned=1>",
    "<svg><script>window.__pwned=1</script></svg>",
    "<iframe src=javascript:window.__pwned=1></iframe>",
    "<a href=javascript:window.__pwned=1>raw link</a>",
    "<details open ontoggle=window.__pwned=1>",
    "<style>body{background:url(javascript:x)}</style>",
    "<div style=\"background:url('javascript:x')\">styled</div>",
    "[click](javascript:window.__pwned=1)",
    "[click](JAVASCRIPT:window.__pwned=1)",
    "[click](  javascript:window.__pwned=1  )",
    "[click](&#106;avascript:window.__pwned=1)",
    "[click](&#x6A;&#x61;&#x76;&#x61;script:window.__pwned=1)",
    "[click](java&#9;script:window.__pwned=1)",
    "[click](javascript&colon;window.__pwned=1)",
    "[click](%6Aavascript:window.__pwned=1)",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX19wd25lZD0xPC9zY3JpcHQ+)",
    "[click](data:image/svg+xml,<svg onload=window.__pwned=1>)",
    "![img](data:image/png;base64,iVBORw0KGgo=)",
    "![img](javascript:window.__pwned=1)",
    "![tracker](https://evil.example/pixel.png)",
    "<javascript:window.__pwned=1>",
    "<data:text/html,<script>window.__pwned=1</script>>",
    "[ref]\n\n[ref]: javascript:window.__pwned=1",
    '[ref]\n\n[ref]: https://ok.example/ "title\\" onmouseover=\\"window.__pwned=1"',
    "[rel](/logout)",
    "[proto-relative](//evil.example/x)",
    "`<script>window.__pwned=1</script>`",
    "```html\n<img src=x onerror=window.__pwned=1>\n```",
    "**<img src=x onerror=window.__pwned=1>**",
    "***<svg onload=window.__pwned=1>*** _[x](javascript:1)_",
    "<!-- <script>window.__pwned=1</script> -->",
    "<![CDATA[<script>window.__pwned=1</script>]]>",
    "| a | <img src=x onerror=window.__pwned=1> |\n|---|---|\n| [x](javascript:1) | `<b>` |",
    '<a href="https://ok.example" onclick="window.__pwned=1">ok</a>',
    '[x](https://ok.example/"onmouseover="window.__pwned=1)',
    "&lt;script&gt;window.__pwned=1&lt;/script&gt;",
    "<math><mi xlink:href=javascript:window.__pwned=1>x</mi></math>",
    "<form action=javascript:window.__pwned=1><button>go</button></form>",
    "<object data=javascript:window.__pwned=1></object>",
    '<meta http-equiv=refresh content="0;url=javascript:window.__pwned=1">',
]


@pytest.mark.parametrize("payload", XSS)
def test_no_payload_yields_markup_that_could_run_or_load(payload):
    html = to_html(payload)
    assert_safe(html)
    lowered = html.lower()
    assert "<script" not in lowered and "<svg" not in lowered and "<img" not in lowered
    assert "javascript:" not in "".join(str(v).lower() for _, a in elements(html) for v in a.values())


def test_html_written_by_the_model_is_shown_as_text():
    assert to_html("<b>bold</b> <script>x()</script>") == (
        "<p>&lt;b&gt;bold&lt;/b&gt; &lt;script&gt;x()&lt;/script&gt;</p>"
    )
    assert to_html("`<img src=x onerror=y>`") == "<p><code>&lt;img src=x onerror=y&gt;</code></p>"


def test_markdown_formatting_is_kept():
    assert to_html("**bold**, *it*, ~~gone~~ and `code`") == (
        "<p><strong>bold</strong>, <em>it</em>, <s>gone</s> and <code>code</code></p>"
    )
    assert to_html("- one\n- two") == "<ul>\n<li>one</li>\n<li>two</li>\n</ul>"
    assert to_html("3. three\n4. four").startswith('<ol start="3">')
    assert to_html("# Title") == "<h1>Title</h1>"
    assert to_html("> quoted") == "<blockquote>\n<p>quoted</p>\n</blockquote>"
    assert to_html("first line\nsecond line") == "<p>first line<br>\nsecond line</p>"  # chat lines
    assert to_html("***nested* emphasis**") == "<p><strong><em>nested</em> emphasis</strong></p>"


def test_a_table_loses_only_its_inline_styles():
    html = to_html("| Day | Rain |\n|:---|---:|\n| Mon | 2 mm |")
    tags = [tag for tag, _ in elements(html)]
    assert tags == ["table", "thead", "tr", "th", "th", "tbody", "tr", "td", "td"]
    assert "style" not in html  # the page's CSP forbids inline styles: alignment is dropped
    assert "<td>2 mm</td>" in html


def test_a_code_block_keeps_its_text_exactly():
    html = to_html("```python\nif a < b and c > d:\n    print('&amp;')\n```")
    assert html == "<pre><code>if a &lt; b and c &gt; d:\n    print('&amp;amp;')\n</code></pre>"


def test_links_are_absolute_http_https_or_mailto_and_open_apart_without_the_opener():
    for text, href in [
        ("[site](https://example.org/a?b=1&c=2)", "https://example.org/a?b=1&amp;c=2"),
        ("<http://example.org/auto>", "http://example.org/auto"),
        ("[ref][r]\n\n[r]: https://example.org/ref", "https://example.org/ref"),
        ("[mail](mailto:someone@example.org)", "mailto:someone@example.org"),
    ]:
        assert to_html(text).startswith(f'<p><a href="{href}" target="_blank" rel="noopener noreferrer">'), (
            to_html(text)
        )
    for text in ["[x](/logout)", "[x](//evil.example)", "[x](ftp://example.org)", "[x](file:///etc/passwd)"]:
        html = to_html(text)
        assert "href" not in html, html


def test_only_the_agents_messages_carry_html():
    def message(role: str, text: str) -> Message:
        return Message("id", 1, None, False, role, "Ann", text, "final", None, None, 0.0, 0.0)

    assert message("assistant", "**hi** <img src=x onerror=y>").to_json()["html"] == (
        "<p><strong>hi</strong> &lt;img src=x onerror=y&gt;</p>"
    )
    member = message("user", "**hi** <b>").to_json()
    assert member["html"] is None and member["text"] == "**hi** <b>"  # a member's words: plain text
