"""Speech to text is priced per minute of sound, from config/prices.json."""

from __future__ import annotations

import pytest

from core.usage_audio import audio_prices, transcription_cost_usd


def test_whisper_is_priced_per_minute_and_a_started_second_counts() -> None:
    assert transcription_cost_usd("whisper-1", 60) == pytest.approx(0.006)
    assert transcription_cost_usd("whisper-1", 0) == pytest.approx(0.006 / 60)  # at least one second
    assert transcription_cost_usd("Groq/whisper-large-v3", 3600) == pytest.approx(0.111, rel=1e-3)


def test_an_unknown_model_has_an_unknown_cost() -> None:
    assert transcription_cost_usd("my-local-whisper", 60) is None
    assert all(price >= 0 for price in audio_prices().values())
