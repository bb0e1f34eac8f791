"""The agent's tools, in OpenAI tool-calling format, and strict validation of their arguments.

The JSON schemas tell the model what to send; `validate_tool_arguments` checks what it did
send, by hand and strictly (no bool for an int, no extra keys), because models do not always
honour a schema and a wrong shape must become a named ContractViolation, not a crash deeper in.
The `artifacts` section is not writable by the agent: the gateway keeps that index (so refs in
it are real), the agent may still remove its items by number.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from core.context.artifacts import MAX_SLICE_TOKENS
from core.context.hot_state import MAX_ADDS_PER_WRITE, MAX_ITEM_CHARS, MAX_OBJECTIVE_CHARS
from core.context.tokens import TokenCounter
from core.contracts import ContractViolation, HotStateWrite, ToolSpec

MAX_TOOL_ROUNDS = 4
READ_ARTIFACT_MAX_TOKENS = MAX_SLICE_TOKENS
MAX_REMOVES_PER_WRITE = 50
AGENT_SECTIONS = ("constraints", "decisions", "facts", "open_questions", "last_step")

UPDATE_HOT_STATE = ToolSpec(
    name="update_hot_state",
    description=(
        "Update this chat's working memory (the <hot_state> block): set the objective, add short"
        " items to a section, or remove items by their [number]. Keep items short and factual."),
    parameters={
        "type": "object",
        "properties": {
            "set_objective": {"type": "string", "maxLength": MAX_OBJECTIVE_CHARS,
                              "description": "The conversation's current goal; empty string clears it."},
            "add": {"type": "array", "maxItems": MAX_ADDS_PER_WRITE, "items": {
                "type": "object",
                "properties": {"section": {"type": "string", "enum": list(AGENT_SECTIONS)},
                               "text": {"type": "string", "minLength": 1, "maxLength": MAX_ITEM_CHARS}},
                "required": ["section", "text"], "additionalProperties": False}},
            "remove": {"type": "array", "maxItems": MAX_REMOVES_PER_WRITE,
                       "items": {"type": "integer", "minimum": 1},
                       "description": "Item numbers to remove, as shown in [brackets]."},
        },
        "additionalProperties": False,
    },
)

READ_ARTIFACT = ToolSpec(
    name="read_artifact",
    description=(
        "Read part of a stored document or archive by its artifact://... reference. Returns up to"
        " max_tokens tokens from offset, and the offset of the next part when there is more."),
    parameters={
        "type": "object",
        "properties": {
            "ref": {"type": "string", "maxLength": 100, "description": "artifact:// plus at least 12 hex digits"},
            "offset": {"type": "integer", "minimum": 0, "default": 0},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": READ_ARTIFACT_MAX_TOKENS,
                           "default": READ_ARTIFACT_MAX_TOKENS},
        },
        "required": ["ref"],
        "additionalProperties": False,
    },
)

TOOLS: tuple[ToolSpec, ...] = (UPDATE_HOT_STATE, READ_ARTIFACT)


def _fail(field: str, detail: str) -> None:
    raise ContractViolation("tool_arguments_valid", field=field, producer="llm", detail=detail)


def _check_keys(value: Any, field: str, *, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
    if not isinstance(value, dict):
        _fail(field, f"must be a JSON object, got {type(value).__name__}")
    extra = sorted(str(key) for key in value if key not in allowed)
    if extra:
        _fail(field, f"unknown keys {extra[:5]}; allowed: {list(allowed)}")
    missing = [key for key in required if key not in value]
    if missing:
        _fail(field, f"missing keys {missing}")


def _integer(value: Any, field: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, f"must be an integer, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        _fail(field, f"must be within {minimum}..{maximum if maximum is not None else 'inf'}, got {value}")
    return value


def _string(value: Any, field: str, *, max_length: int, min_length: int = 0) -> str:
    if not isinstance(value, str):
        _fail(field, f"must be a string, got {type(value).__name__}")
    if not min_length <= len(value) <= max_length:
        _fail(field, f"length must be within {min_length}..{max_length}, got {len(value)}")
    return value


def _array(value: Any, field: str, *, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        _fail(field, f"must be an array, got {type(value).__name__}")
    if len(value) > max_items:
        _fail(field, f"at most {max_items} entries, got {len(value)}")
    return value


def _update_hot_state(arguments: dict[str, Any]) -> dict[str, Any]:
    _check_keys(arguments, "arguments", allowed=("set_objective", "add", "remove"))
    if not arguments:
        _fail("arguments", "nothing to update: give set_objective, add or remove")
    objective = arguments.get("set_objective")
    if objective is not None:
        _string(objective, "set_objective", max_length=MAX_OBJECTIVE_CHARS)
    additions: list[dict[str, str]] = []
    for index, entry in enumerate(_array(arguments.get("add", []), "add", max_items=MAX_ADDS_PER_WRITE)):
        field = f"add[{index}]"
        _check_keys(entry, field, allowed=("section", "text"), required=("section", "text"))
        section = _string(entry["section"], f"{field}.section", max_length=40)
        if section not in AGENT_SECTIONS:
            _fail(f"{field}.section", f"must be one of {list(AGENT_SECTIONS)}, got {section!r}")
        text = _string(entry["text"], f"{field}.text", min_length=1, max_length=MAX_ITEM_CHARS)
        if not text.strip():
            _fail(f"{field}.text", "must not be blank")
        additions.append({"section": section, "text": text})
    removals = [_integer(n, f"remove[{i}]", minimum=1) for i, n in
                enumerate(_array(arguments.get("remove", []), "remove", max_items=MAX_REMOVES_PER_WRITE))]
    return {"set_objective": objective, "add": additions, "remove": removals}


def _read_artifact(arguments: dict[str, Any]) -> dict[str, Any]:
    _check_keys(arguments, "arguments", allowed=("ref", "offset", "max_tokens"), required=("ref",))
    return {
        "ref": _string(arguments["ref"], "ref", min_length=1, max_length=100),
        "offset": _integer(arguments.get("offset", 0), "offset", minimum=0),
        "max_tokens": _integer(arguments.get("max_tokens", READ_ARTIFACT_MAX_TOKENS), "max_tokens",
                               minimum=1, maximum=READ_ARTIFACT_MAX_TOKENS),
    }


_VALIDATORS = {UPDATE_HOT_STATE.name: _update_hot_state, READ_ARTIFACT.name: _read_artifact}


def validate_tool_arguments(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Arguments normalised with defaults filled in; ContractViolation("tool_arguments_valid")
    for an unknown tool or a wrong shape. The shape is the schema's: update_hot_state gives
    `set_objective` (str | None), `add` (list of {section, text}), `remove` (list of int);
    read_artifact gives `ref`, `offset`, `max_tokens`."""
    validator = _VALIDATORS.get(name)
    if validator is None:
        _fail("name", f"unknown tool {name[:64]!r}; tools: {sorted(_VALIDATORS)}")
    return validator(arguments)  # type: ignore[misc]


def to_hot_state_write(arguments: dict[str, Any], *, trace_id: str, chat_id: int) -> HotStateWrite:
    """An agent's update_hot_state call as a HotStateWrite (validated twice: tool, then contract)."""
    checked = validate_tool_arguments(UPDATE_HOT_STATE.name, arguments)
    # Not `contracts.build`: its own `producer` parameter collides with the model's field.
    try:
        return HotStateWrite(producer="pipeline", source="agent", trace_id=trace_id, chat_id=chat_id,
                             set_objective=checked["set_objective"], remove=tuple(checked["remove"]),
                             add=tuple((entry["section"], entry["text"]) for entry in checked["add"]))
    except ValidationError as error:
        first = error.errors()[0]
        _fail(".".join(str(p) for p in first["loc"]) or "arguments", first["msg"])
        raise  # unreachable: _fail raises


def tools_tokens(*, counter: TokenCounter, tools: tuple[ToolSpec, ...] = TOOLS) -> int:
    """An estimate of what the tool specs cost in the prompt (their JSON, counted once). Spaced
    JSON, not compact: it counts a few more tokens, so the budget errs on the safe side."""
    if not tools:
        return 0
    return counter.count(json.dumps([t.to_openai() for t in tools]))
