"""One LLM client per distinct endpoint (base URL and key), a request sent to its model's.

The llm stage asks for a model by name in `AgentRequest.model`; the router picks the client of
that model's endpoint (core/models.py). Models that share an endpoint share its client, so its
connection pool; a model of another provider never sees the first one's key.
"""

from __future__ import annotations

from opentelemetry import trace

from core.context.tokens import TokenCounter
from core.contracts import AgentRequest, LLMResult
from core.llm import OpenAICompatibleLLM
from core.models import Endpoint, ModelCatalog
from core.ports import DeltaSink


class LLMRouter:
    """The LLM port over several endpoints."""

    def __init__(self, catalog: ModelCatalog, *, timeout_s: float, tracer: trace.Tracer,
                 counter: TokenCounter) -> None:
        self.model = catalog.default
        self.catalog = catalog
        self._clients: dict[Endpoint, OpenAICompatibleLLM] = {
            endpoint: OpenAICompatibleLLM(base_url=endpoint.base_url, api_key=endpoint.api_key,
                                          model=catalog.default, timeout_s=timeout_s, tracer=tracer,
                                          counter=counter)
            for endpoint in catalog.endpoints()}

    def client_for(self, model: str) -> OpenAICompatibleLLM:
        endpoint = self.catalog.endpoint(model)
        client = self._clients.get(endpoint)
        if client is None:  # a model outside the choices and fallbacks: never asked for by the stage
            raise KeyError(f"no endpoint for model {model!r}")
        return client

    async def complete(self, request: AgentRequest, *, on_delta: DeltaSink | None = None) -> LLMResult:
        return await self.client_for(request.model).complete(request, on_delta=on_delta)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
