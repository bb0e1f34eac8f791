"""The operator's action in a failed turn's alert: how to retry its DLQ entry, where it can be retried."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.contracts import InboundMessage
from core.failures.taxonomy import GatewayError, Kind
from core.pipeline.failure import alert_action
from core.tracing import current_trace_id, new_turn_span
from tests.core.fakes import MakePipeline

OPERATOR = 900


@pytest.mark.parametrize(("kind", "chat_type", "expected"), [
    (Kind.llm_server, "private", "check the provider's status page; entries replay on recovery; "
                                 "/replay 7 to retry it now"),
    (Kind.llm_server, "console", "check the provider's status page; entries replay on recovery; "
                                 "python -m bot dlq replay 7 to retry it now"),
    (Kind.llm_quota, "private", "add credit at the provider, then /replay 7"),
    (Kind.llm_quota, "console", "add credit at the provider, then python -m bot dlq replay 7"),
    (Kind.llm_refusal, "console", "python -m bot dlq replay 7"),  # its action is "none"
])
def test_the_replay_action_fits_where_the_entry_can_be_replayed(kind: Kind, chat_type: str, expected: str) -> None:
    assert alert_action(GatewayError(kind), entry_id=7, ref="abcd1234", chat_type=chat_type) == expected


def test_without_a_dlq_entry_the_action_is_the_taxonomys() -> None:
    action = alert_action(GatewayError(Kind.contract_violation), entry_id=None, ref="abcd1234", chat_type="console")
    assert action == "a gateway bug: python -m bot trace abcd1234"


async def test_a_console_turns_dlq_alert_says_to_replay_it_from_the_terminal(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline(breaker_failure_threshold=100)
    llm.enqueue(GatewayError(Kind.llm_server, "HTTP 500: boom", status_code=500),
                GatewayError(Kind.llm_server, "HTTP 500: boom", status_code=500))
    with new_turn_span(services.tracer, "turn"):
        inbound = InboundMessage(update_id=1, trace_id=current_trace_id(), chat_id=0, chat_type="console",
                                 user_id=OPERATOR, text="hello", received_at=datetime.now(UTC))
        assert await pipeline.run_turn(inbound, channel) == "dlq"
    [alert] = [row.text for row in await services.outbox.pending_for(OPERATOR)]
    assert "python -m bot dlq replay 1 to retry it now" in alert
    assert "/replay" not in alert
