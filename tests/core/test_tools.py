"""Tool specs and strict validation of the arguments a model sends."""

from __future__ import annotations

import pytest

from core.context.tokens import counter_for_model
from core.context.tools import (
    AGENT_SECTIONS,
    MAX_TOOL_ROUNDS,
    READ_ARTIFACT,
    READ_ARTIFACT_MAX_TOKENS,
    TOOLS,
    UPDATE_HOT_STATE,
    to_hot_state_write,
    tools_tokens,
    validate_tool_arguments,
)
from core.contracts import ContractViolation


def test_specs_are_openai_tools() -> None:
    assert UPDATE_HOT_STATE.name == "update_hot_state" and READ_ARTIFACT.name == "read_artifact"
    spec = UPDATE_HOT_STATE.to_openai()
    assert spec["type"] == "function" and spec["function"]["parameters"]["additionalProperties"] is False
    add = spec["function"]["parameters"]["properties"]["add"]["items"]
    assert add["properties"]["section"]["enum"] == list(AGENT_SECTIONS)
    max_tokens = READ_ARTIFACT.parameters["properties"]["max_tokens"]
    assert (max_tokens["minimum"], max_tokens["maximum"]) == (1, READ_ARTIFACT_MAX_TOKENS) == (1, 2000)
    assert MAX_TOOL_ROUNDS == 4 and 0 < tools_tokens(counter=counter_for_model("gpt-4o-mini"), tools=TOOLS)


def test_valid_arguments_are_normalised() -> None:
    assert validate_tool_arguments("read_artifact", {"ref": "artifact://abcdefabcdef"}) == {
        "ref": "artifact://abcdefabcdef", "offset": 0, "max_tokens": 2000}
    checked = validate_tool_arguments("update_hot_state", {"add": [{"section": "facts", "text": "x"}], "remove": [3]})
    assert checked == {"set_objective": None, "add": [{"section": "facts", "text": "x"}], "remove": [3]}
    write = to_hot_state_write({"set_objective": "goal", "remove": [1]}, trace_id="ab" * 16, chat_id=5)
    assert write.source == "agent" and write.set_objective == "goal" and write.remove == (1,) and write.add == ()
    write = to_hot_state_write({"add": [{"section": "facts", "text": "x"}]}, trace_id="ab" * 16, chat_id=5)
    assert write.add == (("facts", "x"),)


@pytest.mark.parametrize(("name", "arguments", "field"), [
    ("delete_everything", {}, "name"),
    ("read_artifact", {}, "arguments"),
    ("read_artifact", {"ref": 5}, "ref"),
    ("read_artifact", {"ref": "x", "offset": True}, "offset"),
    ("read_artifact", {"ref": "x", "offset": -1}, "offset"),
    ("read_artifact", {"ref": "x", "max_tokens": 2001}, "max_tokens"),
    ("read_artifact", {"ref": "x", "max_tokens": 10.0}, "max_tokens"),
    ("read_artifact", {"ref": "x", "extra": 1}, "arguments"),
    ("read_artifact", ["ref"], "arguments"),
    ("update_hot_state", {}, "arguments"),
    ("update_hot_state", {"set_objective": 3}, "set_objective"),
    ("update_hot_state", {"add": {"section": "facts", "text": "x"}}, "add"),
    ("update_hot_state", {"add": [{"section": "artifacts", "text": "x"}]}, "add[0].section"),
    ("update_hot_state", {"add": [{"section": "facts"}]}, "add[0]"),
    ("update_hot_state", {"add": [{"section": "facts", "text": "x", "n": 1}]}, "add[0]"),
    ("update_hot_state", {"add": [{"section": "facts", "text": "   "}]}, "add[0].text"),
    ("update_hot_state", {"add": [{"section": "facts", "text": "y" * 501}]}, "add[0].text"),
    ("update_hot_state", {"remove": [True]}, "remove[0]"),
    ("update_hot_state", {"remove": ["3"]}, "remove[0]"),
    ("update_hot_state", {"remove": [0]}, "remove[0]"),
    ("update_hot_state", {"remove": list(range(1, 60))}, "remove"),
])
def test_invalid_arguments_are_contract_violations(name: str, arguments: object, field: str) -> None:
    with pytest.raises(ContractViolation) as error:
        validate_tool_arguments(name, arguments)  # type: ignore[arg-type]
    assert error.value.invariant == "tool_arguments_valid" and error.value.producer == "llm"
    assert error.value.field == field
