"""The answer as it streams in, shared by reference between the LLM stage and a channel."""

from __future__ import annotations


class StreamedText:
    """An answer growing chunk by chunk: `append` is O(1), the text is joined only when read.

    Joining the whole answer per chunk is quadratic (an 8,000-character answer in 4-character
    chunks: 2,000 joins of up to 8,000 characters). A channel reads the text only when it shows a
    preview, so the joins are bounded by the previews, not by the chunks; a read with nothing new
    since the last one joins nothing.
    """

    __slots__ = ("_parts", "joins")

    def __init__(self) -> None:
        self._parts: list[str] = []  # after a read: the text so far as one part, then newer chunks
        self.joins = 0  # how many times the chunks were joined (what the tests bound)

    def append(self, chunk: str) -> None:
        self._parts.append(chunk)

    @property
    def text(self) -> str:
        """The answer so far."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
            self.joins += 1
        return self._parts[0] if self._parts else ""

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:  # not the text: a repr in a log line stays short
        return f"StreamedText({len(self._parts)} parts)"
