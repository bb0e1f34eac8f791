"""The running gateway: journal, trace and route each update; resume crashed turns; drain
the outbox; replay dead letters.

Journal first, then work: an update is written to the inbox journal (keyed by update_id)
before anything else, so a redelivery is dropped and a crash mid-turn is resumed at start.
In webhook mode the HTTP handler journals before answering 200 (Telegram redelivers until
then) and marks the update `pre_accepted` so the handler does not see it as a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from opentelemetry import trace
from telegram import Bot, InputFile, Update

from bot.channel import TelegramChannel, to_delivery_failed
from bot.commands import BY_NAME, CommandContext, Reply, may_use
from bot.handlers import Routed, route, to_inbound, update_ids
from core.contracts import ContractViolation, ReplyEvent
from core.failures.escalation import drain_outbox
from core.pipeline import Pipeline, refusal_text
from core.ports import DeliveryFailed
from core.services import Services
from core.tracing import current_trace_id, new_turn_span, short_ref

if TYPE_CHECKING:
    from telegram.error import TelegramError

log = logging.getLogger(__name__)
OUTBOX_POLL_S = 1.0
REPLAY_PACE_S = 1.0
RECOVER_LIMIT = 1000


class Runtime:
    """Everything the Telegram side needs while the bot runs."""

    def __init__(self, services: Services, bot: Bot) -> None:
        self.services = services
        self.pipeline = Pipeline(services)
        self.bot = bot
        self.channel = TelegramChannel(bot)
        self.pre_accepted: set[int] = set()
        self.bot_id = 0
        self.bot_username = ""
        self._background: set[asyncio.Task] = set()
        self._replaying = False
        services.on_circuit_closed = self.schedule_auto_replay  # type: ignore[attr-defined]

    def set_identity(self, bot_id: int, username: str) -> None:
        self.bot_id, self.bot_username = bot_id, username

    # Intake ------------------------------------------------------------------------
    def accept_for_webhook(self, update: Update) -> bool:
        """Journal an update before the webhook answers 200; False for a duplicate."""
        chat_id, user_id = update_ids(update)
        accepted = self.services.journal.accept(update_id=update.update_id, chat_id=chat_id, user_id=user_id,
                                                kind="update", raw=update.to_dict(), trace_id=None,
                                                now=self.services.clock.iso())
        if accepted:
            self.pre_accepted.add(update.update_id)
        return accepted

    async def process_update(self, update: Update) -> None:
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
                                                  kind="update", raw=update.to_dict(), trace_id=trace_id,
                                                  now=services.clock.iso()):
                    span.set_attribute("update.duplicate", True)
                    root.set_attribute("turn.outcome", "duplicate")
                    return
                routed = route(update, bot_id=self.bot_id, bot_username=self.bot_username)
                span.set_attributes({"update.kind": routed.kind, "update.reason": routed.reason})
            if routed.kind == "ignored":
                services.journal.mark(update.update_id, "ignored", now=services.clock.iso(), error=routed.reason,
                                      trace_id=trace_id)
                root.set_attribute("turn.outcome", "ignored")
                return
            services.journal.mark(update.update_id, "processing", now=services.clock.iso(), trace_id=trace_id)
            state, error = "failed", None
            try:
                if chat_id is not None and services.chats.is_blocked(chat_id):
                    services.chats.unblock(chat_id, now=services.clock.iso())  # they wrote again: unblocked
                if routed.kind == "command":
                    outcome = await self.run_command(routed, update, trace_id)
                else:
                    outcome = await self.run_message(update, trace_id)
                state = "replied" if outcome not in ("failed", "dlq") else "failed"
                root.set_attribute("turn.outcome", outcome)
            except Exception as failure:  # the pipeline ends its own failures; this is a last resort
                error = f"{type(failure).__name__}: {failure}"[:500]
                log.exception("update %s failed outside the pipeline", update.update_id)
                root.set_status(trace.Status(trace.StatusCode.ERROR, type(failure).__name__))
                if chat_id is not None:
                    await self._safe_notice(chat_id, trace_id, "Sorry, something went wrong on my side. "
                                            f"The operator can look it up.\n\nref: {short_ref(trace_id)}")
            services.journal.mark(update.update_id, state, now=services.clock.iso(), error=error)

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
        """Updates a crash left in received/processing: processed again (documented at-least-once)."""
        updates = []
        for entry in self.services.journal.unfinished(limit=RECOVER_LIMIT):
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
        """Deliver alerts and kept replies, retrying until Telegram takes them."""
        while not stop.is_set():
            try:
                await drain_outbox(self.services.outbox, self.channel, now=self.services.clock.now,
                                   base_wait_s=2.0 * max(self.services.settings.retry_wait_scale, 0.05))
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("outbox round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), OUTBOX_POLL_S)

    async def replay(self, dlq_id: int) -> str:
        """Run a DLQ entry again through the whole pipeline, as a new turn; idempotent."""
        services = self.services
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
        rows = services.dlq.replayable_outage_entries(limit=100) if outage_only else \
            services.dlq.list("pending", limit=100)
        results = []
        for index, row in enumerate(sorted(rows, key=lambda r: r.id)):
            if index:
                await asyncio.sleep(REPLAY_PACE_S * services.settings.retry_wait_scale)
            result = await self.replay(row.id)
            results.append(result)
            if "failed again" in result and outage_only:
                break  # the provider is down again: stop, the breaker will tell us when it is back
        return results

    def schedule_auto_replay(self) -> None:
        if not self.services.settings.dlq_auto_replay or self._replaying:
            return

        async def run() -> None:
            self._replaying = True
            try:
                await asyncio.sleep(0)  # let the turn that closed the circuit finish first
                results = await self.replay_all(outage_only=True)
                if results:
                    log.info("auto-replayed %d DLQ entries after recovery", len(results))
            finally:
                self._replaying = False

        self.spawn(run())

    async def wait_background(self, timeout_s: float) -> None:
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout_s)


def describe_telegram_error(error: TelegramError) -> str:
    return to_delivery_failed(error).reason
