"""Webhook mode: a small aiohttp server on 0.0.0.0:$PORT.

PTB's built-in webhook server has no health route and answers some bad requests in ways we
do not control, so we run our own (as PTB's custom-webhook examples do): GET /healthz for the
platform, POST on the webhook path for Telegram. A request without the right
`X-Telegram-Bot-Api-Secret-Token` gets 403, a body that is not an update gets 400, and
neither reaches the bot; one with an update_id that cannot be parsed is kept in the journal
(failed, with why) and also gets 400. A good update is journaled before we answer 200
(Telegram redelivers until it gets 200), then queued for processing.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from aiohttp import web
from telegram.error import NetworkError

from bot.handlers import parse_update

if TYPE_CHECKING:
    from telegram.ext import Application

    from bot.runtime import Runtime
    from config.settings import Settings

log = logging.getLogger(__name__)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_BODY_BYTES = 1024 * 1024


class WebhookServer:
    def __init__(self, runtime: Runtime, application: Application, settings: Settings) -> None:
        self.runtime, self.application, self.settings = runtime, application, settings
        self.path = urlparse(settings.webhook_url or "").path or "/"
        self.ready = False
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post(self.path, self.receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "0.0.0.0", self.settings.port).start()  # noqa: S104 - PaaS routing
        log.info("webhook server listening on 0.0.0.0:%d%s", self.settings.port, self.path)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "ready": self.ready, "mode": "webhook"})

    async def receive(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.settings.webhook_secret_value.encode()):
            log.warning("webhook request without the right secret token from %s", request.remote)
            return web.json_response({"ok": False, "error": "forbidden"}, status=403)
        if not self.ready:
            return web.json_response({"ok": False, "error": "starting or stopping"}, status=503)
        try:
            body = await request.read()
            data = json.loads(body)
        except (ValueError, RecursionError, web.HTTPRequestEntityTooLarge):
            return web.json_response({"ok": False, "error": "body is not JSON"}, status=400)
        # The same parsing and checks as Runtime.process_raw: one place decides what an update is.
        parsed = parse_update(data, self.application.bot)
        if parsed.update is None:
            outcome = await self.runtime.record_unparsable(parsed)  # kept (failed) in the journal if it has an id
            error = "not a Telegram update" if outcome == "rejected" else f"malformed update: {parsed.problem}"
            return web.json_response({"ok": False, "error": error[:200]}, status=400)
        try:
            await self.application.update_queue.put(parsed.update)  # journals it (or drops a duplicate) first
        except NetworkError as error:  # not journaled (storage refuses writes): Telegram retries later
            return web.json_response({"ok": False, "error": str(error)[:200]}, status=503)
        return web.json_response({"ok": True})
