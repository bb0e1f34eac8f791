"""Small parsers the failure classifiers share: Retry-After headers and secret redaction.

Both are pure; the bot layer uses them too (Telegram's flood errors, error details in replies).
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Iterable, Mapping

_SECRET_PATTERNS = (
    re.compile(r"\b(sk|rk|pk)-[A-Za-z0-9_\-*]{6,}"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._\-~+/=*]{6,}"),
    re.compile(r"\bbot\d+:[A-Za-z0-9_-]{20,}"),
)


def redact(text: str, *, secrets: Iterable[str] = ()) -> str:
    """Mask known secrets and anything shaped like an API key or a bot token."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("***", text)
    return text


def parse_retry_after_s(headers: Mapping[str, str] | None, *, now_s: float | None = None) -> float | None:
    """Seconds from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date; None if absent
    or unreadable. Never negative; an absurd value is returned as is (the policy caps it).
    `now_s` is the wall clock (time.time()) an HTTP date is measured from."""
    if not headers:
        return None
    lowered = {k.lower(): v.strip() for k, v in headers.items()}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = lowered.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if math.isnan(seconds):
            return None
        return max(0.0, seconds)
    value = lowered.get("retry-after")
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        at_s = email.utils.mktime_tz(parsed)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, at_s - (time.time() if now_s is None else now_s))
