"""Per-user message throttle, applied before any LLM spend.

A sliding one-minute window per user: a burst of forwarded messages is normal, a script
is not. Over the limit, messages are refused and the user is told once per window.
Pure and in memory (the window is a minute: losing it on restart is harmless).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW_S = 60.0
MAX_TRACKED_USERS = 50_000


@dataclass(frozen=True)
class ThrottleDecision:
    allowed: bool
    notify: bool  # first refusal in this window: tell the user once
    recent: int


class Throttle:
    """Sliding-window limiter; `per_minute=0` turns it off."""

    def __init__(self, *, per_minute: int) -> None:
        self.per_minute = per_minute
        self._hits: dict[int, deque[float]] = {}
        self._notified_at: dict[int, float] = {}

    def hit(self, user_id: int, *, now_s: float) -> ThrottleDecision:
        if self.per_minute <= 0:
            return ThrottleDecision(True, False, 0)
        hits = self._hits.get(user_id)
        if hits is None:
            if len(self._hits) >= MAX_TRACKED_USERS:
                self._forget_idle(now_s)
            hits = self._hits[user_id] = deque()
        while hits and now_s - hits[0] >= WINDOW_S:
            hits.popleft()
        if len(hits) >= self.per_minute:
            last = self._notified_at.get(user_id)
            notify = last is None or now_s - last >= WINDOW_S
            if notify:
                self._notified_at[user_id] = now_s
            return ThrottleDecision(False, notify, len(hits))
        hits.append(now_s)
        return ThrottleDecision(True, False, len(hits))

    def _forget_idle(self, now_s: float) -> None:
        for user_id in [u for u, h in self._hits.items() if not h or now_s - h[-1] >= WINDOW_S]:
            self._hits.pop(user_id, None)
            self._notified_at.pop(user_id, None)
