"""Wiring in one place: build the PTB Application, register every handler, and run the bot
in long-polling or webhook mode until SIGTERM.

Shutdown (what every PaaS sends before killing a dyno): stop intake, let in-flight turns
finish for up to DRAIN_S, then exit 0. Updates taken but not started stay `received` in the
journal and are resumed by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from telegram import BotCommand, BotCommandScopeChat, BotCommandScopeDefault, Update
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import AIORateLimiter, Application, TypeHandler

from bot.commands import COMMANDS
from bot.handlers import on_error, on_update
from bot.polling import CheckedUpdatesRequest
from bot.runtime import JournalingQueue, Runtime
from bot.webhook import WebhookServer
from config.settings import Settings, require_token
from core.logs import configure_logging
from core.services import StorageUnavailable, open_services

log = logging.getLogger(__name__)
DRAIN_S = 20.0
ALLOWED_UPDATES = ["message", "edited_message", "channel_post", "edited_channel_post", "my_chat_member"]
CONCURRENT_UPDATES = 64
START_ATTEMPTS = 5


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
    user = [BotCommand(c.name, c.help) for c in COMMANDS if c.access != "operator"]
    try:
        await application.bot.set_my_commands(user, scope=BotCommandScopeDefault())
        if settings.operator_chat_id is not None:
            await application.bot.set_my_commands([BotCommand(c.name, c.help) for c in COMMANDS],
                                                  scope=BotCommandScopeChat(settings.operator_chat_id))
    except TelegramError as error:
        log.warning("could not register the command menu: %s", error)


async def _initialize(application: Application) -> None:
    """getMe, retried a few times: a PaaS may start us before its network is up."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            await application.initialize()
            return
        except InvalidToken:
            raise
        except NetworkError as error:
            if attempt == START_ATTEMPTS:
                raise
            log.warning("Bot API not reachable yet (%s); retrying", error)
            await asyncio.sleep(min(2 ** attempt, 10))


def _polling_error(error: TelegramError) -> None:
    # 409 Conflict: another instance polls (a deploy overlapping old and new). PTB keeps retrying.
    log.warning("polling error (retrying): %s", error)


async def serve(settings: Settings) -> int:
    token = require_token(settings)
    configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=settings.secrets())
    try:
        services = open_services(settings)
    except StorageUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    services.mode = settings.mode
    webhook = settings.mode == "webhook"
    queue = JournalingQueue()
    updates_request = CheckedUpdatesRequest(connection_pool_size=1)
    application = build_application(settings, token, webhook=webhook, update_queue=queue,
                                     updates_request=updates_request)
    runtime = Runtime(services, application.bot)
    queue.runtime = runtime
    updates_request.on_malformed = runtime.record_unparsable
    application.bot_data["runtime"] = runtime
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = WebhookServer(runtime, application, settings) if webhook else None
    if server is not None:
        await server.start()  # bind $PORT first: platforms kill dynos that do not bind in time
    try:
        await _initialize(application)
    except InvalidToken:
        print("configuration error: TELEGRAM_BOT_TOKEN was rejected by the Bot API: check it with @BotFather")
        await services.close()
        return 2
    except NetworkError as error:
        print(f"error: the Bot API at {settings.telegram_api_base_url} is not reachable ({error}); "
              "check TELEGRAM_API_BASE_URL and the network, or run `python -m bot doctor`")
        await services.close()
        return 1
    runtime.set_identity(application.bot.id, application.bot.username)
    await application.start()
    if server is not None:
        await application.bot.set_webhook(settings.webhook_url, secret_token=settings.webhook_secret_value,
                                          allowed_updates=ALLOWED_UPDATES)
        server.ready = True
    else:
        await application.updater.start_polling(allowed_updates=ALLOWED_UPDATES, error_callback=_polling_error,
                                                bootstrap_retries=-1)
    services.dlq.release_stale_replays(before=services.clock.iso())  # replays a crash interrupted

    def resume() -> int:  # unfinished journal rows (a crash, a storage failure) go round again
        updates = runtime.recover()
        for update in updates:
            queue.put_recovered(update)
        return len(updates)

    resume()
    runtime.storage_alarm.resume = resume
    outbox = asyncio.create_task(runtime.outbox_loop(stop))
    await register_commands(application, settings)
    log.info("gateway running (%s mode) as @%s with model %s", settings.mode, application.bot.username,
             settings.llm_model)
    await stop.wait()
    log.info("stopping: no new updates; waiting up to %.0f s for %d turn(s) in flight", DRAIN_S,
             runtime.pipeline.inflight)
    if server is not None:
        server.ready = False
    elif application.updater is not None:
        with contextlib.suppress(Exception):
            await application.updater.stop()
    drained = await runtime.pipeline.wait_idle(DRAIN_S)
    if not drained:
        log.warning("%d turn(s) still running after %.0f s; they resume at the next start",
                    runtime.pipeline.inflight, DRAIN_S)
    outbox.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(application.stop(), 5)
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(application.shutdown(), 5)
    if server is not None:
        await server.close()
    await services.close()
    log.info("stopped")
    return 0
