"""Long texts as artifacts: a document, a very long message or a very long answer is stored once
(by SHA-256) and indexed in the chat's hot state; the prompt carries its reference and a summary.
Used by the ingest stage (what comes in) and the persist stage (long answers going out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.context.extract import summarize
from core.contracts import HotStateWrite

if TYPE_CHECKING:
    from core.context.artifacts import ArtifactInfo
    from core.context.turn_view import TurnView

# Incoming or outgoing text above this many tokens is stored as an artifact, not inlined.
LONG_TEXT_TOKENS = 2000


async def store_text(turn: TurnView, text: str, *, label: str, kind: str) -> ArtifactInfo:
    """Store text as an artifact of this chat and index it in the hot state (once)."""
    services, inbound = turn.services, turn.inbound
    info = await services.artifacts.put(content=text.encode("utf-8"), media_type="text/plain", chat_id=inbound.chat_id,
                                  user_id=inbound.user_id, label=label[:200], summary=summarize(text),
                                  kind=kind, trace_id=inbound.trace_id, now=services.clock.iso())
    if info.linked:  # new to this chat: index it once
        await index_artifact(turn, info, label=label, kind=kind)
    return info


async def index_artifact(turn: TurnView, info: ArtifactInfo, *, label: str, kind: str) -> None:
    line = f"{info.ref} {kind} {label[:60]}: {info.summary[:120]}"
    write = HotStateWrite(producer="pipeline", source="gateway", trace_id=turn.inbound.trace_id,
                          chat_id=turn.inbound.chat_id, add=(("artifacts", line),))
    turn.guard.check(write, producer=write.producer)
    await turn.services.hot_state.apply(turn.inbound.chat_id, write, now=turn.services.clock.iso())
