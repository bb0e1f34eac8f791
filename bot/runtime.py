"""The running gateway, assembled: intake (journal and queue), routing and commands, the
storage alarm and the background loops, wired together once.

Each part lives in its own module and gets what it needs through its constructor; this one
only builds them and offers the few entry points `bot.app`, the webhook and the handlers use.
Import order (no cycles): handlers <- storage_alarm <- routing (<- commands) <- intake, loops <- runtime.
"""

from __future__ import annotations

import asyncio
import logging

from telegram import Bot, Update

from bot.channel import TelegramChannel
from bot.handlers import BotIdentity, Parsed
from bot.instances import Instances
from bot.intake import Intake, JournalingQueue
from bot.loops import BackgroundTasks, Loops
from bot.routing import Router
from bot.storage_alarm import StorageAlarm
from core.chat_turns import ChatTurns
from core.pipeline import Pipeline
from core.replay import ReplayResult
from core.services import Services

__all__ = ["JournalingQueue", "Runtime"]
log = logging.getLogger(__name__)


class Runtime:
    """Everything the Telegram side needs while the bot runs."""

    def __init__(self, services: Services, bot: Bot) -> None:
        self.services = services
        settings = services.settings
        url = settings.database_url.get_secret_value() if settings.database_url is not None else None
        self.instances = Instances.build(services.db, lease_s=settings.lease_seconds, database_url=url)
        # How long a turn waits for an earlier turn of its chat on another instance before it runs
        # anyway: two leases (its owner died and was taken over) and a slow turn.
        order_wait_s = 2 * settings.lease_seconds + 3 * settings.llm_timeout_seconds
        self.pipeline = Pipeline(services, turns=ChatTurns(self.instances.coordination, order_wait_s=order_wait_s))
        self.bot = bot
        self.channel = TelegramChannel(bot, tracer=services.tracer)
        self.identity = BotIdentity()
        self.tasks = BackgroundTasks()
        self.storage_alarm = StorageAlarm(services, send=self._send_plain, identity=self.identity)
        self.router = Router(services, self.pipeline, bot, self.channel, alarm=self.storage_alarm,
                             identity=self.identity, instances=self.instances)
        self.intake = Intake(services, bot, self.router)
        self.loops = Loops(services, self.pipeline, self.channel, alarm=self.storage_alarm, tasks=self.tasks,
                           instances=self.instances)
        services.on_storage_failure = self.storage_alarm.note
        services.on_circuit_closed = self.loops.schedule_auto_replay
        services.on_llm_success = self.loops.provider_answered

    def set_identity(self, bot_id: int, username: str) -> None:
        self.identity.bot_id, self.identity.username = bot_id, username

    @property
    def pre_accepted(self) -> set[int]:
        return self.router.pre_accepted

    # Intake and routing
    async def accept(self, update: Update) -> bool:
        return await self.intake.accept(update)

    async def process_raw(self, data: object) -> str:
        return await self.intake.process_raw(data)

    async def record_unparsable(self, parsed: Parsed) -> str:
        return await self.intake.record_unparsable(parsed)

    async def process_update(self, update: Update) -> str:
        return await self.router.process_update(update)

    async def recover(self) -> list[Update]:
        return await self.intake.recover()

    def log_unhandled(self, update: object, error: BaseException | None) -> None:
        log.error("unhandled error for update %s", getattr(update, "update_id", "?"), exc_info=error)

    # Background work
    async def outbox_loop(self, stop: asyncio.Event) -> None:
        await self.loops.outbox_loop(stop)

    async def maintain(self) -> None:
        await self.loops.maintain()

    async def replay(self, dlq_id: int) -> ReplayResult:
        return await self.router.replay(dlq_id)

    async def replay_all(self) -> list[ReplayResult]:
        return await self.router.replay_all()

    async def wait_background(self, timeout_s: float) -> None:
        await self.tasks.wait(timeout_s)

    def _send_plain(self, chat_id: int, text: str) -> None:
        """Straight through the Bot API, on the side: used while storage (and so the outbox) fails."""

        async def send() -> None:
            try:
                await self.bot.send_message(chat_id, text)
            except Exception as error:  # noqa: BLE001 - best effort: the update itself is not lost
                log.warning("storage notice to %s not delivered: %s", chat_id, type(error).__name__)

        self.tasks.spawn(send())
