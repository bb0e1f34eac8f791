"""The container files, checked without Docker (there is no engine here): the image runs as a
non-root user, installs dependencies before copying code, has a health check that works in both
modes, and its build context leaves out the virtualenv, local data and secrets."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n\s*", " ", text)
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def index_of(pairs: list[tuple[str, str]], word: str, contains: str = "") -> int:
    return next(i for i, (w, rest) in enumerate(pairs) if w == word and contains in rest)


def test_the_image_runs_as_a_non_root_user() -> None:
    pairs = instructions()
    users = [rest for word, rest in pairs if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert index_of(pairs, "USER") < index_of(pairs, "CMD")


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    pairs = instructions()
    install = index_of(pairs, "RUN", "pip install")
    assert index_of(pairs, "COPY", "requirements.txt") < install
    for package in ("bot", "core", "config"):
        assert install < index_of(pairs, "COPY", package)
    assert not any(word == "COPY" and rest.split()[0] == "." for word, rest in pairs), "COPY . busts the cache"


def test_the_command_is_the_bot() -> None:
    pairs = instructions()
    assert pairs[-1] == ("CMD", '["python", "-m", "bot"]')


def health_command() -> list[str]:
    rest = next(rest for word, rest in instructions() if word == "HEALTHCHECK")
    return shlex.split(rest.split(" CMD ", 1)[1])


def run_health_check(env: dict[str, str]) -> int:
    command = health_command()
    assert command[0] == "python"
    return subprocess.run([sys.executable, *command[1:]], env=env, timeout=30, check=False,
                          capture_output=True).returncode


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_the_health_check_asks_the_webhook_servers_route() -> None:
    assert 'add_get("/healthz"' in (ROOT / "bot" / "webhook.py").read_text(encoding="utf-8")
    server = HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        webhook = {"WEBHOOK_URL": "https://bot.example.com/hook", "PORT": str(server.server_port)}
        assert run_health_check(webhook) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert run_health_check(webhook) != 0  # nothing listens any more: unhealthy
    assert run_health_check({}) == 0  # polling mode has no server: healthy while running


@pytest.mark.parametrize("path", [".venv/lib/x.py", "data/gateway.db", ".env", ".git/HEAD",
                                  "bot/__pycache__/app.cpython-311.pyc"])
def test_the_build_context_leaves_out_local_state_and_secrets(path: str) -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    excluded = False
    for pattern in patterns:  # Docker's rule: the last matching line wins; "!" re-includes
        negate = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/").removeprefix("**/")
        parts = Path(path).parts
        if any(Path(*parts[i:j]).match(bare) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)):
            excluded = not negate
    assert excluded, f"{path} would be sent to the Docker daemon"


def test_dot_env_example_stays_in_the_context() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "!.env.example" in lines
