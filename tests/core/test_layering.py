"""The layering of core, checked in the test run (CI runs `python -m pytest`) as `lint-imports` checks it
(pyproject.toml), imports under TYPE_CHECKING included: core never imports bot or telegram, the
pipeline's stages never import each other, and no package of core has an import cycle."""

from __future__ import annotations

import grimp
import pytest

STAGES = ("validate", "authorize", "throttle", "ingest", "gate", "context", "budget", "llm", "persist", "reply",
          "failure")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("core", "config", include_external_packages=True)


def test_core_never_imports_bot_or_telegram(graph: grimp.ImportGraph) -> None:
    # The graph holds core, config and what they import: bot or telegram in it means an import.
    imported = {module.split(".")[0] for module in graph.modules}
    assert not imported & {"bot", "telegram"}


def test_only_the_pipeline_package_knows_the_stages(graph: grimp.ImportGraph) -> None:
    stages = {f"core.pipeline.{name}" for name in STAGES}
    for stage in stages:
        imported = graph.find_modules_directly_imported_by(stage)
        assert not imported & (stages | {"core.pipeline"}), (stage, imported & (stages | {"core.pipeline"}))
    importers = set().union(*(graph.find_modules_that_directly_import(stage) for stage in stages))
    assert importers <= {"core.pipeline"}, importers


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


@pytest.mark.parametrize("package", ["core", "core.context", "core.contracts", "core.failures", "core.pipeline"])
def test_no_import_cycles_among_the_modules_of_a_package(graph: grimp.ImportGraph, package: str) -> None:
    depth = package.count(".") + 2

    def sibling(module: str) -> str | None:
        return ".".join(module.split(".")[:depth]) if module.startswith(package + ".") else None

    edges: dict[str, set[str]] = {}
    for module in graph.find_descendants(package):
        importer = sibling(module)
        for imported in map(sibling, graph.find_modules_directly_imported_by(module)):
            if importer and imported and imported != importer:
                edges.setdefault(importer, set()).add(imported)
    assert _cycle(edges) is None, f"import cycle in {package}: {' -> '.join(_cycle(edges) or [])}"
