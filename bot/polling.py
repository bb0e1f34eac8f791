"""Long polling that one bad update cannot stop.

PTB parses a whole getUpdates batch at once (`Update.de_list`); if any update in it does not
parse (a type PTB's version does not know yet, a field Telegram changed), the batch is dropped,
the offset does not move, and the updater fetches the same batch again, forever: every later
message waits behind the one it cannot read. So the getUpdates connection checks each update on
its own with the same `parse_update` the webhook and `Runtime.process_raw` use: a bad one is
journaled (failed, with its raw JSON and why) and replaced by a bare `{"update_id": N}`, which
moves the offset past it and is then dropped as a duplicate of the journal row.

The same connection paces idle polling (`IdlePacer`): a server that answers getUpdates at once
instead of holding the request open (some Bot API emulators and proxies do) would otherwise be
asked again and again, thousands of times a minute, burning a core while nobody writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from telegram.request import HTTPXRequest, RequestData

from bot.handlers import Parsed, parse_update
from core.failures.backoff_schedule import ceiling_wait_s

log = logging.getLogger(__name__)
IDLE_BASE_WAIT_S = 0.25
# The longest pause between two empty answers: how late a message can be seen from a server
# that does not long-poll. One call every 2 s costs nothing measurable.
IDLE_MAX_WAIT_S = 2.0
# An empty answer is "at once" when it came in under half the requested timeout, the timeout
# counted as at most 1 s: servers may cut long polls short (our test stand-in holds them 1 s,
# proxies 30-60 s), and that is fine; what wastes CPU is an answer within milliseconds.
FAST_FRACTION = 0.5
FAST_TIMEOUT_CAP_S = 1.0


class IdlePacer:
    """How long to wait before the next getUpdates: nothing while long polling works or updates
    come; the shared backoff schedule while empty answers keep coming back at once."""

    def __init__(self) -> None:
        self.fast_empty_answers = 0

    def next_wait_s(self, *, updates: int, elapsed_s: float, requested_timeout_s: float) -> float:
        fast = elapsed_s < FAST_FRACTION * min(requested_timeout_s, FAST_TIMEOUT_CAP_S)
        if updates or not fast:
            self.fast_empty_answers = 0
            return 0.0
        self.fast_empty_answers += 1
        return ceiling_wait_s(attempt=self.fast_empty_answers, base_wait_s=IDLE_BASE_WAIT_S,
                              max_wait_s=IDLE_MAX_WAIT_S)


class CheckedUpdatesRequest(HTTPXRequest):
    """The HTTP connection PTB uses for getUpdates, checking each update of a batch on its own."""

    __slots__ = ("_checked_payload", "_elapsed_s", "_requested_timeout_s", "_wait_s", "on_malformed", "pacer")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Set once the runtime exists: Runtime.record_unparsable (journals the update as failed).
        self.on_malformed: Callable[[Parsed], Awaitable[object]] | None = None
        self.pacer = IdlePacer()
        self._checked_payload: tuple[bytes, dict[str, Any]] | None = None  # do_request's, for parse_json_payload
        self._wait_s = self._elapsed_s = self._requested_timeout_s = 0.0

    async def do_request(self, url: str, method: str, request_data: RequestData | None = None,
                         *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        if self._wait_s > 0:  # cancelled with the polling task when the updater stops
            await asyncio.sleep(self._wait_s)
        timeout = request_data.parameters.get("timeout", 0) if request_data is not None else 0
        self._requested_timeout_s = float(timeout) if isinstance(timeout, int | float) else 0.0
        started = time.monotonic()
        try:
            code, payload = await super().do_request(url, method, request_data, *args, **kwargs)
        finally:
            self._elapsed_s = time.monotonic() - started
        # Check the batch here, where journaling a malformed update can be awaited (PTB parses
        # the payload synchronously afterwards, in parse_json_payload, which reuses this result).
        self._checked_payload = None
        if code == 200:
            with contextlib.suppress(Exception):  # not JSON: PTB's own parsing reports it
                data = HTTPXRequest.parse_json_payload(payload)
                if isinstance(data, dict) and data.get("ok") is True and isinstance(data.get("result"), list):
                    malformed: list[Parsed] = []
                    data["result"] = [checked for item in data["result"]
                                      if (checked := self._checked(item, malformed)) is not None]
                    for parsed in malformed:
                        await self._journal_malformed(parsed)
                    self._checked_payload = (payload, data)
        return code, payload

    def parse_json_payload(self, payload: bytes) -> dict[str, Any]:  # type: ignore[override]
        checked = self._checked_payload
        data = checked[1] if checked is not None and checked[0] is payload else HTTPXRequest.parse_json_payload(payload)
        self._checked_payload = None
        if isinstance(data, dict) and data.get("ok") is True and isinstance(data.get("result"), list):
            if checked is None or checked[0] is not payload:  # not seen by do_request: cannot journal here
                late: list[Parsed] = []
                data["result"] = [c for item in data["result"] if (c := self._checked(item, late)) is not None]
                for parsed in late:
                    log.warning("update %s is malformed and was skipped: %s", parsed.update_id, parsed.problem)
            self._wait_s = self.pacer.next_wait_s(updates=len(data["result"]), elapsed_s=self._elapsed_s,
                                                  requested_timeout_s=self._requested_timeout_s)
        return data

    async def _journal_malformed(self, parsed: Parsed) -> None:
        if self.on_malformed is not None:
            await self.on_malformed(parsed)
        else:
            log.warning("update %s is malformed and was skipped: %s", parsed.update_id, parsed.problem)

    def _checked(self, item: object, malformed: list[Parsed]) -> dict[str, Any] | None:
        parsed = parse_update(item, None)  # type: ignore[arg-type] - a trial parse needs no bot
        if parsed.update is not None:
            return parsed.data
        if parsed.update_id is None:  # no id: nothing to move past, nothing to key it by
            log.warning("getUpdates returned something that is not an update: %s", parsed.problem)
            return None
        malformed.append(parsed)  # journaled (failed) by do_request before PTB moves past it
        return {"update_id": parsed.update_id}
