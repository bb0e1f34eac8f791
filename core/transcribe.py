"""Speech to text: a voice note's sound becomes the user's message.

`Transcriber` calls the OpenAI-compatible `POST {base}/audio/transcriptions` (multipart `file`,
`model`) through the openai SDK, one attempt per call, in its own span (`transcribe {model}`).
`transcribe_with_retry` runs it as chat calls run: behind a circuit breaker for the endpoint and
model, retried by the one retry policy, failures mapped by the same taxonomy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from opentelemetry import trace

from core.failures.llm_errors import classify_llm_error
from core.failures.retry import call_with_retry
from core.failures.taxonomy import GatewayError, Kind
from core.openai_client import openai_client

if TYPE_CHECKING:
    from config.settings import Settings
    from core.failures.breaker import BreakerRegistry
    from core.failures.retry import RetryPolicy

log = logging.getLogger(__name__)


class Transcriber:
    """One endpoint and model for speech to text (TRANSCRIPTION_* settings; default: the LLM's)."""

    def __init__(self, *, base_url: str, api_key: str | None, model: str, timeout_s: float,
                 tracer: trace.Tracer) -> None:
        self.base_url, self.model, self.timeout_s, self.tracer = base_url, model, timeout_s, tracer
        self.client = openai_client(base_url=base_url, api_key=api_key, timeout_s=timeout_s)

    @classmethod
    def from_settings(cls, settings: Settings, tracer: trace.Tracer) -> Transcriber:
        key = settings.transcription_api_key or settings.llm_api_key
        return cls(base_url=settings.transcription_base_url or settings.llm_base_url,
                   api_key=key.get_secret_value() if key is not None else None,
                   model=settings.transcription_model, timeout_s=settings.llm_timeout_seconds, tracer=tracer)

    async def close(self) -> None:
        await self.client.close()

    async def transcribe(self, data: bytes, *, file_name: str) -> str:
        """The words in `data` (one attempt); raises what the SDK raises."""
        with self.tracer.start_as_current_span(f"transcribe {self.model}") as span:
            span.set_attributes({"gen_ai.operation.name": "transcribe", "gen_ai.request.model": self.model,
                                 "audio.bytes": len(data)})
            async with asyncio.timeout(self.timeout_s):
                result = await self.client.audio.transcriptions.create(model=self.model, file=(file_name, data))
            text = " ".join(str(getattr(result, "text", "") or "").split())
            span.set_attribute("transcript.chars", len(text))
            return text


async def transcribe_with_retry(transcriber: Transcriber, data: bytes, *, file_name: str,
                                breakers: BreakerRegistry, policy: RetryPolicy, secrets: list[str],
                                monotonic: Callable[[], float]) -> str:
    """`transcriber.transcribe` behind its breaker, retried like a chat call; raises GatewayError."""
    breaker = breakers.get(transcriber.base_url, transcriber.model)
    now = monotonic  # the gateway's clock

    def classify(error: BaseException) -> GatewayError:
        return classify_llm_error(error, secrets=secrets)

    async def attempt(number: int, _shrink: bool) -> str:
        if not breaker.allow(now_s=now()):
            raise GatewayError(Kind.circuit_open, f"circuit {breaker.name} is open")
        try:
            text = await transcriber.transcribe(data, file_name=file_name)
        except asyncio.CancelledError:
            breaker.record_neutral()
            raise
        except Exception as error:
            classified = classify(error)
            if classified.kind == Kind.llm_malformed or classified.info.outage:
                breaker.record_failure(now_s=now())
            else:
                breaker.record_neutral()
            raise classified from error
        breaker.record_success(now_s=now())
        return text

    def on_retry(number: int, error: GatewayError, wait_s: float) -> None:
        trace.get_current_span().add_event("retry", {"retry.attempt": number, "error.type": str(error.kind),
                                                     "retry.wait_s": wait_s})
        log.info("retrying transcription after %s (attempt %d, waiting %.2fs)", error.kind, number, wait_s)

    return await call_with_retry(attempt, policy=policy, classify=classify, on_retry=on_retry)
