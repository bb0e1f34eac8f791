"""Slash commands: what users and the operator can ask the gateway directly.

Each command is `async def name(ctx) -> Reply`; `COMMANDS` is the one table of names, who may
use them and their menu text (registered with setMyCommands at start: user commands for
everyone, operator commands for the operator's chat only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from bot import commands_access, commands_voice
from bot.command_context import CommandContext, Reply
from bot.commands_control import retry, stop
from bot.commands_models import model
from config.settings import Settings
from core.context.artifacts import ArtifactCorrupt, ArtifactRefError, parse_ref
from core.context.hot_state import format_for_user
from core.contracts import HotStateWrite
from core.models import split_names
from core.replay import entry_origin
from core.status import budget_text, spend_chart, status_text, usage_week_text
from core.telemetry import AmbiguousRef, find_trace, format_tree

Access = Literal["anyone", "allowed", "operator"]


async def start(ctx: CommandContext) -> Reply:
    settings = ctx.services.settings
    if await ctx.services.is_allowed(ctx.user_id, ctx.chat_id):
        status = "You can chat with me: just send a message."
    elif settings.access_mode == "pairing":
        status = await ctx.services.access.answer_stranger(user_id=ctx.user_id, chat_id=ctx.chat_id,
                                                     chat_type="private" if ctx.chat_id > 0 else "group",
                                                     name=ctx.user_name, wrote=False)
    elif settings.operator_chat_id is None and not settings.allowed_ids:
        # No operator to ask, and no one on the list: say so rather than send people to nobody.
        status = ("Nobody can chat with this bot yet: whoever runs it has to set OPERATOR_CHAT_ID (their own "
                  "user id) or ALLOWED_USER_IDS.")
    elif settings.operator_chat_id is None:
        status = "You are not on this bot's allowed list: ask whoever runs it to add your id to ALLOWED_USER_IDS."
    else:
        status = "You are not on this bot's allowed list: ask the operator to add your id to ALLOWED_USER_IDS."
    return Reply(f"Hello {ctx.user_name or 'there'}! I pass your messages to an AI assistant.\n"
                 f"Your Telegram user id is {ctx.user_id}.\n{status}\n/help lists the commands.")


async def help_(ctx: CommandContext) -> Reply:
    lines = ["Send me a message or a document and I'll answer.", ""]
    settings = ctx.services.settings
    lines += [f"/{c.name} - {c.help}" for c in COMMANDS if c.access != "operator" and in_menu(c, settings)]
    if ctx.is_operator:
        lines += ["", "Operator:"] + [f"/{c.name} - {c.help}" for c in COMMANDS if c.access == "operator"]
    return Reply("\n".join(lines))


async def new(ctx: CommandContext) -> Reply:
    count = await ctx.services.history.start_new(ctx.chat_id)
    return Reply(f"Started a fresh conversation ({count} earlier messages set aside). "
                 "Your hot state is kept: /state shows it, /forget N removes an item.")


async def state(ctx: CommandContext) -> Reply:
    services = ctx.services
    hot = await services.hot_state.load(ctx.chat_id)
    text = format_for_user(hot, tokens=await services.hot_state.tokens(ctx.chat_id),
                           cap=services.settings.hot_state_max_tokens)
    return Reply(text)


async def remember(ctx: CommandContext) -> Reply:
    if not ctx.args.strip():
        return Reply("Usage: /remember TEXT (a fact or constraint I should keep in mind).")
    write = HotStateWrite(producer="pipeline", source="user", trace_id=ctx.trace_id, chat_id=ctx.chat_id,
                          add=(("facts", ctx.args.strip()[:500]),))
    hot, notes = await ctx.services.hot_state.apply(ctx.chat_id, write, now=ctx.services.clock.iso())
    return Reply("Noted. " + "; ".join(notes) + "\n/state shows everything I keep in mind.")


async def forget(ctx: CommandContext) -> Reply:
    numbers = [int(p) for p in ctx.args.replace(",", " ").split() if p.isdigit()]
    if not numbers or len(numbers) != len(ctx.args.replace(",", " ").split()):
        return Reply("Usage: /forget N (the item number shown by /state).")
    write = HotStateWrite(producer="pipeline", source="user", trace_id=ctx.trace_id, chat_id=ctx.chat_id,
                          remove=tuple(numbers[:20]))
    hot, notes = await ctx.services.hot_state.apply(ctx.chat_id, write, now=ctx.services.clock.iso())
    return Reply("; ".join(notes) or "Done.")


async def artifacts(ctx: CommandContext) -> Reply:
    items = await ctx.services.artifacts.list(ctx.chat_id, limit=30)
    if not items:
        return Reply("No artifacts yet. Documents you send, and very long messages, are stored here.")
    lines = [f"{i.ref} {i.kind} {i.label} ({i.size_bytes:,} bytes, {i.tokens or 0:,} tokens)" for i in items]
    return Reply("Artifacts of this chat:\n" + "\n".join(lines) + "\n\n/artifact REF sends one back.")


async def artifact(ctx: CommandContext) -> Reply:
    ref = ctx.args.strip()
    if not ref:
        return Reply("Usage: /artifact REF (as listed by /artifacts).")
    try:
        parse_ref(ref)
        info = await ctx.services.artifacts.resolve(ctx.chat_id, ref)
        data = await ctx.services.artifacts.read_bytes(info)
    except ArtifactRefError as error:
        return Reply(f"Cannot send that artifact: {error}")
    except ArtifactCorrupt as error:
        return Reply(f"Cannot send that artifact: {error} (the operator can look at the server's DATA_DIR).")
    extension = ".md" if info.media_type == "text/markdown" else ".txt"
    name = info.label if "." in info.label[-6:] else f"{info.label}{extension}"
    return Reply(f"{info.ref}: {info.label}", document=(name.replace("/", "_")[:100], data), document_ref=info.ref)


async def budget(ctx: CommandContext) -> Reply:
    text = await budget_text(ctx.services, user_id=ctx.user_id, operator=ctx.is_operator)
    return Reply(text, photo=await spend_chart(ctx.services) if ctx.is_operator else None)


async def usage(ctx: CommandContext) -> Reply:
    text = await usage_week_text(ctx.services, user_id=ctx.user_id)
    return Reply(text, photo=await spend_chart(ctx.services) if ctx.is_operator else None)


async def status(ctx: CommandContext) -> Reply:
    return Reply(await status_text(ctx.services, chat_id=ctx.chat_id, operator=ctx.is_operator))


async def trace_cmd(ctx: CommandContext) -> Reply:
    ref = ctx.args.strip().lower()
    if not ref:
        return Reply("Usage: /trace REF (the 8 characters after 'ref:').")
    try:
        # A read of its own connection (PostgreSQL: over the network): off the event loop.
        spans = await asyncio.to_thread(find_trace, ctx.services.telemetry.spans, ref)
    except AmbiguousRef as error:
        return Reply(str(error))
    except ValueError as error:
        return Reply(f"Not a trace reference: {error}")
    if not spans:
        return Reply(f"No trace {ref[:32]} (spans are kept {ctx.services.settings.telemetry_retention_days} days).")
    return Reply("```\n" + format_tree(spans)[:3900] + "\n```")


async def dlq(ctx: CommandContext) -> Reply:
    queue = ctx.services.dlq
    arg = ctx.args.strip()
    if arg:
        if not arg.isdigit():
            return Reply("Usage: /dlq [ID]")
        row = await queue.get(int(arg))
        if row is None:
            return Reply(f"No DLQ entry {arg}.")
        attempts = "\n".join(f"  {a.get('at', '')} {a.get('kind', '')} {str(a.get('detail', ''))[:80]}"
                             for a in row.attempts[-5:])
        return Reply(f"DLQ #{row.id} [{row.status}] {row.error_kind}\nchat {row.chat_id} user {row.user_id}\n"
                     f"first {row.first_failed_at}\nlast {row.last_failed_at}\nref: {row.ref}\n"
                     f"error: {row.error_message[:300]}\nmessage: {row.inbound.text[:300]}\n"
                     f"attempts:\n{attempts or '  (none)'}\n\n/replay {row.id} or /discard {row.id}")
    rows = await queue.list("pending", limit=20)
    if not rows:
        return Reply(f"The dead-letter queue is empty ({await queue.evicted()} evicted so far).")
    lines = [f"#{r.id} {r.error_kind} chat {r.chat_id}{' (console)' if entry_origin(r) == 'console' else ''} "
             f"{r.last_failed_at[:16]} ref: {r.ref}" for r in rows]
    return Reply(f"{await queue.depth()} pending:\n" + "\n".join(lines) + "\n\n/dlq ID, /replay ID|all, /discard ID")


async def replay(ctx: CommandContext) -> Reply:
    arg = ctx.args.strip().lower()
    if arg == "all":
        results = await ctx.replay_all()
        lines = [result.describe() for result in results]
        return Reply(f"Replayed {len(results)} entries:\n" + "\n".join(lines) if results else "Nothing pending.")
    if not arg.isdigit():
        return Reply("Usage: /replay ID|all")
    return Reply((await ctx.replay(int(arg))).describe())


async def discard(ctx: CommandContext) -> Reply:
    arg = ctx.args.strip()
    if not arg.isdigit():
        return Reply("Usage: /discard ID")
    done = await ctx.services.dlq.discard(int(arg), now=ctx.services.clock.iso())
    return Reply(f"Discarded #{arg}." if done else f"#{arg} is not pending.")


@dataclass(frozen=True)
class Command:
    name: str
    run: Callable[[CommandContext], Awaitable[Reply]]
    access: Access
    help: str


COMMANDS: tuple[Command, ...] = (
    Command("start", start, "anyone", "who you are and whether you may chat"),
    Command("help", help_, "anyone", "the commands"),
    Command("new", new, "allowed", "start a fresh conversation"),
    Command("state", state, "allowed", "what I keep in mind for this chat"),
    Command("remember", remember, "allowed", "add a fact to my working memory"),
    Command("forget", forget, "allowed", "remove item N from my working memory"),
    Command("artifacts", artifacts, "allowed", "documents and long texts stored for this chat"),
    Command("artifact", artifact, "allowed", "send an artifact back as a file"),
    Command("budget", budget, "allowed", "tokens and spend, and what is left"),
    Command("usage", usage, "allowed", "your last 7 days"),
    Command("status", status, "allowed", "health, model, circuit and context use"),
    Command("stop", stop, "allowed", "stop the answer being written"),
    Command("retry", retry, "allowed", "answer your last message again"),
    Command("model", model, "allowed", "the model of this chat (or switch: /model NAME)"),
    Command("voice", commands_voice.voice, "allowed", "spoken answers to voice messages: /voice on|off"),
    Command("trace", trace_cmd, "operator", "show the trace of a ref"),
    Command("dlq", dlq, "operator", "dead-letter queue (or one entry)"),
    Command("replay", replay, "operator", "run a DLQ entry again (ID or all)"),
    Command("discard", discard, "operator", "drop a DLQ entry"),
    Command("allow", commands_access.allow, "operator", "let someone in (pairing CODE or USER_ID)"),
    Command("deny", commands_access.deny, "operator", "revoke someone's access (USER_ID)"),
    Command("users", commands_access.users, "operator", "who may chat, and pending pairing codes"),
)
BY_NAME = {c.name: c for c in COMMANDS}


def in_menu(command: Command, settings: Settings) -> bool:
    """/model is offered only when there is a choice (LLM_MODELS names another model)."""
    if command.name == "model":
        return len({settings.llm_model, *split_names(settings.llm_models)}) > 1
    return True


def may_use(command: Command, *, allowed: bool, operator_chat: bool) -> bool:
    if command.access == "operator":
        return operator_chat
    return command.access == "anyone" or allowed or operator_chat
