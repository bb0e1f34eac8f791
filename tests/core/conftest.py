"""Fixtures for the in-process pipeline tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.services import Services
from tests.core.fakes import Built, MakePipeline, build_pipeline


@pytest.fixture
async def make_pipeline(tmp_path: Path) -> AsyncIterator[MakePipeline]:
    """`await make_pipeline(**settings)` builds real services and a pipeline over a temp DATA_DIR (see
    `build_pipeline`); every one built is closed after the test, whether it passed or not."""
    built: list[Services] = []

    async def make(*, path: Path | None = None, tracing: bool = True, **overrides: object) -> Built:
        services, pipeline, llm, channel = await build_pipeline(path or tmp_path, tracing=tracing, **overrides)
        built.append(services)
        return services, pipeline, llm, channel

    yield make
    for services in built:
        await services.close()
