"""Long polling that one bad update cannot stop.

PTB parses a whole getUpdates batch at once (`Update.de_list`); if any update in it does not
parse (a type PTB's version does not know yet, a field Telegram changed), the batch is dropped,
the offset does not move, and the updater fetches the same batch again, forever: every later
message waits behind the one it cannot read. So the getUpdates connection checks each update on
its own with the same `parse_update` the webhook and `Runtime.process_raw` use: a bad one is
journaled (failed, with its raw JSON and why) and replaced by a bare `{"update_id": N}`, which
moves the offset past it and is then dropped as a duplicate of the journal row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from telegram.request import HTTPXRequest

from bot.handlers import Parsed, parse_update

log = logging.getLogger(__name__)


class CheckedUpdatesRequest(HTTPXRequest):
    """The HTTP connection PTB uses for getUpdates, checking each update of a batch on its own."""

    __slots__ = ("on_malformed",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Set once the runtime exists: Runtime.record_unparsable (journals the update as failed).
        self.on_malformed: Callable[[Parsed], object] | None = None

    def parse_json_payload(self, payload: bytes) -> dict[str, Any]:  # type: ignore[override]
        data = HTTPXRequest.parse_json_payload(payload)
        if isinstance(data, dict) and data.get("ok") is True and isinstance(data.get("result"), list):
            data["result"] = [checked for item in data["result"] if (checked := self._checked(item)) is not None]
        return data

    def _checked(self, item: object) -> dict[str, Any] | None:
        parsed = parse_update(item, None)  # type: ignore[arg-type] - a trial parse needs no bot
        if parsed.update is not None:
            return parsed.data
        if parsed.update_id is None:  # no id: nothing to move past, nothing to key it by
            log.warning("getUpdates returned something that is not an update: %s", parsed.problem)
            return None
        if self.on_malformed is not None:
            self.on_malformed(parsed)
        else:
            log.warning("update %s is malformed and was skipped: %s", parsed.update_id, parsed.problem)
        return {"update_id": parsed.update_id}
