"""The README's tables that are generated from code must match the code, and its commands paste safely."""

from __future__ import annotations

import re
from pathlib import Path

from config.settings import Settings
from core.failures.taxonomy import taxonomy_markdown

README = Path(__file__).resolve().parents[2] / "README.md"
ENV_EXAMPLE = README.parent / ".env.example"


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


def test_shell_commands_paste_safely() -> None:
    """A placeholder like `<your id>` is a redirect to the shell: the commands must run as pasted."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    assert blocks
    for block in blocks:
        for line in block.splitlines():
            assert not re.search(r"[<>]", line), f"README shell line has a redirect character: {line}"


def env_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields} | {"OPENAI_API_KEY"}


def test_every_setting_is_in_the_readme_table_and_no_test_hook_is() -> None:
    text = README.read_text(encoding="utf-8")
    table = markdown_table(text.split("## Configuration", 1)[1], "| variable |")
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    assert env_names() - {"OPENAI_API_KEY"} <= documented
    for hook in ("RETRY_WAIT_SCALE", "GATEWAY_CLOCK_OFFSET_FILE", "GATEWAY_TEST_HOOKS", "MODELS_FILE"):
        assert hook not in text
        assert hook not in ENV_EXAMPLE.read_text(encoding="utf-8")


def test_env_example_holds_only_real_settings_and_loads() -> None:
    names = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#")}
    assert names <= env_names(), names - env_names()
    Settings(_env_file=str(ENV_EXAMPLE))  # extra="forbid": a stale name here would fail every start
