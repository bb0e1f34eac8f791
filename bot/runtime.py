"""The running gateway: journal, trace and route each update; resume crashed turns; drain
the outbox; replay dead letters.

Journal first, then work: an update is written to the inbox journal (keyed by update_id)
before anything else, so a redelivery is dropped and a crash mid-turn is resumed at start.
Journaling happens when the update enters PTB's update queue (`JournalingQueue.put`): the
poller only confirms an update to Telegram (the next getUpdates offset) after putting it
there, and the webhook answers 200 only after it, so an update is never acknowledged
before it is on disk. Journaled updates are marked `pre_accepted` for the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from datetime import timedelta
from typing import TYPE_CHECKING

from opentelemetry import trace
from telegram import Bot, InputFile, Update
from telegram.error import NetworkError

from bot.channel import TelegramChannel
from bot.commands import BY_NAME, CommandContext, Reply, may_use
from bot.handlers import (
    Parsed,
    Routed,
    is_telegram_id,
    journal_raw,
    parse_update,
    route,
    to_inbound,
    update_ids,
)
from bot.storage_alarm import StorageAlarm
from core import failpoints
from core.contracts import ContractViolation, ReplyEvent
from core.failures.escalation import drain_outbox
from core.failures.taxonomy import is_storage_failure
from core.failures.undelivered import record_blocked
from core.pipeline import Pipeline
from core.ports import DeliveryFailed
from core.services import Services
from core.tracing import current_trace_id, new_turn_span, short_ref
from core.turn import refusal_text

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)
OUTBOX_POLL_S = 1.0
MAINTAIN_EVERY_S = 3600.0
KEEP_FINISHED_DAYS = 7
REPLAY_PACE_S = 1.0
AUTO_REPLAY_ROUNDS = 5
OUTBOX_BASE_WAIT_S = 2.0  # first retry of a refused delivery; doubles per attempt ...
OUTBOX_MAX_WAIT_S = 60.0  # ... up to this (both scaled by RETRY_WAIT_SCALE in tests)
RECOVER_LIMIT = 1000


class Runtime:
    """Everything the Telegram side needs while the bot runs."""

    def __init__(self, services: Services, bot: Bot) -> None:
        self.services = services
        self.pipeline = Pipeline(services)
        self.bot = bot
        self.channel = TelegramChannel(bot, tracer=services.tracer)
        self.pre_accepted: set[int] = set()
        self.bot_id = 0
        self.bot_username = ""
        self._background: set[asyncio.Task] = set()
        self._maintained_at = float("-inf")
        self._replaying = False
        self._replay_wanted = False
        self.in_flight: set[int] = set()
        self.storage_alarm = StorageAlarm(self)
        services.on_storage_failure = self.storage_alarm.note
        services.on_circuit_closed = self.schedule_auto_replay
        services.on_llm_success = self._provider_answered

    def set_identity(self, bot_id: int, username: str) -> None:
        self.bot_id, self.bot_username = bot_id, username

    # Intake ------------------------------------------------------------------------
    def accept(self, update: Update) -> bool:
        """Journal an update before anything else; False for a duplicate (already journaled)."""
        chat_id, user_id = update_ids(update)
        failpoints.hit("journal.before")
        accepted = self.services.journal.accept(update_id=update.update_id, chat_id=chat_id, user_id=user_id,
                                                kind="update", raw=journal_raw(update), trace_id=None,
                                                now=self.services.clock.iso())
        if accepted:
            self.pre_accepted.add(update.update_id)
            failpoints.hit("journal.after")
        return accepted

    async def process_raw(self, data: object) -> str:
        """One raw update body (what the webhook receives): parse, journal, process; never raises.

        Returns the outcome: `rejected` (not an update: nothing to key it by, nothing kept),
        `malformed` (kept in the journal as failed, with why), `duplicate`, `ignored` (the journal
        says why), or the turn's own outcome (`replied`, `failed`, `dlq`, `refused`, ...)."""
        parsed = parse_update(data, self.bot)
        if parsed.update is None:
            return self.record_unparsable(parsed)
        update = parsed.update
        try:
            if not self.accept(update):
                return "duplicate"
            return await self.process_update(update)
        except asyncio.CancelledError:
            raise
        except Exception as failure:  # noqa: BLE001 - process_update ends its own failures; a last resort
            log.exception("update %s failed at intake", update.update_id)
            with contextlib.suppress(Exception):
                self.services.journal.mark(update.update_id, "failed", now=self.services.clock.iso(),
                                           error=f"{type(failure).__name__} at intake"[:500])
            return "error"

    def record_unparsable(self, parsed: Parsed) -> str:
        """A body that is not a usable update: kept in the journal (failed) when it has an id."""
        if parsed.update_id is None:
            log.warning("rejected a body that is not a Telegram update: %s", parsed.problem)
            return "rejected"
        log.warning("update %s is malformed: %s", parsed.update_id, parsed.problem)
        journal, now = self.services.journal, self.services.clock.iso()
        try:
            if not journal.accept(update_id=parsed.update_id, chat_id=None, user_id=None, kind="update",
                                  raw=parsed.data or {"update_id": parsed.update_id}, trace_id=None, now=now):
                return "duplicate"
            journal.mark(parsed.update_id, "failed", now=now, error=parsed.problem[:500])
        except Exception:  # noqa: BLE001 - a body we cannot even store is rejected, loudly
            log.exception("could not journal malformed update %s", parsed.update_id)
            return "rejected"
        return "malformed"

    async def process_update(self, update: Update) -> str:
        """Journal (unless already), trace, route and run one update; returns its outcome.

        Never raises: whatever breaks before the pipeline takes over (a span, routing, storage)
        still ends with the journal row marked failed and, where there is a chat, a reply with a
        ref, so an update can neither vanish nor crash every later start as a poison row. A storage
        failure is the exception: the row stays unfinished and runs again once storage takes
        writes (bot/storage_alarm.py)."""
        self.in_flight.add(update.update_id)
        try:
            return await self._process_update(update)
        except Exception as failure:  # noqa: BLE001 - the last line of defence for one update
            if is_storage_failure(failure):  # the row stays unfinished: it runs again once storage works
                log.error("update %s deferred: storage refused a write (%s)", update.update_id, failure)
                self.storage_alarm.failed(update, failure)
                return "deferred"
            log.exception("update %s failed before or after its turn", getattr(update, "update_id", "?"))
            chat_id, _ = update_ids(update)
            with contextlib.suppress(Exception):
                self.services.journal.mark(update.update_id, "failed", now=self.services.clock.iso(),
                                           error=f"{type(failure).__name__}: {failure}"[:500])
            if chat_id is not None:
                await self._safe_notice(chat_id, "0" * 32, "Sorry, something went wrong on my side; your "
                                        f"message (update {update.update_id}) is kept for the operator.")
            return "error"
        finally:
            self.in_flight.discard(update.update_id)

    async def _process_update(self, update: Update) -> str:
        services = self.services
        chat_id, user_id = update_ids(update)
        attributes = {"update.id": update.update_id}
        if chat_id is not None:
            attributes["chat.id"] = chat_id
        with new_turn_span(services.tracer, "turn", attributes) as root:
            trace_id = current_trace_id() or "0" * 32
            with services.tracer.start_as_current_span("receive") as span:
                if update.update_id in self.pre_accepted:
                    self.pre_accepted.discard(update.update_id)
                elif not services.journal.accept(update_id=update.update_id, chat_id=chat_id, user_id=user_id,
                                                  kind="update", raw=journal_raw(update), trace_id=trace_id,
                                                  now=services.clock.iso()):
                    span.set_attribute("update.duplicate", True)
                    root.set_attribute("turn.outcome", "duplicate")
                    return "duplicate"
                routed = route(update, bot_id=self.bot_id, bot_username=self.bot_username)
                span.set_attributes({"update.kind": routed.kind, "update.reason": routed.reason})
            if routed.kind == "ignored":
                self.note_membership(update)
                services.journal.mark(update.update_id, "ignored", now=services.clock.iso(), error=routed.reason,
                                      trace_id=trace_id)
                root.set_attribute("turn.outcome", "ignored")
                return "ignored"
            services.journal.mark(update.update_id, "processing", now=services.clock.iso(), trace_id=trace_id)
            state, error, outcome = "failed", None, "error"
            try:
                if chat_id is not None and services.chats.is_blocked(chat_id):
                    services.chats.unblock(chat_id, now=services.clock.iso())  # they wrote again: unblocked
                if routed.kind == "command":
                    outcome = await self.run_command(routed, update, trace_id)
                else:
                    outcome = await self.run_message(update, trace_id)
                state = "replied" if outcome not in ("failed", "dlq") else "failed"
                if outcome == "throttled":  # at most one notice per burst: the journal must not say "replied"
                    state, error = "ignored", "throttled"
                root.set_attribute("turn.outcome", outcome)
            except Exception as failure:  # the pipeline ends its own failures; this is a last resort
                error = f"{type(failure).__name__}: {failure}"[:500]
                log.exception("update %s failed outside the pipeline", update.update_id)
                root.set_status(trace.Status(trace.StatusCode.ERROR, type(failure).__name__))
                if chat_id is not None:
                    await self._safe_notice(chat_id, trace_id, "Sorry, something went wrong on my side. "
                                            f"The operator can look it up.\n\nref: {short_ref(trace_id)}")
            failpoints.hit("reply.after")
            if outcome == "deferred":  # unfinished on purpose: resumed once storage takes writes
                return outcome
            services.journal.mark(update.update_id, state, now=services.clock.iso(), error=error)
            return outcome

    def note_membership(self, update: Update) -> None:
        """Telegram tells the bot when a user blocks it (or a group removes it): record it, so that
        nothing more is sent there (no replays, no kept replies) until someone writes again."""
        change = update.my_chat_member
        if change is None:
            return
        chat_id = getattr(getattr(change, "chat", None), "id", None)
        status = getattr(getattr(change, "new_chat_member", None), "status", None)
        if not is_telegram_id(chat_id):  # PTB does not check types: a junk update must not break intake
            return
        if status in ("kicked", "left"):
            record_blocked(self.services, chat_id, f"my_chat_member: {status}")
        elif self.services.chats.is_blocked(chat_id):
            self.services.chats.unblock(chat_id, now=self.services.clock.iso())
            log.info("chat %s unblocked the bot", chat_id)

    async def run_message(self, update: Update, trace_id: str) -> str:
        services = self.services
        try:
            inbound = to_inbound(update, trace_id=trace_id, bot_username=self.bot_username,
                                 received_at=services.clock.now())
        except ContractViolation as violation:
            # A message Telegram sent but we cannot represent: fail fast, tell the user, keep the
            # raw update in the journal (marked failed with the violation) so nothing is lost.
            log.warning("malformed update %s: %s", update.update_id, violation)
            trace.get_current_span().set_attribute("error.type", "contract_violation")
            services.journal.mark(update.update_id, "failed", now=services.clock.iso(),
                                  error=f"contract violation [{violation.invariant}] field={violation.field}: "
                                        f"{violation.detail}"[:500])
            chat_id, _ = update_ids(update)
            if chat_id is not None:
                await self._safe_notice(chat_id, trace_id, "Sorry, I could not read that message "
                                        f"({violation.invariant}).\n\nref: {short_ref(trace_id)}")
            return "failed"
        return await self.pipeline.run_turn(inbound, self.channel)

    async def run_command(self, routed: Routed, update: Update, trace_id: str) -> str:
        services = self.services
        message = update.message
        assert message is not None and message.from_user is not None
        chat_id, user = message.chat.id, message.from_user
        command = BY_NAME.get(routed.command)
        span = trace.get_current_span()
        span.set_attribute("command.name", routed.command[:32])
        allowed = services.is_allowed(user.id)
        if command is None:
            reply = Reply(f"I don't know /{routed.command[:32]}. /help lists the commands.")
        elif not may_use(command, allowed=allowed, operator_chat=services.is_operator_chat(chat_id)):
            span.set_attribute("auth.allowed", False)
            reply = Reply("That command is for the operator only." if command.access == "operator"
                          else refusal_text(user.id))
        else:
            with services.tracer.start_as_current_span(f"command {command.name}"):
                ctx = CommandContext(runtime=self, chat_id=chat_id, user_id=user.id,
                                     user_name=user.first_name or user.username or "", args=routed.args,
                                     trace_id=trace_id)
                reply = await command.run(ctx)
        await self.send_reply(chat_id, trace_id, reply, reply_to=message.message_id)
        return "replied"

    async def send_reply(self, chat_id: int, trace_id: str, reply: Reply, *, reply_to: int | None = None) -> None:
        with self.services.tracer.start_as_current_span("send"):
            try:
                if reply.text:
                    await self.channel.deliver(ReplyEvent(kind="notice", trace_id=trace_id, chat_id=chat_id,
                                                          text=reply.text, reply_to_message_id=reply_to))
                if reply.document is not None:
                    name, data = reply.document
                    await self.bot.send_document(chat_id, InputFile(data, filename=name))
                if reply.photo is not None:
                    await self.bot.send_photo(chat_id, InputFile(reply.photo, filename="chart.png"))
            except DeliveryFailed as failed:
                log.warning("command reply to %s not delivered: %s", chat_id, failed.reason)
            except Exception as error:  # noqa: BLE001 - a document/photo failure must not fail the turn
                log.warning("command attachment to %s not delivered: %s", chat_id, error)

    async def _safe_notice(self, chat_id: int, trace_id: str, text: str) -> None:
        with contextlib.suppress(Exception):
            await self.channel.deliver(ReplyEvent(kind="error", trace_id=trace_id, chat_id=chat_id, text=text))

    def log_unhandled(self, update: object, error: BaseException | None) -> None:
        log.error("unhandled error for update %s", getattr(update, "update_id", "?"), exc_info=error)

    # Start-up and background work ---------------------------------------------------
    def recover(self) -> list[Update]:
        """Updates a crash (or a storage failure) left in received/processing, except those queued
        or running now: processed again (documented at-least-once)."""
        updates = []
        busy = self.pre_accepted | self.in_flight
        for entry in self.services.journal.unfinished(limit=RECOVER_LIMIT):
            if entry.update_id in busy:
                continue
            try:
                update = Update.de_json(entry.raw, self.bot)
            except Exception as error:  # noqa: BLE001 - a row we cannot parse is marked, not retried forever
                self.services.journal.mark(entry.update_id, "failed", now=self.services.clock.iso(),
                                           error=f"unparsable on recovery: {type(error).__name__}")
                continue
            self.pre_accepted.add(entry.update_id)
            updates.append(update)
        if updates:
            log.info("resuming %d update(s) left unfinished by the previous run", len(updates))
        return updates

    def spawn(self, coro) -> asyncio.Task:  # noqa: ANN001
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def outbox_loop(self, stop: asyncio.Event) -> None:
        """Deliver alerts and kept replies, retrying until Telegram takes them; and, once a
        second, see whether the dead-letter queue is due a replay (see `replay_if_due`)."""
        services = self.services
        scale = max(services.settings.retry_wait_scale, 0.05)
        first = True
        while not stop.is_set():
            try:
                if self.storage_alarm.probe():  # while storage refuses writes, nothing below can work
                    await drain_outbox(services.outbox, self.channel, now=services.clock.now,
                                       base_wait_s=OUTBOX_BASE_WAIT_S * scale, max_wait_s=OUTBOX_MAX_WAIT_S * scale,
                                       chat_gone=services.chats.is_blocked,
                                       on_chat_gone=lambda chat_id, reason: record_blocked(services, chat_id, reason))
                    self.replay_if_due(at_start=first)
                    self.maintain()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("outbox round failed")
            first = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), OUTBOX_POLL_S)

    def maintain(self) -> None:
        """Hourly: drop finished journal and outbox rows older than KEEP_FINISHED_DAYS. Telegram
        redelivers for at most a day, so a week of update ids is ample for deduplication, and
        gateway.db stays bounded however long the bot runs."""
        now = self.services.clock.monotonic()
        if now - self._maintained_at < MAINTAIN_EVERY_S:
            return
        self._maintained_at = now
        before = (self.services.clock.now() - timedelta(days=KEEP_FINISHED_DAYS)).isoformat(timespec="milliseconds")
        journal = self.services.journal.prune(before=before)
        outbox = self.services.outbox.prune(before=before)
        if journal or outbox:
            log.info("pruned %d journal and %d outbox rows older than %d days", journal, outbox, KEEP_FINISHED_DAYS)

    def replay_if_due(self, *, at_start: bool = False) -> None:
        """Start the automatic replay of outage entries when it is due without a user's help:
        at start (entries a restart left behind), when a circuit's reset time has passed (the
        oldest entry's replay is the half-open probe: the circuit closes without waiting for
        traffic), or when a circuit closed while a replay was already running."""
        services = self.services
        if not services.settings.dlq_auto_replay or self._replaying:
            return
        now_s = services.clock.monotonic()
        probe_due = any(b.state == "open" and b.snapshot(now_s=now_s).retry_in_s == 0 for b in services.breakers.all())
        if not (at_start or probe_due or self._replay_wanted):
            return
        if self._replayable_entries(limit=1):
            self.schedule_auto_replay()
        else:
            self._replay_wanted = False

    def _provider_answered(self) -> None:
        """An LLM call succeeded: outage entries left by failures that did not open the circuit
        can be answered now (checked by the next `replay_if_due`, not on the turn's path)."""
        if self.services.settings.dlq_auto_replay:
            self._replay_wanted = True

    def _replayable_entries(self, *, limit: int) -> list:
        """Outage entries, oldest first, of chats that have not blocked the bot."""
        chats = self.services.chats
        rows = self.services.dlq.replayable_outage_entries(limit=limit + 100)
        return [r for r in rows if r.chat_id is None or not chats.is_blocked(r.chat_id)][:limit]

    async def replay(self, dlq_id: int) -> str:
        """Run a DLQ entry again through the whole pipeline, as a new turn; idempotent."""
        services = self.services
        pending = services.dlq.get(dlq_id)
        if pending is not None and pending.status == "pending" and pending.chat_id is not None \
                and services.chats.is_blocked(pending.chat_id):
            return (f"#{dlq_id} not replayed: chat {pending.chat_id} blocked the bot. It stays pending "
                    f"until they write again; /discard {dlq_id} drops it.")
        row = services.dlq.claim_for_replay(dlq_id, now=services.clock.iso())
        if row is None:
            existing = services.dlq.get(dlq_id)
            return f"#{dlq_id} is not pending ({existing.status})." if existing else f"No DLQ entry {dlq_id}."
        with new_turn_span(services.tracer, "turn", {"replay.dlq_id": dlq_id, "replay.of": row.trace_id}):
            trace_id = current_trace_id() or "0" * 32
            inbound = row.inbound.model_copy(update={"trace_id": trace_id})
            late = row.first_failed_at[11:16] + " UTC" if len(row.first_failed_at) >= 16 else row.first_failed_at
            outcome = await self.pipeline.run_turn(inbound, self.channel, late_of=late, replay_dlq_id=dlq_id)
        ok = outcome == "replied"
        services.dlq.finish_replay(dlq_id, ok=ok, trace_id=trace_id, now=services.clock.iso(),
                                   error=None if ok else outcome)
        return f"#{dlq_id} replayed: answer delivered (ref: {short_ref(trace_id)})." if ok else \
            f"#{dlq_id} failed again ({outcome}, ref: {short_ref(trace_id)}); it stays pending."

    async def replay_all(self, *, outage_only: bool = False) -> list[str]:
        services = self.services
        rows = self._replayable_entries(limit=100) if outage_only else services.dlq.list("pending", limit=100)
        results = []
        for index, row in enumerate(sorted(rows, key=lambda r: r.id)):
            if index:
                await asyncio.sleep(REPLAY_PACE_S * services.settings.retry_wait_scale)
            result = await self.replay(row.id)
            results.append(result)
            if "failed again" in result and outage_only and not self._circuit_closed():
                break  # the provider is down again: stop, the breaker will tell us when it is back
        return results

    def _circuit_closed(self) -> bool:
        """A replay that failed on a one-off fault (circuit still closed) should not stop the rest."""
        settings = self.services.settings
        return self.services.breakers.get(settings.llm_base_url, settings.llm_model).state == "closed"

    def schedule_auto_replay(self) -> None:
        """Replay outage entries in the background, one run at a time (DLQ_AUTO_REPLAY). A
        circuit that closes during a run is remembered and gets a run of its own after it."""
        if not self.services.settings.dlq_auto_replay:
            return
        if self._replaying:
            self._replay_wanted = True
            return
        self._replaying, self._replay_wanted = True, False  # set now: two calls never start two runs

        async def run() -> None:
            replayed = 0
            try:
                await asyncio.sleep(0)  # let the turn that closed the circuit finish first
                for _ in range(AUTO_REPLAY_ROUNDS):  # a round also takes entries that failed meanwhile
                    results = await self.replay_all(outage_only=True)
                    replayed += sum("answer delivered" in r for r in results)
                    if not results or (any("failed again" in r for r in results) and not self._circuit_closed()):
                        break
                if replayed:
                    log.info("auto-replayed %d DLQ entries after recovery", replayed)
            finally:
                self._replaying = False

        self.spawn(run())

    async def wait_background(self, timeout_s: float) -> None:
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout_s)



class JournalingQueue(asyncio.Queue):
    """PTB's update queue, journaling each update as it is put (before Telegram is told)."""

    def __init__(self) -> None:
        super().__init__()
        self.runtime: Runtime | None = None

    def put_nowait(self, item) -> None:  # noqa: ANN001 - PTB also puts control objects
        # asyncio.Queue.put() ends in put_nowait(), so this one override covers both.
        if self._admit(item):
            super().put_nowait(item)

    def put_recovered(self, update: Update) -> None:
        """An update already journaled by a previous run: processed again without a new row."""
        assert self.runtime is not None
        self.runtime.pre_accepted.add(update.update_id)
        super().put_nowait(update)

    def _admit(self, item) -> bool:  # noqa: ANN001
        if self.runtime is None or not isinstance(item, Update):
            return True
        try:
            accepted = self.runtime.accept(item)
        except sqlite3.Error as error:
            # Not journaled, so not acknowledged: PTB's poller retries getUpdates with the same
            # offset (Telegram redelivers), the webhook answers 503 (Telegram retries).
            log.error("cannot journal update %s (%s); it will be redelivered", item.update_id, error)
            self.runtime.storage_alarm.failed(item, error)
            raise NetworkError(f"journal unavailable: {error}") from None
        self.runtime.storage_alarm.recovered()
        return accepted
