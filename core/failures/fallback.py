"""Which failures let a fallback model answer instead, and how the answer says so.

A fallback is tried when the chat's model is down (an outage kind: timeout, connection, rate
limit, server error), out of quota or credit, or its circuit is open. Anything else (a bad
request, a bad key, a refusal, a prompt too large) would fail on the next model too, or is
the operator's to fix: the turn fails as it did before fallbacks.
"""

from __future__ import annotations

from core.failures.taxonomy import GatewayError, Kind

_REASONS: dict[Kind, str] = {
    Kind.llm_timeout: "timed out",
    Kind.llm_connection: "unreachable",
    Kind.llm_rate_limit: "rate-limited",
    Kind.llm_server: "server error",
    Kind.llm_quota: "out of quota",
    Kind.circuit_open: "circuit open",
}


def fallback_reason(error: GatewayError) -> str | None:
    """Why the next model may answer, in a few words; None when no fallback should be tried."""
    return _REASONS.get(error.kind)


def fallback_note(*, answered_by: str, failed_model: str, reason: str) -> str:
    """The one line after an answer a fallback gave."""
    return f"— answered by {answered_by} ({failed_model} is unavailable: {reason})"
