"""Speech to text is priced per minute of sound (config/prices.json `audio_per_minute`).

A transcription writes a usage row like a chat attempt: its cost counts against
MONTHLY_BUDGET_USD, and its tokens (the transcript's) against the user's daily token budget.
A model missing from the table has an unknown cost (None), as for chat models.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from core.contracts import TokenUsage, UsageRecord, build


@cache
def audio_prices() -> dict[str, float]:
    """Model name (lower case) -> USD per minute, from the shipped price table."""
    data = json.loads(resources.files("config").joinpath("prices.json").read_text(encoding="utf-8"))
    prices = {name.lower(): float(price) for name, price in data.get("audio_per_minute", {}).items()
              if not name.startswith("_")}
    if any(price < 0 for price in prices.values()):
        raise ValueError("prices: audio_per_minute has a negative price")
    return prices


def transcription_cost_usd(model: str, seconds: int) -> float | None:
    """Dollars for `seconds` of sound (a started second counts, at least one), None when unknown."""
    name, prices = model.strip().lower(), audio_prices()
    for candidate in (name, name.rsplit("/", 1)[-1]):  # "groq/whisper-large-v3" -> "whisper-large-v3"
        if candidate in prices:
            return max(seconds, 1) / 60 * prices[candidate]
    return None


def transcription_record(*, at, trace_id: str, chat_id: int, user_id: int, model: str, seconds: int,  # noqa: ANN001
                         transcript_tokens: int) -> UsageRecord:
    """The usage row of one transcription (the transcript's tokens as its output)."""
    usage = TokenUsage(input_tokens=0, output_tokens=transcript_tokens, total_tokens=transcript_tokens)
    return build(UsageRecord, "usage_record_valid", "pipeline", at=at, trace_id=trace_id, chat_id=chat_id,
                 user_id=user_id, model=model, usage=usage, cost_usd=transcription_cost_usd(model, seconds),
                 wasted=False)
