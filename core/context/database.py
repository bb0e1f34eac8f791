"""What the artifact and hot-state stores need from the database engine.

`core.store.engine.Database` (SQLite or PostgreSQL) satisfies this; it is declared here so that
core/context stays below core.store in the import graph (core.store uses this package's budget
arithmetic), with no cycle (checked by `lint-imports`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class ContextDatabase(Protocol):
    """A `core.store.engine.Database`, as far as core/context uses it."""

    @property
    def dialect(self) -> str: ...
    async def execute(self, sql: str, params: Sequence[Any] = ...) -> int: ...
    async def fetchone(self, sql: str, params: Sequence[Any] = ...) -> tuple[Any, ...] | None: ...
    async def fetchall(self, sql: str, params: Sequence[Any] = ...) -> list[tuple[Any, ...]]: ...
    def transaction(self) -> Any: ...  # noqa: ANN401 - an async context manager
