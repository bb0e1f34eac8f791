"""Each storage class satisfies its Protocol in core.store.interfaces, signatures included (and
async: every store method is awaited, on either engine), so a caller written against the
Protocols works with any of them."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from core.failures.dlq import DeadLetterQueue
from core.failures.escalation import Outbox
from core.store import Chats, History, Journal, open_sqlite
from core.store.access import AccessRecords
from core.store.chat_models import ChatModels
from core.store.interfaces import (
    AccessStore,
    ChatModelStore,
    ChatStore,
    DeadLetterStore,
    HistoryStore,
    JournalStore,
    OutboxStore,
)

IMPLEMENTATIONS = [(JournalStore, Journal), (HistoryStore, History), (ChatStore, Chats),
                   (DeadLetterStore, DeadLetterQueue), (OutboxStore, Outbox), (ChatModelStore, ChatModels),
                   (AccessStore, AccessRecords)]


def _shape(function: Any) -> tuple[Any, ...]:
    """What a caller relies on: async or not, parameter names, kinds and defaults, and the return annotation
    (annotations are strings under `from __future__ import annotations`; `builtins.list` is how a
    Protocol with a method called `list` spells the builtin)."""
    signature = inspect.signature(function)
    params = tuple((p.name, p.kind, p.default) for p in signature.parameters.values())
    return inspect.iscoroutinefunction(function), params, str(signature.return_annotation).replace("builtins.", "")


def mismatches(protocol: type, implementation: type) -> list[str]:
    """Protocol methods the implementation lacks or declares with another signature."""
    found = []
    for name, member in vars(protocol).items():
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        own = getattr(implementation, name, None)
        if own is None:
            found.append(f"{name}: missing")
        elif _shape(own) != _shape(member):
            found.append(f"{name}: {inspect.signature(own)} != {inspect.signature(member)}")
    return found


@pytest.mark.parametrize(("protocol", "implementation"), IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_the_sqlite_class_has_every_method_of_its_protocol_with_the_same_signature(
        protocol: type, implementation: type) -> None:
    assert mismatches(protocol, implementation) == []
    assert isinstance(implementation(open_sqlite(":memory:")), protocol)


def test_a_wrong_signature_or_a_missing_method_is_reported() -> None:
    class Drifted:
        async def accept(self, *, update_id: int, now: str) -> bool:  # lost parameters
            return True

        def mark(self, update_id: int, state: str, *, now: str, error: str | None = None,  # not async
                 trace_id: str | None = None) -> None: ...

        async def state(self, update_id: int) -> int | None:  # another return type
            return None

        async def unfinished(self, limit: int = 10) -> list[Any]:  # another default
            return []

    found = mismatches(JournalStore, Drifted)
    assert [line.split(":")[0] for line in found] == ["accept", "mark", "state", "unfinished", "prune"]
    assert found[-1] == "prune: missing"
    assert not isinstance(Drifted(), JournalStore)
