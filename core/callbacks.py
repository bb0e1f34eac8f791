"""Inline buttons: what a button's `callback_data` says, and the keyboards core attaches to messages.

`callback_data` is stateless (a press after a restart works: everything needed is in the data
or in storage), at most 64 bytes (Telegram's limit) and carries no secret: a user or group id,
a dead-letter entry's number, a trace's short ref. A pairing code is never in it. `parse`
accepts exactly what the builders below produce and nothing else (forged, truncated or junk
data parses to None). Keyboards are Telegram's JSON (`{"inline_keyboard": [[...]]}`), so core
builds them without importing telegram and the outbox stores them as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

MAX_CALLBACK_BYTES = 64
Action = Literal["approve", "deny", "replay", "discard", "trace", "status"]
_PATTERNS: tuple[tuple[re.Pattern[str], Action], ...] = (
    (re.compile(r"acc:approve:(-?[1-9][0-9]{0,18})"), "approve"),
    (re.compile(r"acc:deny:(-?[1-9][0-9]{0,18})"), "deny"),
    (re.compile(r"dlq:replay:([1-9][0-9]{0,17})"), "replay"),
    (re.compile(r"dlq:discard:([1-9][0-9]{0,17})"), "discard"),
    (re.compile(r"trace:([0-9a-f]{8})"), "trace"),
    (re.compile(r"status"), "status"),
)
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Press:
    """What a button asks for: `target` is the user/group id, the DLQ entry or the trace ref."""

    action: Action
    target: str = ""

    @property
    def number(self) -> int:
        return int(self.target)


def parse(data: object) -> Press | None:
    """The button's request, or None for anything a builder below did not produce."""
    if not isinstance(data, str) or len(data.encode("utf-8", "surrogatepass")) > MAX_CALLBACK_BYTES:
        return None
    for pattern, action in _PATTERNS:
        match = pattern.fullmatch(data)
        if match is None:
            continue
        target = match.group(1) if match.groups() else ""
        if target.lstrip("-").isdigit() and abs(int(target)) > INT64_MAX:
            return None
        return Press(action, target)
    return None


def _button(text: str, data: str) -> dict[str, str]:
    assert len(data.encode()) <= MAX_CALLBACK_BYTES and parse(data) is not None, data
    return {"text": text, "callback_data": data}


def keyboard(*buttons: dict[str, str]) -> dict[str, Any]:
    """One row of buttons, as Telegram's reply_markup JSON."""
    return {"inline_keyboard": [list(buttons)]}


def pairing_keyboard(subject_id: int) -> dict[str, Any]:
    return keyboard(_button("Approve", f"acc:approve:{subject_id}"), _button("Deny", f"acc:deny:{subject_id}"))


def trace_button(ref: str) -> dict[str, str]:
    return _button("Trace", f"trace:{ref}")


def dlq_keyboard(entry_id: int, ref: str | None) -> dict[str, Any]:
    buttons = [_button("Replay", f"dlq:replay:{entry_id}"), _button("Discard", f"dlq:discard:{entry_id}")]
    if ref:
        buttons.append(trace_button(ref))
    return keyboard(*buttons)


def status_keyboard() -> dict[str, Any]:
    return keyboard(_button("Status", "status"))
