"""`python -m bot console`: chat with the agent in the terminal through the same pipeline.

Lines from stdin are user messages; answers are printed. For trying an LLM endpoint (and
the whole pipeline: context, budgets, retries, tracing) without Telegram.

A console turn that fails goes to the dead-letter queue like any other, as chat 0 with chat type
"console": it belongs to the console. `/replay ID` here (or `python -m bot dlq replay ID`) runs
it again and prints the answer; the bot's automatic replay and its /replay leave it alone, so
nothing typed here is ever sent to Telegram.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

from config.settings import Settings
from core.context.hot_state import format_for_user
from core.contracts import InboundMessage, ReplyEvent, build
from core.logs import configure_logging
from core.pipeline import Pipeline
from core.ports import DeliveryFailed
from core.replay import replay_entry
from core.services import Services, StorageUnavailable, open_services
from core.status import status_text
from core.tracing import current_trace_id, new_turn_span

CONSOLE_CHAT_ID = 0
HELP = "Type a message. Commands: /new (fresh conversation), /state, /status, /replay ID, /quit."


class ConsoleChannel:
    """Channel port on a terminal: the final answer, notices and errors are printed."""

    def __init__(self, out=sys.stdout) -> None:  # noqa: ANN001
        self.out = out

    async def deliver(self, event: ReplyEvent) -> None:
        if event.kind in ("final", "notice", "error"):
            prefix = {"final": "bot> ", "notice": "bot (notice)> ", "error": "bot (error)> "}[event.kind]
            print(prefix + event.text, file=self.out, flush=True)
        elif event.kind == "voice":  # a terminal plays no voice notes: say one was made
            print(f"bot (voice note, {len(event.audio or b'')} bytes)", file=self.out, flush=True)

    async def download(self, file_id: str, *, max_bytes: int) -> bytes:
        raise DeliveryFailed("the console has no attachments", permanent=True)


async def run_console(settings: Settings) -> int:
    configure_logging(level="WARNING" if settings.log_level == "INFO" else settings.log_level,
                      fmt=settings.log_format, secrets=settings.secrets())
    try:
        services = await open_services(settings)
    except StorageUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    services.mode = "console"
    pipeline = Pipeline(services)
    channel = ConsoleChannel()
    user_id = settings.operator_chat_id or 0
    print(f"Console chat with {settings.llm_model} at {settings.llm_host}. {HELP}", flush=True)
    counter = itertools.count(1)
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                break
            if await _local_command(text, services, pipeline, channel):
                continue
            with new_turn_span(services.tracer, "turn", {"chat.id": CONSOLE_CHAT_ID, "console": True}):
                inbound = build(InboundMessage, "inbound_message_valid", "channel", update_id=-next(counter),
                                trace_id=current_trace_id() or "0" * 32, chat_id=CONSOLE_CHAT_ID, chat_type="console",
                                user_id=user_id, user_name="console", text=text, received_at=services.clock.now())
                await pipeline.run_turn(inbound, channel)
    finally:
        await services.close()
    return 0


async def _local_command(text: str, services: Services, pipeline: Pipeline, channel: ConsoleChannel) -> bool:
    """The console's own commands; False when `text` is a message for the agent."""
    command, _, arg = text.partition(" ")
    if command == "/new":
        await services.history.start_new(CONSOLE_CHAT_ID)
        print("bot> Started a fresh conversation.", flush=True)
    elif command == "/state":
        hot = await services.hot_state.load(CONSOLE_CHAT_ID)
        print(format_for_user(hot, tokens=await services.hot_state.tokens(CONSOLE_CHAT_ID),
                              cap=services.settings.hot_state_max_tokens), flush=True)
    elif command == "/status":
        print(await status_text(services, chat_id=CONSOLE_CHAT_ID, operator=True), flush=True)
    elif command == "/replay":
        if not arg.strip().isdigit():
            print("usage: /replay ID (a dead-letter entry of a console turn)", flush=True)
        else:
            result = await replay_entry(pipeline, services, int(arg.strip()), channel, origin="console")
            print(result.describe(), flush=True)
    else:
        return False
    return True
