"""One test per named invariant: a minimal violating example and the error that names it.

Every violation is a `ContractViolation` carrying the invariant, the offending field and the
producer, whether it comes from pydantic (types, literals, bounds, unknown fields), from a
model validator, from `TurnGuard`, or from the LLM adapter checking what a provider sent.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry import trace

from core.context.tokens import counter_for_model
from core.context.tools import (
    InvalidToolArguments,
    parse_tool_call,
    to_hot_state_write,
    validate_tool_arguments,
)
from core.contracts import (
    AgentRequest,
    Attachment,
    ChatMessage,
    ContextPlan,
    Contract,
    ContractViolation,
    DlqEntry,
    Escalation,
    HotStateWrite,
    InboundMessage,
    LLMResult,
    ReplyEvent,
    TokenUsage,
    ToolCall,
    TurnGuard,
    UsageRecord,
    build,
    check_message_list,
)
from core.llm import OpenAICompatibleLLM
from tests.fakes.llm_api import FakeLLM, Malformed, Reply, ToolCalls

TRACE = "0123456789abcdef0123456789abcdef"
OTHER_TRACE = "f" * 32
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def violation(make: Any) -> ContractViolation:
    """Run `make()` and return the ContractViolation it must raise."""
    with pytest.raises(ContractViolation) as caught:
        make()
    error = caught.value
    assert f"[{error.invariant}]" in str(error) and f"field={error.field}" in str(error)
    assert f"producer={error.producer}" in str(error)
    return error


def expect(make: Any, invariant: str, field: str, producer: str) -> ContractViolation:
    error = violation(make)
    assert (error.invariant, error.field, error.producer) == (invariant, field, producer), str(error)
    return error


def new(model: type[Contract], /, **data: Any) -> Contract:
    """Make a contract from data the way code that takes data in does: through `model_validate`,
    whose errors are named (a direct `Model(...)` raises pydantic's own ValidationError)."""
    return model.model_validate(data)


def inbound(**overrides: Any) -> InboundMessage:
    data: dict[str, Any] = {"update_id": 1, "trace_id": TRACE, "chat_id": 100, "chat_type": "private",
                            "user_id": 100, "text": "hi", "received_at": NOW}
    return InboundMessage.model_validate({**data, **overrides})


def usage(input_tokens: int = 10, output_tokens: int = 5) -> TokenUsage:
    return TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens,
                      total_tokens=input_tokens + output_tokens)


SYSTEM = ChatMessage(role="system", content="You are helpful.")
USER = ChatMessage(role="user", content="hello")


def call(call_id: str = "c1") -> ToolCall:
    return ToolCall(id=call_id, name="read_artifact", arguments={"ref": "artifact://0123456789ab"})


def assistant_calls(*ids: str) -> ChatMessage:
    return ChatMessage(role="assistant", tool_calls=tuple(call(i) for i in ids))


def tool_result(call_id: str | None) -> ChatMessage:
    return ChatMessage(role="tool", tool_call_id=call_id, content='{"ok": true}')


def request(*messages: ChatMessage, **overrides: Any) -> AgentRequest:
    data: dict[str, Any] = {"producer": "pipeline", "trace_id": TRACE, "chat_id": 100, "user_id": 100,
                            "model": "gpt-4o-mini", "messages": messages, "max_output_tokens": 100}
    return AgentRequest.model_validate({**data, **overrides})


def plan(**overrides: int) -> ContextPlan:
    data = {"system_tokens": 300, "hot_state_tokens": 100, "hot_state_cap": 1000, "history_tokens": 50,
            "history_kept": 2, "history_dropped": 0, "current_tokens": 10, "tools_tokens": 40,
            "artifact_count": 0, "total_tokens": 400, "budget_tokens": 1000}
    data.update(overrides)
    return ContextPlan.model_validate(data)


# role_exclusivity -------------------------------------------------------------------------------

ROLE_CASES = [
    ("AgentRequest made by a channel", lambda: request(SYSTEM, USER, producer="channel"), "channel"),
    ("LLMResult made by the pipeline",
     lambda: new(LLMResult, producer="pipeline", trace_id=TRACE, text="hi", finish_reason="stop", usage=usage(),
                       model="m"), "pipeline"),
    ("LLMResult made by a channel",
     lambda: new(LLMResult, producer="channel", trace_id=TRACE, text="hi", finish_reason="stop", usage=usage(),
                       model="m"), "channel"),
    ("Escalation made by the LLM",
     lambda: new(Escalation, producer="llm", key="k", kind="internal", severity="error", summary="s"), "llm"),
    ("HotStateWrite made by a channel",
     lambda: new(HotStateWrite, producer="channel", source="user", trace_id=TRACE, chat_id=1), "channel"),
    ("HotStateWrite made by the LLM",
     lambda: new(HotStateWrite, producer="llm", source="agent", trace_id=TRACE, chat_id=1), "llm"),
    ("InboundMessage made by the pipeline", lambda: inbound(producer="pipeline"), "pipeline"),
    ("ReplyEvent made by a channel",
     lambda: new(ReplyEvent, producer="channel", kind="final", trace_id=TRACE, chat_id=1, text="x"), "channel"),
]


@pytest.mark.parametrize(("make", "claimed"), [c[1:] for c in ROLE_CASES], ids=[c[0] for c in ROLE_CASES])
def test_role_exclusivity(make: Any, claimed: str) -> None:
    expect(make, "role_exclusivity", "producer", claimed)


def test_role_exclusivity_via_build_names_who_built_it() -> None:
    error = expect(lambda: build(AgentRequest, "agent_request_valid", "channel", producer="channel",
                                 trace_id=TRACE, chat_id=1, user_id=1, model="m", messages=(SYSTEM, USER),
                                 max_output_tokens=5), "role_exclusivity", "producer", "channel")
    assert "'pipeline'" in error.detail


def test_the_right_producers_are_accepted() -> None:
    assert request(SYSTEM, USER).producer == "pipeline"
    assert LLMResult(producer="llm", trace_id=TRACE, text="hi", finish_reason="stop", usage=usage(),
                     model="m").producer == "llm"
    assert inbound().producer == "channel"


# message_list_well_formed ----------------------------------------------------------------------

MESSAGE_LIST_CASES = [
    ("system not first", (USER, SYSTEM), "messages[0]", "first message must be the system message"),
    ("no messages at all", (), "messages[0]", "first message must be the system message"),
    ("two system messages", (SYSTEM, USER, SYSTEM), "messages[2]", "only one system message"),
    ("tool result answering no call", (SYSTEM, USER, tool_result("nope")), "messages[2]", "answers no call"),
    ("tool result without a call id", (SYSTEM, USER, assistant_calls("c1"), tool_result(None)),
     "messages[3]", "needs the tool_call_id"),
    ("call answered twice", (SYSTEM, USER, assistant_calls("c1"), tool_result("c1"), tool_result("c1")),
     "messages[4]", "answered twice"),
    ("call answered in a later round", (SYSTEM, USER, assistant_calls("c1"), tool_result("c1"),
                                        assistant_calls("c2"), tool_result("c2"), tool_result("c1")),
     "messages[6]", "answered twice"),
    ("unanswered call before the next turn", (SYSTEM, USER, assistant_calls("c1", "c2"), tool_result("c1"),
                                              ChatMessage(role="user", content="and?")),
     "messages[4]", "['c2'] were not answered"),
    ("unanswered call at the end", (SYSTEM, USER, assistant_calls("c1")), "messages[3]", "not answered"),
    ("empty user turn", (SYSTEM, ChatMessage(role="user", content="  \n")), "messages[1]", "empty user turn"),
    ("user turn without content", (SYSTEM, ChatMessage(role="user")), "messages[1]", "empty user turn"),
    ("duplicate call ids", (SYSTEM, USER, assistant_calls("c1", "c1"), tool_result("c1")), "messages[2]",
     "unique"),
    ("tool calls on a user message", (SYSTEM, ChatMessage(role="user", content="x", tool_calls=(call(),))),
     "messages[1]", "cannot carry tool calls"),
    ("empty assistant message", (SYSTEM, USER, ChatMessage(role="assistant", content="")), "messages[2]",
     "needs content or tool calls"),
]


@pytest.mark.parametrize(("messages", "field", "detail"), [c[1:] for c in MESSAGE_LIST_CASES],
                         ids=[c[0] for c in MESSAGE_LIST_CASES])
def test_message_list_well_formed(messages: tuple[ChatMessage, ...], field: str, detail: str) -> None:
    error = expect(lambda: request(*messages), "message_list_well_formed", field, "pipeline")
    assert detail in error.detail


def test_a_well_formed_tool_round_is_accepted() -> None:
    messages = (SYSTEM, ChatMessage(role="user", content="q"), ChatMessage(role="assistant", content="a"),
                USER, assistant_calls("c1", "c2"), tool_result("c2"), tool_result("c1"),
                assistant_calls("c3"), tool_result("c3"))
    assert len(request(*messages).messages) == 9


def reference_check_message_list(messages: Sequence[ChatMessage]) -> None:
    """`check_message_list` as first written (a plain loop), kept to compare the faster one with."""

    def fail(index: int, detail: str) -> None:
        raise ContractViolation("message_list_well_formed", field=f"messages[{index}]", producer="pipeline",
                                detail=detail)

    if not messages or messages[0].role != "system":
        fail(0, "the first message must be the system message")
    pending: set[str] = set()
    answered: set[str] = set()
    for index, message in enumerate(messages):
        role = message.role
        if message.tool_calls and role != "assistant":
            fail(index, f"a {role} message cannot carry tool calls")
        if message.tool_call_id is not None and role != "tool":
            fail(index, f"a {role} message cannot answer a tool call")
        if role == "tool":
            call_id = message.tool_call_id
            if call_id is None:
                fail(index, "a tool result needs the tool_call_id it answers")
            elif call_id in answered:
                fail(index, f"tool call {call_id!r} answered twice")
            elif call_id not in pending:
                fail(index, f"tool result {call_id!r} answers no call of the assistant message before it")
            pending.discard(call_id)  # type: ignore[arg-type]
            answered.add(call_id)  # type: ignore[arg-type]
            continue
        if pending:
            fail(index, f"tool calls {sorted(pending)} were not answered")
        if index and role == "system":
            fail(index, "only one system message is allowed")
        elif role == "user" and not (message.content or "").strip():
            fail(index, "empty user turn")
        elif role == "assistant":
            ids = [call.id for call in message.tool_calls]
            if len(set(ids)) != len(ids):
                fail(index, "tool call ids must be unique")
            if not ids and not (message.content or "").strip():
                fail(index, "an assistant message needs content or tool calls")
            pending = set(ids)
    if pending:
        fail(len(messages), f"tool calls {sorted(pending)} were not answered")


def outcome(check: Any, messages: tuple[ChatMessage, ...]) -> tuple[str, str] | None:
    try:
        check(messages)
    except ContractViolation as error:
        return error.field, error.detail
    return None


def test_message_list_check_agrees_with_the_plain_loop_on_every_short_list() -> None:
    """Every list of up to 4 messages from an alphabet of well- and ill-formed ones: the same
    verdict, the same field and the same detail as the straightforward loop."""
    alphabet = [
        SYSTEM, USER, ChatMessage(role="user", content=" \n"), ChatMessage(role="user"),
        ChatMessage(role="assistant", content="a"), ChatMessage(role="assistant", content=""),
        ChatMessage(role="assistant", content=" "),
        assistant_calls("c1"), assistant_calls("c1", "c2"), assistant_calls("c1", "c1"),
        tool_result("c1"), tool_result("c2"), tool_result(None),
        ChatMessage(role="user", content="x", tool_calls=(call(),)),
        ChatMessage(role="assistant", content="a", tool_call_id="c1"),
        ChatMessage(role="system", content="s", tool_calls=(call(),)),
        ChatMessage.model_construct(role="narrator", content="x", tool_calls=(), tool_call_id=None),
    ]
    checked = 0
    for length in range(5):
        for messages in itertools.product(alphabet, repeat=length):
            assert outcome(check_message_list, messages) == outcome(reference_check_message_list, messages), messages
            checked += 1
    assert checked == sum(len(alphabet) ** n for n in range(5))


# one_turn_identity ------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "item"), [
    ("trace_id", lambda: request(SYSTEM, USER, trace_id=OTHER_TRACE)),
    ("chat_id", lambda: request(SYSTEM, USER, chat_id=101)),
    ("user_id", lambda: request(SYSTEM, USER, user_id=101)),
    ("trace_id", lambda: new(LLMResult, producer="llm", trace_id=OTHER_TRACE, text="x", finish_reason="stop",
                                   usage=usage(), model="m")),
    ("chat_id", lambda: new(HotStateWrite, producer="pipeline", source="agent", trace_id=TRACE, chat_id=7)),
])
def test_one_turn_identity(field: str, item: Any) -> None:
    guard = TurnGuard(inbound())
    guard.check(request(SYSTEM, USER), producer="pipeline")  # the turn's own identity passes
    made = item()
    expect(lambda: guard.check(made, producer=made.producer), "one_turn_identity", field, made.producer)


def test_a_dlq_entry_keeps_its_turns_identity() -> None:
    expect(lambda: DlqEntry(trace_id=TRACE, chat_id=100, user_id=999, inbound=inbound(), error_kind="internal",
                            error_message="x", replayable=False), "one_turn_identity", "user_id", "pipeline")


# counts_sane, hot_state_within_cap, prompt_within_budget ---------------------------------------

@pytest.mark.parametrize(("make", "field", "producer"), [
    (lambda: new(TokenUsage, input_tokens=-1, output_tokens=0, total_tokens=-1), "input_tokens", "llm"),
    (lambda: new(TokenUsage, input_tokens=1, output_tokens=2, total_tokens=4), "total_tokens", "llm"),
    (lambda: plan(current_tokens=-3), "current_tokens", "pipeline"),
    (lambda: plan(total_tokens=401), "total_tokens", "pipeline"),
    (lambda: plan(history_tokens=0, total_tokens=350, history_kept=0, history_dropped=-1), "history_dropped",
     "pipeline"),
    (lambda: plan(history_kept=0), "history_tokens", "pipeline"),
    (lambda: plan(hot_state_tokens=301, hot_state_cap=1000), "hot_state_tokens", "pipeline"),
    (lambda: new(UsageRecord, at=NOW, trace_id=TRACE, chat_id=1, user_id=1, model="m", usage=usage(), cost_usd=-0.01,
                         wasted=False), "cost_usd", "pipeline"),
    (lambda: new(UsageRecord, at=NOW, trace_id=TRACE, chat_id=1, user_id=1, model="m", usage=usage(),
                         cost_usd=float("nan"), wasted=False), "cost_usd", "pipeline"),
    (lambda: new(LLMResult, producer="llm", trace_id=TRACE, text="", finish_reason="stop", usage=usage(), model="m",
                       latency_s=-1.0), "latency_s", "llm"),
    (lambda: request(SYSTEM, USER, max_output_tokens=0), "max_output_tokens", "pipeline"),
    (lambda: new(Attachment, file_id="f", size_bytes=-1), "size_bytes", "channel"),
])
def test_counts_sane(make: Any, field: str, producer: str) -> None:
    expect(make, "counts_sane", field, producer)


def test_usage_total_is_the_sum_of_its_parts_in_the_error() -> None:
    error = violation(lambda: new(TokenUsage, input_tokens=100, output_tokens=20, total_tokens=100))
    assert "100 != input_tokens 100 + output_tokens 20" in error.detail


def test_hot_state_within_cap() -> None:
    error = expect(lambda: plan(hot_state_tokens=200, hot_state_cap=150), "hot_state_within_cap",
                   "hot_state_tokens", "pipeline")
    assert "200 > cap 150" in error.detail
    assert plan(hot_state_tokens=150, hot_state_cap=150).hot_state_tokens == 150  # the cap itself is fine


def test_prompt_within_budget() -> None:
    error = expect(lambda: plan(budget_tokens=399), "prompt_within_budget", "total_tokens", "pipeline")
    assert "400 > budget 399" in error.detail
    assert plan(budget_tokens=400).total_tokens == 400


# strict, closed, frozen --------------------------------------------------------------------------

def test_frozen_models_reject_mutation() -> None:
    message = inbound()
    expect(lambda: setattr(message, "text", "changed"), "immutable", "text", "channel")
    result = LLMResult(producer="llm", trace_id=TRACE, text="x", finish_reason="stop", usage=usage(), model="m")
    expect(lambda: setattr(result, "text", "y"), "immutable", "text", "llm")
    expect(lambda: delattr(result, "model"), "immutable", "model", "llm")
    assert message.text == "hi" and result.text == "x"
    assert message.model_copy(update={"text": "copy"}).text == "copy"  # a new value is made, not changed


@pytest.mark.parametrize(("make", "field", "producer"), [
    (lambda: inbound(is_admin=True), "is_admin", "channel"),
    (lambda: usage().model_validate({**usage().model_dump(), "cached": 1}), "cached", "llm"),
    (lambda: request(SYSTEM, USER, temperature=0.2), "temperature", "pipeline"),
    (lambda: new(ChatMessage, role="user", content="x", name="bob"), "name", "pipeline"),
])
def test_extra_fields_are_refused(make: Any, field: str, producer: str) -> None:
    expect(make, "no_unknown_fields", field, producer)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"chat_id": "100"}, "chat_id"),  # strict: no string-to-int coercion
    ({"user_id": True}, "user_id"),  # a bool is not an id
    ({"chat_id": 2**63}, "chat_id"),  # bigger than SQLite can store
    ({"chat_type": "sender"}, "chat_type"),
    ({"trace_id": "not-a-trace"}, "trace_id"),
    ({"text": "x" * 200_001}, "text"),
])
def test_inbound_schema_is_strict(overrides: dict[str, Any], field: str) -> None:
    expect(lambda: inbound(**overrides), "inbound_message_valid", field, "channel")


def test_inbound_text_rules() -> None:
    expect(lambda: inbound(text="   "), "no_empty_user_turn", "text", "channel")
    expect(lambda: inbound(text="bad \ud800 surrogate"), "text_is_unicode", "text", "channel")
    assert inbound(text="", attachment=Attachment(file_id="f")).attachment is not None


def test_consumer_side_revalidation_names_the_invariant() -> None:
    dumped = inbound().model_dump()
    assert InboundMessage.model_validate(dumped, strict=False) == inbound()
    expect(lambda: InboundMessage.model_validate({**dumped, "producer": "llm"}), "role_exclusivity", "producer",
           "llm")
    expect(lambda: InboundMessage.model_validate({**dumped, "text": ""}), "no_empty_user_turn", "text", "channel")
    assert InboundMessage.model_validate_json(inbound().model_dump_json()).text == "hi"


def test_build_reports_schema_errors_under_the_callers_invariant() -> None:
    expect(lambda: build(ToolCall, "tool_call_valid", "llm", id="c1", name="", arguments={}),
           "tool_call_valid", "name", "llm")


# what the LLM returns ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM("gpt-4o-mini").start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
async def llm(fake_llm: FakeLLM):  # noqa: ANN201
    adapter = OpenAICompatibleLLM(base_url=fake_llm.base_url, api_key="sk-test", model="gpt-4o-mini", timeout_s=5,
                                  tracer=trace.get_tracer("test"), counter=counter_for_model("gpt-4o-mini"))
    yield adapter
    await adapter.close()


async def test_llm_result_with_no_choices(fake_llm: FakeLLM, llm: OpenAICompatibleLLM) -> None:
    fake_llm.enqueue(Malformed("no_choices"))
    with pytest.raises(ContractViolation) as caught:
        await llm.complete(request(SYSTEM, USER))
    error = caught.value
    assert (error.invariant, error.field, error.producer) == ("llm_response_has_choices", "choices", "llm")


async def test_llm_tool_call_with_invalid_json_is_passed_on_with_the_reason(
        fake_llm: FakeLLM, llm: OpenAICompatibleLLM) -> None:
    fake_llm.enqueue(Malformed("bad_tool_json"))
    result = await llm.complete(request(SYSTEM, USER))  # the model's mistake: told to the model, not fatal
    [call] = result.tool_calls
    assert call.arguments == {} and call.arguments_error is not None and "not JSON" in call.arguments_error
    with pytest.raises(InvalidToolArguments) as caught:
        parse_tool_call(call)
    assert caught.value.field == "arguments" and "not JSON" in caught.value.for_model()


async def test_llm_tool_call_arguments_must_be_an_object(fake_llm: FakeLLM, llm: OpenAICompatibleLLM) -> None:
    fake_llm.enqueue(ToolCalls([("c1", "read_artifact", "[1, 2]")]))
    result = await llm.complete(request(SYSTEM, USER))
    assert result.tool_calls[0].arguments_error == "arguments must be a JSON object, got list"


@pytest.mark.parametrize("kind", ["not_json", "empty"])
async def test_llm_body_that_is_not_a_stream_is_a_violation_not_a_crash(
        fake_llm: FakeLLM, llm: OpenAICompatibleLLM, kind: str) -> None:
    fake_llm.enqueue(Malformed(kind))
    with pytest.raises(ContractViolation) as caught:
        await llm.complete(request(SYSTEM, USER))
    assert (caught.value.invariant, caught.value.producer) == ("llm_response_has_choices", "llm")


async def test_llm_unknown_tool_name(fake_llm: FakeLLM, llm: OpenAICompatibleLLM) -> None:
    fake_llm.enqueue(ToolCalls([("c1", "delete_everything", '{"really": true}')]))
    result = await llm.complete(request(SYSTEM, USER))  # well-formed JSON: the adapter passes it on
    assert result.producer == "llm" and result.tool_calls[0].name == "delete_everything"
    with pytest.raises(InvalidToolArguments) as caught:
        parse_tool_call(result.tool_calls[0])
    assert caught.value.field == "name" and "read_artifact, update_hot_state" in caught.value.for_model()


@pytest.mark.parametrize(("name", "arguments", "field"), [
    ("read_artifact", '{"ref": 12345}', "ref"),
    ("read_artifact", '{"ref": "artifact://0123456789ab", "offset": "10"}', "offset"),
    ("read_artifact", '{"ref": "artifact://0123456789ab", "max_tokens": true}', "max_tokens"),
    ("update_hot_state", '{"remove": [1.5]}', "remove[0]"),
    ("update_hot_state", '{"add": "facts: x"}', "add"),
])
async def test_llm_tool_arguments_of_the_wrong_type(fake_llm: FakeLLM, llm: OpenAICompatibleLLM, name: str,
                                                    arguments: str, field: str) -> None:
    fake_llm.enqueue(ToolCalls([("c1", name, arguments)]))
    result = await llm.complete(request(SYSTEM, USER))
    with pytest.raises(InvalidToolArguments) as caught:
        parse_tool_call(result.tool_calls[0])
    assert caught.value.field == field


async def test_a_good_answer_passes_every_check(fake_llm: FakeLLM, llm: OpenAICompatibleLLM) -> None:
    fake_llm.enqueue(Reply("fine", usage=(12, 3)))
    result = await llm.complete(request(SYSTEM, USER))
    assert (result.text, result.usage.total_tokens, result.usage.estimated) == ("fine", 15, False)


# how contracts are made: public paths only --------------------------------------------------------

def test_a_nested_error_is_named_by_its_path_in_the_outer_model() -> None:
    data = {"producer": "pipeline", "trace_id": TRACE, "chat_id": 1, "user_id": 1, "model": "m",
            "max_output_tokens": 5, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": 5}]}
    expect(lambda: AgentRequest.model_validate(data, strict=False), "agent_request_valid", "messages.1.content",
           "pipeline")


def test_a_direct_construction_raises_pydantics_error_which_is_still_named() -> None:
    import pydantic

    from core.failures.classify import to_gateway_error
    from core.failures.taxonomy import Kind

    with pytest.raises(pydantic.ValidationError) as caught:
        ChatMessage(role="user", content=5)  # type: ignore[arg-type]
    classified = to_gateway_error(caught.value)
    assert classified.kind is Kind.contract_violation
    assert "[chat_message_valid] field=content producer=pipeline" in classified.detail


def test_contracts_have_no_custom_init() -> None:
    """A custom __init__ would move nested validation back into Python and misname nested errors."""
    import pydantic

    from core import contracts

    for name in contracts.__all__:
        model = getattr(contracts, name)
        if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
            assert "__init__" not in vars(model), name


def test_a_hot_state_write_from_tool_arguments_fails_named_not_with_pydantics_error() -> None:
    """to_hot_state_write catches ContractViolation: it must build through a path that names errors."""
    arguments = validate_tool_arguments("update_hot_state", {"set_objective": "goal"})
    with pytest.raises(InvalidToolArguments) as caught:
        to_hot_state_write(arguments, trace_id="not-a-trace-id", chat_id=1)  # type: ignore[arg-type]
    assert "trace_id" in str(caught.value)
