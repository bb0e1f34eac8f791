"""The failure taxonomy: every way a turn can fail, and what follows from each.

`TAXONOMY` is the one table that decides retries, DLQ, outage replay, escalation, the user's
reply and the operator's action; everything else looks kinds up here instead of branching on
exception types. Which kind an exception is, is decided by core/failures/llm_errors.py
(`classify_llm_error`) and core/failures/storage_errors.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, NamedTuple

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
