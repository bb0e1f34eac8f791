"""Replies Telegram would not take: kept in the outbox and retried, or the chat recorded as blocked.

Shared by the reply stage (a final answer), failure handling (an error reply) and the bot
(its own notices), so none of them has to import another.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from core.failures.escalation import DeliveryFailed

if TYPE_CHECKING:
    from core.clock import Clock
    from core.failures.escalation import Outbox
    from core.store import Chats

log = logging.getLogger(__name__)


class DeliveryServices(Protocol):
    """The parts of core.services.Services used here (a Protocol: Services is built from this package)."""

    @property
    def outbox(self) -> Outbox: ...
    @property
    def chats(self) -> Chats: ...
    @property
    def clock(self) -> Clock: ...


async def keep_undelivered(services: DeliveryServices, *, chat_id: int, text: str, trace_id: str, failed: DeliveryFailed) -> None:
    """A reply Telegram would not take now goes to the outbox and is retried; a blocked chat is recorded."""
    if failed.chat_gone:
        await record_blocked(services, chat_id, failed.reason)
        return
    if failed.permanent:  # Telegram will never take this text: retrying cannot help
        log.error("reply to chat %s refused for good, not kept: %s", chat_id, failed.reason,
                  extra={"trace_id": trace_id})
        return
    await services.outbox.enqueue(kind="reply", chat_id=chat_id, text=text, trace_id=trace_id,
                            dedupe_key=f"reply:{trace_id}", now=services.clock.iso())


async def record_blocked(services: DeliveryServices, chat_id: int, reason: str) -> None:
    """The chat refuses the bot (blocked, kicked, deleted): nothing is sent to it until its user
    writes again; the outbox drops its rows and the DLQ replay skips it."""
    await services.chats.mark_blocked(chat_id, reason[:200], now=services.clock.iso())
    log.warning("chat %s blocked the bot; not sending to it any more: %s", chat_id, reason)
