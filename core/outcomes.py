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
    if isinstance(error, DeliveryFailed):  # a notice Telegram would not take: a delivery failure, not a bug
        kind = Kind.tg_blocked if error.chat_gone else Kind.tg_flood if error.retry_after_s is not None \
            else Kind.tg_network
        return GatewayError(kind, error.reason)
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
        if gateway_error.kind == Kind.storage_unavailable:  # nothing below could be written
            return await _defer_for_storage(turn, gateway_error)
        spent = services.ledger.mark_wasted(inbound.trace_id)
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
        elif turn.replay_dlq_id is not None:
            services.dlq.record_replay_error(turn.replay_dlq_id, error_kind=str(gateway_error.kind),
                                             error_message=gateway_error.detail[:2000] or str(gateway_error.kind),
                                             replayable=info.outage, now=services.clock.iso())
        # A replay that fails again and stays in the DLQ is reported to the operator (who ran it,
        # or by the auto replay stopping), not to the user, who was told when the message first
        # failed. Delivery kinds have nothing to tell: Telegram did not take a message.
        told_before = turn.replay_dlq_id is not None and info.dlq
        if not told_before and (gateway_error.user_message or getattr(gateway_error, "user_text", None)):
            reply = user_reply(gateway_error, ref=turn.ref, dlq_id=dlq_id,
                               auto_replay=services.settings.dlq_auto_replay)
            try:
                await turn.send("error", reply)
            except DeliveryFailed as failed:
                keep_undelivered(services, chat_id=inbound.chat_id, text=reply, trace_id=inbound.trace_id,
                                 failed=failed)
        elif gateway_error.kind == Kind.tg_blocked:
            record_blocked(services, inbound.chat_id, gateway_error.detail)
        escalate_failure(services, turn, gateway_error, dlq_id=dlq_id, spent_tokens=spent)
    if gateway_error.kind in (Kind.budget_exhausted, Kind.context_too_large):
        return "notice"
    return "dlq" if dlq_id is not None else "failed"


async def _defer_for_storage(turn: Turn, error: GatewayError) -> Outcome:
    """Storage refused a write: nothing more is written (the DLQ, the usage ledger and the
    outbox would fail the same way). The journal row stays unfinished, so the message runs again
    once storage takes writes (or at the next start); the user is told so once, with the ref;
    the runtime's storage alarm tells the operator directly."""
    services = turn.services
    notify = services.on_storage_failure
    if notify is None or notify(turn.inbound.update_id, error.detail):
        try:
            await turn.send("error", user_reply(error, ref=turn.ref, dlq_id=None, auto_replay=False))
        except DeliveryFailed as failed:
            log.warning("storage notice to chat %s not delivered: %s", turn.inbound.chat_id, failed.reason)
    return "deferred"


def keep_undelivered(services: Services, *, chat_id: int, text: str, trace_id: str, failed: DeliveryFailed) -> None:
    """A reply Telegram would not take now goes to the outbox and is retried; a blocked chat is recorded."""
    if failed.chat_gone:
        record_blocked(services, chat_id, failed.reason)
        return
    if failed.permanent:  # Telegram will never take this text: retrying cannot help
        log.error("reply to chat %s refused for good, not kept: %s", chat_id, failed.reason,
                  extra={"trace_id": trace_id})
        return
    services.outbox.enqueue(kind="reply", chat_id=chat_id, text=text, trace_id=trace_id,
                            dedupe_key=f"reply:{trace_id}", now=services.clock.iso())


def record_blocked(services: Services, chat_id: int, reason: str) -> None:
    """The chat refuses the bot (blocked, kicked, deleted): nothing is sent to it until its user
    writes again; the outbox drops its rows and the DLQ replay skips it."""
    services.chats.mark_blocked(chat_id, reason[:200], now=services.clock.iso())
    log.warning("chat %s blocked the bot; not sending to it any more: %s", chat_id, reason)


def escalate_failure(services: Services, turn: Turn, error: GatewayError, *, dlq_id: int | None,
                     spent_tokens: int) -> None:
    inbound, info = turn.inbound, error.info
    now = services.clock.now()
    common = {"producer": "pipeline", "trace_id": inbound.trace_id, "chat_id": inbound.chat_id,
              "user_id": inbound.user_id}
    alerts: list[Escalation] = []
    entry_id = dlq_id if dlq_id is not None else turn.replay_dlq_id  # a failed replay: the same entry
    action = info.action_text(dlq_id=entry_id, ref=turn.ref)
    if entry_id is not None and f"/replay {entry_id}" not in action:  # every DLQ alert says how to retry
        action = f"{action}; /replay {entry_id} to retry it now" if action and action != "none" \
            else f"/replay {entry_id}"
    severity = info.severity if info.severity != "info" else "warning"
    if info.escalates == "now":
        what = ("The LLM provider refused the request" if str(error.kind).startswith("llm_")
                else "A turn failed inside the gateway")
        alerts.append(Escalation(key=str(error.kind), kind=str(error.kind), severity=severity,
                                 summary=f"{what}: {error.detail[:200] or error.kind}", action=action, **common))
    elif dlq_id is not None and info.escalates != "never":
        # Never-escalating kinds (the circuit is open: its own alert said so once) stay in /dlq.
        alerts.append(Escalation(key=f"dlq:{error.kind}", kind=str(error.kind), severity=severity,
                                 summary=f"A message went to the dead-letter queue ({error.kind}).",
                                 action=action, **common))
    # A provider outage fails every chat alike and has the circuit's alert; this one is for a chat
    # that keeps failing on its own.
    if info.severity in ("error", "critical") and not info.outage and services.escalator.repeated_failure(
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
