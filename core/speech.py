"""Spoken answers: the `Speaker` port on an OpenAI-compatible `POST {base}/audio/speech`.

The openai SDK's public `client.audio.speech.create` with `response_format="opus"` (what Telegram
plays as a voice note), on the LLM's endpoint and key. One attempt, no retries: a spoken answer is
an extra beside the text the user already has, so a failure is reported, not retried. Each call
is one client span, `speech {model}`, made current so the request carries the turn's traceparent.
"""

from __future__ import annotations

import asyncio

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from core.openai_client import openai_client
from core.tracing import traceparent_headers

# OpenAI's `/audio/speech` takes at most 4096 characters of input; a longer answer is read up to there.
MAX_SPEECH_CHARS = 4096


def speech_input(text: str) -> str:
    """What is read aloud (and priced): the answer, cut at MAX_SPEECH_CHARS on a word boundary."""
    text = text.strip()
    if len(text) <= MAX_SPEECH_CHARS:
        return text
    cut = text[:MAX_SPEECH_CHARS]
    return cut.rsplit(None, 1)[0] if " " in cut else cut


class OpenAICompatibleSpeaker:
    """Text to Opus audio through `/audio/speech` (OpenAI; other providers vary)."""

    def __init__(self, *, base_url: str, api_key: str | None, model: str, voice: str, timeout_s: float,
                 tracer: trace.Tracer, provider_name: str = "openai") -> None:
        self.model = model
        self.voice = voice
        self.timeout_s = timeout_s
        self.tracer = tracer
        self.provider_name = provider_name
        self.client = openai_client(base_url=base_url, api_key=api_key, timeout_s=timeout_s)

    async def close(self) -> None:
        await self.client.close()

    async def speak(self, text: str) -> bytes:
        attributes = {"gen_ai.operation.name": "speech", "gen_ai.provider.name": self.provider_name,
                      "gen_ai.request.model": self.model, "speech.voice": self.voice, "speech.chars": len(text)}
        with self.tracer.start_as_current_span(f"speech {self.model}", kind=trace.SpanKind.CLIENT,
                                               attributes=attributes) as span:
            try:
                async with asyncio.timeout(self.timeout_s):
                    response = await self.client.audio.speech.create(
                        model=self.model, voice=self.voice, input=text, response_format="opus",
                        extra_headers=traceparent_headers())
                audio = response.content
            except BaseException as error:
                span.set_attribute("error.type", type(error).__name__)
                status_code = getattr(error, "status_code", None)  # openai.APIStatusError
                if isinstance(status_code, int):
                    span.set_attribute("http.response.status_code", status_code)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                raise
            span.set_attribute("speech.audio_bytes", len(audio))
            return audio
