"""The failure taxonomy: every way a turn can fail, and what follows from each.

`TAXONOMY` is the one table that decides retries, DLQ, outage replay, escalation, the user's
reply and the operator's action; everything else looks kinds up here instead of branching on
exception types. `classify_llm_error` turns whatever the LLM call raised (openai SDK errors,
timeouts, broken JSON, contract violations) into a `GatewayError` carrying its `Kind`.
"""

from __future__ import annotations

import errno
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NamedTuple

import httpx2
import openai
from pydantic import ValidationError

from core.contracts import ContractViolation, named_violation
from core.failures.parsing import parse_retry_after_s, redact

DETAIL_MAX_CHARS = 300
Severity = Literal["info", "warning", "error", "critical"]
Escalates = Literal["now", "repeated", "never"]
PER_SETTINGS = -1  # KindInfo.max_retries: use LLM_MAX_RETRIES


class Kind(StrEnum):
    llm_timeout = "llm_timeout"
    llm_connection = "llm_connection"
    llm_rate_limit = "llm_rate_limit"
    llm_quota = "llm_quota"
    llm_server = "llm_server"
    llm_context_overflow = "llm_context_overflow"
    llm_bad_request = "llm_bad_request"
    llm_auth = "llm_auth"
    llm_refusal = "llm_refusal"
    llm_malformed = "llm_malformed"
    tg_flood = "tg_flood"
    tg_bad_markup = "tg_bad_markup"
    tg_too_long = "tg_too_long"
    tg_not_modified = "tg_not_modified"
    tg_blocked = "tg_blocked"
    tg_network = "tg_network"
    contract_violation = "contract_violation"
    budget_exhausted = "budget_exhausted"
    throttled = "throttled"
    circuit_open = "circuit_open"
    context_too_large = "context_too_large"
    storage_unavailable = "storage_unavailable"
    internal = "internal"


@dataclass(frozen=True)
class KindInfo:
    """What a failure kind implies.

    `max_retries` is 0, a fixed number, or PER_SETTINGS (-1: LLM_MAX_RETRIES); a fixed number
    never exceeds LLM_MAX_RETRIES either (see `retry_limit`). `outage` kinds mean the provider
    is down: they count toward the circuit breaker, and their DLQ entries are replayed
    automatically once the circuit closes. `action` may contain `{dlq_id}` and `{ref}`.
    An outage kind's `user_message` promises nothing: the pipeline adds what happens next
    (kept and replayed automatically, or "please try again").
    """

    kind: Kind
    retryable: bool
    max_retries: int
    needs_changed_input: bool
    user_message: str
    severity: Severity
    escalates: Escalates
    outage: bool
    dlq: bool
    action: str

    def retry_limit(self, *, configured_retries: int) -> int:
        """Retries allowed for this kind when LLM_MAX_RETRIES is `configured_retries`."""
        if not self.retryable:
            return 0
        if self.max_retries == PER_SETTINGS:
            return configured_retries
        return min(self.max_retries, configured_retries)

    def action_text(self, *, dlq_id: int | None = None, ref: str | None = None) -> str:
        """The action with its placeholders filled; an unknown value reads `<id>` / `<ref>`."""
        return self.action.replace("{dlq_id}", "<id>" if dlq_id is None else str(dlq_id)) \
            .replace("{ref}", ref or "<ref>")


def _info(kind: Kind, *, retryable: bool, max_retries: int = 0, changed: bool = False, user: str,
          severity: Severity, escalates: Escalates, outage: bool = False, dlq: bool = True,
          action: str) -> KindInfo:
    return KindInfo(kind, retryable, max_retries, changed, user, severity, escalates, outage, dlq, action)


_SORRY_LATER = "I couldn't reach the AI service just now."
TAXONOMY: dict[Kind, KindInfo] = {info.kind: info for info in (
    _info(Kind.llm_timeout, retryable=True, max_retries=PER_SETTINGS, outage=True, user=_SORRY_LATER,
          severity="warning", escalates="repeated",
          action="check the provider's status page; raise LLM_TIMEOUT_SECONDS for slow models"),
    _info(Kind.llm_connection, retryable=True, max_retries=PER_SETTINGS, outage=True, user=_SORRY_LATER,
          severity="warning", escalates="repeated", action="check LLM_BASE_URL and the network (python -m bot doctor)"),
    _info(Kind.llm_rate_limit, retryable=True, max_retries=PER_SETTINGS, outage=True,
          user="The AI service is busy right now.",
          severity="warning", escalates="repeated",
          action="raise the provider's rate limit or lower USER_MESSAGES_PER_MINUTE"),
    _info(Kind.llm_quota, retryable=False,
          user="The AI service is out of credit. The operator has been told; your message is saved.",
          severity="critical", escalates="now", action="add credit at the provider, then /replay {dlq_id}"),
    _info(Kind.llm_server, retryable=True, max_retries=PER_SETTINGS, outage=True, user=_SORRY_LATER,
          severity="error", escalates="repeated", action="check the provider's status page; entries replay on recovery"),
    _info(Kind.llm_context_overflow, retryable=True, max_retries=1, changed=True,
          user="This conversation got too long for the model. Try /new to start fresh.",
          severity="warning", escalates="repeated",
          action="set LLM_CONTEXT_TOKENS to the model's real context window"),
    _info(Kind.llm_bad_request, retryable=False,
          user="The AI service rejected this request. The operator has been told.",
          severity="error", escalates="now", action="check LLM_MODEL and the request in trace {ref}"),
    _info(Kind.llm_auth, retryable=False,
          user="The bot can't log in to the AI service. The operator has been told; your message is saved.",
          severity="critical", escalates="now", action="check LLM_API_KEY, then /replay {dlq_id}"),
    _info(Kind.llm_refusal, retryable=False, dlq=False, user="The model declined to answer that.",
          severity="info", escalates="never", action="none"),
    _info(Kind.llm_malformed, retryable=True, max_retries=PER_SETTINGS,
          user="The AI service sent a broken answer. Please try again.",
          severity="error", escalates="repeated", action="inspect trace {ref}; try another LLM_MODEL if it persists"),
    _info(Kind.tg_flood, retryable=True, max_retries=PER_SETTINGS, dlq=False, user="",
          severity="warning", escalates="repeated", action="none: Telegram asked to slow down; delivery waits"),
    _info(Kind.tg_bad_markup, retryable=True, max_retries=1, changed=True, dlq=False, user="",
          severity="info", escalates="never", action="none: resent as plain text"),
    _info(Kind.tg_too_long, retryable=True, max_retries=1, changed=True, dlq=False, user="",
          severity="info", escalates="never", action="none: resent in chunks"),
    _info(Kind.tg_not_modified, retryable=False, dlq=False, user="",
          severity="info", escalates="never", action="none"),
    _info(Kind.tg_blocked, retryable=False, dlq=False, user="",
          severity="info", escalates="never", action="none: the user blocked the bot or left the chat"),
    _info(Kind.tg_network, retryable=True, max_retries=PER_SETTINGS, dlq=False, user="",
          severity="warning", escalates="repeated", action="check the network and TELEGRAM_API_BASE_URL"),
    _info(Kind.contract_violation, retryable=False,
          user="Something went wrong on my side. The operator has been told.",
          severity="error", escalates="now", action="a gateway bug: python -m bot trace {ref}"),
    _info(Kind.budget_exhausted, retryable=False, dlq=False,
          user="The usage budget is used up for now. It resets at the start of the next period.",
          severity="warning", escalates="never", action="raise USER_DAILY_TOKEN_BUDGET or MONTHLY_BUDGET_USD"),
    _info(Kind.throttled, retryable=False, dlq=False,
          user="You're sending messages faster than I can answer. Please wait a moment.",
          severity="info", escalates="never", action="raise USER_MESSAGES_PER_MINUTE if this is normal use"),
    _info(Kind.circuit_open, retryable=False, outage=True, user="The AI service is temporarily unavailable.",
          severity="warning", escalates="never", action="none: entries replay when the circuit closes"),
    _info(Kind.context_too_large, retryable=False, changed=True,
          user="That message is too large for the model. Please send something shorter.",
          severity="info", escalates="never", action="raise LLM_CONTEXT_TOKENS if the model allows it"),
    _info(Kind.storage_unavailable, retryable=False, dlq=False,
          user="I can't save messages right now, so I can't answer yet. Yours is kept and will be answered "
               "as soon as I can.",
          severity="error", escalates="now",
          action="free disk space in DATA_DIR or make it writable again; waiting updates are then answered"),
    _info(Kind.internal, retryable=False,
          user="Something went wrong on my side. The operator has been told.",
          severity="error", escalates="now", action="a gateway bug: see the logs and python -m bot trace {ref}"),
)}
OUTAGE_KINDS: frozenset[Kind] = frozenset(k for k, info in TAXONOMY.items() if info.outage)


def taxonomy_markdown() -> str:
    """The table as Markdown, for the README."""
    lines = ["| kind | retried | DLQ | outage | severity | escalates | user is told | operator action |",
             "|---|---|---|---|---|---|---|---|"]
    for info in TAXONOMY.values():
        retried = ("LLM_MAX_RETRIES" if info.max_retries == PER_SETTINGS else f"{info.max_retries}x") \
            if info.retryable else "no"
        if info.needs_changed_input and info.retryable:
            retried += " (changed input)"
        cells = [f"`{info.kind}`", retried, "yes" if info.dlq else "no", "yes" if info.outage else "no",
                 info.severity, info.escalates, info.user_message or "(nothing)", info.action.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class Attempt(NamedTuple):
    """One failed attempt, as recorded by the retry loop (`at_s` is monotonic)."""

    attempt: int
    kind: Kind
    detail: str
    at_s: float


class GatewayError(Exception):
    """A classified failure: its kind, a short secret-free detail, and retry facts."""

    def __init__(self, kind: Kind, detail: str = "", *, retry_after_s: float | None = None,
                 status_code: int | None = None, user_message: str | None = None) -> None:
        self.kind = Kind(kind)
        self._user_message = user_message
        self.detail = detail[:DETAIL_MAX_CHARS * 2]
        self.retry_after_s = retry_after_s
        self.status_code = status_code
        self.attempts: list[Attempt] = []  # filled by call_with_retry
        self.gave_up: str | None = None  # why call_with_retry stopped retrying
        super().__init__(f"{self.kind}: {self.detail}" if self.detail else str(self.kind))

    @property
    def info(self) -> KindInfo:
        return TAXONOMY[self.kind]

    @property
    def user_message(self) -> str:
        """What the user is told: the one given to the constructor, else the taxonomy's."""
        return self._user_message or self.info.user_message


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


STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO})
# SQLite's primary result codes that mean the disk or the lock, not the SQL: SQLITE_BUSY (5) and
# SQLITE_LOCKED (6) once the busy timeout has run out, SQLITE_READONLY (8), SQLITE_IOERR (10),
# SQLITE_FULL (13), SQLITE_CANTOPEN (14: the file or its directory cannot be opened or created).
STORAGE_SQLITE_CODES = frozenset({5, 6, 8, 10, 13, 14})
# The same, by message, for errors that carry no code (raised by hand, or by a wrapper).
_STORAGE_SQLITE_MESSAGES = ("database or disk is full", "readonly database", "disk i/o error", "database is locked",
                            "database table is locked", "unable to open database file")


def is_storage_failure(error: BaseException) -> bool:
    """The disk or the database refused (full, read-only, I/O error, a lock held too long): not a
    bug of the turn, and nothing more can be written until it is fixed. Any other SQLite error
    (`no such table`, a constraint) is a bug: classified `internal`, so it reaches the DLQ once
    instead of being deferred and retried for ever."""
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in STORAGE_SQLITE_CODES  # extended codes keep the primary in the low byte
        message = str(error).lower()
        return any(marker in message for marker in _STORAGE_SQLITE_MESSAGES)
    return isinstance(error, OSError) and error.errno in STORAGE_ERRNOS


def storage_reason(error: BaseException) -> str:
    """What a storage failure says, in a few words ("No space left on device", "database is
    locked"), without the file name an OSError carries."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


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
