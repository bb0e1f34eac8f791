"""What the context helpers need from a turn, as Protocols (`core.turn.Turn` satisfies them).

Why not `Turn` itself: a turn carries `Services`, which is built from this package (tokens,
hot state, artifacts) and from core.store, which uses this package's budget arithmetic. Typing
against these narrow views keeps core/context below core.turn, core.services and core.store
in the import graph, with no cycle (checked by `lint-imports`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from config.settings import Settings
    from core.clock import Clock
    from core.context.artifacts import ArtifactStore
    from core.context.hot_state import HotStateStore
    from core.context.tokens import TokenCounter
    from core.contracts import ChatMessage, ContextPlan, InboundMessage, TurnGuard
    from core.models import ModelCatalog


class StoredMessage(Protocol):
    """A history row (core.store.HistoryMessage)."""

    @property
    def id(self) -> int: ...
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def tokens(self) -> int: ...
    @property
    def chat_message(self) -> ChatMessage: ...


class HistoryLog(Protocol):
    """The chat history as the context assembly reads and archives it (core.store.History)."""

    async def recent(self, chat_id: int, *, max_tokens: int) -> Sequence[StoredMessage]: ...
    async def count_active(self, chat_id: int) -> int: ...
    async def older_than(self, chat_id: int, message_id: int, *, limit: int = ...) -> Sequence[StoredMessage]: ...
    async def archive_through(self, chat_id: int, message_id: int) -> int: ...
    async def archive_cursor(self, chat_id: int) -> int: ...
    async def advance_archive_cursor(self, chat_id: int, message_id: int) -> None: ...



class ContextServices(Protocol):
    """The parts of `core.services.Services` the context helpers use."""

    @property
    def settings(self) -> Settings: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def counter(self) -> TokenCounter: ...
    @property
    def history(self) -> HistoryLog: ...
    @property
    def hot_state(self) -> HotStateStore: ...
    @property
    def artifacts(self) -> ArtifactStore: ...
    @property
    def system_prompt(self) -> str: ...
    @property
    def tracer(self) -> Any: ...  # noqa: ANN401 - an opentelemetry Tracer
    @property
    def models(self) -> ModelCatalog: ...

    static_tokens: tuple[int, int] | None


class TurnView(Protocol):
    """A turn as the context helpers see it (core.turn.Turn)."""

    @property
    def inbound(self) -> InboundMessage: ...
    @property
    def services(self) -> ContextServices: ...
    @property
    def guard(self) -> TurnGuard: ...

    user_text: str
    plan: ContextPlan | None
    messages: list[ChatMessage]
    user_tokens: int
    current_message: ChatMessage | None
    history_in_prompt: list[int]
    history_share: float
    viewed_images: list[str]  # data: URLs view_image loaded, attached after the tool results
    model: str  # the chat's model (its context window is the budget); "" before the gate stage
