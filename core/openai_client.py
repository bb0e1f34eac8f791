"""How the gateway builds a client for an OpenAI-compatible endpoint: chat, transcription,
speech and `doctor`'s probes all go through `openai_client`, so they agree on the rules."""

from __future__ import annotations

from openai import AsyncOpenAI


def openai_client(*, base_url: str, api_key: str | None, timeout_s: float) -> AsyncOpenAI:
    """An AsyncOpenAI for `base_url`. Retries are the gateway's own (bounded, classified, behind
    the breaker), never the SDK's hidden ones; a keyless local server (Ollama, a faster-whisper
    server) gets a placeholder key, because the SDK refuses to start without one."""
    return AsyncOpenAI(base_url=base_url, api_key=api_key or "not-needed", max_retries=0, timeout=timeout_s)
