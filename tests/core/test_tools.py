"""Tool specs generated from the argument models, and arguments the model got wrong told back to it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.context.tokens import counter_for_model
from core.context.tools import (
    AGENT_SECTIONS,
    MAX_TOOL_ROUNDS,
    READ_ARTIFACT,
    READ_ARTIFACT_MAX_TOKENS,
    TOOLS,
    UPDATE_HOT_STATE,
    InvalidToolArguments,
    ReadArtifactArguments,
    UpdateHotStateArguments,
    parameters_schema,
    parse_tool_call,
    to_hot_state_write,
    tools_tokens,
    validate_tool_arguments,
)
from core.contracts import ToolCall


def keys_anywhere(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | set().union(*(keys_anywhere(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(keys_anywhere(v) for v in node)) if node else set()
    return set()


def test_specs_are_openai_tools_generated_from_the_models() -> None:
    assert UPDATE_HOT_STATE.name == "update_hot_state" and READ_ARTIFACT.name == "read_artifact"
    for spec in TOOLS:
        function = spec.to_openai()["function"]
        parameters = function["parameters"]
        assert parameters["type"] == "object" and parameters["additionalProperties"] is False
        assert isinstance(parameters["properties"], dict)
        # Inlined and plain: no $ref/$defs some servers cannot follow, no pydantic titles.
        assert not {"$ref", "$defs", "title"} & keys_anywhere(parameters)
        json.dumps(function)  # JSON as it goes on the wire
    assert READ_ARTIFACT.parameters == parameters_schema(ReadArtifactArguments)
    assert READ_ARTIFACT.parameters["required"] == ["ref"]
    add = UPDATE_HOT_STATE.parameters["properties"]["add"]["items"]
    assert add["properties"]["section"]["enum"] == list(AGENT_SECTIONS) and add["required"] == ["section", "text"]
    max_tokens = READ_ARTIFACT.parameters["properties"]["max_tokens"]
    # No maximum: asking for more is answered with a capped slice, and the description says the cap.
    assert max_tokens["minimum"] == 1 and "maximum" not in max_tokens and "2000" in max_tokens["description"]
    assert MAX_TOOL_ROUNDS == 4 and 0 < tools_tokens(counter=counter_for_model("gpt-4o-mini"), tools=TOOLS)


def test_a_field_named_title_is_kept() -> None:
    from pydantic import BaseModel

    class Note(BaseModel):
        title: str

    assert parameters_schema(Note) == {"type": "object", "properties": {"title": {"type": "string"}},
                                       "required": ["title"]}


def test_valid_arguments_are_normalised() -> None:
    read = validate_tool_arguments("read_artifact", {"ref": "artifact://abcdefabcdef"})
    assert read == ReadArtifactArguments(ref="artifact://abcdefabcdef", offset=0, max_tokens=READ_ARTIFACT_MAX_TOKENS)
    assert validate_tool_arguments("read_artifact", {"ref": "x", "max_tokens": 5000}).max_tokens == 5000
    checked = validate_tool_arguments("update_hot_state", {"add": [{"section": "facts", "text": "x"}], "remove": [3]})
    assert isinstance(checked, UpdateHotStateArguments)
    assert (checked.set_objective, [(i.section, i.text) for i in checked.add], checked.remove) == (None, [("facts", "x")], [3])
    write = to_hot_state_write(validate_tool_arguments("update_hot_state", {"set_objective": "goal", "remove": [1]}),
                               trace_id="ab" * 16, chat_id=5)
    assert write.source == "agent" and write.set_objective == "goal" and write.remove == (1,) and write.add == ()


@pytest.mark.parametrize(("name", "arguments", "field", "told"), [
    ("delete_everything", {}, "name", "the tools are read_artifact, update_hot_state"),
    ("read_artifact", {}, "ref", "ref: Field required"),
    ("read_artifact", {"ref": 5}, "ref", "valid string, got 5"),
    ("read_artifact", {"ref": "x", "offset": True}, "offset", "valid integer, got true"),
    ("read_artifact", {"ref": "x", "offset": -1}, "offset", "greater than or equal to 0, got -1"),
    ("read_artifact", {"ref": "x", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ("read_artifact", {"ref": "x", "max_tokens": 10.0}, "max_tokens", "valid integer"),
    ("read_artifact", {"ref": "x", "extra": 1}, "extra", "allowed: ref, offset, max_tokens"),
    ("read_artifact", ["ref"], "arguments", "must be a JSON object"),
    ("update_hot_state", {}, "arguments", "nothing to update"),
    ("update_hot_state", {"set_objective": 3}, "set_objective", "valid string"),
    ("update_hot_state", {"add": {"section": "facts", "text": "x"}}, "add", "valid list"),
    ("update_hot_state", {"add": [{"section": "artifacts", "text": "x"}]}, "add[0].section",
     "'constraints', 'decisions', 'facts', 'open_questions' or 'last_step', got \"artifacts\""),
    ("update_hot_state", {"add": [{"section": "facts"}]}, "add[0].text", "Field required"),
    ("update_hot_state", {"add": [{"section": "facts", "text": "x", "n": 1}]}, "add[0].n", "not permitted"),
    ("update_hot_state", {"add": [{"section": "facts", "text": "   "}]}, "add[0].text", "must not be blank"),
    ("update_hot_state", {"add": [{"section": "facts", "text": "y" * 501}]}, "add[0].text", "at most 500"),
    ("update_hot_state", {"remove": [True]}, "remove[0]", "valid integer"),
    ("update_hot_state", {"remove": ["3"]}, "remove[0]", "valid integer"),
    ("update_hot_state", {"remove": [0]}, "remove[0]", "greater than or equal to 1"),
    ("update_hot_state", {"remove": list(range(1, 60))}, "remove", "at most 50 items"),
])
def test_invalid_arguments_name_the_field_and_what_is_allowed(name: str, arguments: object, field: str,
                                                               told: str) -> None:
    with pytest.raises(InvalidToolArguments) as caught:
        validate_tool_arguments(name, arguments)
    assert caught.value.field == field
    result = json.loads(caught.value.for_model())
    assert result["ok"] is False and field in result["error"] and told in result["error"], result["error"]


def test_arguments_the_adapter_could_not_read_are_told_as_such() -> None:
    call = ToolCall(id="c1", name="read_artifact", arguments={}, arguments_error="arguments are not JSON (x)")
    with pytest.raises(InvalidToolArguments) as caught:
        parse_tool_call(call)
    assert caught.value.field == "arguments" and "not JSON" in caught.value.for_model()
