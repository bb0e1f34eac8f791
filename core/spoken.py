"""Spoken answers: with /voice on, the answer to a spoken message is also sent as a voice note.

The reply stage calls `speak_answer` once the text answer is delivered (the text comes first).
Only a turn that wants a voice note gets a `speak` span (with the `speech {model}` call in it):
a typed message costs one attribute check, no span and no query. The speech is an extra, so
nothing here fails the turn. A failed or refused speech call is logged, counted (`speech_failed`,
shown in /status) and noted on the span; the user already has the text. The speech is priced by
its characters (the price table's `input_per_mtok` is per million characters for speech models),
written to the usage ledger like an LLM attempt and counted against MONTHLY_BUDGET_USD, which is
checked before the call (an unknown price with a cap set is refused, as for chat models).
"""

from __future__ import annotations

import asyncio
import logging

from opentelemetry import trace

from core.contracts import ReplyEvent, TokenUsage, UsageRecord, build
from core.speech import speech_input
from core.store import bump_counter
from core.turn import Turn
from core.usage import utc_month
from core.usage_caps import check_caps
from core.usage_prices import cost_usd

log = logging.getLogger(__name__)
SPEECH_SENT = "speech_sent"
SPEECH_FAILED = "speech_failed"


async def wanted(turn: Turn) -> bool:
    """The user spoke, the text answer went out, and this chat asked for spoken answers."""
    inbound = turn.inbound
    return (inbound.spoken and turn.delivered and turn.outcome == "replied" and bool(turn.answer.strip())
            and await turn.services.voice_replies.is_on(inbound.chat_id))


async def speak_answer(turn: Turn) -> None:
    """The voice note after the text answer, when wanted; never raises (but cancellation)."""
    if not await wanted(turn):
        return
    with turn.services.tracer.start_as_current_span("speak", record_exception=False,
                                                    set_status_on_exception=False) as span:
        try:
            await _speak(turn)
            await bump_counter(turn.services.db, SPEECH_SENT)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # an extra beside the answer: reported, never the turn's failure
            kind = str(getattr(error, "kind", "") or type(error).__name__)
            span.set_attribute("speech.failed", kind)
            log.warning("spoken answer not sent (ref %s): %s", turn.ref, kind)
            try:
                await bump_counter(turn.services.db, SPEECH_FAILED)
            except Exception:  # noqa: BLE001 - storage trouble is reported by the next write that matters
                log.warning("could not count the failed spoken answer (ref %s)", turn.ref)


async def _speak(turn: Turn) -> None:
    services, inbound = turn.services, turn.inbound
    speaker = services.speaker
    text = speech_input(turn.answer)
    cost = cost_usd(price=services.prices.price_for(speaker.model), input_tokens=len(text), output_tokens=0)
    cap = check_caps(is_operator=services.is_operator_user(inbound.user_id), estimated_tokens=0,
                     estimated_cost_usd=cost, user_tokens_today=0, user_daily_token_cap=0,
                     month_cost_usd=await services.ledger.month_cost_usd(utc_month(services.clock.now())),
                     monthly_cap_usd=services.settings.monthly_budget_usd)
    if not cap.allowed:
        raise SpeechRefused("price unknown" if cap.price_unknown else "monthly cap")
    audio = await speaker.speak(text)
    # Paid for once the provider answered, delivered or not: a ledger row with its characters' price.
    await services.ledger.record(build(
        UsageRecord, "usage_record_valid", "pipeline", at=services.clock.now(), trace_id=inbound.trace_id,
        chat_id=inbound.chat_id, user_id=inbound.user_id, model=speaker.model,
        usage=TokenUsage(input_tokens=0, output_tokens=0, total_tokens=0), cost_usd=cost, wasted=False))
    trace.get_current_span().set_attributes({"speech.chars": len(text), "speech.cost_usd": cost or 0.0})
    await turn.channel.deliver(ReplyEvent(kind="voice", trace_id=inbound.trace_id, chat_id=inbound.chat_id,
                                          reply_to_message_id=inbound.message_id, audio=audio))


class SpeechRefused(Exception):
    """The monthly cap leaves no room for the speech (or its price is unknown with a cap set)."""

    kind = "speech_refused"
