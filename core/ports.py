"""The ports core talks through. The Telegram layer, the console and the tests implement them.

`core` never imports `telegram`: a channel turns `ReplyEvent`s into whatever the outside
world shows (edited Telegram messages, terminal lines, a list in a test).
"""

from __future__ import annotations

from typing import Protocol

from core.contracts import AgentRequest, LLMResult, ReplyEvent
from core.failures.escalation import DeliveryFailed, TextSender

__all__ = ["LLM", "Channel", "DeliveryFailed", "DeltaSink", "Speaker", "TextSender"]


class Channel(Protocol):
    """Where a turn's replies go, and where its attachments come from."""

    async def deliver(self, event: ReplyEvent) -> None:
        """Show a typing action, a streamed draft, the final answer or a notice. Raises DeliveryFailed."""
        ...

    async def download(self, file_id: str, *, max_bytes: int) -> bytes:
        """Fetch an attachment's bytes, refusing anything over max_bytes."""
        ...


class DeltaSink(Protocol):
    """Takes each new piece of a streamed answer. Pieces, not the text so far: rejoining the whole
    answer per chunk is quadratic in its length (the LLM stage keeps them in a StreamedText)."""

    async def __call__(self, delta: str) -> None: ...


class LLM(Protocol):
    """An OpenAI-compatible chat completion, streamed; returns the validated result."""

    model: str

    async def complete(self, request: AgentRequest, *, on_delta: DeltaSink | None = None) -> LLMResult: ...


class Speaker(Protocol):
    """Text to speech (OpenAI-compatible `/audio/speech`): an answer read aloud, as Opus bytes."""

    model: str

    async def speak(self, text: str) -> bytes: ...
