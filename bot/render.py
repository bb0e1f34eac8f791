"""Turn an LLM's Markdown answer into Telegram messages (pure functions, no I/O).

Markdown -> HTML is ``chatgpt-md-converter``'s ``telegram_format``: made for ChatGPT-style
Markdown and Telegram's tag set (bold, italic, strike, spoiler, code, ``<pre><code
class="language-x">``, links, headings as bold, "•" bullets, blockquotes), it closes an unclosed
fence and escapes ``<>&``. HTML rather than telegramify-markdown's entities because HTML can be
checked here before sending, and each message keeps its raw text as the fallback. Its gaps:
- its link regex backtracks exponentially (``"[[a]" * 25``: minutes), it makes typed ``</span>``
  or ``<blockquote>`` real tags, and leaves ``"`` raw in ``href``: we hide every ``[`` outside a
  plain ``[text](url)``, every ``<`` and ``"`` from it, and put them back escaped;
- crossing markers (``**a _b** c_``) misnest tags, a stray ``_`` before code swaps the code for
  the library's placeholder name, a lone backtick gains a twin: output must pass
  ``is_valid_telegram_html`` and be placeholder-free, else paragraphs are retried one by one
  and a failing one is escaped; ``render_parts`` re-splits a part that grew past the limit;
- it drops ChatGPT citations ``【…】``, keeps numbered lists as typed, and some of its regexes
  are quadratic: call ``markdown_to_html`` on message-sized text, as ``render_parts`` does.
"""

from __future__ import annotations

import html
import re
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import NamedTuple

from chatgpt_md_converter import telegram_format

TELEGRAM_TEXT_LIMIT = 4096
_ELLIPSIS = " …"


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's message limit."""
    # surrogatepass: a lone surrogate (possible after lenient JSON decoding) counts as one unit.
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


# --- fenced code blocks -------------------------------------------------------------------------

# Any indentation: LLMs indent fences inside list items.
_FENCE_LINE_RE = re.compile(r"^[ \t]*(`{3,})([^\n]*)$", re.MULTILINE)


class _Fence(NamedTuple):
    start: int  # start of the opening fence line
    body: int  # just after the opening line
    end: int  # just after the closing line (len(text) when never closed)
    marker: str  # the opening backtick run, used to close a block cut in two


class _Fences:
    """The fenced code blocks of one text, found in one pass; lookups by position."""

    def __init__(self, text: str) -> None:
        self.blocks: list[_Fence] = []
        opening: re.Match[str] | None = None
        for line in [*_FENCE_LINE_RE.finditer(text), None]:  # None: the end of the text
            if opening is None:
                opening = line if line is not None and "`" not in line.group(2) else None
            elif line is None or (
                len(line.group(1)) >= len(opening.group(1)) and not line.group(2).strip()
            ):
                end = len(text) if line is None else min(line.end() + 1, len(text))
                body = min(opening.end() + 1, len(text))
                self.blocks.append(_Fence(opening.start(), body, end, opening.group(1)))
                opening = None
        self._starts = [block.start for block in self.blocks]

    def around(self, position: int) -> _Fence | None:
        """The block a cut at `position` would fall inside (strictly), if any."""
        index = bisect_left(self._starts, position) - 1
        if index >= 0 and position < self.blocks[index].end:
            return self.blocks[index]
        return None


# --- splitting ----------------------------------------------------------------------------------

_PARAGRAPH, _LINE, _WORD = ("\n\n",), ("\n",), (" ", "\t")


def split_text(text: str, *, limit_utf16: int = TELEGRAM_TEXT_LIMIT) -> list[str]:
    """Cut `text` into parts of at most `limit_utf16` units that join back to `text` exactly.

    Each part ends at the last paragraph break (blank line) of its window, else the last line
    break, else the last space, else a hard cut between code points. A cut inside a ``` block
    is avoided when one outside it leaves the part at least half full; otherwise the block is
    cut at a line break. Linear time: each window is searched from its end, a block skipped whole.
    """
    spans = _split_spans(text, 0, len(text), limit_utf16=limit_utf16, fences=_Fences(text))
    return [text[start:end] for start, end in spans]


def _split_spans(
    text: str, start: int, stop: int, *, limit_utf16: int, fences: _Fences
) -> list[tuple[int, int]]:
    if limit_utf16 < 2:
        raise ValueError("limit_utf16 must be at least 2 (an astral character takes 2 units)")
    spans = []
    position = start
    while position < stop:
        end = _window_end(text, position, stop, limit_utf16)
        if end < stop:
            end = _best_cut(text, position, end, fences)
        spans.append((position, end))
        position = end
    return spans


def _window_end(text: str, start: int, stop: int, limit_utf16: int) -> int:
    """The furthest end such that text[start:end] fits; at most limit code points are looked at."""
    end = min(stop, start + limit_utf16)
    units = utf16_len(text[start:end])
    while units > limit_utf16:
        # Dropping n code points removes n..2n units: halve the overshoot without undershooting.
        drop = max(1, (units - limit_utf16) // 2)
        units -= utf16_len(text[end - drop : end])
        end -= drop
    return end


def _best_cut(text: str, start: int, end: int, fences: _Fences) -> int:
    """Where to end the part in the window text[start:end] (see `split_text`)."""
    back_half = start + (end - start) // 2
    passes = (
        (back_half, True, (_PARAGRAPH, _LINE, _WORD)),
        (back_half, False, (_PARAGRAPH, _LINE)),  # inside a long code block, at a line
        (start, True, (_PARAGRAPH, _LINE, _WORD)),
        (start, False, (_PARAGRAPH, _LINE, _WORD)),
    )
    for low, fence_free, levels in passes:
        for separators in levels:
            skip = fences if fence_free else None
            best = max(_last_cut(text, sep, low, end, skip) for sep in separators)
            if best > start:
                return best
    # Hard cut, but not between the halves of a surrogate pair stored as two code points.
    pair = "\ud800" <= text[end - 1] <= "\udbff" and "\udc00" <= text[end] <= "\udfff"
    return end - 1 if pair and end - 1 > start else end


def _last_cut(text: str, separator: str, low: int, high: int, fences: _Fences | None) -> int:
    """The last cut after `separator` in text[low:high], outside code blocks if asked; or -1."""
    while True:
        found = text.rfind(separator, low, high)
        if found < 0:
            return -1
        cut = found + len(separator)
        block = fences.around(cut) if fences is not None else None
        if block is None:
            return cut
        high = block.start  # jump over the whole block: one step per block, not per line


# --- Telegram HTML ------------------------------------------------------------------------------

_ATTR_RE = re.compile(r"""([a-zA-Z][a-zA-Z-]*)(?:=(?:"([^"<>]*)"|'([^'<>]*)'|([^\s"'<>=`]+)))?""")
_TAG_RE = re.compile(rf"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s+{_ATTR_RE.pattern})*)\s*>")
_TAG_SPLIT_RE = re.compile(r"(<[^<>]*>)")
_ENTITY_RE = re.compile(r"&(?:(lt|gt|amp|quot)|#([0-9]{1,7})|#[xX]([0-9a-fA-F]{1,6}));")
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
# Each tag's attributes, with a check of the value (None for a bare flag); then the required ones.
_ATTRIBUTE_CHECKS: dict[str, dict[str, Callable[[str | None], bool]]] = {
    **{tag: {} for tag in ("b", "strong", "i", "em", "u", "ins", "s", "strike", "del")},
    **{tag: {} for tag in ("pre", "tg-spoiler")},
    "a": {"href": bool},
    "span": {"class": lambda value: value == "tg-spoiler"},
    "code": {"class": lambda value: (value or "").startswith("language-")},
    "blockquote": {"expandable": lambda value: value is None},
    "tg-emoji": {"emoji-id": lambda value: (value or "").isdigit()},
}
_REQUIRED_ATTRIBUTE = {"a": "href", "span": "class", "tg-emoji": "emoji-id"}


def _entity_char(match: re.Match[str]) -> str | None:
    named, decimal, hexadecimal = match.groups()
    if named:
        return _NAMED_ENTITIES[named]
    code = int(decimal) if decimal else int(hexadecimal, 16)
    if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
        return chr(code)
    return None


def _ampersands_ok(text: str) -> bool:
    """Every "&" starts an entity Telegram knows (entities never overlap, one "&" each)."""
    entities = list(_ENTITY_RE.finditer(text))
    return len(entities) == text.count("&") and all(map(_entity_char, entities))


def _attributes_ok(tag: str, raw_attributes: str) -> bool:
    checks = _ATTRIBUTE_CHECKS.get(tag)
    if checks is None:
        return False
    seen: set[str] = set()
    for attribute in _ATTR_RE.finditer(raw_attributes):
        name = attribute.group(1).lower()
        value = next((group for group in attribute.groups()[1:] if group is not None), None)
        if name not in checks or name in seen or not checks[name](value):
            return False
        if value is not None and not _ampersands_ok(value):
            return False
        seen.add(name)
    required = _REQUIRED_ATTRIBUTE.get(tag)
    return required is None or required in seen


def is_valid_telegram_html(html_text: str) -> bool:
    """Whether Telegram's HTML parse mode accepts `html_text`: known tags and attributes,
    properly nested and closed, ``<`` ``>`` ``&`` escaped, only entities Telegram knows.
    Which entity may contain which (say code inside a link) is left to Telegram, which
    resolves that itself instead of refusing the message."""
    open_tags: list[str] = []
    for index, piece in enumerate(_TAG_SPLIT_RE.split(html_text)):
        if index % 2 == 0:  # text between tags
            if "<" in piece or ">" in piece or not _ampersands_ok(piece):
                return False
            continue
        tag = _TAG_RE.fullmatch(piece)
        if tag is None:
            return False
        closing, name, attributes = tag.group(1), tag.group(2).lower(), tag.group(3)
        if closing:
            if attributes or not open_tags or open_tags.pop() != name:
                return False
        elif not _attributes_ok(name, attributes):
            return False
        else:
            open_tags.append(name)
    return not open_tags


def html_visible_text(html_text: str) -> str:
    """The text Telegram shows (and counts) for `html_text`: tags removed, entities decoded."""
    without_tags = _TAG_SPLIT_RE.sub("", html_text)
    return _ENTITY_RE.sub(lambda match: _entity_char(match) or match.group(), without_tags)


# --- Markdown -> HTML ---------------------------------------------------------------------------

# A link the library may keep (group 1): its own pattern minus nested brackets, which are what
# make it backtrack; any other "[" is hidden from it.
_BRACKET_RE = re.compile(r"(!?\[[^\[\]]*\]\([^)\s\[\]]+\))|\[")
_PLACEHOLDERS = ("CODEBLOCKPLACEHOLDER_", "INLINECODEPLACEHOLDER_")  # the library's own


def _unused_chars(text: str, count: int) -> list[str]:
    """Private-use characters absent from `text`, to hide characters from the library."""
    used = set(text)
    return list(islice((c for c in map(chr, range(0xF0000, 0x110000)) if c not in used), count))


def _library_html(text: str) -> str | None:
    """The library's HTML for `text`, or None when it raises or its output is not valid."""
    try:
        less, quote, bracket = _unused_chars(text, 3)
        hidden = _BRACKET_RE.sub(lambda match: match.group(1) or bracket, text)
        converted = telegram_format(hidden.replace("<", less).replace('"', quote))
    except Exception:  # third-party code on arbitrary model output: any failure means "escape"
        return None
    converted = converted.replace(less, "&lt;").replace(quote, "&quot;").replace(bracket, "[")
    # A stray "_" before code can eat a placeholder's last "_": the code is lost, the name shows.
    leaked = any(name in converted and name not in text for name in _PLACEHOLDERS)
    return None if leaked or not is_valid_telegram_html(converted) else converted


def markdown_to_html(text: str) -> str:
    """Telegram-safe HTML for Markdown `text`; always passes `is_valid_telegram_html`."""
    converted = _library_html(text)
    if converted is not None:
        return converted
    # One stray marker should not cost the whole answer its formatting: retry per paragraph.
    fences = _Fences(text)
    pieces: list[str] = []
    block_start = 0
    for gap in re.finditer(r"\n{2,}", text):
        # Judged by the gap's end: a gap that starts on a closing fence line still ends outside.
        if fences.around(gap.end()) is None and gap.start() > block_start:
            pieces.append(_block_html(text[block_start : gap.start()]) + gap.group())
            block_start = gap.end()
    if block_start == 0:
        return html.escape(text, quote=False)
    pieces.append(_block_html(text[block_start:]))
    return "".join(pieces)


def _block_html(block: str) -> str:
    converted = _library_html(block)
    return html.escape(block, quote=False) if converted is None else converted


# --- messages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedPart:
    """One message: `html` for parse_mode=HTML, `plain` (the raw Markdown slice) as the fallback."""

    html: str
    plain: str


def render_parts(markdown: str, *, limit_utf16: int = TELEGRAM_TEXT_LIMIT) -> list[RenderedPart]:
    """Split `markdown` into message-sized parts and render each; blank parts are left out."""
    fences = _Fences(markdown)
    spans = _split_spans(markdown, 0, len(markdown), limit_utf16=limit_utf16, fences=fences)
    parts: list[RenderedPart] = []
    for start, end in spans:
        parts += _render_span(
            markdown, start, end, limit_utf16=limit_utf16, fences=fences, retries=3
        )
    return parts


def _render_span(
    text: str, start: int, end: int, *, limit_utf16: int, fences: _Fences, retries: int
) -> list[RenderedPart]:
    plain = text[start:end]
    if not plain.strip():
        return []  # Telegram refuses a blank message
    rendered = markdown_to_html(_self_contained(text, start, end, fences))
    visible = html_visible_text(rendered)
    if not visible.strip():
        rendered = html.escape(plain, quote=False)  # e.g. a lone fence line renders empty
    elif utf16_len(visible) > limit_utf16:
        # Rendering added characters (a closing backtick): cut this slice finer, then give up.
        smaller = utf16_len(plain) - (utf16_len(visible) - limit_utf16)
        if retries and smaller >= 2:
            spans = _split_spans(text, start, end, limit_utf16=smaller, fences=fences)
            retry = partial(_render_span, text, limit_utf16=limit_utf16, fences=fences)
            return [part for span in spans for part in retry(*span, retries=retries - 1)]
        rendered = html.escape(plain, quote=False)
    return [RenderedPart(html=rendered, plain=plain)]


def _self_contained(text: str, start: int, end: int, fences: _Fences) -> str:
    """text[start:end], with a code block cut at either edge re-opened or closed."""
    markdown = text[start:end]
    opened = fences.around(start)
    if opened is not None and start >= opened.body:
        markdown = text[opened.start : opened.body] + markdown
    unclosed = fences.around(end)
    if unclosed is not None and end >= unclosed.body:
        markdown += ("" if markdown.endswith("\n") else "\n") + unclosed.marker
    return markdown


def preview_text(markdown: str, *, limit_utf16: int = TELEGRAM_TEXT_LIMIT) -> str:
    """A streaming preview: `markdown` if it fits, else its first part followed by " …"."""
    if len(markdown) <= limit_utf16 and utf16_len(markdown) <= limit_utf16:
        return markdown
    room = limit_utf16 - utf16_len(_ELLIPSIS)
    if room < 2:
        raise ValueError("limit_utf16 must be at least 4 to leave room for the ellipsis")
    # The first part only depends on the first `room` code points (plus one to see the cut).
    head = split_text(markdown[: room + 1], limit_utf16=room)[0]
    return head.rstrip() + _ELLIPSIS
