"""core/ and bot/ reach their dependencies through public names only.

A private module or name of a library (`openai._base_client.make_request_options`,
`module._helper`) can change or vanish in any minor release; a pinned version hides that until
the day it is upgraded. This scans the source (imports, and attribute chains that start at an
imported name) for a single-underscore component. Dunders (`__version__`) and our own packages
are fine. What it cannot see: private attributes of objects reached through variables.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pydantic
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("core", "bot")
OUR_PACKAGES = {"core", "bot", "config", "tests"}


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _imported_names(tree: ast.AST) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """Names bound by imports of other packages (name -> dotted origin), and private imports found."""
    names: dict[str, str] = {}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in OUR_PACKAGES:
                    continue
                if any(map(_private, alias.name.split("."))):
                    found.append((node.lineno, f"import {alias.name}"))
                names[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in OUR_PACKAGES:
                continue
            for alias in node.names:
                if any(map(_private, [*node.module.split("."), alias.name])):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names, found


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each private name of another package that `source` imports or reaches."""
    tree = ast.parse(source)
    names, found = _imported_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in names:
                found.append((node.lineno, f"{ast.unparse(node)} ({names[root.id]})"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
              and len(node.args) >= 2 and isinstance(node.args[0], ast.Name) and node.args[0].id in names
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


@pytest.mark.parametrize(("source", "expected"), [
    ("from openai._base_client import make_request_options", ["from openai._base_client import make_request_options"]),
    ("import openai._streaming as s", ["import openai._streaming"]),
    ("from pydantic import _internal", ["from pydantic import _internal"]),
    ("import openai\nx = openai._base_client.make_request_options", ["openai._base_client (openai)"]),
    ("from openai import AsyncOpenAI\nAsyncOpenAI._client", ["AsyncOpenAI._client (openai.AsyncOpenAI)"]),
    ("import sys\nf = getattr(sys, '_getframe')", ["getattr(sys, '_getframe')"]),
])
def test_the_scan_finds_private_names(source: str, expected: list[str]) -> None:
    assert [what for _, what in private_uses(source)] == expected


@pytest.mark.parametrize("source", [
    "from openai import AsyncOpenAI, RequestOptions",
    "import openai\nopenai.__version__",
    "from core.store import _fit\nfrom . import _private_sibling",  # our own code may use its private names
    "class A:\n    def f(self):\n        return self._cache",
    "from collections import namedtuple\nP = namedtuple('P', 'x')\nP(1)._asdict()",
])
def test_the_scan_passes_public_names(source: str) -> None:
    assert private_uses(source) == []


def test_core_and_bot_use_no_private_api_of_a_dependency() -> None:
    offences = [f"{path.relative_to(ROOT)}:{line}: {what}"
                for package in SCANNED for path in sorted((ROOT / package).rglob("*.py"))
                for line, what in private_uses(path.read_text(encoding="utf-8"))]
    assert offences == []


# pydantic's dunders -------------------------------------------------------------------------------
# `__pydantic_*__` names are pydantic's machinery. The ones BaseModel's own docstring lists as its
# attributes are documented; any other (`__pydantic_base_init__`, which tells pydantic a custom
# __init__ is not custom) is an internal that can change in any release, reached without an import,
# so the scan above cannot see it.
DOCUMENTED_PYDANTIC_DUNDERS = frozenset(re.findall(r"__pydantic_\w+__", pydantic.BaseModel.__doc__ or ""))


def undocumented_pydantic_dunders(source: str) -> list[tuple[int, str]]:
    """(line, name) for each `__pydantic_*__` name, attribute or string that pydantic does not document."""
    found = []
    for node in ast.walk(ast.parse(source)):
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else \
            node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
        if name and re.fullmatch(r"__pydantic_\w+__", name) and name not in DOCUMENTED_PYDANTIC_DUNDERS:
            found.append((node.lineno, name))
    return sorted(found)


@pytest.mark.parametrize(("source", "expected"), [
    ("def __init__(self): ...\n__init__.__pydantic_base_init__ = True", ["__pydantic_base_init__"]),
    ("setattr(f, '__pydantic_base_init__', True)", ["__pydantic_base_init__"]),
    ("x = Model.__pydantic_fields__\ny = Model.model_fields", []),
])
def test_the_scan_finds_undocumented_pydantic_dunders(source: str, expected: list[str]) -> None:
    assert [name for _, name in undocumented_pydantic_dunders(source)] == expected


def test_the_documented_list_is_read_from_pydantic() -> None:
    assert {"__pydantic_validator__", "__pydantic_fields__"} <= DOCUMENTED_PYDANTIC_DUNDERS
    assert "__pydantic_base_init__" not in DOCUMENTED_PYDANTIC_DUNDERS


def test_no_undocumented_pydantic_dunder_is_used() -> None:
    offences = [f"{path.relative_to(ROOT)}:{line}: {name}"
                for package in (*SCANNED, "config") for path in sorted((ROOT / package).rglob("*.py"))
                for line, name in undocumented_pydantic_dunders(path.read_text(encoding="utf-8"))]
    assert offences == []
