"""Wiring in one place: build the PTB Application, register every handler, and run the bot
in long-polling or webhook mode until SIGTERM.

Shutdown (what every PaaS sends before killing a dyno): stop intake, let in-flight turns
finish for up to DRAIN_S, then exit 0. Updates taken but not started stay `received` in the
journal and are resumed by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

from telegram import BotCommand, BotCommandScopeChat, BotCommandScopeDefault, Update
from telegram.error import TelegramError
from telegram.ext import AIORateLimiter, Application, TypeHandler

from bot.commands import COMMANDS, in_menu
from bot.handlers import on_error, on_update
from bot.instances import PollerRefused, claim_poller
from bot.polling import CheckedUpdatesRequest
from bot.runtime import JournalingQueue, Runtime
from bot.startup import StartupFailed, wait_for_bot_api
from bot.webhook import WebhookServer
from config.settings import Settings, require_token
from core.logs import configure_logging
from core.services import Services, StorageUnavailable, open_services
from core.store.interfaces import JournalEntry

log = logging.getLogger(__name__)
DRAIN_S = 20.0
ALLOWED_UPDATES = ["message", "edited_message", "channel_post", "edited_channel_post", "my_chat_member",
                   "callback_query"]
CONCURRENT_UPDATES = 64
# With instances sharing a database, a DLQ replay still `replaying` this long after it was claimed
# is one a crash interrupted (another instance's live replay is younger); alone, every one at start.
STALE_REPLAY_S = 900.0


def build_application(settings: Settings, token: str, *, webhook: bool,
                      update_queue: JournalingQueue | None = None,
                      updates_request: CheckedUpdatesRequest | None = None) -> Application:
    """One Application: every update goes to `on_update`; one error handler."""
    root = settings.telegram_api_base_url
    builder = Application.builder()
    if update_queue is not None:
        builder = builder.update_queue(update_queue)
    if updates_request is not None and not webhook:  # one unparsable update must not stall polling
        builder = builder.get_updates_request(updates_request)
    builder = (builder.token(token)
               .base_url(f"{root}/bot").base_file_url(f"{root}/file/bot")
               .rate_limiter(AIORateLimiter(overall_max_rate=settings.telegram_sends_per_second, max_retries=2))
               .concurrent_updates(CONCURRENT_UPDATES)
               .connect_timeout(10).read_timeout(20).write_timeout(20).pool_timeout(10)
               .connection_pool_size(CONCURRENT_UPDATES))
    if webhook:
        builder = builder.updater(None)
    application = builder.build()
    application.add_handler(TypeHandler(Update, on_update))
    application.add_error_handler(on_error)
    return application


async def register_commands(application: Application, settings: Settings) -> None:
    """The command menu: user commands for everyone, all commands in the operator's chat."""
    user = [BotCommand(c.name, c.help) for c in COMMANDS if c.access != "operator" and in_menu(c, settings)]
    try:
        await application.bot.set_my_commands(user, scope=BotCommandScopeDefault())
        if settings.operator_chat_id is not None:
            await application.bot.set_my_commands([BotCommand(c.name, c.help) for c in COMMANDS
                                                   if in_menu(c, settings)],
                                                  scope=BotCommandScopeChat(settings.operator_chat_id))
    except TelegramError as error:
        log.warning("could not register the command menu: %s", error)


def _polling_error(error: TelegramError) -> None:
    # 409 Conflict: another instance polls (a deploy overlapping old and new). PTB keeps retrying.
    log.warning("polling error (retrying): %s", error)


@dataclass
class _Gateway:
    """What one `serve` wires together, handed between its phases."""

    settings: Settings
    services: Services
    application: Application
    runtime: Runtime
    queue: JournalingQueue
    server: WebhookServer | None


def _wire(settings: Settings, services: Services, token: str) -> _Gateway:
    """Application, runtime and (in webhook mode) the HTTP server, connected to each other."""
    webhook = settings.mode == "webhook"
    queue = JournalingQueue()
    updates_request = CheckedUpdatesRequest(connection_pool_size=1)
    application = build_application(settings, token, webhook=webhook, update_queue=queue,
                                     updates_request=updates_request)
    runtime = Runtime(services, application.bot)
    queue.runtime = runtime
    updates_request.on_malformed = runtime.record_unparsable
    application.bot_data["runtime"] = runtime
    server = WebhookServer(runtime, application, settings) if webhook else None
    return _Gateway(settings, services, application, runtime, queue, server)


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM (what a PaaS sends) or SIGINT (Ctrl-C), from the start on."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _connect(gateway: _Gateway, token: str, stop: asyncio.Event) -> bool:
    """Reach the Bot API and start PTB; False when a stop came first. Raises StartupFailed."""
    settings, application = gateway.settings, gateway.application
    if await wait_for_bot_api(settings.telegram_api_base_url, token, stop,
                              wait_scale=settings.retry_wait_scale) is None:
        return False
    try:
        await application.initialize()
    except TelegramError as error:  # getMe just worked: the network went away in between
        # The type only: PTB's InvalidToken message contains the token.
        raise StartupFailed(f"the Bot API at {settings.telegram_api_base_url} failed during start-up "
                            f"({type(error).__name__}); check the network, or run `python -m bot doctor`") from None
    gateway.runtime.set_identity(application.bot.id, application.bot.username)
    await application.start()
    if gateway.server is not None:
        await application.bot.set_webhook(settings.webhook_url, secret_token=settings.webhook_secret_value,
                                          allowed_updates=ALLOWED_UPDATES)
        gateway.server.ready = True
    else:
        await application.updater.start_polling(allowed_updates=ALLOWED_UPDATES, error_callback=_polling_error,
                                                bootstrap_retries=-1)
    return True


async def _resume_unfinished(gateway: _Gateway) -> None:
    """Journal rows a crash or a storage failure left unfinished go round again, now and each
    time the storage alarm clears. With instances sharing a database, the sweeper does it instead
    (bot/instances.py): the unfinished rows may be other live instances' turns."""
    runtime, queue, services = gateway.runtime, gateway.queue, gateway.services
    instances = runtime.instances
    stale = services.clock.now() - timedelta(seconds=STALE_REPLAY_S if instances.shared else 0)
    await services.dlq.release_stale_replays(before=stale.isoformat(timespec="milliseconds"))  # a crash's replays

    async def resume_taken(entries: list[JournalEntry]) -> None:
        for update in await runtime.intake.resume(entries):
            queue.put_recovered(update)

    async def nothing() -> int:  # deferred updates' claims run out: the sweeper resumes them
        return 0

    if instances.shared:
        instances.resume = resume_taken
        runtime.storage_alarm.resume = nothing
        return

    async def resume() -> int:
        updates = await runtime.recover()
        for update in updates:
            queue.put_recovered(update)
        return len(updates)

    await resume()
    runtime.storage_alarm.resume = resume


async def _drain(gateway: _Gateway, outbox: asyncio.Task[None], beats: asyncio.Task[None]) -> None:
    """Stop intake, give the turns in flight up to DRAIN_S, then stop the outbox and PTB."""
    runtime, application = gateway.runtime, gateway.application
    log.info("stopping: no new updates; waiting up to %.0f s for %d turn(s) in flight", DRAIN_S,
             runtime.pipeline.inflight)
    if gateway.server is not None:
        gateway.server.ready = False
    elif application.updater is not None:
        with contextlib.suppress(Exception):
            await application.updater.stop()
    if not await runtime.pipeline.wait_idle(DRAIN_S):
        log.warning("%d turn(s) still running after %.0f s; they resume at the next start",
                    runtime.pipeline.inflight, DRAIN_S)
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(beats, 5)
    await runtime.instances.close(keep=set(runtime.router.in_flight))  # the rest goes to the others now
    outbox.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(application.stop(), 5)
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(application.shutdown(), 5)


async def _close(gateway: _Gateway) -> None:
    if gateway.server is not None:
        await gateway.server.close()
    await gateway.services.close()


async def serve(settings: Settings) -> int:
    """Run the bot until SIGTERM/SIGINT; 0 after a clean stop, 1 when it cannot start."""
    token = require_token(settings)
    configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=settings.secrets())
    try:
        services = await open_services(settings)
    except StorageUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    services.mode = settings.mode
    try:  # Telegram allows one long poller per bot: on a shared database, the first instance only
        poller = await claim_poller(settings.database_url.get_secret_value()
                                    if settings.database_url is not None and settings.mode != "webhook" else None)
    except PollerRefused as refused:
        print(f"error: {refused}", file=sys.stderr)
        await services.close()
        return 1
    gateway = _wire(settings, services, token)
    stop = _stop_on_signals()
    if gateway.server is not None:
        await gateway.server.start()  # bind $PORT first: platforms kill dynos that do not bind in time
    try:
        connected = await _connect(gateway, token, stop)
    except StartupFailed as error:
        print(f"error: {error}", file=sys.stderr)
        await _close(gateway)
        return 1
    if not connected:
        log.info("stopped before start-up finished")
        await _close(gateway)
        return 0
    await _resume_unfinished(gateway)
    # Everything built so far (modules, settings, the token counter's 100k-entry table) lives as
    # long as the process: out of the collector's sight, full collections stop rescanning it
    # (bench/probe.py --gc-freeze: about half the full-collection time of a benchmark run).
    gc.freeze()
    outbox = asyncio.create_task(gateway.runtime.outbox_loop(stop))
    beats = asyncio.create_task(gateway.runtime.instances.run(stop))  # heartbeat and sweeper
    await register_commands(gateway.application, settings)
    log.info("gateway running (%s mode) as @%s with model %s", settings.mode, gateway.application.bot.username,
             settings.llm_model)
    await stop.wait()
    await _drain(gateway, outbox, beats)
    await _close(gateway)
    await poller.release()
    log.info("stopped")
    return 0
