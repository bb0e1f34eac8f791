"""`doctor`'s transcription check: the endpoint voice notes go to has `/audio/transcriptions`.

A tiny silent WAV (a tenth of a second) is sent once. A 404 means the provider has no speech
to text: a configuration error (voice notes would fail). Any answer from the endpoint, even
a refusal of the silence (400), shows that it is there.
"""

from __future__ import annotations

import io
import wave
from urllib.parse import urlparse

import openai
from opentelemetry import trace

from config.settings import Settings
from core.failures.llm_errors import classify_llm_error
from core.transcribe import Transcriber

DOCTOR_TIMEOUT_S = 15.0


def silent_wav(seconds: float = 0.1, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x00" * int(rate * seconds))
    return buffer.getvalue()


async def check_transcription(settings: Settings) -> tuple[bool, str, str]:
    """(ok, detail, fix) for TRANSCRIPTION_BASE_URL and TRANSCRIPTION_MODEL (bot/doctor.py reports it)."""
    transcriber = Transcriber.from_settings(settings, tracer=trace.NoOpTracer())
    transcriber.timeout_s = DOCTOR_TIMEOUT_S
    host, model = urlparse(transcriber.base_url).netloc, transcriber.model
    try:
        await transcriber.transcribe(silent_wav(), file_name="doctor.wav")
        return True, f"{host}: {model} transcribed a test sound", ""
    except openai.NotFoundError:
        return (False, f"{host}: no /audio/transcriptions here, or no model {model} (404): voice notes would fail",
                "set TRANSCRIPTION_BASE_URL / TRANSCRIPTION_API_KEY to a provider with speech to text "
                "(OpenAI, Groq, a local faster-whisper server) or fix TRANSCRIPTION_MODEL")
    except openai.BadRequestError:
        return True, f"{host}: /audio/transcriptions answers ({model})", ""
    except Exception as error:  # noqa: BLE001 - reported, never raised
        classified = classify_llm_error(error, secrets=settings.secrets())
        return (False, f"{host}: {classified.kind}: {classified.detail}",
                "check TRANSCRIPTION_BASE_URL and TRANSCRIPTION_API_KEY (default: the LLM's)")
    finally:
        await transcriber.close()
