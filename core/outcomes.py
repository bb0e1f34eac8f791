"""How a failed turn ends: the same way every time.

The error is classified through the taxonomy; the user gets a short reply ending with the
turn's `ref`; the inbound message goes to the dead-letter queue when the kind says so; the
usage of the turn is marked wasted; and the operator is alerted when the kind, a repeat, a
DLQ landing or an expensive failure calls for it (deduplicated by the escalator).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from opentelemetry import trace

from core.contracts import ContractViolation, DlqEntry, Escalation
from core.failures.taxonomy import GatewayError, Kind, classify_llm_error
from core.ports import DeliveryFailed
from core.tracing import short_ref

if TYPE_CHECKING:
    from core.pipeline import Outcome, Turn
    from core.services import Services

log = logging.getLogger(__name__)
# A failed turn that already spent this many tokens is worth an alert of its own.
EXPENSIVE_FAILURE_TOKENS = 20_000


class TurnEnded(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A stage ended the turn on purpose (refusal, throttle, notice); the reply was sent."""


class NoticeError(GatewayError):
    """A failure with a specific message for the user (a spend cap, a prompt that cannot fit)."""

    def __init__(self, kind: Kind, user_text: str, detail: str = "") -> None:
        super().__init__(kind, detail or user_text)
        self.user_text = user_text


def to_gateway_error(error: BaseException) -> GatewayError:
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, ContractViolation) and error.producer != "llm":
        return GatewayError(Kind.contract_violation, str(error))
    return classify_llm_error(error)


def user_reply(error: GatewayError, *, ref: str, dlq_id: int | None, auto_replay: bool) -> str:
    text = getattr(error, "user_text", None) or error.user_message
    if dlq_id is not None and error.info.outage and auto_replay:
        text += " I kept your message and will answer it automatically when the service is back."
    return f"{text}\n\nref: {ref}"


async def fail_turn(turn: Turn, error: BaseException) -> Outcome:
    """End a failed turn: reply with a ref, DLQ when the kind says so, escalate, never raise."""
    services, inbound = turn.services, turn.inbound
    gateway_error = to_gateway_error(error)
    info = gateway_error.info
    span = trace.get_current_span()
    with services.tracer.start_as_current_span("failure") as failure_span:
        failure_span.set_attributes({"error.type": str(gateway_error.kind), "failure.severity": info.severity,
                                     "failure.detail": gateway_error.detail[:300]})
        if gateway_error.kind == Kind.internal:
            log.error("internal error in turn %s", turn.ref, exc_info=error)
        else:
            log.warning("turn failed: %s", gateway_error)
        span.set_attribute("error.type", str(gateway_error.kind))
        now = services.clock.now()
        if gateway_error.kind not in (Kind.budget_exhausted, Kind.throttled):
            services.last_error = {"kind": str(gateway_error.kind), "ref": turn.ref, "at": now.isoformat()}
        spent = mark_turn_wasted(services, inbound.trace_id)
        dlq_id = None
        if info.dlq and turn.replay_dlq_id is None:
            attempts = [a._asdict() if hasattr(a, "_asdict") else dict(a) for a in gateway_error.attempts]
            dlq_id = services.dlq.add(
                DlqEntry(trace_id=inbound.trace_id, chat_id=inbound.chat_id, user_id=inbound.user_id,
                         inbound=inbound, error_kind=str(gateway_error.kind),
                         error_message=gateway_error.detail[:2000] or str(gateway_error.kind),
                         replayable=info.outage),
                attempts=attempts, now=services.clock.iso(), update_id=inbound.update_id)
            failure_span.set_attribute("dlq.id", dlq_id)
        reply = user_reply(gateway_error, ref=turn.ref, dlq_id=dlq_id,
                           auto_replay=services.settings.dlq_auto_replay)
        try:
            await turn.send("error", reply)
        except DeliveryFailed as failed:
            keep_undelivered(services, chat_id=inbound.chat_id, text=reply, trace_id=inbound.trace_id,
                             failed=failed)
        escalate_failure(services, turn, gateway_error, dlq_id=dlq_id, spent_tokens=spent)
    if gateway_error.kind in (Kind.budget_exhausted, Kind.context_too_large):
        return "notice"
    return "dlq" if dlq_id is not None else "failed"


def mark_turn_wasted(services: Services, trace_id: str) -> int:
    """Every attempt of a failed turn was wasted spend; returns the tokens it used."""
    services.db.execute("UPDATE usage SET wasted = 1 WHERE trace_id = ?", [trace_id])
    row = services.db.execute("SELECT COALESCE(SUM(total_tokens), 0) FROM usage WHERE trace_id = ?",
                              [trace_id]).fetchone()
    return int(row[0])


def keep_undelivered(services: Services, *, chat_id: int, text: str, trace_id: str, failed: DeliveryFailed) -> None:
    """A reply Telegram would not take now goes to the outbox and is retried; a blocked chat is recorded."""
    now = services.clock.iso()
    if failed.permanent:
        services.chats.mark_blocked(chat_id, failed.reason, now=now)
        log.warning("chat %s blocked the bot; not sending: %s", chat_id, failed.reason)
        return
    services.outbox.enqueue(kind="reply", chat_id=chat_id, text=text, trace_id=trace_id,
                            dedupe_key=f"reply:{trace_id}", now=now)


def escalate_failure(services: Services, turn: Turn, error: GatewayError, *, dlq_id: int | None,
                     spent_tokens: int) -> None:
    inbound, info = turn.inbound, error.info
    now = services.clock.now()
    common = {"producer": "pipeline", "trace_id": inbound.trace_id, "chat_id": inbound.chat_id,
              "user_id": inbound.user_id}
    alerts: list[Escalation] = []
    if info.escalates == "now":
        what = ("The LLM provider refused the request" if str(error.kind).startswith("llm_")
                else "A turn failed inside the gateway")
        alerts.append(Escalation(key=str(error.kind), kind=str(error.kind),
                                 severity=info.severity if info.severity != "info" else "warning",
                                 summary=f"{what}: {error.detail[:200] or error.kind}",
                                 action=info.action_text(dlq_id=dlq_id, ref=turn.ref), **common))
    elif dlq_id is not None:
        alerts.append(Escalation(key=f"dlq:{error.kind}", kind=str(error.kind), severity=info.severity
                                 if info.severity != "info" else "warning",
                                 summary=f"A message went to the dead-letter queue ({error.kind}).",
                                 action=info.action_text(dlq_id=dlq_id, ref=turn.ref) or f"/replay {dlq_id}",
                                 **common))
    if info.severity in ("error", "critical") and services.escalator.repeated_failure(
            chat_id=inbound.chat_id, now_s=services.clock.monotonic()):
        alerts.append(Escalation(key=f"chat:{inbound.chat_id}", kind="repeated_failure", severity="error",
                                 summary=f"Chat {inbound.chat_id} keeps failing (last: {error.kind}).",
                                 action="check /dlq and the trace of the ref", **common))
    if spent_tokens >= EXPENSIVE_FAILURE_TOKENS:
        alerts.append(Escalation(key="expensive_failure", kind="expensive_failure", severity="warning",
                                 summary=f"A failed turn had already spent {spent_tokens:,} tokens.",
                                 action=f"python -m bot trace {short_ref(inbound.trace_id)}", **common))
    for alert in alerts:
        services.escalator.raise_alert(alert, now=now)
