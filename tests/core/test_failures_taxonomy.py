"""Classification of what an LLM call can raise, built the way the openai SDK builds it."""

from __future__ import annotations

import email.utils
import errno
import json
import sqlite3
from typing import Any

import httpx2
import openai
import pytest

from core.contracts import ContractViolation
from core.failures.llm_errors import classify_llm_error
from core.failures.parsing import parse_retry_after_s
from core.failures.storage_errors import is_storage_failure
from core.failures.taxonomy import OUTAGE_KINDS, PER_SETTINGS, TAXONOMY, GatewayError, Kind, taxonomy_markdown

BASE_URL = "http://127.0.0.1:9/v1"
CLIENT = openai.AsyncOpenAI(api_key="sk-test-key-not-real", base_url=BASE_URL, max_retries=0)


def request() -> httpx2.Request:
    return httpx2.Request("POST", f"{BASE_URL}/chat/completions")


def status_error(status: int, body: Any = None, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    """An error exactly as the SDK raises it for an HTTP error response."""
    content = json.dumps(body).encode() if body is not None else b""
    response = httpx2.Response(status, request=request(), headers=headers or {}, content=content)
    return CLIENT._make_status_error_from_response(response)


def provider_error(message: str, *, code: str | None = None, type_: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, "param": None}}


def test_every_kind_has_exactly_one_row() -> None:
    assert set(TAXONOMY) == set(Kind)
    assert all(info.kind is kind for kind, info in TAXONOMY.items())


def test_table_follows_the_rules() -> None:
    assert OUTAGE_KINDS == {Kind.llm_timeout, Kind.llm_connection, Kind.llm_rate_limit, Kind.llm_server,
                            Kind.circuit_open}
    no_dlq = {k for k, info in TAXONOMY.items() if not info.dlq}
    assert no_dlq == {Kind.budget_exhausted, Kind.throttled, Kind.llm_refusal, Kind.storage_unavailable} | {
        k for k in Kind if k.startswith("tg_")}
    for info in TAXONOMY.values():
        assert info.max_retries >= 0 or info.max_retries == PER_SETTINGS
        assert info.retryable or info.max_retries == 0
        assert info.action
        if info.dlq:
            assert info.user_message, info.kind
    assert not TAXONOMY[Kind.llm_quota].retryable
    assert TAXONOMY[Kind.llm_context_overflow].needs_changed_input


def test_retry_limit_never_exceeds_settings() -> None:
    assert TAXONOMY[Kind.llm_timeout].retry_limit(configured_retries=3) == 3
    assert TAXONOMY[Kind.llm_context_overflow].retry_limit(configured_retries=3) == 1
    assert TAXONOMY[Kind.llm_context_overflow].retry_limit(configured_retries=0) == 0
    assert TAXONOMY[Kind.llm_auth].retry_limit(configured_retries=3) == 0


def test_markdown_has_a_row_per_kind() -> None:
    table = taxonomy_markdown()
    assert table.count("\n") == len(Kind) + 2
    assert "| `llm_quota` | no | yes | no | critical | now |" in table


@pytest.mark.parametrize(("status", "body", "kind"), [
    (429, provider_error("Rate limit reached", code="rate_limit_exceeded"), Kind.llm_rate_limit),
    (429, provider_error("You exceeded your current quota", type_="insufficient_quota", code="insufficient_quota"),
     Kind.llm_quota),
    (402, provider_error("Insufficient credits"), Kind.llm_quota),
    (400, provider_error("This model's maximum context length is 8192 tokens", code="context_length_exceeded"),
     Kind.llm_context_overflow),
    (400, provider_error("This model's maximum context length is 4096 tokens. However, you requested 5000"),
     Kind.llm_context_overflow),
    (400, provider_error("Invalid value for 'temperature'"), Kind.llm_bad_request),
    (404, provider_error("The model `gpt-9` does not exist"), Kind.llm_bad_request),
    (422, {"detail": "unprocessable"}, Kind.llm_bad_request),
    (401, provider_error("Incorrect API key provided: sk-abc***xyz", code="invalid_api_key"), Kind.llm_auth),
    (403, provider_error("Country not supported"), Kind.llm_auth),
    (500, provider_error("The server had an error"), Kind.llm_server),
    (503, None, Kind.llm_server),
    (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, Kind.llm_server),
])
def test_status_errors(status: int, body: Any, kind: Kind) -> None:
    error = classify_llm_error(status_error(status, body))
    assert error.kind is kind
    assert error.status_code == status
    assert error.detail.startswith(f"HTTP {status}")


def test_sdk_classes_are_what_the_tests_build() -> None:
    assert isinstance(status_error(429, provider_error("x")), openai.RateLimitError)
    assert isinstance(status_error(401, provider_error("x")), openai.AuthenticationError)
    assert isinstance(status_error(529, None), openai.InternalServerError)


def test_rate_limit_retry_after_seconds_and_ms() -> None:
    assert classify_llm_error(status_error(429, provider_error("slow"), {"Retry-After": "2"})).retry_after_s == 2.0
    error = classify_llm_error(status_error(429, provider_error("slow"), {"retry-after-ms": "1500", "retry-after": "9"}))
    assert error.retry_after_s == 1.5
    assert classify_llm_error(status_error(429, provider_error("slow"))).retry_after_s is None


def test_retry_after_http_date() -> None:
    now_s = 1_700_000_000.0
    header = email.utils.formatdate(now_s + 7, usegmt=True)
    error = classify_llm_error(status_error(429, provider_error("slow"), {"Retry-After": header}), now_s=now_s)
    assert error.retry_after_s == pytest.approx(7.0, abs=1.0)
    assert parse_retry_after_s({"Retry-After": email.utils.formatdate(now_s - 60, usegmt=True)}, now_s=now_s) == 0.0
    assert parse_retry_after_s({"Retry-After": "soon"}) is None
    assert parse_retry_after_s({"Retry-After": "-3"}) == 0.0


def test_detail_is_short_and_secret_free() -> None:
    body = provider_error("Incorrect API key provided: sk-proj-ABCDEFGHIJKLMNOP. " + "x" * 1000)
    error = classify_llm_error(status_error(401, body, {"Authorization": "Bearer sk-live-secret"}),
                               secrets=["ABCDEFGHIJ"])
    assert "sk-proj" not in error.detail and "ABCDEFGHIJ" not in error.detail
    assert "Bearer" not in error.detail and "sk-live-secret" not in error.detail
    assert len(error.detail) <= 320


def test_connection_and_timeout() -> None:
    assert classify_llm_error(openai.APITimeoutError(request=request())).kind is Kind.llm_timeout
    try:
        try:
            raise httpx2.ConnectError("refused")
        except httpx2.ConnectError as cause:
            raise openai.APIConnectionError(request=request()) from cause
    except openai.APIConnectionError as wrapped:
        error = classify_llm_error(wrapped)
    assert error.kind is Kind.llm_connection and "ConnectError" in error.detail
    assert classify_llm_error(TimeoutError()).kind is Kind.llm_timeout
    assert classify_llm_error(httpx2.ReadTimeout("slow")).kind is Kind.llm_timeout
    assert classify_llm_error(httpx2.RemoteProtocolError("peer closed")).kind is Kind.llm_connection


def test_malformed_and_contract_violations() -> None:
    response = httpx2.Response(200, request=request(), content=b"{}")
    assert classify_llm_error(openai.APIResponseValidationError(response, {})).kind is Kind.llm_malformed
    try:
        json.loads("{not json")
    except json.JSONDecodeError as broken:
        assert classify_llm_error(broken).kind is Kind.llm_malformed
    from_llm = ContractViolation("counts_sane", field="usage", producer="llm")
    assert classify_llm_error(from_llm).kind is Kind.llm_malformed
    from_pipeline = ContractViolation("one_turn_identity", field="chat_id", producer="pipeline")
    assert classify_llm_error(from_pipeline).kind is Kind.contract_violation
    assert classify_llm_error(openai.ContentFilterFinishReasonError()).kind is Kind.llm_refusal


def test_anything_else_is_internal_and_gateway_errors_pass_through() -> None:
    error = classify_llm_error(KeyError("token sk-abcdefghijkl"))
    assert error.kind is Kind.internal and "sk-abcdefghijkl" not in error.detail
    original = GatewayError(Kind.circuit_open, "open")
    assert classify_llm_error(original) is original


def test_gateway_error_surface() -> None:
    error = GatewayError(Kind.llm_quota, "HTTP 429: quota", status_code=429)
    assert error.info is TAXONOMY[Kind.llm_quota]
    assert error.user_message == TAXONOMY[Kind.llm_quota].user_message
    assert str(error) == "llm_quota: HTTP 429: quota"
    assert error.info.action_text(dlq_id=7) == "add credit at the provider, then /replay 7"
    assert error.attempts == [] and error.gave_up is None
    assert GatewayError(Kind.throttled, user_message="Slow down, please.").user_message == "Slow down, please."


@pytest.mark.parametrize(("error", "storage"), [
    (sqlite3.OperationalError("database or disk is full"), True),
    (sqlite3.OperationalError("attempt to write a readonly database"), True),
    (sqlite3.OperationalError("database is locked"), True),
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EROFS, "Read-only file system"), True),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), False),
    (TimeoutError(), False),
    (sqlite3.IntegrityError("UNIQUE constraint failed"), False),
    (sqlite3.OperationalError("disk I/O error"), True),
    (OSError(errno.EIO, "Input/output error"), True),
    # An ordinary SQL error is a bug, not storage trouble: deferring it would retry it for ever.
    (sqlite3.OperationalError("no such table: messages"), False),
    (sqlite3.OperationalError("near \"SELEC\": syntax error"), False),
    (sqlite3.DatabaseError("database disk image is malformed"), False),
])
def test_storage_failures_are_their_own_kind(error: BaseException, storage: bool) -> None:
    assert is_storage_failure(error) is storage
    kind = classify_llm_error(error).kind
    assert (kind == Kind.storage_unavailable) is storage, kind
    if storage:
        assert TAXONOMY[kind].dlq is False  # the DLQ lives in the same database
    elif isinstance(error, sqlite3.Error):
        assert kind == Kind.internal and TAXONOMY[kind].dlq is True


def real_sqlite_error(tmp_path, statement: str, *, read_only: bool = False) -> sqlite3.Error:  # noqa: ANN001
    """The error SQLite itself raises (with its result code), not one made by hand."""
    path = tmp_path / "probe.db"
    sqlite3.connect(path).execute("CREATE TABLE IF NOT EXISTS t(x)").connection.commit()
    connection = sqlite3.connect(f"file:{path}?mode=ro" if read_only else path, uri=read_only)
    try:
        connection.execute(statement)
        connection.commit()
    except sqlite3.Error as error:
        return error
    finally:
        connection.close()
    raise AssertionError(f"{statement!r} did not fail")


def test_real_sqlite_errors_are_classified_by_their_result_code(tmp_path) -> None:  # noqa: ANN001
    missing = real_sqlite_error(tmp_path, "SELECT * FROM no_such_table")
    assert not is_storage_failure(missing) and classify_llm_error(missing).kind == Kind.internal
    read_only = real_sqlite_error(tmp_path, "INSERT INTO t VALUES (1)", read_only=True)
    assert is_storage_failure(read_only) and classify_llm_error(read_only).kind == Kind.storage_unavailable


def test_a_pydantic_error_escaping_a_stage_is_a_named_contract_violation() -> None:
    from pydantic import ValidationError

    from core.contracts import TokenUsage

    with pytest.raises(ValidationError) as caught:
        TokenUsage(input_tokens=-1, output_tokens=0, total_tokens=0)
    error = classify_llm_error(caught.value)
    assert error.kind is Kind.contract_violation
    assert error.detail.startswith("contract violation [counts_sane] field=input_tokens producer=pipeline")
    assert "-1" not in error.detail  # the offending value is not echoed
