"""The messages that cross a stage boundary, as strict pydantic models.

Every model is strict (no silent coercion), forbids extra fields, and is frozen where a value
must not change once made. Invariants are checked where the data is produced (the model
validators) and again where it is consumed (`TurnGuard`, and the pipeline re-validating what
it receives). A violation raises `ContractViolation`, naming the invariant, the field and the
producer; the pipeline turns that into an error reply with a ref and a DLQ entry.

One error type for all of it: making a contract from data (`build` at its producer,
`Model.model_validate` where it is consumed) never raises pydantic's ValidationError. A direct
`Model(...)`, kept for known-good values, raises pydantic's own error; should one escape a stage it
is classified as a contract violation all the same (`named_violation`). Errors are named after
the invariant they break (`role_exclusivity` for a wrong producer, `counts_sane` for a negative
count or cost, `no_unknown_fields`, `text_is_unicode`, `immutable` for an attempted change), else
`<model>_valid`. The named
invariants: role_exclusivity, message_list_well_formed, one_turn_identity, counts_sane,
hot_state_within_cap, prompt_within_budget, no_empty_user_turn, tool_call_ids_unique; the LLM
adapter adds llm_response_has_choices and tool_call_named for what a provider returns. (Tool
arguments the model got wrong are not violations: core/context/tools.py answers them to the model.)

Producers are literal fields: only the pipeline makes agent requests, escalations and memory
writes; only the LLM adapter makes LLM results; only a channel makes inbound messages.

The models live in three modules: `base` (Contract, ContractViolation, build, named_violation), `messages` (the
conversation), `records` (what a turn produces) and `streamed` (a draft's growing answer);
import them from here.
"""

from core.contracts.base import (
    ChatType,
    Contract,
    ContractViolation,
    Int64,
    NonNegFloat,
    NonNegInt,
    TraceId,
    build,
    named_violation,
)
from core.contracts.messages import (
    AgentRequest,
    Attachment,
    ChatMessage,
    ContextPlan,
    InboundMessage,
    LLMResult,
    TokenUsage,
    ToolCall,
    ToolSpec,
    check_message_list,
)
from core.contracts.records import (
    DlqEntry,
    Escalation,
    HotStateWrite,
    ReplyEvent,
    TurnGuard,
    UsageRecord,
)
from core.contracts.streamed import StreamedText

__all__ = [
    "AgentRequest",
    "Attachment",
    "ChatMessage",
    "ChatType",
    "ContextPlan",
    "Contract",
    "ContractViolation",
    "DlqEntry",
    "Escalation",
    "HotStateWrite",
    "InboundMessage",
    "Int64",
    "LLMResult",
    "NonNegFloat",
    "NonNegInt",
    "ReplyEvent",
    "StreamedText",
    "TokenUsage",
    "ToolCall",
    "ToolSpec",
    "TraceId",
    "TurnGuard",
    "UsageRecord",
    "build",
    "check_message_list",
    "named_violation",
]
