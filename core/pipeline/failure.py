"""failure: how a failed turn ends, the same way every time.

The error is classified through the taxonomy; the user gets a short reply ending with the
turn's `ref`; the inbound message goes to the dead-letter queue when the kind says so; the
usage of the turn is marked wasted; and the operator is alerted when the kind, a repeat, a
DLQ landing or an expensive failure calls for it (deduplicated by the escalator).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from opentelemetry import trace

from core.contracts import DlqEntry, Escalation, build
from core.failures.classify import to_gateway_error
from core.failures.taxonomy import GatewayError, Kind
from core.failures.undelivered import keep_undelivered, record_blocked
from core.ports import DeliveryFailed
from core.tracing import short_ref
from core.turn import Outcome, Turn

if TYPE_CHECKING:
    from core.services import Services

log = logging.getLogger(__name__)
# A failed turn that already spent this many tokens is worth an alert of its own.
EXPENSIVE_FAILURE_TOKENS = 20_000


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
        spent = await services.ledger.mark_wasted(inbound.trace_id)
        dlq_id = None
        if info.dlq and turn.replay_dlq_id is None:
            attempts = [a._asdict() if hasattr(a, "_asdict") else dict(a) for a in gateway_error.attempts]
            dlq_id = await services.dlq.add(
                build(DlqEntry, "dlq_entry_valid", "pipeline", trace_id=inbound.trace_id, chat_id=inbound.chat_id,
                      user_id=inbound.user_id, inbound=inbound, error_kind=str(gateway_error.kind),
                      error_message=gateway_error.detail[:2000] or str(gateway_error.kind),
                      replayable=info.outage),
                attempts=attempts, now=services.clock.iso(), update_id=inbound.update_id)
            failure_span.set_attribute("dlq.id", dlq_id)
        elif turn.replay_dlq_id is not None:
            await services.dlq.record_replay_error(turn.replay_dlq_id, error_kind=str(gateway_error.kind),
                                             error_message=gateway_error.detail[:2000] or str(gateway_error.kind),
                                             replayable=info.outage, now=services.clock.iso())
        # A replay that fails again and stays in the DLQ is reported to the operator (who ran it,
        # or by the auto replay stopping), not to the user, who was told when the message first
        # failed. Delivery kinds have nothing to tell: Telegram did not take a message.
        told_before = turn.replay_dlq_id is not None and info.dlq
        if not told_before and (gateway_error.user_message or getattr(gateway_error, "user_text", None)):
            reply = user_reply(gateway_error, ref=turn.ref, dlq_id=dlq_id,
                               auto_replay=services.settings.dlq_auto_replay)
            await _send_error_reply(turn, reply)
        elif gateway_error.kind == Kind.tg_blocked:
            await record_blocked(services, inbound.chat_id, gateway_error.detail)
        await escalate_failure(services, turn, gateway_error, dlq_id=dlq_id, spent_tokens=spent)
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
        await _send_error_reply(turn, user_reply(error, ref=turn.ref, dlq_id=None, auto_replay=False),
                                keep=False)
    return "deferred"


async def _send_error_reply(turn: Turn, text: str, *, keep: bool = True) -> None:
    """Tell the user, never raising: the failure is still recorded and escalated after this, and a
    second error (the pipeline failing in its failure handling) would reach nobody useful.
    `keep`: an error reply Telegram will not take now goes to the outbox (not when storage is down)."""
    services, inbound = turn.services, turn.inbound
    try:
        await turn.send("error", text)
    except DeliveryFailed as failed:
        if keep:
            await keep_undelivered(services, chat_id=inbound.chat_id, text=text, trace_id=inbound.trace_id, failed=failed)
        else:
            log.warning("error reply to chat %s not delivered: %s", inbound.chat_id, failed.reason)
    except Exception as error:  # a channel bug: logged with its traceback, the turn still ends cleanly
        log.error("error reply to chat %s failed in the channel (%s)", inbound.chat_id, type(error).__name__,
                  exc_info=error)
        trace.get_current_span().set_attribute("failure.reply_error", type(error).__name__)


def alert_action(error: GatewayError, *, entry_id: int | None, ref: str, chat_type: str) -> str:
    """The operator's action for a failed turn; a DLQ entry's always says how to retry it. A console
    turn's entry is replayed from the terminal: /replay refuses it (core/replay.py)."""
    action = error.info.action_text(dlq_id=entry_id, ref=ref)
    if entry_id is None:
        return action
    replay = f"python -m bot dlq replay {entry_id}" if chat_type == "console" else f"/replay {entry_id}"
    if chat_type == "console":  # the taxonomy's own "/replay {dlq_id}" too
        action = action.replace(f"/replay {entry_id}", replay)
    if replay in action:
        return action
    return f"{action}; {replay} to retry it now" if action and action != "none" else replay


async def escalate_failure(services: Services, turn: Turn, error: GatewayError, *, dlq_id: int | None,
                     spent_tokens: int) -> None:
    inbound, info = turn.inbound, error.info
    now = services.clock.now()
    common = {"producer": "pipeline", "trace_id": inbound.trace_id, "chat_id": inbound.chat_id,
              "user_id": inbound.user_id}
    alerts: list[Escalation] = []
    entry_id = dlq_id if dlq_id is not None else turn.replay_dlq_id  # a failed replay: the same entry
    action = alert_action(error, entry_id=entry_id, ref=turn.ref, chat_type=inbound.chat_type)
    severity = info.severity if info.severity != "info" else "warning"
    if info.escalates == "now":
        what = ("The LLM provider refused the request" if str(error.kind).startswith("llm_")
                else "A turn failed inside the gateway")
        alerts.append(Escalation(key=str(error.kind), kind=str(error.kind), severity=severity,
                                 summary=f"{what}: {error.detail[:200] or error.kind}", action=action,
                                 dlq_id=entry_id, **common))
    elif dlq_id is not None and info.escalates != "never":
        # Never-escalating kinds (the circuit is open: its own alert said so once) stay in /dlq.
        alerts.append(Escalation(key=f"dlq:{error.kind}", kind=str(error.kind), severity=severity,
                                 summary=f"A message went to the dead-letter queue ({error.kind}).",
                                 action=action, dlq_id=entry_id, **common))
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
        await services.escalator.raise_alert(alert, now=now)
