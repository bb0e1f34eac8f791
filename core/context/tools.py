"""The agent's tools: each tool's arguments are a pydantic model, and the JSON schema offered to the
model is generated from that model, so what the model is told and what is checked cannot drift.

Models do not always honour a schema. Arguments that do not validate (or a tool that does not
exist) are not a broken answer: `InvalidToolArguments` says which field is wrong and what is
allowed, and the llm stage sends that back to the model as the tool's result, so it can correct
itself in its next round. The `artifacts` section is not writable by the agent: the gateway keeps
that index (so refs in it are real); the agent may still remove its items by number.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.context.artifacts import MAX_SLICE_TOKENS
from core.context.hot_state import MAX_ADDS_PER_WRITE, MAX_ITEM_CHARS, MAX_OBJECTIVE_CHARS
from core.context.tokens import TokenCounter
from core.contracts import ContractViolation, HotStateWrite, ToolCall, ToolSpec

MAX_TOOL_ROUNDS = 4
READ_ARTIFACT_MAX_TOKENS = MAX_SLICE_TOKENS
MAX_REMOVES_PER_WRITE = 50
AgentSection = Literal["constraints", "decisions", "facts", "open_questions", "last_step"]
AGENT_SECTIONS: tuple[str, ...] = get_args(AgentSection)
# How much of a wrong value is quoted back to the model.
QUOTED_INPUT_CHARS = 80


class ToolArguments(BaseModel):
    """Strict: no bool for an int, no "3" for 3, no keys the schema does not name."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class HotStateItem(ToolArguments):
    section: AgentSection
    text: str = Field(min_length=1, max_length=MAX_ITEM_CHARS)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("must not be blank")
        return text


class UpdateHotStateArguments(ToolArguments):
    set_objective: str | None = Field(default=None, max_length=MAX_OBJECTIVE_CHARS,
                                      description="The conversation's current goal; empty string clears it.")
    add: list[HotStateItem] = Field(default_factory=list, max_length=MAX_ADDS_PER_WRITE,
                                    description="Short items to add, each to one section.")
    remove: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list, max_length=MAX_REMOVES_PER_WRITE,
                                                      description="Item numbers to remove, as shown in [brackets].")

    @model_validator(mode="after")
    def _something_to_do(self) -> UpdateHotStateArguments:
        if self.set_objective is None and not self.add and not self.remove:
            raise ValueError("nothing to update: give set_objective, add or remove")
        return self


class ReadArtifactArguments(ToolArguments):
    ref: str = Field(min_length=1, max_length=100, description="artifact:// plus at least 12 hex digits")
    offset: int = Field(default=0, ge=0, description="Token offset to start at: 0, or the previous part's next_offset.")
    # No maximum here: asking for more is not an error, the result is cut at the cap and says so.
    max_tokens: int = Field(default=READ_ARTIFACT_MAX_TOKENS, ge=1,
                            description=f"Tokens to return; at most {READ_ARTIFACT_MAX_TOKENS} per call.")


class ViewImageArguments(ToolArguments):
    ref: str = Field(min_length=1, max_length=100, description="the image's artifact:// reference")


def parameters_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema as OpenAI-style tools take it: one object schema, nested models
    inlined (some OpenAI-compatible servers do not follow `$ref`), pydantic's titles dropped."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any, *, names: bool = False) -> Any:
        if isinstance(node, list):
            return [inline(item) for item in node]
        if not isinstance(node, dict):
            return node
        if not names and "$ref" in node:
            return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
        # Under "properties" the keys are field names (a field may be called "title"), not keywords.
        return {key: inline(value, names=key == "properties" and not names) for key, value in node.items()
                if names or key != "title"}

    return inline(schema)


def _spec(name: str, description: str, model: type[ToolArguments]) -> ToolSpec:
    return ToolSpec(name=name, description=description, parameters=parameters_schema(model))


UPDATE_HOT_STATE = _spec(
    "update_hot_state",
    "Update this chat's working memory (the <hot_state> block): set the objective, add short"
    " items to a section, or remove items by their [number]. Keep items short and factual.",
    UpdateHotStateArguments)
READ_ARTIFACT = _spec(
    "read_artifact",
    "Read part of a stored document or archive by its artifact://... reference. Returns up to"
    " max_tokens tokens from offset, and the offset of the next part when there is more.",
    ReadArtifactArguments)
VIEW_IMAGE = _spec(
    "view_image",
    "Look again at a picture of this chat by its artifact://... reference (older pictures are no"
    " longer attached to their message). The picture is attached for the rest of this turn.",
    ViewImageArguments)
TOOLS: tuple[ToolSpec, ...] = (UPDATE_HOT_STATE, READ_ARTIFACT, VIEW_IMAGE)
ARGUMENT_MODELS: dict[str, type[ToolArguments]] = {
    UPDATE_HOT_STATE.name: UpdateHotStateArguments, READ_ARTIFACT.name: ReadArtifactArguments,
    VIEW_IMAGE.name: ViewImageArguments}


class InvalidToolArguments(ValueError):
    """A tool call that cannot run as sent: `field` names the first wrong field ("name" for an
    unknown tool, "arguments" for the whole object); `problems` are the lines the model is told."""

    def __init__(self, tool: str, field: str, problems: list[str]) -> None:
        self.tool, self.field, self.problems = tool, field, problems
        super().__init__(f"{tool}: " + "; ".join(problems))

    def for_model(self) -> str:
        """The tool result the model gets instead of the tool's output."""
        return json.dumps({"ok": False, "error": f"invalid call of {self.tool[:64]!r}: " + "; ".join(self.problems)
                           + ". Fix the call and try again."}, ensure_ascii=False)


def _field_name(location: tuple[int | str, ...]) -> str:
    name = ""
    for part in location:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "arguments"


def _problems(error: ValidationError, model: type[ToolArguments]) -> tuple[str, list[str]]:
    problems: list[str] = []
    for item in error.errors(include_url=False):
        field = _field_name(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden" and len(item["loc"]) == 1:
            message += f" (allowed: {', '.join(model.model_fields)})"
        elif item["type"] not in ("missing", "extra_forbidden") and field != "arguments":
            message += f", got {json.dumps(item['input'], ensure_ascii=False)[:QUOTED_INPUT_CHARS]}"
        problems.append(f"{field}: {message}")
    first = _field_name(error.errors()[0]["loc"])
    return first, problems


def validate_tool_arguments(name: str, arguments: Any) -> ToolArguments:
    """The arguments as the tool's model (defaults filled in); InvalidToolArguments otherwise."""
    model = ARGUMENT_MODELS.get(name)
    if model is None:
        raise InvalidToolArguments(name, "name", [f"name: no such tool; the tools are {', '.join(sorted(ARGUMENT_MODELS))}"])
    if not isinstance(arguments, dict):
        raise InvalidToolArguments(name, "arguments", [f"arguments: must be a JSON object, got {type(arguments).__name__}"])
    try:
        return model.model_validate(arguments)
    except ValidationError as error:
        field, problems = _problems(error, model)
        raise InvalidToolArguments(name, field, problems) from None


def parse_tool_call(call: ToolCall) -> ToolArguments:
    """A call's arguments, including the case the adapter could not read them as a JSON object."""
    if call.arguments_error is not None:
        raise InvalidToolArguments(call.name, "arguments", [f"arguments: {call.arguments_error}"])
    return validate_tool_arguments(call.name, call.arguments)


def to_hot_state_write(arguments: UpdateHotStateArguments, *, trace_id: str, chat_id: int) -> HotStateWrite:
    """An agent's update_hot_state call as a HotStateWrite (whose own rules are checked too)."""
    try:
        return HotStateWrite.model_validate({  # named errors, unlike HotStateWrite(...)
            "producer": "pipeline", "source": "agent", "trace_id": trace_id, "chat_id": chat_id,
            "set_objective": arguments.set_objective, "remove": tuple(arguments.remove),
            "add": tuple((item.section, item.text) for item in arguments.add)})
    except ContractViolation as violation:
        raise InvalidToolArguments(UPDATE_HOT_STATE.name, violation.field,
                                   [f"{violation.field}: {violation.detail}"]) from None


def tools_tokens(*, counter: TokenCounter, tools: tuple[ToolSpec, ...] = TOOLS) -> int:
    """An estimate of what the tool specs cost in the prompt (their JSON, counted once). Spaced
    JSON, not compact: it counts a few more tokens, so the budget errs on the safe side."""
    if not tools:
        return 0
    return counter.count(json.dumps([t.to_openai() for t in tools]))
