"""The README's tables that are generated from code must match the code."""

from __future__ import annotations

from pathlib import Path

from core.failures.taxonomy import taxonomy_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def markdown_table(text: str, header: str) -> str:
    """The table whose first line starts with `header`: that line and every `|` line after it."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    assert start is not None, f"no table starting with {header!r} in README.md"
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start:end]) + "\n"


def test_failure_taxonomy_table_matches_the_code() -> None:
    section = README.read_text(encoding="utf-8").split("## Failure taxonomy", 1)
    assert len(section) == 2, "README.md has no '## Failure taxonomy' section"
    expected = taxonomy_markdown()
    in_readme = markdown_table(section[1], expected.splitlines()[0])
    assert in_readme == expected, (
        "README.md's failure taxonomy table is out of date; regenerate it with\n"
        "  python -c 'from core.failures.taxonomy import taxonomy_markdown; print(taxonomy_markdown())'"
    )
