"""Ingest: documents and very long texts become artifacts; the prompt carries a reference.

A document is downloaded (refused above Telegram's 20 MB bot download limit), its text is
extracted (plain text, Markdown, code, JSON, CSV; PDF through pypdf) and stored once by
SHA-256. The chat's hot state indexes it, and the user's turn becomes a short line with the
`artifact://` reference and a summary: the agent reads the content with `read_artifact`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import trace

from core.context.artifacts import MAX_DOCUMENT_BYTES, UnsupportedDocument, extract_text, summarize
from core.contracts import HotStateWrite
from core.outcomes import TurnEnded
from core.ports import DeliveryFailed

if TYPE_CHECKING:
    from core.context.artifacts import ArtifactInfo
    from core.pipeline import Turn

# Incoming or outgoing text above this many tokens is stored as an artifact, not inlined.
LONG_TEXT_TOKENS = 2000


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


async def ingest_stage(turn: Turn) -> None:
    services, inbound = turn.services, turn.inbound
    span = trace.get_current_span()
    parts: list[str] = []
    text = inbound.text.strip()
    if text:
        tokens = services.counter.count(text)
        span.set_attribute("message.tokens", tokens)
        if tokens > LONG_TEXT_TOKENS:
            info = store_text(turn, text, label="long message", kind="long_message")
            parts.append(f"[The user sent a long text ({tokens} tokens), stored as {info.ref}. "
                         f"Summary: {info.summary} Read it with read_artifact when needed.]")
        else:
            parts.append(text)
    attachment = inbound.attachment
    if attachment is not None:
        if attachment.size_bytes > MAX_DOCUMENT_BYTES:
            turn.outcome = "notice"
            await turn.send("notice", f"That file is {_mb(attachment.size_bytes)}; bots can only download files "
                                      f"up to {_mb(MAX_DOCUMENT_BYTES)}. Please send a smaller file or paste the part "
                                      "that matters.")
            raise TurnEnded("document too large")
        try:
            data = await turn.channel.download(attachment.file_id, max_bytes=MAX_DOCUMENT_BYTES)
        except DeliveryFailed as failed:
            turn.outcome = "notice"
            await turn.send("notice", f"I could not download that file ({failed.reason}). Please send it again.")
            raise TurnEnded("download failed") from None
        try:
            content = extract_text(data, file_name=attachment.file_name, mime_type=attachment.mime_type)
        except UnsupportedDocument as error:
            turn.outcome = "notice"
            await turn.send("notice", f"I can't read {attachment.file_name}: {error}")
            raise TurnEnded("unsupported document") from None
        info = store_text(turn, content, label=attachment.file_name, kind="document")
        span.set_attributes({"document.bytes": len(data), "document.tokens": info.tokens or 0,
                             "document.new": info.created})
        parts.append(f"[Document {attachment.file_name} stored as {info.ref} ({info.tokens} tokens). "
                     f"Summary: {info.summary} Read it with read_artifact.]")
    turn.user_text = "\n\n".join(parts)


def store_text(turn: Turn, text: str, *, label: str, kind: str) -> ArtifactInfo:
    """Store text as an artifact of this chat and index it in the hot state (once)."""
    services, inbound = turn.services, turn.inbound
    info = services.artifacts.put(content=text.encode("utf-8"), media_type="text/plain", chat_id=inbound.chat_id,
                                  user_id=inbound.user_id, label=label[:200], summary=summarize(text),
                                  kind=kind, trace_id=inbound.trace_id, now=services.clock.iso())
    if info.linked:  # new to this chat: index it once
        index_artifact(turn, info, label=label, kind=kind)
    return info


def index_artifact(turn: Turn, info: ArtifactInfo, *, label: str, kind: str) -> None:
    line = f"{info.ref} {kind} {label[:60]}: {info.summary[:120]}"
    write = HotStateWrite(producer="pipeline", source="gateway", trace_id=turn.inbound.trace_id,
                          chat_id=turn.inbound.chat_id, add=(("artifacts", line),))
    turn.guard.check(write, producer=write.producer)
    turn.services.hot_state.apply(turn.inbound.chat_id, write, now=turn.services.clock.iso())
