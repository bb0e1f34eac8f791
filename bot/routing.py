"""Routing: one journaled update becomes a traced turn, a command, or an ignored update.

`Router.process_update` never raises: whatever breaks before the pipeline takes over (a span,
routing, storage) still ends with the journal row marked failed and, where there is a chat, a
reply with a ref, so an update can neither vanish nor crash every later start as a poison row.
A storage failure is the exception: the row stays unfinished and runs again once storage takes
writes (bot/storage_alarm.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from opentelemetry import trace
from telegram import Bot, InputFile, Update
from telegram.error import BadRequest, NetworkError

from bot.buttons import ButtonPresses
from bot.channel import TelegramChannel
from bot.command_context import CommandContext, Reply
from bot.commands import BY_NAME, may_use
from bot.handlers import BotIdentity, Routed, is_telegram_id, journal_raw, route, to_inbound, update_ids
from bot.instances import Instances
from bot.media import UNREADABLE, UNREADABLE_REPLY
from bot.storage_alarm import StorageAlarm
from core import failpoints
from core.contracts import ContractViolation, ReplyEvent
from core.failures.backoff_schedule import ceiling_wait_s
from core.failures.storage_errors import is_storage_failure
from core.failures.undelivered import record_blocked
from core.pipeline import Pipeline
from core.ports import DeliveryFailed
from core.replay import REPLAY_PACE_S, ReplayResult, replay_entry, replay_pending
from core.services import Services
from core.tracing import current_trace_id, new_turn_span, short_ref

log = logging.getLogger(__name__)
NO_TRACE = "0" * 32
ATTACHMENT_RETRY_WAIT_S = 1.0  # before the one retry of a file Telegram failed to take


class Router:
    """Routes and runs journaled updates; owns the sets that say which updates are queued or running."""

    def __init__(self, services: Services, pipeline: Pipeline, bot: Bot, channel: TelegramChannel, *,
                 alarm: StorageAlarm, identity: BotIdentity, instances: Instances | None = None) -> None:
        self.services, self.pipeline, self.bot, self.channel = services, pipeline, bot, channel
        self.alarm, self.identity = alarm, identity
        self.instances = instances or Instances.local()  # update claims when instances share a database
        self.pre_accepted: set[int] = set()  # journaled before reaching the handler (or recovered)
        self.in_flight: set[int] = set()
        self.buttons = ButtonPresses(services, bot, send_reply=self.send_reply, replay=self.replay,
                                     replay_all=self.replay_all)

    async def process_update(self, update: Update) -> str:
        """Journal (unless already), trace, route and run one update; returns its outcome."""
        self.in_flight.add(update.update_id)
        outcome = "cancelled"
        try:
            outcome = await self._traced(update)
            return outcome
        except Exception as failure:  # noqa: BLE001 - the last line of defence for one update
            if is_storage_failure(failure):  # the row stays unfinished: it runs again once storage works
                log.error("update %s deferred: storage refused a write (%s)", update.update_id, failure)
                await self.alarm.failed(update, failure)
                outcome = "deferred"
                return outcome
            outcome = "error"
            log.exception("update %s failed before or after its turn", getattr(update, "update_id", "?"))
            chat_id, _ = update_ids(update)
            with contextlib.suppress(Exception):
                await self.services.journal.mark(update.update_id, "failed", now=self.services.clock.iso(),
                                           error=f"{type(failure).__name__}: {failure}"[:500])
            if chat_id is not None:
                await self.safe_notice(chat_id, NO_TRACE, "Sorry, something went wrong on my side; your "
                                       f"message (update {update.update_id}) is kept for the operator.")
            return "error"
        finally:
            self.in_flight.discard(update.update_id)
            # Unfinished on purpose (deferred, or cut short by a stop): the claim is left to run out.
            await self.instances.finished(update.update_id, deferred=outcome in ("deferred", "cancelled"))

    async def _traced(self, update: Update) -> str:
        services = self.services
        chat_id, user_id = update_ids(update)
        attributes = {"update.id": update.update_id}
        if chat_id is not None:
            attributes["chat.id"] = chat_id
        with new_turn_span(services.tracer, "turn", attributes) as root:
            trace_id = current_trace_id() or NO_TRACE
            with services.tracer.start_as_current_span("receive") as span:
                if update.update_id in self.pre_accepted:
                    self.pre_accepted.discard(update.update_id)
                elif not await self.instances.journaled(update.update_id, lambda: services.journal.accept(
                        update_id=update.update_id, chat_id=chat_id, user_id=user_id, kind="update",
                        raw=journal_raw(update), trace_id=trace_id, now=services.clock.iso())):
                    span.set_attribute("update.duplicate", True)
                    root.set_attribute("turn.outcome", "duplicate")
                    return "duplicate"
                routed = route(update, bot_id=self.identity.bot_id, bot_username=self.identity.username)
                span.set_attributes({"update.kind": routed.kind, "update.reason": routed.reason})
            if routed.kind == "ignored":
                await self.note_membership(update)
                if routed.reason == UNREADABLE and chat_id is not None and await services.is_allowed(user_id or 0, chat_id):
                    await self.safe_notice(chat_id, trace_id, UNREADABLE_REPLY)  # never silence in a private chat
                await services.journal.mark(update.update_id, "ignored", now=services.clock.iso(), error=routed.reason,
                                      trace_id=trace_id)
                root.set_attribute("turn.outcome", "ignored")
                return "ignored"
            return await self._run(update, routed, trace_id, root)

    async def _run(self, update: Update, routed: Routed, trace_id: str, root: trace.Span) -> str:
        services = self.services
        chat_id, _ = update_ids(update)
        await services.journal.mark(update.update_id, "processing", now=services.clock.iso(), trace_id=trace_id)
        state, error, outcome = "failed", None, "error"
        try:
            if chat_id is not None and await services.chats.is_blocked(chat_id):
                await services.chats.unblock(chat_id, now=services.clock.iso())  # they wrote again: unblocked
            if routed.kind == "command":
                outcome = await self.run_command(routed, update, trace_id)
            elif routed.kind == "button":
                outcome = await self.buttons.press(update, trace_id)
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
                await self.safe_notice(chat_id, trace_id, "Sorry, something went wrong on my side. "
                                       f"The operator can look it up.\n\nref: {short_ref(trace_id)}")
        failpoints.hit("reply.after")
        if outcome == "deferred":  # unfinished on purpose: resumed once storage takes writes
            return outcome
        await services.journal.mark(update.update_id, state, now=services.clock.iso(), error=error)
        return outcome

    async def note_membership(self, update: Update) -> None:
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
            await record_blocked(self.services, chat_id, f"my_chat_member: {status}")
        elif status in ("member", "administrator") and chat_id < 0:
            await self.group_added(change, chat_id)
        elif await self.services.chats.is_blocked(chat_id):
            await self.services.chats.unblock(chat_id, now=self.services.clock.iso())
            log.info("chat %s unblocked the bot", chat_id)

    async def group_added(self, change: object, chat_id: int) -> None:
        """The bot was added to a group: under pairing, the operator is asked about the group."""
        services = self.services
        if services.settings.access_mode != "pairing" or await services.access.records.statuses((chat_id,)):
            return
        adder = getattr(change, "from_user", None)
        adder_id = getattr(adder, "id", None)
        title = getattr(getattr(change, "chat", None), "title", None)
        await services.access.answer_stranger(user_id=adder_id if is_telegram_id(adder_id) else 0, chat_id=chat_id,
                                        chat_type="group", name=str(getattr(adder, "first_name", "") or ""),
                                        title=title if isinstance(title, str) else "")

    async def run_message(self, update: Update, trace_id: str) -> str:
        services = self.services
        try:
            inbound = to_inbound(update, trace_id=trace_id, bot_username=self.identity.username,
                                 received_at=services.clock.now())
        except ContractViolation as violation:
            # A message Telegram sent but we cannot represent: fail fast, tell the user, keep the
            # raw update in the journal (marked failed with the violation) so nothing is lost.
            log.warning("malformed update %s: %s", update.update_id, violation)
            trace.get_current_span().set_attribute("error.type", "contract_violation")
            await services.journal.mark(update.update_id, "failed", now=services.clock.iso(),
                                  error=f"contract violation [{violation.invariant}] field={violation.field}: "
                                        f"{violation.detail}"[:500])
            chat_id, _ = update_ids(update)
            if chat_id is not None:
                await self.safe_notice(chat_id, trace_id, "Sorry, I could not read that message "
                                       f"({violation.invariant}).\n\nref: {short_ref(trace_id)}")
            return "failed"
        return await self.pipeline.run_turn(inbound, self.channel)

    async def run_text(self, update: Update, trace_id: str, text: str) -> str:
        """A turn answering `text` in the update's chat, as if its sender had written it (/retry)."""
        inbound = to_inbound(update, trace_id=trace_id, bot_username=self.identity.username,
                             received_at=self.services.clock.now())
        return await self.pipeline.run_turn(inbound.model_copy(update={"text": text, "attachment": None}),
                                            self.channel)

    async def run_command(self, routed: Routed, update: Update, trace_id: str) -> str:
        services = self.services
        message = update.message
        assert message is not None and message.from_user is not None
        chat_id, user = message.chat.id, message.from_user
        command = BY_NAME.get(routed.command)
        span = trace.get_current_span()
        span.set_attribute("command.name", routed.command[:32])
        allowed = await services.is_allowed(user.id, chat_id)
        if command is None:
            reply = Reply(f"I don't know /{routed.command[:32]}. /help lists the commands.")
        elif not may_use(command, allowed=allowed, operator_chat=services.is_operator_chat(chat_id)):
            span.set_attribute("auth.allowed", False)
            reply = Reply("That command is for the operator only." if command.access == "operator"
                          else await services.access.answer_stranger(
                              user_id=user.id, chat_id=chat_id, chat_type=message.chat.type,
                              name=_str(user.first_name), username=_str(user.username) or None,
                              title=_str(message.chat.title)))
        else:
            with services.tracer.start_as_current_span(f"command {command.name}"):
                ctx = CommandContext(services=services, chat_id=chat_id, user_id=user.id,
                                     user_name=user.first_name or user.username or "", args=routed.args,
                                     trace_id=trace_id, replay=self.replay, replay_all=self.replay_all,
                                     run_turn=lambda text: self.run_text(update, trace_id, text))
                reply = await command.run(ctx)
        await self.send_reply(chat_id, trace_id, reply, reply_to=message.message_id)
        return "replied"

    async def replay(self, dlq_id: int) -> ReplayResult:
        """A DLQ entry again, answered in its Telegram chat (console entries are left to the console)."""
        return await replay_entry(self.pipeline, self.services, dlq_id, self.channel, origin="telegram")

    async def replay_all(self) -> list[ReplayResult]:
        pace_s = REPLAY_PACE_S * self.services.settings.retry_wait_scale
        return await replay_pending(self.pipeline, self.services, self.channel, origin="telegram", pace_s=pace_s)

    async def send_reply(self, chat_id: int, trace_id: str, reply: Reply, *, reply_to: int | None = None) -> None:
        """A command's answer: its text, then its file or picture. A file Telegram does not take is
        tried once more on a network error or 5xx, and then the user is told, with the ref."""
        with self.services.tracer.start_as_current_span("send"):
            try:
                if reply.text:
                    await self.channel.deliver(ReplyEvent(kind="notice", trace_id=trace_id, chat_id=chat_id,
                                                          text=reply.text, reply_to_message_id=reply_to))
            except DeliveryFailed as failed:
                log.warning("command reply to %s not delivered: %s", chat_id, failed.reason)
                return
            attachment = reply.document or (("chart.png", reply.photo) if reply.photo is not None else None)
            if attachment is None:
                return
            try:
                await self._send_attachment(chat_id, attachment, photo=reply.document is None)
            except Exception as error:  # noqa: BLE001 - an attachment failure must not fail the turn
                log.warning("command attachment to %s not delivered: %s", chat_id, type(error).__name__)
                trace.get_current_span().set_attribute("send.attachment_failed", type(error).__name__)
                if reply.document is not None:
                    what = f"the file {reply.document_ref}" if reply.document_ref else "the file"
                    await self.safe_notice(chat_id, trace_id, f"Sorry, Telegram did not take {what}; "
                                           f"please try again later.\n\nref: {short_ref(trace_id)}")

    async def _send_attachment(self, chat_id: int, attachment: tuple[str, bytes], *, photo: bool) -> None:
        name, data = attachment
        for attempt in (1, 2):
            try:
                if photo:
                    await self.bot.send_photo(chat_id, InputFile(data, filename=name))
                else:
                    await self.bot.send_document(chat_id, InputFile(data, filename=name))
                return
            except BadRequest:  # the request itself is wrong: sending it again cannot help
                raise
            except NetworkError as error:  # no answer, or a 5xx (PTB raises NetworkError for both)
                if attempt == 2:
                    raise
                log.info("sending a file to %s failed (%s); trying once more", chat_id, error)
                scale = self.services.settings.retry_wait_scale
                await asyncio.sleep(ceiling_wait_s(attempt=1, base_wait_s=ATTACHMENT_RETRY_WAIT_S * scale,
                                                   max_wait_s=ATTACHMENT_RETRY_WAIT_S))

    async def safe_notice(self, chat_id: int, trace_id: str, text: str) -> None:
        with contextlib.suppress(Exception):
            await self.channel.deliver(ReplyEvent(kind="error", trace_id=trace_id, chat_id=chat_id, text=text))


def _str(value: object) -> str:
    """A name from the update, or "" when it is not a string (PTB does not check types)."""
    return value if isinstance(value, str) else ""
