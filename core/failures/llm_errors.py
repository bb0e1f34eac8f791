"""What an LLM call raised, as a classified GatewayError: the taxonomy's kind, a short secret-free
detail, and the retry facts (Retry-After, the HTTP status).

The table of kinds and what follows from each is core/failures/taxonomy.py; this module only
decides which kind an exception is (openai SDK errors by status and body, timeouts, broken JSON,
contract violations, storage failures inside the attempt).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import httpx2
import openai
from pydantic import ValidationError

from core.contracts import ContractViolation, named_violation
from core.failures.parsing import parse_retry_after_s, redact
from core.failures.storage_errors import is_storage_failure, storage_reason
from core.failures.taxonomy import DETAIL_MAX_CHARS, GatewayError, Kind

_CONTEXT_MARKERS = ("context_length_exceeded", "maximum context length", "context length", "context window",
                    "prompt is too long", "too many tokens")
_QUOTA_MARKERS = ("insufficient_quota", "exceeded your current quota", "insufficient credits")


def _provider_message(error: openai.APIError) -> str:
    body = error.body
    if isinstance(body, dict):
        message = body.get("message") or body.get("error")
        if isinstance(message, dict):
            message = message.get("message")
        if isinstance(message, str) and message:
            return message
    elif isinstance(body, str) and body.strip():
        return body.strip()
    return error.message


def _body_marks(error: openai.APIError, markers: tuple[str, ...]) -> bool:
    fields: list[Any] = [error.code, error.type, _provider_message(error)]
    text = " ".join(str(f) for f in fields if f).lower()
    return any(marker in text for marker in markers)


def _status_kind(error: openai.APIStatusError) -> Kind:
    status = error.status_code
    if status == 429:
        return Kind.llm_quota if _body_marks(error, _QUOTA_MARKERS) else Kind.llm_rate_limit
    if status == 402:
        return Kind.llm_quota
    if status == 413 or (status in (400, 422) and _body_marks(error, _CONTEXT_MARKERS)):
        return Kind.llm_context_overflow
    if status in (401, 403):
        return Kind.llm_auth
    if status == 408:
        return Kind.llm_timeout
    if status == 409 or status >= 500:  # 409: the provider's lock timeout; 529: overloaded
        return Kind.llm_server
    return Kind.llm_bad_request


def classify_llm_error(error: BaseException, *, secrets: Iterable[str] = (),
                       now_s: float | None = None) -> GatewayError:
    """Map what an LLM call raised to a GatewayError; the detail is short and secret-free.

    `secrets` are masked in the detail in addition to key-shaped strings; `now_s` (wall clock)
    resolves a Retry-After given as an HTTP date.
    """
    if isinstance(error, GatewayError):
        return error

    def short(text: str) -> str:
        return redact(" ".join(text.split()), secrets=secrets)[:DETAIL_MAX_CHARS]

    if isinstance(error, openai.APIStatusError):
        kind = _status_kind(error)
        retry_after_s = parse_retry_after_s(error.response.headers, now_s=now_s)
        detail = f"HTTP {error.status_code}: {short(_provider_message(error))}"
        return GatewayError(kind, detail, retry_after_s=retry_after_s, status_code=error.status_code)
    if isinstance(error, openai.APITimeoutError):  # before APIConnectionError, its base
        return GatewayError(Kind.llm_timeout, "the request timed out")
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error.__context__
        reason = type(cause).__name__ if cause is not None else "connection error"
        return GatewayError(Kind.llm_connection, f"connection failed ({reason})")
    if isinstance(error, openai.APIResponseValidationError):
        return GatewayError(Kind.llm_malformed, f"HTTP {error.status_code}: response did not match the schema",
                            status_code=error.status_code)
    if isinstance(error, openai.ContentFilterFinishReasonError):
        return GatewayError(Kind.llm_refusal, "the provider's content filter stopped the answer")
    if isinstance(error, openai.LengthFinishReasonError):
        return GatewayError(Kind.llm_malformed, "the answer was cut off at the output token limit")
    if is_storage_failure(error):  # a write inside the attempt (usage, artifacts) failed
        return GatewayError(Kind.storage_unavailable, short(storage_reason(error)))
    if isinstance(error, TimeoutError | httpx2.TimeoutException):  # asyncio.TimeoutError is TimeoutError
        return GatewayError(Kind.llm_timeout, f"timed out ({type(error).__name__})")
    if isinstance(error, httpx2.TransportError):  # raised unwrapped while a stream is being read
        return GatewayError(Kind.llm_connection, f"connection failed while streaming ({type(error).__name__})")
    if isinstance(error, ContractViolation):
        kind = Kind.llm_malformed if error.producer == "llm" else Kind.contract_violation
        return GatewayError(kind, short(str(error)))
    if isinstance(error, ValidationError):  # a contract made directly, `Model(...)`, from values that broke it
        return GatewayError(Kind.contract_violation, short(str(named_violation(error, producer="pipeline"))))
    if isinstance(error, json.JSONDecodeError):
        return GatewayError(Kind.llm_malformed, f"invalid JSON in the response: {short(error.msg)} at {error.pos}")
    return GatewayError(Kind.internal, f"{type(error).__name__}: {short(str(error))}")
