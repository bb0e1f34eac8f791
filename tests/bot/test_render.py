"""Tests for bot/render.py: splitting Markdown for Telegram and rendering it as safe HTML.

Rendered HTML is judged by the Bot API stand-in's parser (tests/fakes/telegram_api.py, built on
html.parser and written apart from bot/render.py), not by `is_valid_telegram_html`, the gate the
renderer itself uses: a bug shared by the gate and the renderer would pass its own check."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.render import (
    TELEGRAM_TEXT_LIMIT,
    RenderedPart,
    html_visible_text,
    is_valid_telegram_html,
    markdown_to_html,
    preview_text,
    render_parts,
    split_text,
    utf16_len,
)
from tests.fakes.telegram_api import HtmlParseError, parse_html

# Text that exercises every branch: Markdown markers, HTML specials, astral emoji (2 UTF-16
# units), right-to-left scripts, combining marks, and runs of newlines and fences.
_PIECES = st.sampled_from(
    [
        "a", "word", "x" * 30, " ", "  ", "\t", "\n", "\n\n", "\n\n\n", "```", "```py\n", "\n```\n",
        "`", "**", "*", "_", "__", "~~", "||", "[", "]", "(", ")", "[a](http://e.com/?a=1&b=2)",
        "<", ">", "&", '"', "'", "#", "# ", "- ", "1. ", "> ", "**>", "\\", "&amp;", "&#128512;",
        "<script>", "</span>", "<blockquote>", "😀", "\U0001F468\u200d\U0001F469\u200d\U0001F467",
        "🇺🇦", "שלום", "مرحبا", "é", "e\u0301",
        "中文", "\u200f", "【1】", "\ue000",
    ]
)
markdownish = st.lists(_PIECES, max_size=80).map("".join)
any_text = st.one_of(st.text(max_size=300), markdownish)
fast = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def telegram_shows(html_text: str) -> str:
    """The text Telegram shows for `html_text` with parse_mode=HTML, read by the stand-in's
    parser; the test fails where Telegram would refuse the message ("can't parse entities")."""
    try:
        visible, _entities = parse_html(html_text)
    except HtmlParseError as error:
        pytest.fail(f"Telegram would refuse {html_text!r}: {error}")
    assert html_visible_text(html_text) == visible  # and the renderer counts what Telegram shows
    return visible


# --- utf16_len ------------------------------------------------------------------------------


def test_utf16_len_counts_astral_characters_twice():
    assert utf16_len("") == 0
    assert utf16_len("abc") == 3
    assert utf16_len("😀") == 2
    assert utf16_len("a😀b") == 4
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"  # three emoji joined by two ZWJ
    assert utf16_len(family) == 3 * 2 + 2 * 1


# --- split_text -----------------------------------------------------------------------------


def _check_parts(text: str, parts: list[str], limit: int) -> None:
    assert "".join(parts) == text
    assert all(parts), "no empty parts"
    assert all(utf16_len(part) <= limit for part in parts)


@fast
@given(text=any_text, limit=st.integers(min_value=10, max_value=200))
def test_split_parts_fit_and_join_back(text, limit):
    _check_parts(text, split_text(text, limit_utf16=limit), limit)


@fast
@given(text=any_text, limit=st.integers(min_value=2, max_value=9))
def test_split_works_with_tiny_limits(text, limit):
    _check_parts(text, split_text(text, limit_utf16=limit), limit)


@settings(max_examples=15, deadline=None)
@given(chunk=markdownish.filter(bool), repeat=st.integers(min_value=50, max_value=400))
def test_split_large_inputs_at_the_telegram_limit(chunk, repeat):
    text = chunk * repeat
    _check_parts(text, split_text(text), TELEGRAM_TEXT_LIMIT)


def test_split_empty_text_gives_no_parts():
    assert split_text("") == []
    assert render_parts("") == []


def test_split_text_that_fits_is_one_part():
    assert split_text("hello 😀") == ["hello 😀"]


def test_split_rejects_a_limit_too_small_for_an_astral_character():
    with pytest.raises(ValueError):
        split_text("😀", limit_utf16=1)


def test_split_prefers_paragraph_boundaries():
    paragraphs = [f"Paragraph {n}: " + "lorem ipsum dolor sit amet " * 12 for n in range(30)]
    text = "\n\n".join(paragraphs)
    assert len(text) > 10_000
    parts = split_text(text)
    assert len(parts) > 1
    for part in parts[:-1]:
        assert part.endswith("\n\n")
    for part in parts[1:]:
        assert part.startswith("Paragraph ")
    _check_parts(text, parts, TELEGRAM_TEXT_LIMIT)


def test_split_falls_back_to_lines_then_words_then_hard_cuts():
    lines = "one line\n" * 10
    assert all(part.endswith("\n") for part in split_text(lines, limit_utf16=25)[:-1])
    words = "word " * 20
    assert all(part.endswith(" ") for part in split_text(words, limit_utf16=23)[:-1])
    solid = "x" * 100
    assert split_text(solid, limit_utf16=30) == ["x" * 30] * 3 + ["x" * 10]


def test_split_never_cuts_an_astral_character():
    text = "😀" * 50
    parts = split_text(text, limit_utf16=7)
    _check_parts(text, parts, 7)
    assert parts[0] == "😀" * 3


def test_split_keeps_a_surrogate_pair_stored_as_two_code_points():
    pair = "\ud83d\ude00"  # a surrogate pair as two code points (lenient JSON decoding)
    text = "ab" + pair * 5
    parts = split_text(text, limit_utf16=5)
    _check_parts(text, parts, 5)
    assert not any("\ud800" <= part[-1] <= "\udbff" for part in parts)


def test_split_keeps_a_fitting_code_block_whole():
    code = "```python\n" + "".join(f"print({n})  # line {n}\n" for n in range(100)) + "```\n"
    text = "Intro text. " * 200 + "\n\n" + code + "\nAfter the code. " * 50
    assert len(code) < TELEGRAM_TEXT_LIMIT < len(text)
    parts = split_text(text)
    _check_parts(text, parts, TELEGRAM_TEXT_LIMIT)
    assert any(code in part for part in parts)


def test_split_prefers_a_cut_before_the_fence_to_one_inside_it():
    code = "```\n" + "x = 1\n" * 20 + "```\n"
    text = "a " * 30 + "\n" + code
    first = split_text(text, limit_utf16=100)[0]
    assert first == "a " * 30 + "\n"


def test_split_cuts_a_long_code_block_at_line_boundaries():
    code = "```js\n" + "".join(f"let v{n} = {n};\n" for n in range(1000)) + "```"
    parts = split_text(code, limit_utf16=500)
    _check_parts(code, parts, 500)
    assert all(part.endswith("\n") for part in parts[:-1])


@pytest.mark.timeout(120)
def test_split_is_linear_on_a_megabyte():
    texts = [
        ("word " * 50 + "\n\n") * 4000,  # ~1 MB of paragraphs
        "x" * 1_000_000,  # no boundary at all
        "😀" * 500_000,  # astral: every window must be shrunk
        "```\n" + "code line\n" * 100_000 + "```\n",  # one giant fence
        ("```\n" + "a b\n" * 3 + "```\n") * 50_000,  # many fences, candidates only inside them
        "\n" * 1_000_000,
    ]
    for text in texts:  # linear time: a quadratic split would blow the timeout marker (minutes)
        _check_parts(text, split_text(text), TELEGRAM_TEXT_LIMIT)


# --- is_valid_telegram_html and html_visible_text ---------------------------------------------


@pytest.mark.parametrize(
    "html_text",
    [
        "",
        "plain",
        "<b>bold</b> <strong>s</strong> <i>i</i><em>e</em><u>u</u><ins>i</ins><s>s</s>",
        "<strike>x</strike><del>d</del><tg-spoiler>t</tg-spoiler>",
        '<span class="tg-spoiler">hidden</span>',
        '<a href="https://e.com/?a=1&amp;b=2">link</a>',
        '<pre><code class="language-python">x &lt; 1</code></pre>',
        "<code>inline</code>",
        "<blockquote>q</blockquote><blockquote expandable>long</blockquote>",
        '<tg-emoji emoji-id="5368324170671202286">👍</tg-emoji>',
        "&lt;&gt;&amp;&quot;&#39;&#x1F600;",
        "<b>a <i>b</i> c</b>",
        "<B>upper</B>",
    ],
)
def test_valid_telegram_html(html_text):
    assert is_valid_telegram_html(html_text)
    telegram_shows(html_text)


@pytest.mark.parametrize(
    "html_text",
    [
        "<script>x</script>",
        "<b>unclosed",
        "closed</b>",
        "<b><i>crossed</b></i>",
        "a < b",
        "a > b",
        "a & b",
        "&nbsp;",
        "&#0;",
        "&#xD800;",
        "<span>no class</span>",
        '<span class="other">x</span>',
        "<a>no href</a>",
        '<a href="">empty href</a>',
        '<a href="x" onclick="y">extra</a>',
        '<b class="x">attr</b>',
        '<code class="python">no prefix</code>',
        '<a href="a&b">bad entity in attribute</a>',
        "<br/>",
        "<p>para</p>",
        "</b x>",
    ],
)
def test_invalid_telegram_html(html_text):
    assert not is_valid_telegram_html(html_text)


@pytest.mark.parametrize(
    "html_text",
    [
        "<script>x</script>", "<p>para</p>", "<br/>", "<b>unclosed", "closed</b>", "<b><i>crossed</b></i>",
        "a < b", "a & b", "&nbsp;", "&lt", "&#0;", "&#xD800;", "&#1114112;", "</>",
        "<span>no class</span>", '<span class="other">x</span>', '<a href="a&b">x</a>', "<!-- c -->",
    ],
)
def test_the_stand_in_refuses_what_telegram_refuses(html_text):
    with pytest.raises(HtmlParseError):
        parse_html(html_text)


@pytest.mark.parametrize(
    ("html_text", "visible", "entities"),
    [
        ("a > b", "a > b", []),  # only "<" and "&" are special to Telegram
        ('<b class="x">b</b>', "b", [{"type": "bold", "offset": 0, "length": 1}]),  # unknown attributes ignored
        ("<i>a<b>b</b></i>", "ab", [{"type": "italic", "offset": 0, "length": 2},
                                    {"type": "bold", "offset": 1, "length": 1}]),
        ('<pre><code class="language-py">x</code></pre>', "x",
         [{"type": "pre", "offset": 0, "length": 1, "language": "py"}]),
        ("&lt;&gt;&amp;&quot;&#x1F600;", '<>&"😀', []),
        ("😀<u>x</u>", "😀x", [{"type": "underline", "offset": 2, "length": 1}]),  # offsets in UTF-16 units
    ],
)
def test_the_stand_in_reads_what_telegram_accepts(html_text, visible, entities):
    assert parse_html(html_text) == (visible, entities)


_HTML_PIECES = st.sampled_from(
    ["a", " ", "<b>", "</b>", "<i>", "</i>", "<code>", "</code>", "<pre>", "</pre>", '<a href="u">', "</a>",
     '<span class="tg-spoiler">', "</span>", "<blockquote>", "</blockquote>", "&lt;", "&amp;", "&#65;", "&",
     "<", ">", "<p>", "😀", '"', "&#0;", "</>", "<b", "<B>", "</B>"]
)


@fast
@given(html_text=st.lists(_HTML_PIECES, max_size=30).map("".join))
def test_the_gate_never_passes_what_telegram_refuses(html_text):
    if is_valid_telegram_html(html_text):
        telegram_shows(html_text)


def test_visible_text_strips_tags_and_decodes_entities():
    html_text = '<b>a</b> &lt;x&gt; &amp; <a href="u">l</a> &quot;&#128512;&#x41;'
    assert html_visible_text(html_text) == 'a <x> & l "😀A'


# --- markdown_to_html -------------------------------------------------------------------------


@fast
@given(text=any_text)
def test_markdown_to_html_is_always_valid(text):
    rendered = markdown_to_html(text)
    telegram_shows(rendered)
    assert "PLACEHOLDER" not in rendered or "PLACEHOLDER" in text


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("**bold**", "<b>bold</b>"),
        ("*italic* and _italic_", "<i>italic</i> and <i>italic</i>"),
        ("~~gone~~", "<s>gone</s>"),
        ("use `x < 1`", "use <code>x &lt; 1</code>"),
        ("```py\nprint('hi')\n```", "<pre><code class=\"language-py\">print('hi')\n</code></pre>"),
        ("[docs](https://e.com/?a=1&b=2)", '<a href="https://e.com/?a=1&amp;b=2">docs</a>'),
        ("# Title", "<b>Title</b>"),
        ("- one\n- two", "• one\n• two"),
        ("1. one\n2. two", "1. one\n2. two"),
        ("> quoted", "<blockquote>quoted</blockquote>"),
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
    ],
)
def test_markdown_formatting(markdown, expected):
    assert markdown_to_html(markdown) == expected


@pytest.mark.parametrize(
    "markdown",
    [
        "**unclosed bold",
        "```python\nunclosed fence",
        "`unclosed code",
        "**a _b** c_",  # crossing markers: the library nests these wrongly
        "</span> and <blockquote> typed by a user",
        '[x](http://e.com/a"b)',
        "&amp; &lt; already escaped",
        "_**nested**_ and **_nested_**",
        "[[a][b]](c)",
    ],
)
def test_malformed_markdown_still_gives_valid_html(markdown):
    telegram_shows(markdown_to_html(markdown))


def test_typed_html_is_shown_not_interpreted():
    rendered = markdown_to_html("</span> <blockquote> <b>hi</b>")
    assert rendered == "&lt;/span&gt; &lt;blockquote&gt; &lt;b&gt;hi&lt;/b&gt;"


@pytest.mark.parametrize("markdown", ["_see `code`", "_see\n```py\ncode\n```"])
def test_code_after_a_stray_underscore_is_not_lost(markdown):
    # The library replaces such code with its placeholder name; we must notice and escape.
    rendered = markdown_to_html(markdown)
    assert "code" in telegram_shows(rendered)
    assert "PLACEHOLDER" not in rendered


def test_quote_in_a_link_is_escaped():
    assert markdown_to_html('[x](http://e.com/a"b)') == '<a href="http://e.com/a&quot;b">x</a>'


def test_one_bad_paragraph_keeps_the_others_formatted():
    rendered = markdown_to_html("**fine**\n\n**a _b** c_")
    assert rendered.startswith("<b>fine</b>\n\n")
    telegram_shows(rendered)


@pytest.mark.timeout(60)  # exponential backtracking would take hours, not a timing assertion
def test_bracket_runs_do_not_hang_the_converter():
    for text in ("[[a]" * 40, "[[1, 2], [3, 4]" * 200, "[" * 4000 + "](x)"):
        telegram_shows(markdown_to_html(text))


def test_rendering_never_raises_when_the_library_does(monkeypatch):
    import bot.render as render

    def broken(_text: str) -> str:
        raise RuntimeError("library bug")

    monkeypatch.setattr(render, "telegram_format", broken)
    assert markdown_to_html("**a** < b") == "**a** &lt; b"


# --- render_parts and preview_text ------------------------------------------------------------


@fast
@given(text=any_text, limit=st.integers(min_value=10, max_value=200))
def test_rendered_parts_are_valid_and_fit(text, limit):
    position = 0
    for part in render_parts(text, limit_utf16=limit):
        visible = telegram_shows(part.html)
        assert utf16_len(visible) <= limit
        assert visible.strip()
        assert utf16_len(part.plain) <= limit
        # Plain parts are slices of the text, in order; only blank slices are left out.
        found = text.find(part.plain, position)
        assert found >= 0 and not text[position:found].strip()
        position = found + len(part.plain)
    assert not text[position:].strip()


def test_render_parts_of_a_short_answer():
    assert render_parts("**hi**") == [RenderedPart(html="<b>hi</b>", plain="**hi**")]


def test_code_block_split_in_two_renders_as_code_on_both_sides():
    code = "```python\n" + "".join(f"value_{n} = {n}\n" for n in range(40)) + "```"
    parts = render_parts(code, limit_utf16=300)
    assert len(parts) > 1
    assert "".join(part.plain for part in parts) == code
    for part in parts:
        visible, entities = parse_html(part.html)
        assert entities == [{"type": "pre", "offset": 0, "length": utf16_len(visible), "language": "python"}]


def test_a_blank_slice_of_a_re_split_part_is_dropped():
    # Closing the cut code block adds a visible newline, so the part is split again, finer.
    parts = render_parts("```\n 0000000000", limit_utf16=11)
    assert [part.plain for part in parts] == ["```\n", "0000000000"]
    assert all(utf16_len(telegram_shows(part.html)) <= 11 for part in parts)


def test_a_part_that_grows_when_rendered_is_split_again():
    # A lone trailing backtick makes the library add a second, visible one.
    text = "x" * 9 + "`"
    parts = render_parts(text, limit_utf16=10)
    assert all(utf16_len(telegram_shows(part.html)) <= 10 for part in parts)
    assert "".join(part.plain for part in parts) == text


def test_blank_parts_are_not_sent():
    parts = render_parts("hello" + "\n" * 50 + "world", limit_utf16=20)
    assert [part.plain.strip() for part in parts] == ["hello", "world"]


def test_preview_returns_text_that_fits():
    assert preview_text("short answer") == "short answer"


def test_preview_truncates_with_an_ellipsis():
    text = "first paragraph\n\n" + "word " * 2000
    preview = preview_text(text)
    assert preview.endswith(" …")
    assert utf16_len(preview) <= TELEGRAM_TEXT_LIMIT
    assert text.startswith(preview.removesuffix(" …"))
    assert preview_text("a b c d e f g h", limit_utf16=8) == "a b c …"


@fast
@given(text=any_text, limit=st.integers(min_value=4, max_value=100))
def test_preview_always_fits(text, limit):
    assert utf16_len(preview_text(text, limit_utf16=limit)) <= limit
