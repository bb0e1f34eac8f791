"""Getting bad news to people: the outbox, its delivery loop, and operator alerts.

The outbox is a table of messages still to deliver (operator alerts, and replies that could
not be sent at once), so an alert survives a restart and a Telegram hiccup. `drain_outbox`
delivers what is due, oldest first per chat, backing off on refusals. The `Escalator` turns
an `Escalation` into at most one alert per key per cooldown; the cooldown state lives in
`alert_state`, so a restart loop cannot flood the operator.

`now` strings are ISO-8601 in the gateway's one format (`Clock.iso()`); `iso()` below writes it.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from core.callbacks import dlq_keyboard, status_keyboard
from core.contracts import Escalation
from core.failures.backoff_schedule import ceiling_wait_s
from core.failures.taxonomy import TAXONOMY, GatewayError, Kind
from core.store import Database, bump_counter
from core.store.interfaces import OutboxRow

ALERT_MAX_CHARS = 4000  # Telegram's limit is 4096
OUTBOX_MAX_AGE_S = 7 * 24 * 3600.0  # a message Telegram has refused for a week is given up (marked dead)
_OUTBOX_COLUMNS = ("id, kind, chat_id, text, parse_mode, trace_id, dedupe_key, status, attempts, next_attempt_at,"
                   " last_error, created_at, sent_at, reply_markup")


def iso(moment: datetime) -> str:
    """The stored time format: UTC, milliseconds, `+00:00` (same as Clock.iso())."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _parse_iso(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Outbox:
    """The `outbox` table. Statuses: pending -> sent | dead. At most `max_pending` rows wait;
    beyond that the oldest pending row is dropped (marked dead, counted as `outbox_evicted`)."""

    def __init__(self, db: Database, *, max_pending: int = 1000) -> None:
        self.db = db
        self.max_pending = max_pending

    async def enqueue(self, *, kind: Literal["alert", "reply"], chat_id: int, text: str, trace_id: str | None,
                dedupe_key: str | None, now: str, parse_mode: str | None = None,
                reply_markup: dict[str, Any] | None = None) -> int | None:
        """Queue a message (with inline buttons when `reply_markup`); None when `dedupe_key` was
        queued before (whatever its status)."""
        markup = json.dumps(reply_markup, separators=(",", ":")) if reply_markup else None
        async with self.db.transaction():
            row_id = await self.db.insert_id(
                "INSERT INTO outbox(kind, chat_id, text, parse_mode, trace_id, dedupe_key, status, next_attempt_at,"
                " created_at, reply_markup) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)"
                " ON CONFLICT(dedupe_key) DO NOTHING",
                [kind, chat_id, text, parse_mode, trace_id, dedupe_key, now, now, markup])
            if not row_id:
                return None
            excess = await self.depth() - self.max_pending
            if excess > 0:
                await self.db.execute(
                    "UPDATE outbox SET status = 'dead', last_error = 'evicted: outbox full' WHERE id IN"
                    " (SELECT id FROM outbox WHERE status = 'pending' AND id != ? ORDER BY id LIMIT ?)",
                    [row_id, excess])
                await bump_counter(self.db, "outbox_evicted", excess)
        return row_id

    async def due(self, *, now: str, limit: int = 20) -> list[OutboxRow]:
        """Pending rows whose time has come, in id order. A row waits while an older pending row
        of its chat is still backing off, so a chat's messages never arrive out of order."""
        rows = await self.db.fetchall(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox AS o WHERE status = 'pending' AND next_attempt_at <= ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox AS e WHERE e.chat_id = o.chat_id AND e.status = 'pending'"
            " AND e.id < o.id AND e.next_attempt_at > ?) ORDER BY id LIMIT ?", [now, now, limit])
        return [OutboxRow(*r) for r in rows]

    async def get(self, row_id: int) -> OutboxRow | None:
        row = await self.db.fetchone(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE id = ?", [row_id])
        return OutboxRow(*row) if row else None

    async def mark_sent(self, row_id: int, *, now: str) -> None:
        await self.db.execute("UPDATE outbox SET status = 'sent', sent_at = ?, attempts = attempts + 1 WHERE id = ?",
                        [now, row_id])

    async def mark_retry(self, row_id: int, *, error: str, next_attempt_at: str) -> None:
        await self.db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ?",
                        [error[:500], next_attempt_at, row_id])

    async def mark_dead(self, row_id: int, *, error: str) -> None:
        await self.db.execute("UPDATE outbox SET status = 'dead', attempts = attempts + 1, last_error = ? WHERE id = ?",
                        [error[:500], row_id])

    async def depth(self) -> int:
        return int((await self.db.fetchone("SELECT COUNT(*) FROM outbox WHERE status = 'pending'"))[0])

    async def pending_for(self, chat_id: int) -> list[OutboxRow]:
        rows = await self.db.fetchall(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE status = 'pending' AND chat_id = ?"
                               " ORDER BY id", [chat_id])
        return [OutboxRow(*r) for r in rows]

    async def prune(self, *, before: str) -> int:
        """Delete sent and dead rows created before `before` (their dedupe keys go with them)."""
        return await self.db.execute("DELETE FROM outbox WHERE status IN ('sent', 'dead') AND created_at < ?",
                                     [before])


class DeliveryFailed(Exception):
    """Telegram refused a delivery. `permanent`: never retry this message. `chat_gone`: nothing
    can be delivered to this chat any more (the user blocked the bot, the chat was deleted), so
    the chat is recorded and not written to again until its user writes."""

    def __init__(self, reason: str, *, permanent: bool, retry_after_s: float | None = None,
                 chat_gone: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.permanent, self.retry_after_s = reason, permanent or chat_gone, retry_after_s
        self.chat_gone = chat_gone


class TextSender(Protocol):
    async def send_text(self, chat_id: int, text: str, *, markdown: bool = False) -> None:
        """Deliver text (formatted from Markdown when `markdown`, else plain); raise
        DeliveryFailed when Telegram refuses it. A sender that shows inline buttons also takes
        `reply_markup` (Telegram's JSON); drain_outbox passes it only for rows that have buttons."""
        ...


async def drain_outbox(outbox: Outbox, sender: TextSender, *, now: Callable[[], datetime], limit: int = 20,
                       base_wait_s: float = 2.0, max_wait_s: float = 60.0, max_attempts: int | None = None,
                       max_age_s: float | None = OUTBOX_MAX_AGE_S,
                       chat_gone: Callable[[int], Awaitable[bool]] | None = None,
                       on_chat_gone: Callable[[int, str], Awaitable[None]] | None = None) -> int:
    """Send what is due, in id order; returns how many were sent.

    A temporary refusal schedules the row again (after Telegram's retry_after, else the shared
    backoff schedule's ceiling: base_wait_s * 2**attempts up to max_wait_s) and skips that chat's later rows this round: a
    row is retried until it is delivered (an alert raised during a long Telegram outage still
    arrives), unless it failed for good: a permanent refusal, a failure after `max_age_s` since it
    was queued, or the `max_attempts`-th failure when that is set, mark it dead. A row for a chat
    that `chat_gone(chat_id)` says blocked the bot is marked dead without a call; a refusal saying
    the chat is gone is reported to `on_chat_gone(chat_id, reason)`. An unexpected exception from
    the sender counts as a temporary refusal, so one bad row cannot stop the loop.
    """
    sent = 0
    held_chats: set[int] = set()
    for row in await outbox.due(now=iso(now()), limit=limit):
        if row.chat_id in held_chats:
            continue
        if chat_gone is not None and await chat_gone(row.chat_id):
            await outbox.mark_dead(row.id, error="not sent: the chat blocked the bot")
            continue
        try:
            buttons = {"reply_markup": json.loads(row.reply_markup)} if row.reply_markup else {}
            await sender.send_text(row.chat_id, row.text, markdown=row.kind == "reply", **buttons)  # alerts: plain
        except Exception as error:  # DeliveryFailed, or a bug in the sender: never kill the loop
            failure = error if isinstance(error, DeliveryFailed) else DeliveryFailed(
                f"{type(error).__name__}: {error}", permanent=False)
            if failure.chat_gone and on_chat_gone is not None:
                await on_chat_gone(row.chat_id, failure.reason)
            age_s = (_parse_iso(iso(now())) - _parse_iso(row.created_at)).total_seconds()
            too_old = max_age_s is not None and age_s >= max_age_s
            out_of_attempts = max_attempts is not None and row.attempts + 1 >= max_attempts
            if failure.permanent or too_old or out_of_attempts:
                await outbox.mark_dead(row.id, error=failure.reason)
                continue
            wait_s = failure.retry_after_s
            if wait_s is None:
                # row.attempts counts the failures before this one: this is failure number attempts + 1.
                # No jitter: one loop delivers every row, so there is no herd of clients to spread out.
                wait_s = ceiling_wait_s(attempt=row.attempts + 1, base_wait_s=base_wait_s, max_wait_s=max_wait_s)
            await outbox.mark_retry(row.id, error=failure.reason, next_attempt_at=iso(now() + timedelta(seconds=wait_s)))
            held_chats.add(row.chat_id)
            continue
        await outbox.mark_sent(row.id, now=iso(now()))
        sent += 1
    return sent


def alert_buttons(alert: Escalation) -> dict[str, Any] | None:
    """A dead-lettered turn's alert: Replay, Discard, Trace; the circuit's: Status."""
    if alert.dlq_id is not None:
        return dlq_keyboard(alert.dlq_id, alert.trace_id[:8] if alert.trace_id else None)
    if alert.kind == "circuit_open":
        return status_keyboard()
    return None


def escalation_for(error: GatewayError, *, key: str, trace_id: str | None = None, chat_id: int | None = None,
                   user_id: int | None = None, dlq_id: int | None = None, summary: str | None = None) -> Escalation:
    """An Escalation for a classified failure, with the taxonomy's severity and action."""
    info = error.info
    ref = trace_id[:8] if trace_id else None
    return Escalation(producer="pipeline", key=key[:200], kind=str(error.kind), severity=info.severity,
                      summary=(summary or f"{error.kind}: {error.detail}")[:1000],
                      action=info.action_text(dlq_id=dlq_id, ref=ref), trace_id=trace_id, chat_id=chat_id,
                      user_id=user_id)


def _since(moment: datetime, *, now: datetime) -> str:
    return moment.strftime("%H:%M UTC" if moment.date() == now.date() else "%Y-%m-%d %H:%M UTC")


class Escalator:
    """Operator alerts, one per `Escalation.key` per cooldown, persisted across restarts."""

    def __init__(self, db: Database, outbox: Outbox, *, operator_chat_id: int | None, cooldown_s: float,
                 logger: logging.Logger, repeat_threshold: int = 3, repeat_window_s: float = 600.0,
                 max_tracked_chats: int = 1000) -> None:
        self.db, self.outbox, self.logger = db, outbox, logger
        self.operator_chat_id, self.cooldown_s = operator_chat_id, cooldown_s
        self.repeat_threshold, self.repeat_window_s = repeat_threshold, repeat_window_s
        self.max_tracked_chats = max_tracked_chats
        self._chat_failures: OrderedDict[int, deque[float]] = OrderedDict()

    async def raise_alert(self, alert: Escalation, *, now: datetime) -> bool:
        """Send (or, with no operator chat, log) the alert unless its key is cooling down;
        True when it went out, False when it was suppressed."""
        now = now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)
        async with self.db.transaction():
            state = await self.db.fetchone("SELECT last_sent_at, suppressed FROM alert_state WHERE key = ?",
                                    [alert.key])
            last_sent = datetime.fromisoformat(state[0]) if state else None
            if last_sent is not None and (now - last_sent).total_seconds() < self.cooldown_s:
                await self.db.execute("UPDATE alert_state SET suppressed = suppressed + 1 WHERE key = ?", [alert.key])
                return False
            suppressed = int(state[1]) if state else 0
            text = self._render(alert, now=now, last_sent=last_sent, suppressed=suppressed)
            # The read above only words the alert: this upsert decides. Instances sharing a database
            # may both have read "cooled down"; the row lock makes the second one see the first's
            # time and change nothing, so one alert goes out per key per cooldown.
            claimed = await self.db.execute(
                "INSERT INTO alert_state(key, last_sent_at, suppressed) VALUES (?, ?, 0) ON CONFLICT(key)"
                " DO UPDATE SET last_sent_at = excluded.last_sent_at, suppressed = 0"
                " WHERE alert_state.last_sent_at <= ?",
                [alert.key, iso(now), iso(now - timedelta(seconds=self.cooldown_s))])
            if claimed != 1:
                await self.db.execute("UPDATE alert_state SET suppressed = suppressed + 1 WHERE key = ?", [alert.key])
                return False
            if self.operator_chat_id is None:
                self.logger.error("%s", text, extra={"trace_id": alert.trace_id, "alert_key": alert.key})
                return True
            queued = await self.outbox.enqueue(kind="alert", chat_id=self.operator_chat_id, text=text,
                                         trace_id=alert.trace_id, dedupe_key=f"alert:{alert.key}:{iso(now)}",
                                         now=iso(now), reply_markup=alert_buttons(alert))
        self.logger.info("operator alert queued: %s", alert.key, extra={"trace_id": alert.trace_id})
        return queued is not None

    def _render(self, alert: Escalation, *, now: datetime, last_sent: datetime | None, suppressed: int) -> str:
        """The alert text. `count` covers the current window: with alerts suppressed since the
        last one sent, the window began at that alert; otherwise it begins now."""
        lines = [f"[{alert.severity.upper()}] {alert.summary}", f"kind: {alert.kind}"]
        who = [f"chat: {alert.chat_id}" if alert.chat_id is not None else "",
               f"user: {alert.user_id}" if alert.user_id is not None else ""]
        if any(who):
            lines.append(" ".join(p for p in who if p))
        if suppressed and last_sent is not None:
            lines.append(f"count: {suppressed + 2} since {_since(last_sent, now=now)}")
        else:
            lines.append(f"count: 1 since {_since(now, now=now)}")
        if alert.trace_id:
            lines.append(f"ref: {alert.trace_id[:8]}")
        action = alert.action
        if not action and alert.kind in Kind.__members__:
            action = TAXONOMY[Kind(alert.kind)].action_text(ref=alert.trace_id[:8] if alert.trace_id else None)
        if action:
            lines.append(f"action: {action}")
        if suppressed and last_sent is not None:
            lines.append(f"({suppressed} similar alerts suppressed since {_since(last_sent, now=now)})")
        return "\n".join(lines)[:ALERT_MAX_CHARS]

    def repeated_failure(self, *, chat_id: int, now_s: float) -> bool:
        """Record a failure of `chat_id` at monotonic `now_s`; True when that chat has failed at
        least `repeat_threshold` times within the last `repeat_window_s` seconds."""
        failures = self._chat_failures.pop(chat_id, None) or deque(maxlen=self.repeat_threshold)
        failures.append(now_s)
        self._chat_failures[chat_id] = failures  # most recent last: the oldest is evicted first
        while len(self._chat_failures) > self.max_tracked_chats:
            self._chat_failures.popitem(last=False)
        return len(failures) >= self.repeat_threshold and now_s - failures[0] <= self.repeat_window_s
