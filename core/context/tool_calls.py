"""Running the agent's tool calls. Every outcome, a tool's own refusal (bad ref, no text) or a call
the model got wrong (`InvalidToolArguments`), goes back to the model as the call's result.

The result joins this turn's prompt, which must stay within the budget: the oldest history
messages leave the prompt to make room (they stay stored), and an artifact slice is cut to
what fits once they have (at most READ_ARTIFACT_MAX_TOKENS).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from opentelemetry import trace

from core.context.artifacts import ArtifactCorrupt, ArtifactRefError
from core.context.images import load_image
from core.context.room import make_room, tool_result_room
from core.context.tools import (
    READ_ARTIFACT_MAX_TOKENS,
    InvalidToolArguments,
    ReadArtifactArguments,
    UpdateHotStateArguments,
    ViewImageArguments,
    parse_tool_call,
    to_hot_state_write,
)

if TYPE_CHECKING:
    from core.context.turn_view import TurnView
    from core.contracts import ToolCall

log = logging.getLogger(__name__)
# Below this many tokens of room a slice is not worth sending: the model is told the window is full.
MIN_SLICE_TOKENS = 32
WINDOW_FULL = ("this turn's context window is full: answer with what you have read, "
               "and read further in a later turn")


async def execute_tool(turn: TurnView, call: ToolCall) -> str:
    """Run one tool call; the text is the tool message the model reads next round."""
    services, inbound = turn.services, turn.inbound
    with services.tracer.start_as_current_span(f"tool {call.name[:64]}") as span:
        span.set_attribute("gen_ai.tool.name", call.name[:64])
        try:
            arguments = parse_tool_call(call)
            if isinstance(arguments, UpdateHotStateArguments):
                write = to_hot_state_write(arguments, trace_id=inbound.trace_id, chat_id=inbound.chat_id)
                turn.guard.check(write, producer=write.producer)
                _, notes = await services.hot_state.apply(inbound.chat_id, write, now=services.clock.iso())
                return _fitted(turn, json.dumps({"ok": True, "notes": notes}))
            if isinstance(arguments, ViewImageArguments):
                return await _view_image(turn, arguments, span)
            assert isinstance(arguments, ReadArtifactArguments)
            return await _read_artifact(turn, arguments, span)
        except InvalidToolArguments as invalid:
            # The model's mistake, told to the model: it gets its next round to correct the call.
            span.set_attributes({"tool.invalid_field": invalid.field, "tool.invalid": str(invalid)[:300]})
            log.info("tool call %s answered as invalid: %s", call.id, invalid)
            return _fitted(turn, invalid.for_model())


def _fitted(turn: TurnView, content: str) -> str:
    make_room(turn, turn.services.counter.count_message(content))
    return content


def _error(turn: TurnView, message: str) -> str:
    return _fitted(turn, json.dumps({"ok": False, "error": message}))


async def _view_image(turn: TurnView, arguments: ViewImageArguments, span: trace.Span) -> str:
    """The image joins the prompt for the rest of this turn: the llm stage attaches the images the
    turn's view_image calls loaded as a user message after the tool results."""
    services = turn.services
    if not services.settings.llm_vision:
        return _error(turn, "this model cannot see images (LLM_VISION=false)")
    try:
        image = await load_image(services.artifacts, turn.inbound.chat_id, arguments.ref)
    except ArtifactRefError as error:
        return _error(turn, str(error))
    except ArtifactCorrupt as error:
        log.error("image unreadable in chat %s: %s", turn.inbound.chat_id, error)
        return _error(turn, f"{error}: it cannot be read")
    if not make_room(turn, image.tokens):
        return _error(turn, WINDOW_FULL)
    turn.viewed_images.append(image.url)
    span.set_attributes({"artifact.ref": image.ref, "image.tokens": image.tokens})
    return _fitted(turn, json.dumps({"ok": True, "ref": image.ref,
                                     "note": "the picture is attached in the next message"}))


async def _read_artifact(turn: TurnView, arguments: ReadArtifactArguments, span: trace.Span) -> str:
    services, chat_id = turn.services, turn.inbound.chat_id
    try:
        info = await services.artifacts.resolve(chat_id, arguments.ref)
    except ArtifactRefError as error:
        return _error(turn, str(error))
    if info.tokens is None:
        return _error(turn, f"{info.ref} ({info.media_type}) has no text to read")
    capped = arguments.max_tokens > READ_ARTIFACT_MAX_TOKENS
    # The JSON envelope and its escaping cost a little more than the slice: measure, then trim.
    limit = min(arguments.max_tokens, READ_ARTIFACT_MAX_TOKENS, tool_result_room(turn) - MIN_SLICE_TOKENS)
    for _ in range(4):
        if limit < MIN_SLICE_TOKENS:
            return _error(turn, WINDOW_FULL)
        try:
            piece = await services.artifacts.read_text_slice(info, offset_tokens=arguments.offset, max_tokens=limit)
        except ArtifactCorrupt as error:  # the operator's problem; the model is told it cannot be read
            log.error("artifact unreadable in chat %s: %s", chat_id, error)
            return _error(turn, f"{error}: it cannot be read")
        result = {"ok": True, "ref": info.ref, "offset": piece.offset, "next_offset": piece.next_offset,
                  "total_tokens": piece.total_tokens, "text": piece.text}
        if capped:  # asked for more than one call returns: said so, not refused
            result["capped_at"] = READ_ARTIFACT_MAX_TOKENS
            result["note"] = (f"max_tokens is capped at {READ_ARTIFACT_MAX_TOKENS} per call; "
                              "read on from next_offset")
        content = json.dumps(result, ensure_ascii=False)
        tokens = services.counter.count_message(content)
        excess = tokens - tool_result_room(turn)
        if excess <= 0:
            break
        limit -= excess
    else:
        return _error(turn, "this turn's context window is full")
    make_room(turn, tokens)
    span.set_attributes({"artifact.ref": info.ref, "artifact.slice_offset": piece.offset,
                         "artifact.slice_tokens": tokens, "artifact.capped": capped})
    return content
