"""Wall-clock time for the gateway, injectable for tests.

Budgets reset at UTC midnight and month ends, so end-to-end tests must be able to move the
clock of a running bot process: when `GATEWAY_CLOCK_OFFSET_FILE` names a file, the number of
seconds in it is added to the wall clock (re-read at most once per second).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path


class Clock:
    """UTC wall clock with an optional offset; `monotonic` for durations."""

    def __init__(self, offset_file: Path | None = None) -> None:
        self._offset_file = offset_file
        self._offset_s = 0.0
        self._checked_at = -1.0

    def _offset(self) -> float:
        if self._offset_file is None:
            return 0.0
        now = time.monotonic()
        if now - self._checked_at >= 1.0:
            self._checked_at = now
            try:
                self._offset_s = float(self._offset_file.read_text().strip() or 0)
            except (OSError, ValueError):
                self._offset_s = 0.0
        return self._offset_s

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self._offset())

    def iso(self) -> str:
        return self.now().isoformat(timespec="milliseconds")

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()
