"""Stdout logging: one line per event, each carrying the turn's trace id, secrets redacted.

Why redaction sits on the formatted line (not on `record.msg`): secrets arrive through
arguments, exception text and third-party messages alike (the bot token is in every Bot API
URL), and only the final string is certain to contain all of them. PaaS platforms collect
stdout, so that is the only handler.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal, TextIO
from urllib.parse import quote, quote_plus

from core.tracing import current_trace_id

REDACTED = "[REDACTED]"
# Shorter values cannot be told apart from ordinary words (a local Ollama "key" like "x").
MIN_SECRET_CHARS = 4
# httpx/httpcore log every request URL at INFO, and Bot API URLs contain the bot token.
QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "hpack", "openai")


def redactor(secrets: list[str]) -> Callable[[str], str]:
    """A function replacing each secret, raw or URL-encoded, with `[REDACTED]`.

    Longest alternatives first, so a secret that contains another is removed whole.
    """
    variants: set[str] = set()
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_CHARS:
            # JSON-escaped too: span attributes and JSON log lines are checked after encoding.
            variants.update({secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
                             json.dumps(secret, ensure_ascii=False)[1:-1]})
    if not variants:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(v) for v in sorted(variants, key=len, reverse=True)))

    def redact(text: str) -> str:
        return pattern.sub(REDACTED, text)

    return redact


class _TraceIdFilter(logging.Filter):
    """Stamps `record.trace_id` from the current span ("-" outside a turn)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = current_trace_id() or "-"
        return True


def _time(record: logging.LogRecord) -> str:
    at = datetime.fromtimestamp(record.created, UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _TextFormatter(logging.Formatter):
    """`time level logger trace=… message`; a traceback follows on its own lines."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        trace_id = getattr(record, "trace_id", None) or current_trace_id() or "-"
        line = f"{_time(record)} {record.levelname:<8} {record.name} trace={trace_id} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return self._redact(line)


class _JsonFormatter(_TextFormatter):
    """One JSON object per line: time, level, logger, message, trace_id (+ exc_info)."""

    def format(self, record: logging.LogRecord) -> str:
        redact = self._redact
        event = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "trace_id": getattr(record, "trace_id", None) or current_trace_id() or "-",
        }
        if record.exc_info:
            event["exc_info"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            event["exc_info"] = redact(record.exc_text)
        # Redact again after encoding: JSON escaping must not hide a secret from the first pass.
        return redact(json.dumps(event, ensure_ascii=False))


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at emit time, so a swapped stdout (tests, consoles)
    never leaves the handler writing to a closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(*, level: str, fmt: Literal["text", "json"], secrets: list[str]) -> None:
    """Replace the root logger's handlers with one redacting stdout handler; safe to call again."""
    redact = redactor(secrets)
    handler = _StdoutHandler()
    handler.addFilter(_TraceIdFilter())
    handler.setFormatter(_JsonFormatter(redact) if fmt == "json" else _TextFormatter(redact))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python warnings (deprecations in dependencies) become log records too: with
    # LOG_FORMAT=json every stdout line must stay one JSON object for the log drain.
    logging.captureWarnings(True)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
